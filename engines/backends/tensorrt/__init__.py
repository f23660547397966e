"""TensorRT backend: ONNX -> TensorRT engine (cached) -> inference on the worker's CUDA stream.

The package follows Polygraphy's ``backend/trt/``:

* :mod:`.util` - the one accessor of the ``tensorrt`` / ``tensorrt_rtx`` module,
  :class:`TensorRTInfo`, :class:`DeviceInfo`, the logger, dtype names, dims,
  engine I/O and device memory;
* :mod:`.loader` - build settings, :func:`build_serialized_engine`, the fp16
  conversion, the progress monitor, deserialization;
* :mod:`.calibrator` - the int8 calibration images (shared with torch2trt);
* :mod:`.key` - the engine's expected I/O, shape profile and cache key;
* this module - :func:`get_engine` (the store's get-or-build) and the runner,
  :class:`TensorRTBackend`.

Runtime: ``deserialize_cuda_engine`` + ``create_execution_context``; on
TensorRT >= 8.5 inference binds torch tensors with ``set_input_shape`` /
``set_tensor_address`` and runs ``execute_async_v3`` on the worker's current
torch CUDA stream; older 8.x uses the binding API (``execute_async_v2``).
``description`` says which TensorRT module ran.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from engines.backends.base import Artifact, Backend, BackendOptions, LoadProgress, resolve_device_name
from engines.backends.tensorrt.calibrator import calibration_images, calibration_set_sha256
from engines.backends.tensorrt.key import engine_key, expected_io
from engines.backends.tensorrt.loader import (
    BuildSettings,
    TRTEngine,
    build_serialized_engine,
    convert_onnx_to_fp16,
    deserialize_engine,
    fp16_converter_name,
)
from engines.backends.tensorrt.util import (
    DeviceInfo,
    TensorRTInfo,
    cuda_device_info,
    engine_device_memory_bytes,
    tensorrt_info,
)
from engines.cache import CacheResult, Store
from engines.errors import BackendError, ConfigError, EngineError
from engines.models import ModelSpec, WeightsChoice
from engines.onnx_export import INPUT_NAME, OUTPUT_NAME

if TYPE_CHECKING:
    import tensorrt as trt
    import torch

__all__ = ["DeviceInfo", "TensorRTBackend", "get_engine"]

NEEDS_GPU = "tensorrt backend needs a CUDA GPU; use --backend onnxruntime or torch on the CPU"
NEEDS_CALIBRATION = "tensorrt int8 needs calibration images: pass --calib DIR"


def get_engine(
    spec: ModelSpec,
    options: BackendOptions,
    onnx_path: Path,
    onnx_sha256: str,
    device: DeviceInfo,
    *,
    cache: Store | None = None,
    progress: LoadProgress | None = None,
) -> CacheResult[TRTEngine]:
    """The engine for ``spec`` and ``options``: from the cache when valid, else built and stored."""
    info = tensorrt_info()
    if options.precision == "int8" and not info.implicit_int8:
        raise EngineError(
            f"int8 calibration is not available in {info.module} {info.version} (only explicit Q/DQ "
            "quantization is); use fp16, or TensorRT 8.6 / 10.x"
        )
    if options.precision == "int8" and options.calib_dir is None:  # load() refuses this first
        raise ConfigError(NEEDS_CALIBRATION)
    converter = fp16_converter_name() if options.precision == "fp16" and info.strongly_typed else None
    if options.precision == "fp16" and info.strongly_typed and converter is None:
        convert_onnx_to_fp16(onnx_path)  # raises the EngineError that says what to install
    calib_sha = calibration_set_sha256(options.calib_dir) if options.precision == "int8" else None
    key = engine_key(
        spec,
        options,
        producer="tensorrt",
        source_sha256=onnx_sha256,
        source_format="onnx",
        device=device,
        trt_version=info.version,
        calib_sha256=calib_sha,
        extra={"module": info.module, "strongly_typed": str(info.strongly_typed), "fp16_converter": str(converter)},
    )
    cache = cache if cache is not None else Store(options.cache_dir)
    paths = cache.paths(key)
    settings = BuildSettings(
        precision=options.precision,
        batch=options.batch,
        dynamic_batch=options.dynamic_batch,
        input_shape=spec.preprocess.input_shape,
        workspace_mb=options.workspace_mb,
        calib_images=tuple(calibration_images(options.calib_dir)) if options.calib_dir is not None and calib_sha else (),
        calib_cache=paths.calib,
        preprocess=spec.preprocess,
        device=device.device,
    )
    inputs, outputs = expected_io(spec, options)
    return cache.get_or_build(
        key,
        build=lambda: build_serialized_engine(onnx_path, settings, progress),
        load=deserialize_engine,
        expected_inputs=inputs,
        expected_outputs=outputs,
    )


# -- the backend ----------------------------------------------------------------------------
class TensorRTBackend(Backend):
    """A TensorRT engine built from the model's ONNX export, cached in the store.

    After ``load``, :attr:`artifact` names the cached plan file and carries the
    engine's device memory (TensorRT's own figure, ``device_memory_size_v2`` on
    10.x and later, else ``device_memory_size``: activations and scratch space,
    not the weights; None when TensorRT reports neither).
    """

    name = "tensorrt"

    @classmethod
    def unsupported(cls, options: BackendOptions) -> str | None:
        if resolve_device_name(options.device) == "cpu":
            return NEEDS_GPU
        if options.precision == "int8" and options.calib_dir is None:
            return NEEDS_CALIBRATION
        return None

    def __init__(self, spec: ModelSpec, weights: WeightsChoice, options: BackendOptions | None = None) -> None:
        super().__init__(spec, weights, options)
        self._trt: TensorRTInfo | None = None
        self._engine: TRTEngine | None = None
        self._context: "trt.IExecutionContext | None" = None
        self._input_buffer: "torch.Tensor | None" = None
        self._output_buffer: "torch.Tensor | None" = None

    @property
    def description(self) -> str:
        text = super().description
        if self._trt is not None:
            text += f" ({self._trt.module} {self._trt.version})"
        return text

    def _load_impl(self) -> None:
        import torch

        self._trt = tensorrt_info()
        device = cuda_device_info(self.device)
        torch.cuda.set_device(self.device)
        from engines.onnx_export import cached_onnx

        # TensorRT 8.x's ONNX parser supports opsets up to 17 (JetPack 5/6 ship 8.5/8.6);
        # 10 and later read 18, whose exporter folds EfficientNet's padding into the convs.
        opset = 17 if self._trt.major < 10 else 18
        onnx = cached_onnx(
            self.spec,
            self.weights,
            self.options.batch,
            self.options.dynamic_batch,
            cache_dir=self.options.cache_dir,
            opset=opset,
        )
        result = get_engine(self.spec, self.options, onnx.value, onnx.sha256, device, progress=self._progress)
        self._engine = result.value
        context = result.value.engine.create_execution_context()
        if context is None:
            raise EngineError("TensorRT could not create an execution context (out of GPU memory?)")
        self._context = context
        self._allocate_buffers(torch.float16 if result.value.outputs[0].dtype == "float16" else torch.float32)
        # only once the load has succeeded:
        self.artifact = Artifact.from_cache(result, engine_device_memory_bytes(result.value.engine))

    def _allocate_buffers(self, out_dtype: "torch.dtype") -> None:
        """The full-batch input buffer (for partial batches on a static engine) and the output buffer."""
        import torch

        shape = (self.options.batch, *self.spec.preprocess.input_shape)
        self._input_buffer = torch.empty(shape, dtype=torch.float32, device=self.device)
        self._output_buffer = torch.empty(
            (self.options.batch, self.spec.num_classes), dtype=out_dtype, device=self.device
        )

    def _infer_impl(self, batch: "torch.Tensor") -> "torch.Tensor":
        import torch

        assert self._context is not None and self._engine is not None and self._trt is not None
        assert self._input_buffer is not None and self._output_buffer is not None
        n = int(batch.shape[0])
        x = batch.to(self.device, dtype=torch.float32, non_blocking=True).contiguous()
        if not self.options.dynamic_batch and n != self.options.batch:
            self._input_buffer[:n].copy_(x)  # a static engine takes exactly `batch` rows
            x = self._input_buffer
        rows = int(x.shape[0])
        out = self._output_buffer[:rows]
        stream = torch.cuda.current_stream(self.device).cuda_stream
        if self._trt.tensor_api:
            context = self._context
            if self.options.dynamic_batch and not context.set_input_shape(INPUT_NAME, tuple(x.shape)):
                raise BackendError(f"tensorrt: the engine refused input shape {tuple(x.shape)}")
            context.set_tensor_address(INPUT_NAME, int(x.data_ptr()))
            context.set_tensor_address(OUTPUT_NAME, int(out.data_ptr()))
            ok = context.execute_async_v3(stream)
        else:  # TensorRT < 8.5: binding API, outside the 10.x stubs
            legacy_engine: Any = self._engine.engine
            legacy_context: Any = self._context
            bindings = [0] * int(legacy_engine.num_bindings)
            in_index = legacy_engine.get_binding_index(INPUT_NAME)
            bindings[in_index] = int(x.data_ptr())
            bindings[legacy_engine.get_binding_index(OUTPUT_NAME)] = int(out.data_ptr())
            if self.options.dynamic_batch:
                legacy_context.set_binding_shape(in_index, tuple(x.shape))
            ok = legacy_context.execute_async_v2(bindings, stream)
        if not ok:
            raise BackendError("tensorrt: inference failed (execute returned False; see the TensorRT log)")
        return out[:n].float().clone()

    def _close_impl(self) -> None:
        self._context = None
        self._engine = None
        self._input_buffer = None
        self._output_buffer = None
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.empty_cache()
