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
``set_tensor_address`` and runs ``execute_async_v3``; older 8.x uses the
binding API (``execute_async_v2``).  Each backend has its own CUDA stream
(``torch.cuda.Stream``): :meth:`TensorRTBackend.preprocess` runs on it, so the
batch is ready in stream order, and an input made on another stream is waited
for (``wait_stream``) before TensorRT reads it; the caller's stream waits for
the logits.  A dynamic batch has two profiles (opt 1 and opt = batch) and the
runner switches by the rows it gets.  TensorRT-RTX contexts get a runtime cache
kept beside the plan in the store (``.rtcache``), so starts after the first
skip the JIT compilation.  ``description`` says which TensorRT module ran.
"""

from __future__ import annotations

from pathlib import Path
import logging
from typing import TYPE_CHECKING, Any

from engines.backends.base import Artifact, Backend, BackendOptions, LoadProgress, resolve_device_name
from engines.backends.tensorrt.calibrator import calibration_images, calibration_set_sha256
from engines.backends.tensorrt.key import engine_key, expected_io, shape_profile
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
from engines.cache import CacheResult, Store, atomic_write
from engines.cache.key import safe_token
from engines.errors import BackendError, ConfigError, EngineError
from engines.models import ModelSpec, WeightsChoice
from engines.onnx_export import INPUT_NAME, OUTPUT_NAME

if TYPE_CHECKING:
    import tensorrt as trt
    import torch

__all__ = ["DeviceInfo", "TensorRTBackend", "get_engine"]

log = logging.getLogger("engines.backends.tensorrt")

NEEDS_GPU = "tensorrt backend needs a CUDA GPU; use --backend onnxruntime or torch on the CPU"
NEEDS_CALIBRATION = "tensorrt int8 needs calibration images: pass --calib DIR"
TIMING_FOLDER = "timing"
"""Sub-folder of the store with the builders' timing caches."""
RUNTIME_CACHE_SUFFIX = ".rtcache"


def timing_cache_name(info: TensorRTInfo, device: DeviceInfo) -> str:
    """One timing cache per TensorRT module + version + GPU (timings are only valid there)."""
    gpu = f"{safe_token(device.name)}-sm{device.cc.replace('.', '')}-{device.sm_count or 0}sm"
    return f"{info.module}-{safe_token(info.version)}-{gpu}.timing"


def onnx_opset(info: TensorRTInfo) -> int:
    """The opset the ONNX export for ``info`` uses: TensorRT 8.x's parser reads up to 17; TensorRT 10+,
    11 and TensorRT-RTX (whatever its own version number, "1.x") read 18, whose exporter folds
    EfficientNet's padding into the convolutions."""
    return 18 if info.module == "tensorrt_rtx" or info.major >= 10 else 17


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
    timing = cache.folder / TIMING_FOLDER / timing_cache_name(info, device)
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
        profiles=shape_profile(spec, options),
        timing_cache=timing,
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
        self._stream: "torch.cuda.Stream | None" = None
        self._profiles = 0
        self._profile: int | None = None
        self._runtime_cache: Any = None
        self._runtime_cache_path: Path | None = None

    @property
    def description(self) -> str:
        text = super().description
        if self._trt is not None:
            text += f" ({self._trt.module} {self._trt.version})"
        return text

    @property
    def stream(self) -> "torch.cuda.Stream | None":
        """This backend's own CUDA stream (None before load, or on a CPU test double)."""
        return self._stream

    def _load_impl(self) -> None:
        import torch

        self._trt = tensorrt_info()
        device = cuda_device_info(self.device)
        torch.cuda.set_device(self.device)
        from engines.onnx_export import cached_onnx

        onnx = cached_onnx(
            self.spec,
            self.weights,
            self.options.batch,
            self.options.dynamic_batch,
            cache_dir=self.options.cache_dir,
            opset=onnx_opset(self._trt),
        )
        result = get_engine(self.spec, self.options, onnx.value, onnx.sha256, device, progress=self._progress)
        rtcache = result.paths.payload.with_suffix(RUNTIME_CACHE_SUFFIX) if self._trt.module == "tensorrt_rtx" else None
        self._bind(result.value, self._trt, rtcache)
        # only once the load has succeeded:
        self.artifact = Artifact.from_cache(result, engine_device_memory_bytes(result.value.engine))

    def _bind(self, engine: TRTEngine, info: TensorRTInfo, runtime_cache: Path | None = None) -> None:
        """Context, stream and buffers for a deserialized ``engine`` (the part of load after the store)."""
        import torch

        self._trt = info
        self._engine = engine
        self._runtime_cache_path = runtime_cache
        context = self._create_context(engine)
        if context is None:
            raise EngineError("TensorRT could not create an execution context (out of GPU memory?)")
        self._context = context
        cuda = self.device.startswith("cuda") and torch.cuda.is_available()
        self._stream = torch.cuda.Stream(device=self.device) if cuda else None
        profiles = int(getattr(engine.engine, "num_optimization_profiles", 1) or 1)
        self._profiles = profiles if self.options.dynamic_batch else 1
        self._profile = 0
        self._allocate_buffers(torch.float16 if engine.outputs[0].dtype == "float16" else torch.float32)

    def _create_context(self, engine: TRTEngine) -> "trt.IExecutionContext | None":
        """An execution context; on TensorRT-RTX with a runtime cache read from (and later saved to) the store."""
        raw: Any = engine.engine
        path = self._runtime_cache_path
        if path is None or not hasattr(raw, "create_runtime_config"):
            return engine.engine.create_execution_context()
        try:
            config = raw.create_runtime_config()
            cache = config.create_runtime_cache() if hasattr(config, "create_runtime_cache") else None
            if cache is not None:
                if path.is_file():
                    try:
                        cache.deserialize(path.read_bytes())
                    except Exception as exc:  # noqa: BLE001 - a stale cache only costs the JIT again
                        log.warning("TensorRT-RTX runtime cache %s not used: %s", path.name, exc)
                config.set_runtime_cache(cache)
            context: Any = raw.create_execution_context(config)
        except (AttributeError, TypeError) as exc:  # a binding without this runtime-config API
            log.warning("TensorRT-RTX runtime cache not available (%s); every start pays the JIT", exc)
            self._runtime_cache = None
            return engine.engine.create_execution_context()
        self._runtime_cache = cache
        return context

    def _save_runtime_cache(self) -> None:
        if self._runtime_cache is None or self._runtime_cache_path is None:
            return
        try:
            data = bytes(self._runtime_cache.serialize())
        except Exception as exc:  # noqa: BLE001 - the cache is an optimisation
            log.warning("TensorRT-RTX runtime cache not saved: %s", exc)
            return
        if data:
            atomic_write(self._runtime_cache_path, data)

    def _warmup(self) -> None:
        super()._warmup()
        self._save_runtime_cache()  # the JIT ran on the warm-up batches

    def preprocess(self, frames: Any) -> "torch.Tensor":
        """As :meth:`Backend.preprocess`, enqueued on this backend's stream (the stream TensorRT runs on)."""
        if self._stream is None:
            return super().preprocess(frames)
        import torch

        with torch.cuda.stream(self._stream):
            return super().preprocess(frames)

    def _allocate_buffers(self, out_dtype: "torch.dtype") -> None:
        """The full-batch input buffer (for partial batches on a static engine) and the output buffer."""
        import torch

        shape = (self.options.batch, *self.spec.preprocess.input_shape)
        self._input_buffer = torch.empty(shape, dtype=torch.float32, device=self.device)
        self._output_buffer = torch.empty(
            (self.options.batch, self.spec.num_classes), dtype=out_dtype, device=self.device
        )

    def _infer_impl(self, batch: "torch.Tensor") -> "torch.Tensor":
        import contextlib

        import torch

        assert self._context is not None and self._engine is not None and self._trt is not None
        assert self._input_buffer is not None and self._output_buffer is not None
        stream = self._stream
        caller = torch.cuda.current_stream(self.device) if stream is not None else None
        if stream is not None and caller is not None:
            stream.wait_stream(caller)  # an input made on the caller's stream is ready before TensorRT reads it
        scope = torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext()
        with scope:
            n = int(batch.shape[0])
            x = batch.to(self.device, dtype=torch.float32, non_blocking=True).contiguous()
            if not self.options.dynamic_batch and n != self.options.batch:
                self._input_buffer[:n].copy_(x)  # a static engine takes exactly `batch` rows
                x = self._input_buffer
            rows = int(x.shape[0])
            out = self._output_buffer[:rows]
            handle = int(stream.cuda_stream) if stream is not None else 0
            profile = (0 if rows == 1 else 1) if self._profiles > 1 else 0
            if self._trt.tensor_api:
                context = self._context
                if profile != self._profile:
                    if not context.set_optimization_profile_async(profile, handle):
                        raise BackendError(f"tensorrt: the engine refused optimisation profile {profile}")
                    self._profile = profile
                if self.options.dynamic_batch and not context.set_input_shape(INPUT_NAME, tuple(x.shape)):
                    raise BackendError(f"tensorrt: the engine refused input shape {tuple(x.shape)}")
                context.set_tensor_address(INPUT_NAME, int(x.data_ptr()))
                context.set_tensor_address(OUTPUT_NAME, int(out.data_ptr()))
                ok = context.execute_async_v3(handle)
            else:  # TensorRT < 8.5: binding API, outside the 10.x stubs
                legacy_engine: Any = self._engine.engine
                legacy_context: Any = self._context
                per_profile = int(legacy_engine.num_bindings) // max(1, self._profiles if self.options.dynamic_batch else 1)
                if profile != self._profile:
                    legacy_context.set_optimization_profile_async(profile, handle)
                    self._profile = profile
                bindings = [0] * int(legacy_engine.num_bindings)
                in_index = legacy_engine.get_binding_index(INPUT_NAME) + profile * per_profile
                out_index = legacy_engine.get_binding_index(OUTPUT_NAME) + profile * per_profile
                bindings[in_index] = int(x.data_ptr())
                bindings[out_index] = int(out.data_ptr())
                if self.options.dynamic_batch:
                    legacy_context.set_binding_shape(in_index, tuple(x.shape))
                ok = legacy_context.execute_async_v2(bindings, handle)
            if not ok:
                raise BackendError("tensorrt: inference failed (execute returned False; see the TensorRT log)")
            result = out[:n].float().clone()
        if stream is not None and caller is not None:
            caller.wait_stream(stream)  # the caller reads the logits on its own stream
            result.record_stream(caller)
        return result

    def _close_impl(self) -> None:
        if self._stream is not None:
            self._stream.synchronize()  # TensorRT may still read the buffers or the context
        self._save_runtime_cache()
        self._runtime_cache = None
        self._context = None  # the context before the engine it came from
        self._engine = None
        self._input_buffer = None
        self._output_buffer = None
        self._stream = None
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.empty_cache()
