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
* batch: a static batch, or one optimisation profile 1..batch (opt = batch).
* workspace: ``set_memory_pool_limit(MemoryPoolType.WORKSPACE, ...)`` (8.4+).
* progress: an ``IProgressMonitor`` (TensorRT 10+) reports build phases.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engines.backends.base import LoadProgress
from engines.backends.tensorrt.calibrator import CalibrationImages, make_calibrator
from engines.backends.tensorrt.util import dims, engine_io, make_logger, tensorrt_info, trt, trt_dtype_name
from engines.cache import Built, InvalidEntry, Loaded, TensorSpec
from engines.errors import ConfigError, EngineError
from engines.onnx_export import INPUT_NAME, OUTPUT_NAME

if TYPE_CHECKING:
    from engines.preprocess import PreprocessSpec

log = logging.getLogger("engines.backends.tensorrt")


# -- progress -------------------------------------------------------------------------------
def log_progress(phase: str, done: int, total: int) -> None:
    if done == 0 or done == total or total <= 10 or done % max(1, total // 10) == 0:
        log.info("TensorRT build: %s %d/%d", phase, done, total)


def make_progress_monitor(report: LoadProgress) -> "trt.IProgressMonitor":
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
        images = CalibrationImages(settings.calib_images, settings.preprocess, settings.device)
        calibrator = make_calibrator(images, settings.batch, settings.calib_cache)
        config.int8_calibrator = calibrator
        if profile is not None:
            config.set_calibration_profile(profile)
    monitor = None
    if info.progress_monitor:
        monitor = make_progress_monitor(progress or log_progress)
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
        (TensorSpec(net_in.name, dims(net_in.shape), trt_dtype_name(net_in.dtype)),),
        (TensorSpec(net_out.name, dims(net_out.shape), trt_dtype_name(net_out.dtype)),),
    )


@dataclass
class TRTEngine:
    """A deserialized engine with the runtime that owns it."""

    runtime: "trt.Runtime"
    engine: "trt.ICudaEngine"
    logger: "trt.ILogger"
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]


def deserialize_engine(path: Path) -> Loaded[TRTEngine]:
    """Deserialize a verified plan file and read its I/O tensors; :class:`InvalidEntry` if TensorRT refuses it."""
    data = path.read_bytes()
    info = tensorrt_info()
    logger = make_logger()
    runtime = trt.Runtime(logger)
    try:
        engine = runtime.deserialize_cuda_engine(data)
    except Exception as exc:  # the bindings raise RuntimeError/TypeError on some corruptions
        raise InvalidEntry(f"TensorRT could not deserialize it ({type(exc).__name__}: {exc})") from exc
    if engine is None:
        raise InvalidEntry(
            "TensorRT could not deserialize it (corrupt, or built by another TensorRT version or for another GPU)"
        )
    inputs, outputs = engine_io(engine, info.tensor_api)
    return Loaded(TRTEngine(runtime, engine, logger, inputs, outputs), inputs, outputs)
