"""What torch2trt needs from us on TensorRT 10: converters it lacks, a refusal up front, a whole-batch calibrator.

Checked against NVIDIA-AI-IOT/torch2trt at its TensorRT-10 refactor (PR #922):

* ``torch.nn.functional.pad`` goes to ``convert_pad``, which calls
  ``network.add_padding`` - removed in TensorRT 10.  :func:`convert_pad` uses
  ``add_padding_nd`` (TensorRT 8 and 10), constant zero padding of the last two
  dimensions, which is what every registered model uses (EfficientNet-Lite's
  TensorFlow-style SAME padding); anything else is refused by name.
* ``hardswish`` / ``hardsigmoid`` (MobileNetV3) have no converter (torch2trt
  issue #484): its catch-all "unimplemented" entry leaves the output without a
  TensorRT tensor and ``mark_outputs`` fails.  :func:`convert_hardsigmoid` is
  TensorRT's ``HARD_SIGMOID`` activation (alpha 1/6, beta 1/2, which is
  ``relu6(x + 3) / 6``); :func:`convert_hardswish` multiplies it by ``x``.
* :func:`unconvertible` runs the module once on a small CPU batch and names the
  first ``torch.nn.functional`` call (and the layer that made it) that has no
  real converter, so a model is refused with one line before any conversion.
* int8: torch2trt's ``DatasetCalibrator`` says batch size 1 and hands TensorRT
  the pointer of one dataset item, while TensorRT calibrates at the calibration
  profile's shape; its default algorithm is picked by ``trt.__version__ >=
  '5.1'`` (a string comparison, false for "10.x").  :func:`calibrator_class` is
  our replacement, put in torch2trt's namespace for the duration of the call:
  every item is a whole batch of the profile's shape (:class:`CalibrationBatches`),
  entropy calibration 2, and callback errors kept for after the build.
"""

from __future__ import annotations

import contextlib
import logging
from typing import TYPE_CHECKING, Any, Iterator

from engines.errors import EngineError

if TYPE_CHECKING:
    import torch

    from engines.backends.tensorrt.calibrator import CalibrationImages
    from engines.backends.tensorrt.util import CallbackErrors

log = logging.getLogger(__name__)

OUR_CONVERTERS = (
    "torch.nn.functional.pad",
    "torch.nn.functional.hardswish",
    "torch.nn.functional.hardsigmoid",
)


# -- converters -------------------------------------------------------------------------------
def _arg(ctx: Any, name: str, index: int, default: Any) -> Any:
    if name in ctx.method_kwargs:
        return ctx.method_kwargs[name]
    if len(ctx.method_args) > index:
        return ctx.method_args[index]
    return default


def _trt_input(ctx: Any) -> Any:
    value = ctx.method_args[0]
    tensor = getattr(value, "_trt", None)
    if tensor is None:
        raise EngineError("torch2trt: the input of a converted layer has no TensorRT tensor")
    return tensor


def convert_pad(ctx: Any) -> None:
    """``F.pad(x, [left, right, top, bottom], mode="constant", value=0)`` -> ``add_padding_nd``."""
    pad = list(_arg(ctx, "pad", 1, ()))
    mode = _arg(ctx, "mode", 2, "constant")
    value = _arg(ctx, "value", 3, None)
    if mode != "constant" or value not in (None, 0, 0.0) or len(pad) not in (2, 4):
        raise EngineError(
            f"torch2trt: F.pad(mode={mode!r}, value={value!r}, pad={pad}) has no TensorRT 10 converter "
            "(only zero padding of the last two dimensions)"
        )
    if len(pad) == 2:
        pad += [0, 0]
    left, right, top, bottom = (int(p) for p in pad)
    from engines.backends.tensorrt.util import trt

    layer = ctx.network.add_padding_nd(_trt_input(ctx), trt.Dims([top, left]), trt.Dims([bottom, right]))
    ctx.method_return._trt = layer.get_output(0)


def _hard_sigmoid(ctx: Any, input_trt: Any) -> Any:
    from engines.backends.tensorrt.util import trt

    layer = ctx.network.add_activation(input_trt, trt.ActivationType.HARD_SIGMOID)
    layer.alpha = 1.0 / 6.0
    layer.beta = 0.5
    return layer.get_output(0)


def convert_hardsigmoid(ctx: Any) -> None:
    """``F.hardsigmoid(x) = relu6(x + 3) / 6 = clip(x / 6 + 1/2, 0, 1)``: TensorRT's HARD_SIGMOID."""
    ctx.method_return._trt = _hard_sigmoid(ctx, _trt_input(ctx))


def convert_hardswish(ctx: Any) -> None:
    """``F.hardswish(x) = x * hardsigmoid(x)``."""
    from engines.backends.tensorrt.util import trt

    x = _trt_input(ctx)
    layer = ctx.network.add_elementwise(x, _hard_sigmoid(ctx, x), trt.ElementWiseOperation.PROD)
    ctx.method_return._trt = layer.get_output(0)


def register_converters(t2t: Any) -> None:
    """Register our converters in torch2trt (replacing its pad converter and its catch-all stubs)."""
    register = t2t.tensorrt_converter
    for name, fn in zip(OUR_CONVERTERS, (convert_pad, convert_hardswish, convert_hardsigmoid)):
        register(name)(fn)


# -- refusal up front ---------------------------------------------------------------------------
def _has_real_converter(t2t: Any, name: str) -> bool:
    converters = getattr(t2t, "CONVERTERS", None)
    if converters is None:
        return True  # cannot tell: let torch2trt try
    entry = converters.get(name)
    return isinstance(entry, dict) and bool(entry.get("is_real", True))


def unconvertible(t2t: Any, module: "torch.nn.Module", input_shape: tuple[int, ...]) -> str | None:
    """The first ``torch.nn.functional`` call in ``module``'s forward with no real torch2trt converter,
    as ``"F.name (in layer L)"``; None when every call has one.  Runs the module once on a zero batch
    of one on the CPU (a copy of the module: weights untouched)."""
    import copy

    import torch
    from torch.overrides import TorchFunctionMode

    names: list[str] = []
    hooks = []
    probe = copy.deepcopy(module).cpu().eval()
    def enter(name: str) -> Any:
        def hook(module: Any, args: Any) -> None:
            names.append(name or "(model)")

        return hook

    def leave(module: Any, args: Any, output: Any) -> None:  # returns None: the output is kept
        if names:
            names.pop()

    for name, sub in probe.named_modules():
        hooks.append(sub.register_forward_pre_hook(enter(name)))
        hooks.append(sub.register_forward_hook(leave))
    found: list[str] = []

    class _Mode(TorchFunctionMode):
        def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
            if not found and getattr(func, "__module__", "") == "torch.nn.functional":
                qual = f"torch.nn.functional.{func.__name__}"
                if not _has_real_converter(t2t, qual):
                    found.append(f"F.{func.__name__} (in layer {names[-1] if names else '(model)'})")
            return func(*args, **(kwargs or {}))

    try:
        with torch.no_grad(), _Mode():
            probe(torch.zeros((1, *input_shape)))
    finally:
        for hook in hooks:
            hook.remove()
    return found[0] if found else None


# -- int8 calibration ---------------------------------------------------------------------------
class CalibrationBatches:
    """torch2trt's ``int8_calib_dataset`` made of whole batches: item ``i`` is ``[batch i]``, a contiguous
    ``(N, 3, H, W)`` float32 tensor on the device, N the calibration profile's batch."""

    def __init__(self, images: "CalibrationImages", batch: int) -> None:
        self.images = images
        self.batch = batch
        self.chunks = images.batches(batch)

    def __len__(self) -> int:
        return len(self.chunks)

    def __getitem__(self, index: int) -> list["torch.Tensor"]:
        if index >= len(self.chunks):
            raise IndexError(index)
        return [self.images.read(self.chunks[index])]


def calibrator_class(trt: Any, shape: tuple[int, ...], errors: "CallbackErrors") -> type:
    """A ``DatasetCalibrator`` stand-in (same constructor) over a :class:`CalibrationBatches`."""

    class WholeBatchCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self, dataset: CalibrationBatches, algorithm: Any = None, **_ignored: Any) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)
            self.dataset = dataset
            self.count = 0
            self.buffer: Any = None

        def get_batch_size(self) -> int:
            return int(shape[0])

        def get_batch(self, names: Any = None, *args: Any) -> list[int]:
            def read() -> list[int]:
                if self.count >= len(self.dataset):
                    return []
                (tensor,) = self.dataset[self.count]
                self.count += 1
                if tuple(tensor.shape) != tuple(shape):
                    raise EngineError(f"int8 calibration: batch of {tuple(tensor.shape)} for a profile of {shape}")
                self.buffer = tensor
                return [int(tensor.data_ptr())]

            return errors.call(read, [])

        def read_calibration_cache(self, *args: Any) -> None:
            return None

        def write_calibration_cache(self, cache: Any, *args: Any) -> None:
            return None

    return WholeBatchCalibrator


@contextlib.contextmanager
def our_calibrator(t2t_function: Any, cls: type) -> Iterator[None]:
    """``DatasetCalibrator`` in the namespace of ``torch2trt.torch2trt`` replaced by ``cls`` meanwhile."""
    namespace = t2t_function.__globals__
    had = "DatasetCalibrator" in namespace
    old = namespace.get("DatasetCalibrator")
    namespace["DatasetCalibrator"] = cls
    try:
        yield
    finally:
        if had:
            namespace["DatasetCalibrator"] = old
        else:
            namespace.pop("DatasetCalibrator", None)
