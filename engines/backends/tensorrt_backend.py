"""TensorRT backend: ONNX -> TensorRT engine (cached) -> inference on the worker's CUDA stream.

Build (``build_serialized_engine``), by TensorRT version:

* 8.x: ``create_network`` with the EXPLICIT_BATCH flag; 10.x: no flag (networks
  are always explicit batch; the flag is deprecated and ignored).
* fp16 on TensorRT 8.6 / 10.x: ``BuilderFlag.FP16`` on the fp32 ONNX (weak typing:
  TensorRT may pick fp16 kernels; I/O stays fp32).
* fp16 where every network is strongly typed (TensorRT 11+, TensorRT-RTX, or any
  build whose ``BuilderFlag`` has no FP16): precision comes from the tensor types,
  so the fp32 ONNX is converted to an fp16 ONNX first, keeping fp32 inputs and
  outputs (NVIDIA ModelOpt AutoCast ``convert_to_mixed_precision`` if installed,
  else onnxconverter-common's ``convert_float_to_float16``), and the network is
  created with the STRONGLY_TYPED flag.  With neither converter installed the
  build stops with an :class:`EngineError` that says what to install.
* int8: ``BuilderFlag.INT8`` (+FP16) with an ``IInt8EntropyCalibrator2`` that
  reads ``options.calib_dir`` through the model's own preprocessing; the
  calibration table is kept beside the engine.  Implicit calibration does not
  exist in TensorRT 11 / TensorRT-RTX (explicit Q/DQ quantization only): int8 is
  refused there with an :class:`EngineError`.
* batch: a static batch, or one optimisation profile 1..batch (opt = batch).
* workspace: ``set_memory_pool_limit(MemoryPoolType.WORKSPACE, ...)`` (8.4+).
* progress: an ``IProgressMonitor`` (TensorRT 10+) reports build phases.

Runtime: ``deserialize_cuda_engine`` + ``create_execution_context``; on
TensorRT >= 8.5 inference binds torch tensors with ``set_input_shape`` /
``set_tensor_address`` and runs ``execute_async_v3`` on the worker's current
torch CUDA stream; older 8.x uses the binding API (``execute_async_v2``).

``import tensorrt`` is tried first, then ``tensorrt_rtx`` (TensorRT for RTX, the
same Python API); ``description`` says which one ran.  The TensorRT calls are
type-checked against the TensorRT 10.13 stubs in ``typings/`` (``mypy.ini``);
the 8.x binding API, absent from those stubs, goes through an ``Any`` handle.
"""

from __future__ import annotations

import importlib
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from engines.backends.base import Backend, BackendOptions
from engines.cache import (
    Built,
    CacheResult,
    EngineCache,
    EngineKey,
    InvalidEntry,
    Loaded,
    ShapeProfile,
    TensorSpec,
    calibration_images,
    calibration_set_sha256,
    host_platform,
)
from engines.errors import BackendError, BackendUnavailable, ConfigError, EngineError
from engines.models import ModelSpec, WeightsChoice

if TYPE_CHECKING:
    import tensorrt as trt
    import torch

    from engines.preprocess import PreprocessSpec

log = logging.getLogger(__name__)

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
ProgressCallback = Callable[[str, int, int], None]
"""``(phase name, steps done, steps in phase)``, called from TensorRT's builder threads."""


# -- which TensorRT -----------------------------------------------------------------
@dataclass(frozen=True)
class TensorRTInfo:
    """The TensorRT module this process uses and what its API offers."""

    module: str
    """``tensorrt`` or ``tensorrt_rtx``."""
    version: str
    strongly_typed: bool
    """Every network is strongly typed: precision comes from tensor types, not builder flags."""
    explicit_batch_flag: bool
    """``create_network`` needs EXPLICIT_BATCH (TensorRT 8.x)."""
    tensor_api: bool
    """``set_tensor_address`` / ``execute_async_v3`` exist (TensorRT >= 8.5)."""
    implicit_int8: bool
    """``IInt8EntropyCalibrator2`` calibration is available."""
    progress_monitor: bool

    @property
    def major(self) -> int:
        return _version_tuple(self.version)[0]


def _version_tuple(text: str) -> tuple[int, ...]:
    parts = []
    for piece in text.split("."):
        digits = "".join(ch for ch in piece if ch.isdigit())
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts) or (0,)


def tensorrt_module_name() -> str:
    """``tensorrt`` if TensorRT imports, else ``tensorrt_rtx``; :class:`BackendUnavailable` if neither."""
    problems = []
    for name in ("tensorrt", "tensorrt_rtx"):
        try:
            module = importlib.import_module(name)
        except ImportError as exc:
            problems.append(f"{name}: {exc}")
            continue
        if hasattr(module, "Builder"):  # an installed stub-only package imports as an empty namespace
            return name
        problems.append(f"{name}: imports but has no Builder (a stub or incomplete install)")
    raise BackendUnavailable(
        "tensorrt backend: neither TensorRT nor TensorRT for RTX can be imported ("
        + "; ".join(problems)
        + "). Install TensorRT's Python package (JetPack ships it; on x86: pip install tensorrt)"
    )


def tensorrt_info() -> TensorRTInfo:
    if tensorrt_module_name() == "tensorrt":
        import tensorrt as trt
    else:
        import tensorrt_rtx as trt  # type: ignore[no-redef]
    name = tensorrt_module_name()
    version = str(getattr(trt, "__version__", "0"))
    major = _version_tuple(version)[0]
    rtx = name == "tensorrt_rtx"
    strongly = rtx or major >= 11 or not hasattr(trt.BuilderFlag, "FP16")
    return TensorRTInfo(
        module=name,
        version=version,
        strongly_typed=strongly,
        explicit_batch_flag=not rtx and major < 10,
        tensor_api=hasattr(trt.IExecutionContext, "execute_async_v3"),
        implicit_int8=not strongly and hasattr(trt, "IInt8EntropyCalibrator2"),
        progress_monitor=hasattr(trt, "IProgressMonitor"),
    )


# -- the GPU --------------------------------------------------------------------------
@dataclass(frozen=True)
class DeviceInfo:
    """The GPU an engine is built for (part of the cache key)."""

    name: str
    compute_capability: tuple[int, int]
    cuda_version: str | None
    device: str = "cuda:0"

    @property
    def cc(self) -> str:
        return f"{self.compute_capability[0]}.{self.compute_capability[1]}"


def cuda_device_info(device: str) -> DeviceInfo:
    """Name, compute capability and CUDA version of ``device`` (``cuda:N``)."""
    import torch

    if not device.startswith("cuda") or not torch.cuda.is_available():
        raise BackendUnavailable(
            f"tensorrt: a CUDA GPU is needed to build or run TensorRT engines (device {device!r}, "
            f"CUDA available: {torch.cuda.is_available()})"
        )
    props = torch.cuda.get_device_properties(device)
    return DeviceInfo(props.name, (int(props.major), int(props.minor)), torch.version.cuda, device)


# -- shapes and key -----------------------------------------------------------------------
def expected_io(spec: ModelSpec, options: BackendOptions) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    """The I/O tensors an engine for ``spec`` and ``options`` must have (-1: the dynamic batch)."""
    n = -1 if options.dynamic_batch else options.batch
    return (
        (TensorSpec(INPUT_NAME, (n, *spec.preprocess.input_shape), "float32"),),
        (TensorSpec(OUTPUT_NAME, (n, spec.num_classes), "float32"),),
    )


def shape_profile(spec: ModelSpec, options: BackendOptions) -> tuple[ShapeProfile, ...]:
    """One profile 1..batch (opt = batch) for a dynamic batch; none for a static one."""
    if not options.dynamic_batch:
        return ()
    chw = spec.preprocess.input_shape
    return (ShapeProfile(INPUT_NAME, (1, *chw), (options.batch, *chw), (options.batch, *chw)),)


def engine_key(
    spec: ModelSpec,
    options: BackendOptions,
    *,
    producer: str,
    source_sha256: str,
    source_format: str,
    device: DeviceInfo,
    trt_version: str,
    calib_sha256: str | None,
    extra: dict[str, str] | None = None,
) -> EngineKey:
    """The cache key of an engine (shared by the tensorrt and torch2trt backends)."""
    inputs, _outputs = expected_io(spec, options)
    system, arch = host_platform()
    return EngineKey(
        producer=producer,
        model=spec.name,
        precision=options.precision,
        source_sha256=source_sha256,
        source_format=source_format,
        calib_sha256=calib_sha256,
        inputs=inputs,
        profile=shape_profile(spec, options),
        workspace_mb=options.workspace_mb,
        trt_version=trt_version,
        cuda_version=device.cuda_version,
        gpu_name=device.name,
        compute_capability=device.cc,
        os=system,
        arch=arch,
        extra=tuple(sorted((extra or {}).items())),
    )


# -- TensorRT helpers -----------------------------------------------------------------------
def _make_logger() -> "trt.ILogger":
    """A TensorRT logger that writes into Python logging (``engines.backends.tensorrt_backend.trt``)."""
    if tensorrt_module_name() == "tensorrt":
        import tensorrt as trt
    else:
        import tensorrt_rtx as trt  # type: ignore[no-redef]
    trt_log = logging.getLogger(__name__ + ".trt")
    levels = {
        trt.ILogger.Severity.INTERNAL_ERROR: logging.CRITICAL,
        trt.ILogger.Severity.ERROR: logging.ERROR,
        trt.ILogger.Severity.WARNING: logging.WARNING,
        trt.ILogger.Severity.INFO: logging.DEBUG,
        trt.ILogger.Severity.VERBOSE: logging.DEBUG,
    }

    class _Logger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)

        def log(self, severity: "trt.ILogger.Severity", msg: str) -> None:
            trt_log.log(levels.get(severity, logging.INFO), "%s", msg)

    return _Logger()


def trt_dtype_name(dtype: object) -> str:
    if tensorrt_module_name() == "tensorrt":
        import tensorrt as trt
    else:
        import tensorrt_rtx as trt  # type: ignore[no-redef]
    names = {
        trt.DataType.FLOAT: "float32",
        trt.DataType.HALF: "float16",
        trt.DataType.INT8: "int8",
        trt.DataType.INT32: "int32",
        trt.DataType.BOOL: "bool",
    }
    return names.get(dtype, str(dtype))  # type: ignore[call-overload]


def _dims(dims: "trt.Dims") -> tuple[int, ...]:
    """A TensorRT ``Dims`` as a tuple (-1 for a dynamic dimension)."""
    return tuple(int(dims[i]) for i in range(len(dims)))


def _log_progress(phase: str, done: int, total: int) -> None:
    if done == 0 or done == total or total <= 10 or done % max(1, total // 10) == 0:
        log.info("TensorRT build: %s %d/%d", phase, done, total)


def _make_progress_monitor(report: ProgressCallback) -> "trt.IProgressMonitor":
    if tensorrt_module_name() == "tensorrt":
        import tensorrt as trt
    else:
        import tensorrt_rtx as trt  # type: ignore[no-redef]

    class _Monitor(trt.IProgressMonitor):
        """Forwards builder phases to ``report``; never cancels.  Called from builder threads."""

        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)
            self._lock = threading.Lock()
            self._steps: dict[str, int] = {}

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            with self._lock:
                self._steps[phase_name] = num_steps
            report(phase_name, 0, num_steps)

        def step_complete(self, phase_name: str, step: int) -> bool:
            with self._lock:
                total = self._steps.get(phase_name, step + 1)
            report(phase_name, step + 1, total)
            return True

        def phase_finish(self, phase_name: str) -> None:
            with self._lock:
                total = self._steps.pop(phase_name, 0)
            report(phase_name, total, total)

    return _Monitor()


def _make_calibrator(
    images: Sequence[Path], preprocess_spec: "PreprocessSpec", batch: int, device: str, cache_file: Path
) -> "trt.IInt8EntropyCalibrator2":
    """An entropy calibrator feeding ``images`` (through the model's preprocessing) in batches of ``batch``."""
    if tensorrt_module_name() == "tensorrt":
        import tensorrt as trt
    else:
        import tensorrt_rtx as trt  # type: ignore[no-redef]
    import torch

    from engines.cache import atomic_write
    from engines.preprocess import preprocess

    paths = list(images)
    if len(paths) < batch:
        log.warning("int8 calibration: %d image(s) for a batch of %d; repeating images", len(paths), batch)
        paths = (paths * (batch // len(paths) + 1))[:batch]
    batches = [paths[i : i + batch] for i in range(0, len(paths) - batch + 1, batch)]
    if len(paths) % batch:
        log.info("int8 calibration: the last %d image(s) do not fill a batch and are skipped", len(paths) % batch)

    class _Calibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)
            self._next = 0
            self._buffer: torch.Tensor | None = None

        def get_batch_size(self) -> int:
            return batch

        def get_batch(self, names: list[str]) -> list[int]:
            import cv2

            if self._next >= len(batches):
                return []
            chunk = batches[self._next]
            self._next += 1
            frames = []
            for path in chunk:
                frame = cv2.imread(str(path), cv2.IMREAD_COLOR)
                if frame is None:
                    raise EngineError(f"int8 calibration: cannot read image {path}")
                frames.append(frame)
            self._buffer = preprocess(frames, preprocess_spec, device, torch.float32).contiguous()
            log.info("int8 calibration: batch %d/%d", self._next, len(batches))
            return [int(self._buffer.data_ptr())]

        def read_calibration_cache(self) -> bytes | None:  # None: no cache (documented)
            if cache_file.is_file():
                log.info("int8 calibration: reusing the table %s", cache_file.name)
                return cache_file.read_bytes()
            return None

        def write_calibration_cache(self, cache: "bytes | memoryview") -> None:
            atomic_write(cache_file, bytes(cache))

    return _Calibrator()


# -- fp16 for strongly typed networks -------------------------------------------------------
def fp16_converter_name() -> str | None:
    """Which ONNX fp16 converter would be used (None: none installed)."""
    import importlib.util

    for module, label in (("modelopt.onnx.autocast", "modelopt-autocast"), ("onnxconverter_common", "onnxconverter-common")):
        try:
            if importlib.util.find_spec(module) is not None:
                return label
        except (ImportError, ValueError):
            continue
    return None


def convert_onnx_to_fp16(onnx_path: Path) -> bytes:
    """An fp16 copy of the ONNX model with fp32 inputs and outputs, for strongly typed networks."""
    import onnx

    converter = fp16_converter_name()
    if converter == "modelopt-autocast":
        import modelopt.onnx.autocast as autocast

        model = autocast.convert_to_mixed_precision(
            onnx_path=str(onnx_path), low_precision_type="fp16", keep_io_types=True
        )
    elif converter == "onnxconverter-common":
        from onnxconverter_common import float16

        model = float16.convert_float_to_float16(onnx.load(str(onnx_path)), keep_io_types=True)
    else:
        raise EngineError(
            "fp16 with this TensorRT needs an fp16 ONNX model (every network is strongly typed, so "
            "BuilderFlag.FP16 does not exist): install nvidia-modelopt[onnx] or onnxconverter-common, "
            "or use --precision fp32"
        )
    data: bytes = model.SerializeToString()
    return data


# -- build and load ------------------------------------------------------------------------
@dataclass(frozen=True)
class BuildSettings:
    """What ``build_serialized_engine`` needs besides the ONNX model."""

    precision: str
    batch: int
    dynamic_batch: bool
    input_shape: tuple[int, int, int]
    workspace_mb: int | None = None
    calib_images: tuple[Path, ...] = ()
    calib_cache: Path | None = None
    preprocess: "PreprocessSpec | None" = None
    device: str = "cuda:0"


def build_serialized_engine(
    onnx_path: Path, settings: BuildSettings, progress: ProgressCallback | None = None
) -> Built:
    """Parse ``onnx_path`` with TensorRT's ONNX parser and build a serialized engine."""
    if tensorrt_module_name() == "tensorrt":
        import tensorrt as trt
    else:
        import tensorrt_rtx as trt  # type: ignore[no-redef]
    info = tensorrt_info()

    onnx_bytes = onnx_path.read_bytes()
    if settings.precision == "fp16" and info.strongly_typed:
        onnx_bytes = convert_onnx_to_fp16(onnx_path)
        log.info("fp16: converted %s to an fp16 ONNX model for a strongly typed network", onnx_path.name)
    if settings.precision == "int8" and not info.implicit_int8:
        raise EngineError(
            f"int8 calibration is not available in {info.module} {info.version} (only explicit Q/DQ "
            "quantization is); use fp16, or TensorRT 8.6 / 10.x"
        )

    logger = _make_logger()
    builder = trt.Builder(logger)
    flags = 0
    if info.explicit_batch_flag:
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    if info.strongly_typed and hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_bytes, str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise EngineError(
            f"TensorRT's ONNX parser rejected {onnx_path.name}: " + ("; ".join(errors) or "no error reported")
        )
    if network.num_inputs != 1 or network.num_outputs != 1:
        raise EngineError(
            f"{onnx_path.name}: expected one input and one output, got {network.num_inputs} and {network.num_outputs}"
        )
    net_in, net_out = network.get_input(0), network.get_output(0)
    if net_in.name != INPUT_NAME or net_out.name != OUTPUT_NAME:
        raise EngineError(
            f"{onnx_path.name}: expected tensors {INPUT_NAME!r} -> {OUTPUT_NAME!r}, got {net_in.name!r} -> {net_out.name!r}"
        )

    config = builder.create_builder_config()
    if settings.workspace_mb is not None:
        if hasattr(config, "set_memory_pool_limit"):
            config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, settings.workspace_mb << 20)
        else:  # TensorRT < 8.4, outside the 10.x stubs
            legacy_config: Any = config
            legacy_config.max_workspace_size = settings.workspace_mb << 20
    if settings.precision in ("fp16", "int8") and not info.strongly_typed:
        config.set_flag(trt.BuilderFlag.FP16)
    profile = None
    calibrator = None
    if settings.dynamic_batch:
        chw = list(settings.input_shape)
        profile = builder.create_optimization_profile()
        profile.set_shape(
            INPUT_NAME, trt.Dims([1, *chw]), trt.Dims([settings.batch, *chw]), trt.Dims([settings.batch, *chw])
        )
        config.add_optimization_profile(profile)
    if settings.precision == "int8":
        if not settings.calib_images or settings.calib_cache is None or settings.preprocess is None:
            raise ConfigError("int8 needs calibration images (--calib DIR)")
        config.set_flag(trt.BuilderFlag.INT8)
        # Keep Python references to the calibrator and the monitor until the build is over:
        # the config does not own them.
        calibrator = _make_calibrator(
            settings.calib_images, settings.preprocess, settings.batch, settings.device, settings.calib_cache
        )
        config.int8_calibrator = calibrator
        if profile is not None:
            config.set_calibration_profile(profile)
    monitor = None
    if info.progress_monitor:
        monitor = _make_progress_monitor(progress or _log_progress)
        config.progress_monitor = monitor

    start = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    seconds = time.perf_counter() - start
    if serialized is None:
        raise EngineError(
            f"TensorRT failed to build an engine from {onnx_path.name} after {seconds:.1f} s "
            "(its log, above, says why)"
        )
    data = bytes(serialized)
    log.info("TensorRT built %s (%s) in %.1f s: %d bytes", onnx_path.name, settings.precision, seconds, len(data))
    del monitor, calibrator
    return Built(
        data,
        (TensorSpec(net_in.name, _dims(net_in.shape), trt_dtype_name(net_in.dtype)),),
        (TensorSpec(net_out.name, _dims(net_out.shape), trt_dtype_name(net_out.dtype)),),
    )


@dataclass
class TRTEngine:
    """A deserialized engine with the runtime that owns it."""

    runtime: "trt.Runtime"
    engine: "trt.ICudaEngine"
    logger: "trt.ILogger"
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]


def deserialize_engine(data: bytes) -> Loaded[TRTEngine]:
    """Deserialize an engine and read its I/O tensors; :class:`InvalidEntry` if TensorRT refuses it."""
    if tensorrt_module_name() == "tensorrt":
        import tensorrt as trt
    else:
        import tensorrt_rtx as trt  # type: ignore[no-redef]
    info = tensorrt_info()
    logger = _make_logger()
    runtime = trt.Runtime(logger)
    try:
        engine = runtime.deserialize_cuda_engine(data)
    except Exception as exc:  # the bindings raise RuntimeError/TypeError on some corruptions
        raise InvalidEntry(f"TensorRT could not deserialize it ({type(exc).__name__}: {exc})") from exc
    if engine is None:
        raise InvalidEntry(
            "TensorRT could not deserialize it (corrupt, or built by another TensorRT version or for another GPU)"
        )
    inputs: list[TensorSpec] = []
    outputs: list[TensorSpec] = []
    if info.tensor_api:
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            spec = TensorSpec(name, _dims(engine.get_tensor_shape(name)), trt_dtype_name(engine.get_tensor_dtype(name)))
            (inputs if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT else outputs).append(spec)
    else:  # TensorRT < 8.5: binding API, outside the 10.x stubs
        legacy: Any = engine
        for i in range(legacy.num_bindings):
            spec = TensorSpec(
                legacy.get_binding_name(i), tuple(legacy.get_binding_shape(i)), trt_dtype_name(legacy.get_binding_dtype(i))
            )
            (inputs if legacy.binding_is_input(i) else outputs).append(spec)
    return Loaded(TRTEngine(runtime, engine, logger, tuple(inputs), tuple(outputs)), tuple(inputs), tuple(outputs))


def engine_device_memory_bytes(engine: "trt.ICudaEngine") -> int | None:
    """Device memory an execution context of ``engine`` needs, as TensorRT reports it, in bytes.

    ``device_memory_size_v2`` where the engine has it (TensorRT 10+; it also counts
    weight-streaming scratch memory), else ``device_memory_size`` (8.x); None when
    neither can be read.
    """
    for attr in ("device_memory_size_v2", "device_memory_size"):
        try:
            value = getattr(engine, attr, None)
        except (AttributeError, RuntimeError, TypeError):  # a binding may raise rather than lack it
            value = None
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def get_engine(
    spec: ModelSpec,
    options: BackendOptions,
    onnx_path: Path,
    onnx_sha256: str,
    device: DeviceInfo,
    *,
    cache: EngineCache | None = None,
    progress: ProgressCallback | None = None,
) -> CacheResult[TRTEngine]:
    """The engine for ``spec`` and ``options``: from the cache when valid, else built and stored."""
    info = tensorrt_info()
    if options.precision == "int8":
        if not info.implicit_int8:
            raise EngineError(
                f"int8 calibration is not available in {info.module} {info.version} (only explicit Q/DQ "
                "quantization is); use fp16, or TensorRT 8.6 / 10.x"
            )
        if options.calib_dir is None:
            raise ConfigError("tensorrt int8 needs calibration images: pass --calib DIR")
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
    cache = cache if cache is not None else EngineCache(options.cache_dir)
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
    """A TensorRT engine built from the model's ONNX export, cached on disk.

    After ``load``, :attr:`engine_path` names the cached plan file and
    :attr:`device_memory_bytes` the engine's device memory; both are None before.
    """

    name = "tensorrt"

    progress: ProgressCallback | None = None
    """Set before ``load`` to receive build progress (default: logged at INFO)."""

    def __init__(self, spec: ModelSpec, weights: WeightsChoice, options: BackendOptions | None = None) -> None:
        super().__init__(spec, weights, options)
        self.cache_result: CacheResult[TRTEngine] | None = None
        self._trt: TensorRTInfo | None = None
        self._engine: TRTEngine | None = None
        self._context: "trt.IExecutionContext | None" = None
        self._input_buffer: "torch.Tensor | None" = None
        self._output_buffer: "torch.Tensor | None" = None
        self._engine_path: Path | None = None
        self._device_memory_bytes: int | None = None

    @property
    def engine_path(self) -> Path | None:
        """The cached plan file the engine was loaded from (or built into); None before ``load``.

        Kept after ``close``, like ``cache_result``: it describes the last load.
        """
        return self._engine_path

    @property
    def device_memory_bytes(self) -> int | None:
        """Device memory one execution context of the loaded engine needs, in bytes; None before ``load``.

        TensorRT's own figure (``device_memory_size_v2`` on 10.x and later, else
        ``device_memory_size``): activations and scratch space, not the weights.
        None as well when TensorRT reports neither.  Kept after ``close``.
        """
        return self._device_memory_bytes

    @property
    def description(self) -> str:
        text = super().description
        if self._trt is not None:
            text += f" ({self._trt.module} {self._trt.version})"
        return text

    def _load_impl(self) -> None:
        import torch

        if not self.device.startswith("cuda"):
            raise BackendUnavailable("tensorrt backend needs a CUDA GPU; use --backend onnxruntime or torch on the CPU")
        self._trt = tensorrt_info()
        device = cuda_device_info(self.device)
        torch.cuda.set_device(self.device)
        from engines.onnx_export import cached_onnx

        # TensorRT 8.x's ONNX parser supports opsets up to 17 (JetPack 5/6 ship 8.5/8.6);
        # 10 and later read 18, whose exporter folds EfficientNet's padding into the convs.
        opset = 17 if _version_tuple(self._trt.version)[0] < 10 else 18
        onnx_path, onnx_sha = cached_onnx(
            self.spec,
            self.weights,
            self.options.batch,
            self.options.dynamic_batch,
            cache_dir=self.options.cache_dir,
            opset=opset,
        )
        result = get_engine(self.spec, self.options, onnx_path, onnx_sha, device, progress=self.progress)
        self.cache_result = result
        self._engine = result.value
        context = result.value.engine.create_execution_context()
        if context is None:
            raise EngineError("TensorRT could not create an execution context (out of GPU memory?)")
        self._context = context
        self._allocate_buffers(torch.float16 if result.value.outputs[0].dtype == "float16" else torch.float32)
        self._engine_path = result.paths.payload  # only once the load has succeeded
        self._device_memory_bytes = engine_device_memory_bytes(result.value.engine)

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
