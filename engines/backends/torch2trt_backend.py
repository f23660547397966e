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
"""

from __future__ import annotations

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
from engines.backends.tensorrt.util import cuda_device_info, engine_device_memory_bytes, engine_io, tensorrt_info
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

    @property
    def description(self) -> str:
        text = super().description
        return text + (f" (TensorRT {self._trt_version})" if self._trt_version else "")

    def _load_impl(self) -> None:
        import torch

        try:
            t2t = importlib.import_module("torch2trt")
        except ImportError as exc:
            raise BackendUnavailable(f"torch2trt backend: {exc}; install TensorRT and torch2trt") from exc
        options = self.options
        dynamic = options.dynamic_batch and "min_shapes" in inspect.signature(t2t.torch2trt).parameters
        if options.dynamic_batch and not dynamic:
            log.info("torch2trt: this version has no min/max shapes; building batch %d and padding", options.batch)
        options = replace(options, dynamic_batch=dynamic)
        self._static_batch = not dynamic
        self._trt_version = tensorrt_info().version
        device = cuda_device_info(self.device)
        torch.cuda.set_device(self.device)

        model = build_model(self.spec, self.weights)
        calib_sha = calibration_set_sha256(options.calib_dir) if options.precision == "int8" else None
        key = engine_key(
            self.spec,
            options,
            producer="torch2trt",
            source_sha256=state_dict_sha256(model.module),
            source_format="torch-state-dict",
            device=device,
            trt_version=self._trt_version,
            calib_sha256=calib_sha,
            extra={"torch2trt": _torch2trt_version(t2t)},
        )
        inputs, outputs = expected_io(self.spec, options)

        def build() -> Built:
            return self._convert(t2t, model.module, options, dynamic)

        result = Store(options.cache_dir).get_or_build(key, build, load_trtmodule, inputs, outputs)
        del model
        self._module = result.value
        self.artifact = Artifact.from_cache(result, engine_device_memory_bytes(result.value.engine))

    def _convert(self, t2t: Any, module: "torch.nn.Module", options: BackendOptions, dynamic: bool) -> Built:
        import torch

        chw = self.spec.preprocess.input_shape
        example = torch.zeros((options.batch, *chw), device=self.device)
        kwargs: dict[str, Any] = {
            "input_names": [INPUT_NAME],
            "output_names": [OUTPUT_NAME],
            "fp16_mode": options.precision in ("fp16", "int8"),
            "int8_mode": options.precision == "int8",
            "max_batch_size": options.batch,
        }
        if options.workspace_mb is not None:
            kwargs["max_workspace_size"] = options.workspace_mb << 20
        if dynamic:
            kwargs.update(
                min_shapes=[(1, *chw)], opt_shapes=[(options.batch, *chw)], max_shapes=[(options.batch, *chw)]
            )
        if options.precision == "int8":
            assert options.calib_dir is not None
            kwargs["int8_calib_dataset"] = CalibrationImages(
                calibration_images(options.calib_dir), self.spec.preprocess, self.device
            )
            kwargs["int8_calib_batch_size"] = options.batch
        module = module.to(self.device).eval()
        with torch.inference_mode(False), torch.no_grad():
            trt_module = t2t.torch2trt(module, [example], **kwargs)
        if getattr(trt_module, "engine", None) is None:
            raise EngineError("torch2trt did not produce an engine (see the TensorRT log above)")
        buffer = io.BytesIO()
        torch.save(dict(trt_module.state_dict()), buffer)
        inputs, outputs = engine_io(trt_module.engine, tensorrt_info().tensor_api)
        return Built(buffer.getvalue(), inputs, outputs)

    def _infer_impl(self, batch: "torch.Tensor") -> "torch.Tensor":
        import torch

        if self._module is None:
            raise BackendError("torch2trt: not loaded")
        n = int(batch.shape[0])
        x = batch.to(self.device, dtype=torch.float32, non_blocking=True).contiguous()
        if self._static_batch and n != self.options.batch:
            padded = torch.zeros((self.options.batch, *x.shape[1:]), dtype=x.dtype, device=x.device)
            padded[:n].copy_(x)
            x = padded
        out = self._module(x)
        return out[:n].float()

    def _close_impl(self) -> None:
        self._module = None
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.empty_cache()
