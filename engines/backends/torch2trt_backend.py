"""torch2trt backend: the PyTorch module converted layer by layer to TensorRT, cached on disk.

``torch2trt(module, [example], fp16_mode=..., int8_mode=..., int8_calib_dataset=...,
max_batch_size=...)`` builds the engine (NVIDIA-AI-IOT/torch2trt).  The resulting
``TRTModule``'s state dict - the serialized engine as a ``bytearray`` plus the
tensor names (and, in recent torch2trt, the input/output flatteners, plain
dicts) - is stored in the engine cache under the same key scheme as the
tensorrt backend (producer ``torch2trt``, suffix ``.trtmodule``), keyed by a
SHA-256 of the model's weights instead of an ONNX hash.

It is read back with ``torch.load(weights_only=True)``, which refuses anything
but tensors and plain containers, into a fresh ``TRTModule()`` - never by
unpickling arbitrary objects.

A dynamic batch uses torch2trt's ``min_shapes``/``opt_shapes``/``max_shapes``
where the installed torch2trt has them; otherwise the engine takes exactly
``batch`` rows and smaller batches are padded.

On TensorRT 10 (torch2trt's TensorRT-10 refactor) we register the converters it
lacks for the registered models (``F.pad``, hardswish, hardsigmoid; see
:mod:`engines.backends.torch2trt_converters`) and refuse, with one line naming
the function and layer, a model that still has an unconverted call - before any
conversion.  int8 feeds whole batches of the calibration profile's shape through
our own calibrator (entropy calibration 2), never ``int8_calib_batch_size``.
The key covers the weights (their file hash, memoised; not a re-hash of the
state dict on every load), the model's code, torch's version and torch2trt's
(version, VCS commit when pip recorded one, and a hash of its converter
sources); the workspace only where torch2trt applies it (TensorRT < 10).
TRTModule runs on its current torch stream, so inference runs under this
backend's own CUDA stream, as does the preprocessing that feeds it.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import inspect
import io
import logging
import pickle
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engines.backends.base import Artifact, Backend, BackendOptions, resolve_device_name
from engines.backends.tensorrt.calibrator import CalibrationImages, calibration_images, calibration_set_sha256
from engines.backends.tensorrt.key import engine_key, expected_io
from engines.backends.tensorrt.util import (
    CallbackErrors,
    cuda_device_info,
    engine_device_memory_bytes,
    engine_io,
    raise_pending_interrupt,
    tensorrt_info,
    trt,
)
from engines.backends.torch2trt_converters import (
    CalibrationBatches,
    calibrator_class,
    our_calibrator,
    register_converters,
    unconvertible,
)
from engines.cache import Built, InvalidEntry, Loaded, Store
from engines.errors import BackendError, BackendUnavailable, EngineError
from engines.models import ModelSpec, WeightsChoice, build_model
from engines.onnx_export import INPUT_NAME, OUTPUT_NAME

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)


def state_dict_sha256(module: "torch.nn.Module") -> str:
    """SHA-256 over the module's state dict: names, dtypes, shapes and bytes, in name order."""
    import torch

    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        header = f"{name}|{t.dtype}|{tuple(t.shape)}|".encode()
        digest.update(len(header).to_bytes(8, "big") + header)
        raw = t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
        digest.update(len(raw).to_bytes(8, "big") + raw)
    return digest.hexdigest()


def read_trtmodule_state(data: bytes) -> dict[str, Any]:
    """A stored TRTModule state dict, loaded with ``weights_only=True``; :class:`InvalidEntry` otherwise."""
    import torch

    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, TypeError, AttributeError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise InvalidEntry(f"not a plain TRTModule state dict that loads with weights_only=True ({first})") from exc
    if not isinstance(state, dict):
        raise InvalidEntry(f"a TRTModule state dict was expected, found {type(state).__name__}")
    engine = state.get("engine")
    if not isinstance(engine, (bytes, bytearray)) or not engine:
        raise InvalidEntry("the TRTModule state has no serialized engine")
    if state.get("input_names") != [INPUT_NAME] or state.get("output_names") != [OUTPUT_NAME]:
        raise InvalidEntry(
            f"the TRTModule's tensors are {state.get('input_names')!r} -> {state.get('output_names')!r}, "
            f"expected [{INPUT_NAME!r}] -> [{OUTPUT_NAME!r}]"
        )
    return dict(state)


def load_trtmodule(path: Path) -> Loaded[Any]:
    """A fresh ``TRTModule`` with the verified stored state; :class:`InvalidEntry` if the engine does not load."""
    from torch2trt import TRTModule

    state = read_trtmodule_state(path.read_bytes())
    module = TRTModule()
    try:
        module.load_state_dict(state)
    except Exception as exc:  # torch2trt versions fail differently on an engine TensorRT refuses
        raise InvalidEntry(f"TensorRT could not deserialize the TRTModule's engine ({type(exc).__name__}: {exc})") from exc
    if getattr(module, "engine", None) is None:
        raise InvalidEntry("TensorRT could not deserialize the TRTModule's engine")
    inputs, outputs = engine_io(module.engine, tensorrt_info().tensor_api)
    return Loaded(module, inputs, outputs)


def _torch2trt_version(module: Any) -> str:
    try:
        from importlib.metadata import version

        return version("torch2trt")
    except Exception:  # noqa: BLE001 - a source install may have no metadata
        return str(getattr(module, "__version__", "unknown"))


_code_memo: dict[str, str] = {}


def torch2trt_code_id(module: Any) -> str:
    """torch2trt's identity beyond its version (0.5.0 before and after the TensorRT-10 rewrite):
    the VCS commit pip recorded (``direct_url.json``) when there is one, and a SHA-256 of its
    ``torch2trt.py``, ``trt_module.py`` and converter sources."""
    import json
    from importlib.metadata import PackageNotFoundError, distribution

    parts = []
    try:
        direct = distribution("torch2trt").read_text("direct_url.json")
        commit = json.loads(direct).get("vcs_info", {}).get("commit_id") if direct else None
        if commit:
            parts.append(f"commit={commit}")
    except (PackageNotFoundError, ValueError, AttributeError, TypeError):
        pass
    root = Path(getattr(module, "__file__", "") or ".").parent
    memo = _code_memo.get(str(root))
    if memo is None:
        digest = hashlib.sha256()
        files = [root / "torch2trt.py", root / "trt_module.py", *sorted((root / "converters").glob("*.py"))]
        for path in files:
            if path.is_file():
                digest.update(path.name.encode() + b"\0" + path.read_bytes())
        memo = _code_memo[str(root)] = digest.hexdigest()[:16]
    parts.append(f"sources={memo}")
    return ",".join(parts)


def model_code_sha256(model: "torch.nn.Module") -> str:
    """SHA-256 of the source files of the classes the model is made of (torchvision's or ours)."""
    import sys

    files = set()
    for sub in model.modules():
        mod = sys.modules.get(type(sub).__module__)
        path = getattr(mod, "__file__", None)
        if path and not type(sub).__module__.startswith("torch.nn"):
            files.add(path)
    digest = hashlib.sha256()
    for path in sorted(files):
        memo = _code_memo.get(path)
        if memo is None:
            memo = _code_memo[path] = hashlib.sha256(Path(path).read_bytes()).hexdigest()
        digest.update(Path(path).name.encode() + b"\0" + memo.encode())
    return digest.hexdigest()


class Torch2TRTBackend(Backend):
    """torch2trt conversion of the PyTorch model; the TRTModule state is cached like an engine."""

    name = "torch2trt"

    @classmethod
    def unsupported(cls, options: BackendOptions) -> str | None:
        if resolve_device_name(options.device) == "cpu":
            return "torch2trt backend needs a CUDA GPU"
        if options.precision == "int8" and options.calib_dir is None:
            return "torch2trt int8 needs calibration images: pass --calib DIR"
        return None

    def __init__(self, spec: ModelSpec, weights: WeightsChoice, options: BackendOptions | None = None) -> None:
        super().__init__(spec, weights, options)
        self._module: Any = None
        self._static_batch = True
        self._trt_version = ""
        self._stream: "torch.cuda.Stream | None" = None

    @property
    def description(self) -> str:
        text = super().description
        return text + (f" (TensorRT {self._trt_version})" if self._trt_version else "")

    @property
    def stream(self) -> "torch.cuda.Stream | None":
        return self._stream

    def _load_impl(self) -> None:
        import torch

        from engines.onnx_export import weights_id

        try:
            t2t = importlib.import_module("torch2trt")
        except ImportError as exc:
            raise BackendUnavailable(f"torch2trt backend: {exc}; install TensorRT and torch2trt") from exc
        register_converters(t2t)
        options = self.options
        dynamic = options.dynamic_batch and "min_shapes" in inspect.signature(t2t.torch2trt).parameters
        if options.dynamic_batch and not dynamic:
            log.info("torch2trt: this version has no min/max shapes; building batch %d and padding", options.batch)
        options = replace(options, dynamic_batch=dynamic)
        self._static_batch = not dynamic
        info = tensorrt_info()
        self._trt_version = info.version
        device = cuda_device_info(self.device)
        torch.cuda.set_device(self.device)

        model = build_model(self.spec, self.weights)
        calib_sha = calibration_set_sha256(options.calib_dir) if options.precision == "int8" else None
        key = engine_key(
            self.spec,
            options,
            producer="torch2trt",
            source_sha256=hashlib.sha256(weights_id(self.spec, self.weights).encode()).hexdigest(),
            source_format="torch-weights-id",
            device=device,
            trt_version=self._trt_version,
            calib_sha256=calib_sha,
            extra={
                "torch2trt": _torch2trt_version(t2t),
                "torch2trt_code": torch2trt_code_id(t2t),
                "torch": str(torch.__version__),
                "model_code": model_code_sha256(model.module),
            },
            workspace_keyed=info.major < 10,  # torch2trt sets max_workspace_size only before TensorRT 10
        )
        inputs, outputs = expected_io(self.spec, options)

        def build() -> Built:
            return self._convert(t2t, model.module, options, dynamic)

        result = Store(options.cache_dir).get_or_build(key, build, load_trtmodule, inputs, outputs)
        del model
        self._module = result.value
        self._stream = torch.cuda.Stream(device=self.device) if torch.cuda.is_available() else None
        self.artifact = Artifact.from_cache(result, engine_device_memory_bytes(result.value.engine))

    def conversion_kwargs(self, t2t: Any, options: BackendOptions, dynamic: bool) -> dict[str, Any]:
        """What ``torch2trt(...)`` is called with (int8: the dataset only; the calibrator is ours)."""
        chw = self.spec.preprocess.input_shape
        kwargs: dict[str, Any] = {
            "input_names": [INPUT_NAME],
            "output_names": [OUTPUT_NAME],
            "fp16_mode": options.precision in ("fp16", "int8"),
            "int8_mode": options.precision == "int8",
            "max_batch_size": options.batch,
        }
        if options.workspace_mb is not None:
            if tensorrt_info().major < 10:
                kwargs["max_workspace_size"] = options.workspace_mb << 20
            else:
                log.info("torch2trt: --workspace is not applied by torch2trt on TensorRT 10; ignored")
        if dynamic:
            kwargs.update(
                min_shapes=[(1, *chw)], opt_shapes=[(options.batch, *chw)], max_shapes=[(options.batch, *chw)]
            )
        if options.precision == "int8":
            assert options.calib_dir is not None
            images = CalibrationImages(calibration_images(options.calib_dir), self.spec.preprocess, self.device)
            kwargs["int8_calib_dataset"] = CalibrationBatches(images, options.batch)
            kwargs["int8_calib_algorithm"] = trt.CalibrationAlgoType.ENTROPY_CALIBRATION_2
        return kwargs

    def _convert(self, t2t: Any, module: "torch.nn.Module", options: BackendOptions, dynamic: bool) -> Built:
        import torch

        chw = self.spec.preprocess.input_shape
        missing = unconvertible(t2t, module, chw)
        if missing is not None:
            raise EngineError(f"torch2trt cannot convert {self.spec.name} on TensorRT {self._trt_version}: no converter for {missing}")
        example = torch.zeros((options.batch, *chw), device=self.device)
        kwargs = self.conversion_kwargs(t2t, options, dynamic)
        errors = CallbackErrors()
        scope: Any = contextlib.nullcontext()
        if options.precision == "int8":
            scope = our_calibrator(t2t.torch2trt, calibrator_class(trt, (options.batch, *chw), errors))
        module = module.to(self.device).eval()
        with torch.inference_mode(False), torch.no_grad(), scope:
            trt_module = t2t.torch2trt(module, [example], **kwargs)
        raise_pending_interrupt()
        errors.reraise()
        if getattr(trt_module, "engine", None) is None:
            raise EngineError("torch2trt did not produce an engine (see the TensorRT log above)")
        buffer = io.BytesIO()
        torch.save(dict(trt_module.state_dict()), buffer)
        inputs, outputs = engine_io(trt_module.engine, tensorrt_info().tensor_api)
        return Built(buffer.getvalue(), inputs, outputs)

    def preprocess(self, frames: Any) -> "torch.Tensor":
        """As :meth:`Backend.preprocess`, enqueued on this backend's stream."""
        if self._stream is None:
            return super().preprocess(frames)
        import torch

        with torch.cuda.stream(self._stream):
            return super().preprocess(frames)

    def _infer_impl(self, batch: "torch.Tensor") -> "torch.Tensor":
        import torch

        if self._module is None:
            raise BackendError("torch2trt: not loaded")
        stream = self._stream
        caller = torch.cuda.current_stream(self.device) if stream is not None else None
        if stream is not None and caller is not None:
            stream.wait_stream(caller)
        scope: Any = torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext()
        with scope:  # TRTModule runs execute_async_v3 on torch's current stream: ours
            n = int(batch.shape[0])
            x = batch.to(self.device, dtype=torch.float32, non_blocking=True).contiguous()
            if self._static_batch and n != self.options.batch:
                padded = torch.zeros((self.options.batch, *x.shape[1:]), dtype=x.dtype, device=x.device)
                padded[:n].copy_(x)
                x = padded
            out = self._module(x)[:n].float()
        if stream is not None and caller is not None:
            caller.wait_stream(stream)
            out.record_stream(caller)
        return out

    def _close_impl(self) -> None:
        if self._stream is not None:
            self._stream.synchronize()
        self._module = None
        self._stream = None
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.empty_cache()
