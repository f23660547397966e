"""Building and deserializing TensorRT engines (the loader half of Polygraphy's ``backend/trt``).

Build (:func:`build_serialized_engine`), by TensorRT version:

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
* int8: ``BuilderFlag.INT8`` (+FP16) with an ``IInt8EntropyCalibrator2``
  (:mod:`.calibrator`); the calibration table is kept beside the engine.
  Implicit calibration does not exist in TensorRT 11 / TensorRT-RTX (explicit
  Q/DQ quantization only): int8 is refused there with an :class:`EngineError`.
* batch: a static batch, or (dynamic) two optimisation profiles: 1..1 (opt 1) for
  live single frames and 1..batch (opt = batch) for file batches; the runner picks
  the profile by the rows it is given.  int8 calibrates on its own profile
  min = opt = max = (batch, 3, H, W), the shape every calibration batch has.
* workspace: ``set_memory_pool_limit(MemoryPoolType.WORKSPACE, ...)`` (8.4+).
* timing cache: read from and written back to the store (``timing/``, one file per
  TensorRT module + version + GPU), so a second build re-times nothing it has timed.
* TensorRT-RTX: ``set_compute_capability(ComputeCapability.CURRENT, 0)``: the plan is
  compiled for this GPU only (by default it targets Ampere+ and compiles for all).
* progress: an ``IProgressMonitor`` (TensorRT 10+) reports build phases.
* callbacks (calibrator, monitor, logger) never let an exception die in the
  bindings' trampolines: it is kept (:class:`CallbackErrors`), the build is
  cancelled, and it is re-raised once ``build_serialized_network`` returns.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engines.backends.base import LoadProgress
from engines.backends.tensorrt.calibrator import CalibrationImages, CalibrationTable, make_calibrator
from engines.backends.tensorrt.util import (
    CallbackErrors,
    dims,
    engine_io,
    logger_state,
    make_logger,
    raise_pending_interrupt,
    tensorrt_info,
    trt,
    trt_dtype_name,
)
from engines.cache import Built, InvalidEntry, Loaded, ShapeProfile, TensorSpec, atomic_write
from engines.errors import ConfigError, EngineError
from engines.onnx_export import INPUT_NAME, OUTPUT_NAME

if TYPE_CHECKING:
    from engines.preprocess import PreprocessSpec

log = logging.getLogger("engines.backends.tensorrt")


# -- progress -------------------------------------------------------------------------------
def log_progress(phase: str, done: int, total: int) -> None:
    if done == 0 or done == total or total <= 10 or done % max(1, total // 10) == 0:
        log.info("TensorRT build: %s %d/%d", phase, done, total)


def make_progress_monitor(report: LoadProgress, errors: CallbackErrors) -> "trt.IProgressMonitor":
    class _Monitor(trt.IProgressMonitor):
        """Forwards builder phases to ``report``; cancels the build (``step_complete`` -> False) once a
        callback failed or Ctrl-C arrived.  Called from builder threads."""

        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)
            self._lock = threading.Lock()
            self._steps: dict[str, int] = {}

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            def start() -> None:
                with self._lock:
                    self._steps[phase_name] = num_steps
                report(phase_name, 0, num_steps)

            errors.call(start, None)

        def step_complete(self, phase_name: str, step: int) -> bool:
            def step_done() -> bool:
                with self._lock:
                    total = self._steps.get(phase_name, step + 1)
                report(phase_name, step + 1, total)
                return True

            keep_going = errors.call(step_done, False)
            return keep_going and not errors.failed and not logger_state.pending.failed

        def phase_finish(self, phase_name: str) -> None:
            def finish() -> None:
                with self._lock:
                    total = self._steps.pop(phase_name, 0)
                report(phase_name, total, total)

            errors.call(finish, None)

    return _Monitor()


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
    profiles: tuple[ShapeProfile, ...] = ()
    """The optimisation profiles of a dynamic batch (:func:`engines.backends.tensorrt.key.shape_profile`)."""
    timing_cache: Path | None = None
    """Where the builder's timing cache is read from and written back to (None: none kept)."""


def build_serialized_engine(
    onnx_path: Path, settings: BuildSettings, progress: LoadProgress | None = None
) -> Built:
    """Parse ``onnx_path`` with TensorRT's ONNX parser and build a serialized engine."""
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

    logger = make_logger()
    mark = logger_state.mark()
    builder = trt.Builder(logger)
    flags = 0
    if info.explicit_batch_flag:
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    if info.strongly_typed and hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_bytes, str(onnx_path)):
        raise_pending_interrupt()
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
    target_current_gpu(config)
    timing = load_timing_cache(config, settings.timing_cache)
    if settings.dynamic_batch:
        if not settings.profiles:
            raise EngineError("a dynamic batch needs an optimisation profile")
        for shape in settings.profiles:
            profile = builder.create_optimization_profile()
            profile.set_shape(shape.input, trt.Dims(list(shape.min)), trt.Dims(list(shape.opt)), trt.Dims(list(shape.max)))
            config.add_optimization_profile(profile)
    errors = CallbackErrors()
    calibrator = None
    table: CalibrationTable | None = None
    if settings.precision == "int8":
        if not settings.calib_images or settings.calib_cache is None or settings.preprocess is None:
            raise ConfigError("int8 needs calibration images (--calib DIR)")
        config.set_flag(trt.BuilderFlag.INT8)
        batch_shape = (settings.batch, *settings.input_shape)
        # Keep Python references to the calibrator and the monitor until the build is over:
        # the config does not own them.
        images = CalibrationImages(settings.calib_images, settings.preprocess, settings.device)
        table = CalibrationTable(settings.calib_cache)
        calibrator = make_calibrator(images, batch_shape, table, errors)
        config.int8_calibrator = calibrator
        if settings.dynamic_batch:
            calib_profile = builder.create_optimization_profile()
            calib_dims = trt.Dims(list(batch_shape))
            calib_profile.set_shape(INPUT_NAME, calib_dims, calib_dims, calib_dims)
            config.set_calibration_profile(calib_profile)
    monitor = None
    if info.progress_monitor:
        monitor = make_progress_monitor(progress or log_progress, errors)
        config.progress_monitor = monitor

    start = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    seconds = time.perf_counter() - start
    del monitor, calibrator
    raise_pending_interrupt()  # Ctrl-C caught by the logger
    errors.reraise()  # an unreadable calibration image, Ctrl-C in a callback
    if serialized is None:
        reasons = logger_state.errors_since(mark)
        raise EngineError(
            f"TensorRT failed to build an engine from {onnx_path.name} after {seconds:.1f} s: "
            + (reasons[-1] if reasons else "no error logged (its log, above, may say why)")
        )
    data = bytes(serialized)
    log.info("TensorRT built %s (%s) in %.1f s: %d bytes", onnx_path.name, settings.precision, seconds, len(data))
    save_timing_cache(config, timing, settings.timing_cache)
    if table is not None:
        table.commit()
    return Built(
        data,
        (TensorSpec(net_in.name, dims(net_in.shape), trt_dtype_name(net_in.dtype)),),
        (TensorSpec(net_out.name, dims(net_out.shape), trt_dtype_name(net_out.dtype)),),
    )


def target_current_gpu(config: "trt.IBuilderConfig") -> bool:
    """TensorRT-RTX: compile for this machine's GPU only (``ComputeCapability.CURRENT``).  False where
    the builder has no compute-capability setting (TensorRT: a plan is always for the building GPU)."""
    capability = getattr(trt, "ComputeCapability", None)
    rtx_config: Any = config
    if capability is None or not hasattr(rtx_config, "set_compute_capability"):
        return False
    rtx_config.num_compute_capabilities = 1
    if not rtx_config.set_compute_capability(capability.CURRENT, 0):
        raise EngineError("TensorRT-RTX refused to target this GPU's compute capability (ComputeCapability.CURRENT)")
    return True


def load_timing_cache(config: "trt.IBuilderConfig", path: Path | None) -> Any:
    """The builder's timing cache, seeded from ``path`` when it holds one; None where the API is absent."""
    if path is None or not hasattr(config, "create_timing_cache"):
        return None
    data = b""
    if path.is_file():
        data = path.read_bytes()
        log.info("TensorRT timing cache: %s (%d bytes)", path.name, len(data))
    cache = config.create_timing_cache(data)
    if cache is None and data:  # a stale or foreign file: start empty
        cache = config.create_timing_cache(b"")
    if cache is None or not config.set_timing_cache(cache, False):
        log.warning("TensorRT timing cache: not used (the builder refused it)")
        return None
    return cache


def save_timing_cache(config: "trt.IBuilderConfig", cache: Any, path: Path | None) -> None:
    if cache is None or path is None:
        return
    timing: Any = config.get_timing_cache()
    if timing is None:
        return
    data = bytes(timing.serialize())
    if data:
        from engines.paths import ensure_private_dir

        ensure_private_dir(path.parent)
        atomic_write(path, data)


@dataclass
class TRTEngine:
    """A deserialized engine with the runtime that owns it."""

    runtime: "trt.Runtime"
    engine: "trt.ICudaEngine"
    logger: "trt.ILogger"
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]


def deserialize_engine(path: Path) -> Loaded[TRTEngine]:
    """Deserialize a verified plan file and read its I/O tensors; :class:`InvalidEntry` if TensorRT refuses
    it, with the runtime's own reason (its logged error) when it gave one."""
    data = path.read_bytes()
    info = tensorrt_info()
    logger = make_logger()
    runtime = trt.Runtime(logger)
    mark = logger_state.mark()
    try:
        engine = runtime.deserialize_cuda_engine(data)
    except Exception as exc:  # the bindings raise RuntimeError/TypeError on some corruptions
        raise InvalidEntry(f"{info.module} {info.version} could not deserialize it ({type(exc).__name__}: {exc})") from exc
    finally:
        raise_pending_interrupt()
    if engine is None:
        reasons = logger_state.errors_since(mark)
        raise InvalidEntry(
            f"{info.module} {info.version} could not deserialize it: "
            + (" | ".join(reasons[-3:]) if reasons else "no reason logged")
        )
    inputs, outputs = engine_io(engine, info.tensor_api)
    return Loaded(TRTEngine(runtime, engine, logger, inputs, outputs), inputs, outputs)
