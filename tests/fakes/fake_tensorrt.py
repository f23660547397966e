"""FakeTensorRT: a TEST DOUBLE of the ``tensorrt`` module.  It is not TensorRT.

It implements just enough of TensorRT's Python API for the engine cache and
the build/load orchestration in ``engines/backends/tensorrt/`` to run
on a machine without a GPU:

* ``OnnxParser`` really parses the ONNX bytes (with the ``onnx`` package) to
  learn the network's input and output names, shapes and types;
* ``Builder.build_serialized_network`` "builds" a deterministic blob: a magic
  header, a JSON description (ONNX hash, builder flags, network flags,
  workspace, profiles, I/O tensors) and a SHA-256 of that JSON.  It counts its
  builds (``FakeBuilder.builds`` in-process; one line per build appended to the
  file named by ``$FAKE_TRT_BUILD_LOG`` across processes), sleeps
  ``$FAKE_TRT_BUILD_DELAY`` seconds if set, drives an ``IProgressMonitor`` and
  an int8 calibrator the way TensorRT does;
* ``Runtime.deserialize_cuda_engine`` returns None for bytes that are not such
  a blob (bad magic, bad JSON, checksum mismatch), like TensorRT does for a
  corrupt plan;
* the engine reports its I/O tensors (names, shapes with -1 for dynamic
  dimensions, dtypes) and a made-up device memory size
  (``device_memory_size``, and ``device_memory_size_v2`` only when
  ``__version__`` is 10 or later, as in TensorRT).

* every Python callback (logger ``log``, calibrator ``get_batch`` /
  ``read_calibration_cache`` / ``write_calibration_cache``, progress monitor
  ``phase_start`` / ``step_complete`` / ``phase_finish``) is called through
  :func:`_trampoline`, which swallows whatever it raises - KeyboardInterrupt
  included - and returns the C++ default, as TensorRT's pybind trampolines do;
  ``step_complete`` returning False cancels the build (None, an ERROR logged);
* calibration: ``get_batch_size()`` must equal the batch of the calibration
  profile (min = opt = max) or of the static input, and the buffer returned is
  read whole (its mean goes into the header) through the array interface;
* ``execute_async_v3`` computes :func:`fake_logits` of the input found at the
  address given to ``set_tensor_address`` - a fixed linear map of the per-channel
  means, with torch on the input's device (CPU pointers with ``EXECUTE_DEVICE =
  "cpu"`` or no CUDA; CUDA pointers otherwise, on the stream handle it is given)
  - and writes it to the output address; ``set_input_shape`` refuses shapes
  outside the active optimisation profile (``set_optimization_profile_async``);
* a timing cache (``create_timing_cache`` / ``set_timing_cache`` /
  ``get_timing_cache().serialize()``) remembers how many builds used it;
* per-version API surfaces (:func:`variant`): ``"8.6"`` (EXPLICIT_BATCH required,
  no IProgressMonitor, no ``device_memory_size_v2``), ``"10.3"``, ``"11"``
  (strongly typed only: no BuilderFlag.FP16/INT8, no implicit calibrator) and
  ``"rtx"`` (TensorRT-RTX 1.x: as 11, plus ``ComputeCapability`` /
  ``set_compute_capability``, a runtime cache, and a runtime that refuses plans
  for another compute capability with "Supported compute capabilities: ...").
  The module itself is 10.13 and still follows a monkeypatched ``__version__``.

Use it by putting this module (or a variant) in ``sys.modules["tensorrt"]``
(``monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt)``).
"""

from __future__ import annotations

import enum
import hashlib
import json
import os
import time
import types
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

__version__ = "10.13.0.35"
IS_FAKE_TENSORRT = True

MAGIC = b"FAKETRT1"

FAKE_DEVICE_MEMORY_SIZE = 3 << 20
"""What every fake engine reports as ``device_memory_size``."""
FAKE_DEVICE_MEMORY_SIZE_V2 = FAKE_DEVICE_MEMORY_SIZE + 4096
"""What it reports as ``device_memory_size_v2`` (TensorRT 10+; differs so that tests see which was read)."""


EXECUTE_DEVICE: str | None = None
"""Where ``execute_async_v3`` reads and writes: ``"cpu"``, ``"cuda"``, or None (CUDA when available)."""

RTX_SUPPORTED = ("8.0", "8.6", "8.9", "12.0", "12.1")
"""The compute capabilities the fake TensorRT-RTX runtime runs (as the 1.7 wheels report)."""
FAKE_CURRENT_CC = "8.6"
"""What ``ComputeCapability.CURRENT`` resolves to when the fake RTX builder builds (tests change it)."""


@dataclass(frozen=True)
class Surface:
    """What one TensorRT version's Python API offers."""

    version: str
    explicit_batch_required: bool = False
    progress_monitor: bool = True
    memory_v2: bool = True
    strongly_typed_only: bool = False
    rtx: bool = False


def _surface_from_version() -> Surface:
    major = int(__version__.split(".")[0])
    return Surface(
        version=__version__,
        explicit_batch_required=major < 10,
        progress_monitor=major >= 10,
        memory_v2=major >= 10,
        strongly_typed_only=major >= 11,
    )


def _trampoline(logger: Any, fn: Callable[..., Any], default: Any, *args: Any) -> Any:
    """Call a Python override as TensorRT's pybind trampoline does: whatever it raises is swallowed
    (reported on the logger as an ERROR when it can be) and the C++ default returned."""
    try:
        return fn(*args)
    except BaseException as exc:  # noqa: BLE001 - the trampoline swallows everything
        FakeBuildCounter.swallowed.append(exc)
        if logger is not None and fn is not getattr(logger, "log", None):
            try:
                logger.log(_Severity.ERROR, f"Exception caught in Python callback: {type(exc).__name__}: {exc}")
            except BaseException:  # noqa: BLE001
                pass
        return default


def _log(logger: Any, severity: "_Severity", msg: str) -> None:
    if logger is not None:
        _trampoline(None, logger.log, None, severity, msg)


def fake_logits(x: Any, num_classes: int) -> Any:
    """What the fake engine computes: logits[i, k] = sum_c W[k, c] * mean(x[i, c]), W fixed."""
    import torch

    c = int(x.shape[1])
    k = torch.arange(num_classes, device=x.device).unsqueeze(1)
    ch = torch.arange(c, device=x.device).unsqueeze(0)
    weights = (((k * 7 + ch * 3) % 11) - 5).to(torch.float32) / 5.0
    means = x.float().reshape(x.shape[0], c, -1).mean(dim=2)
    return means @ weights.T


class _Interface:
    def __init__(self, ptr: int, shape: tuple[int, ...], typestr: str, cuda: bool) -> None:
        iface = {"shape": tuple(shape), "typestr": typestr, "data": (int(ptr), False), "version": 3 if not cuda else 2}
        if cuda:
            iface["strides"] = None
            self.__cuda_array_interface__ = iface
        else:
            self.__array_interface__ = iface


def tensor_at(ptr: int, shape: tuple[int, ...], dtype: str, cuda: bool) -> Any:
    """A torch view of ``shape`` elements of ``dtype`` (float32/float16) at address ``ptr``."""
    import numpy as np
    import torch

    typestr = "<f4" if dtype in ("FLOAT", "float32") else "<f2"
    if cuda:
        return torch.as_tensor(_Interface(ptr, shape, typestr, True), device="cuda")
    return torch.from_numpy(np.asarray(_Interface(ptr, shape, typestr, False)))


class FakeBuildCounter:
    """How many engines FakeBuilder built in this process (reset it in tests)."""

    builds = 0
    last_header: dict[str, Any] | None = None
    swallowed: list[BaseException] = []
    jit_compilations = 0
    """Exceptions the trampolines swallowed (the real bindings leave no trace of them)."""


# -- enums -------------------------------------------------------------------------
class _Severity(enum.IntEnum):
    INTERNAL_ERROR = 0
    ERROR = 1
    WARNING = 2
    INFO = 3
    VERBOSE = 4


class ILogger:
    Severity = _Severity
    INTERNAL_ERROR = _Severity.INTERNAL_ERROR
    ERROR = _Severity.ERROR
    WARNING = _Severity.WARNING
    INFO = _Severity.INFO
    VERBOSE = _Severity.VERBOSE

    def __init__(self) -> None:
        self.messages: list[tuple[_Severity, str]] = []

    def log(self, severity: _Severity, msg: str) -> None:
        self.messages.append((severity, msg))


class Logger(ILogger):
    def __init__(self, min_severity: _Severity = _Severity.WARNING) -> None:
        super().__init__()
        self.min_severity = min_severity


class DataType(enum.Enum):
    FLOAT = 0
    HALF = 1
    INT8 = 2
    INT32 = 3
    BOOL = 4


class TensorIOMode(enum.Enum):
    NONE = 0
    INPUT = 1
    OUTPUT = 2


class NetworkDefinitionCreationFlag(enum.IntEnum):
    EXPLICIT_BATCH = 0
    STRONGLY_TYPED = 1


class BuilderFlag(enum.IntEnum):
    FP16 = 0
    INT8 = 1
    TF32 = 7


class ActivationType(enum.IntEnum):
    RELU = 0
    SIGMOID = 1
    HARD_SIGMOID = 10


class ElementWiseOperation(enum.IntEnum):
    SUM = 0
    PROD = 1
    MIN = 3


class CalibrationAlgoType(enum.IntEnum):
    LEGACY_CALIBRATION = 0
    ENTROPY_CALIBRATION = 1
    ENTROPY_CALIBRATION_2 = 2
    MINMAX_CALIBRATION = 3


class MemoryPoolType(enum.IntEnum):
    WORKSPACE = 0


class Dims(tuple):  # type: ignore[type-arg]
    """Behaves like TensorRT's Dims: a tuple of ints."""


# -- network and parser -------------------------------------------------------------
class ITensor:
    def __init__(self, name: str, shape: tuple[int, ...], dtype: DataType) -> None:
        self.name = name
        self.shape = Dims(shape)
        self.dtype = dtype


class INetworkDefinition:
    def __init__(self, flags: int) -> None:
        self.flags = flags
        self.inputs: list[ITensor] = []
        self.outputs: list[ITensor] = []
        self.onnx_sha256: str | None = None
        self.fp16_weights = False

    @property
    def num_inputs(self) -> int:
        return len(self.inputs)

    @property
    def num_outputs(self) -> int:
        return len(self.outputs)

    def get_input(self, index: int) -> ITensor:
        return self.inputs[index]

    def get_output(self, index: int) -> ITensor:
        return self.outputs[index]


class FakeParserError:
    def __init__(self, desc: str) -> None:
        self._desc = desc

    def desc(self) -> str:
        return self._desc

    def __str__(self) -> str:
        return f"In node -1 (parse): {self._desc}"


_ONNX_TYPES = {1: DataType.FLOAT, 10: DataType.HALF, 3: DataType.INT8, 6: DataType.INT32, 9: DataType.BOOL}


class OnnxParser:
    def __init__(self, network: INetworkDefinition, logger: ILogger) -> None:
        self.network = network
        self.errors: list[FakeParserError] = []

    @property
    def num_errors(self) -> int:
        return len(self.errors)

    def get_error(self, index: int) -> FakeParserError:
        return self.errors[index]

    def parse(self, model: bytes, path: str | None = None) -> bool:
        import onnx

        try:
            proto = onnx.load_from_string(bytes(model))
            onnx.checker.check_model(proto)
        except Exception as exc:  # noqa: BLE001 - a parser reports, it does not raise
            self.errors.append(FakeParserError(f"{type(exc).__name__}: {exc}"))
            return False
        init_names = {init.name for init in proto.graph.initializer}

        def tensor(value: Any) -> ITensor:
            dims = tuple(
                d.dim_value if d.HasField("dim_value") else -1 for d in value.type.tensor_type.shape.dim
            )
            return ITensor(value.name, dims, _ONNX_TYPES.get(value.type.tensor_type.elem_type, DataType.FLOAT))

        self.network.inputs = [tensor(v) for v in proto.graph.input if v.name not in init_names]
        self.network.outputs = [tensor(v) for v in proto.graph.output]
        self.network.onnx_sha256 = hashlib.sha256(bytes(model)).hexdigest()
        self.network.fp16_weights = any(init.data_type == 10 for init in proto.graph.initializer)
        return True


# -- builder ----------------------------------------------------------------------------
class IOptimizationProfile:
    def __init__(self) -> None:
        self.shapes: dict[str, tuple[Dims, Dims, Dims]] = {}

    def set_shape(self, input: str, min: Dims, opt: Dims, max: Dims) -> None:  # noqa: A002
        self.shapes[input] = (Dims(min), Dims(opt), Dims(max))


class IProgressMonitor:
    def __init__(self) -> None:
        pass


class IInt8Calibrator:
    def __init__(self) -> None:
        pass


class IInt8EntropyCalibrator2(IInt8Calibrator):
    pass


class ITimingCache:
    def __init__(self, data: bytes) -> None:
        self.builds = 0
        if data:
            text = bytes(data).decode("ascii", "replace")
            if not text.startswith("FAKE-TIMING builds="):
                raise RuntimeError("timing cache: bad magic")
            self.builds = int(text.split("=", 1)[1])

    def serialize(self) -> IHostMemory:
        return IHostMemory(f"FAKE-TIMING builds={self.builds}".encode())


class IBuilderConfig:
    def __init__(self) -> None:
        self.timing_cache: ITimingCache | None = None
        self.flags: set[BuilderFlag] = set()
        self.pools: dict[MemoryPoolType, int] = {}
        self.profiles: list[IOptimizationProfile] = []
        self.calibration_profile: IOptimizationProfile | None = None
        self.int8_calibrator: IInt8Calibrator | None = None
        self.progress_monitor: IProgressMonitor | None = None

    def set_flag(self, flag: BuilderFlag) -> None:
        self.flags.add(flag)

    def get_flag(self, flag: BuilderFlag) -> bool:
        return flag in self.flags

    def set_memory_pool_limit(self, pool: MemoryPoolType, pool_size: int) -> None:
        self.pools[pool] = pool_size

    def add_optimization_profile(self, profile: IOptimizationProfile) -> int:
        self.profiles.append(profile)
        return len(self.profiles) - 1

    def set_calibration_profile(self, profile: IOptimizationProfile) -> bool:
        self.calibration_profile = profile
        return True

    def create_timing_cache(self, serialized_timing_cache: bytes) -> ITimingCache | None:
        try:
            return ITimingCache(serialized_timing_cache)
        except RuntimeError:
            return None

    def set_timing_cache(self, cache: ITimingCache, ignore_mismatch: bool) -> bool:
        self.timing_cache = cache
        return True

    def get_timing_cache(self) -> ITimingCache | None:
        return self.timing_cache


class RTXBuilderConfig(IBuilderConfig):
    """TensorRT-RTX's config: a list of compute capabilities to compile for (none set: Ampere+ all)."""

    def __init__(self) -> None:
        super().__init__()
        self.num_compute_capabilities = 0
        self.compute_capabilities: dict[int, Any] = {}

    def set_compute_capability(self, compute_capability: Any, index: int) -> bool:
        if index >= self.num_compute_capabilities:
            return False
        self.compute_capabilities[index] = compute_capability
        return True


class IHostMemory:
    def __init__(self, data: bytes) -> None:
        self._data = data

    def __bytes__(self) -> bytes:
        return self._data

    @property
    def nbytes(self) -> int:
        return len(self._data)


def serialize_header(header: dict[str, Any]) -> bytes:
    """The fake plan format: MAGIC + JSON + SHA-256(JSON)."""
    body = json.dumps(header, sort_keys=True).encode("utf-8")
    return MAGIC + body + hashlib.sha256(body).digest()


def parse_blob(data: bytes) -> dict[str, Any] | None:
    if not data.startswith(MAGIC) or len(data) < len(MAGIC) + 32:
        return None
    body, digest = data[len(MAGIC) : -32], data[-32:]
    if hashlib.sha256(body).digest() != digest:
        return None
    try:
        header = json.loads(body)
    except ValueError:
        return None
    return header if isinstance(header, dict) else None


class Builder:
    surface: Surface | None = None
    """Set on a variant's Builder; None: follow the module's ``__version__``."""
    config_class: type = IBuilderConfig

    def __init__(self, logger: ILogger) -> None:
        self.logger = logger

    def _surface(self) -> Surface:
        return self.surface or _surface_from_version()

    def create_network(self, flags: int = 0) -> INetworkDefinition:
        if self._surface().explicit_batch_required and not flags & (1 << int(NetworkDefinitionCreationFlag.EXPLICIT_BATCH)):
            raise TypeError("TensorRT 8.x: implicit batch networks cannot be parsed from ONNX (EXPLICIT_BATCH missing)")
        return INetworkDefinition(flags)

    def create_builder_config(self) -> IBuilderConfig:
        return self.config_class()  # type: ignore[no-any-return]

    def create_optimization_profile(self) -> IOptimizationProfile:
        return IOptimizationProfile()

    def _calibrate(self, network: INetworkDefinition, config: IBuilderConfig) -> tuple[int, list[float]] | None:
        """Run the calibrator as TensorRT does; None when the build must fail (logged)."""
        logger = self.logger
        calibrator: Any = config.int8_calibrator
        if calibrator is None:
            _log(logger, _Severity.ERROR, "INT8 without a calibrator")
            return None
        source = config.calibration_profile.shapes if config.calibration_profile is not None else {}
        shapes: dict[str, tuple[int, ...]] = {}
        for t in network.inputs:
            if t.name in source:
                low, opt, high = source[t.name]
                if tuple(low) != tuple(opt) or tuple(opt) != tuple(high):
                    _log(logger, _Severity.ERROR, "calibration profile: min, opt and max must be equal")
                    return None
                shapes[t.name] = tuple(opt)
            elif -1 in t.shape:
                _log(logger, _Severity.ERROR, f"dynamic input {t.name} needs a calibration profile")
                return None
            else:
                shapes[t.name] = tuple(t.shape)
        table = _trampoline(logger, calibrator.read_calibration_cache, None)
        if table:
            return 0, []
        batch = int(_trampoline(logger, calibrator.get_batch_size, 1))
        for name, shape in shapes.items():
            if shape[0] != batch:
                _log(logger, _Severity.ERROR, f"calibrator batch size {batch} != calibration shape {shape} of {name}")
                return None
        names = [t.name for t in network.inputs]
        means: list[float] = []
        while True:
            pointers = _trampoline(logger, calibrator.get_batch, None, names)
            if not pointers:
                break
            for name, ptr in zip(names, pointers):
                data = tensor_at(int(ptr), shapes[name], "FLOAT", _execute_on_cuda(0))
                means.append(round(float(data.double().mean()), 6))  # reads the whole batch
        _trampoline(logger, calibrator.write_calibration_cache, None, f"FAKE-CALIBRATION batches={len(means)}".encode())
        return len(means), means

    def build_serialized_network(self, network: INetworkDefinition, config: IBuilderConfig) -> IHostMemory | None:
        logger = self.logger
        dynamic = [t.name for t in network.inputs if -1 in t.shape]
        profiled = {name for p in config.profiles for name in p.shapes}
        if any(name not in profiled for name in dynamic):
            _log(logger, _Severity.ERROR, "Network has dynamic inputs but no optimization profile")
            return None
        _log(logger, _Severity.VERBOSE, "fake build: start")
        monitor: Any = config.progress_monitor
        if monitor is not None:
            _trampoline(logger, monitor.phase_start, None, "Building engine", None, 3)
            for step in range(3):
                if not _trampoline(logger, monitor.step_complete, False, "Building engine", step):
                    _log(logger, _Severity.ERROR, "Build was cancelled by the progress monitor")
                    return None
            _trampoline(logger, monitor.phase_finish, None, "Building engine")
        calib_batches, calib_means = 0, []
        if BuilderFlag.__members__.get("INT8") in config.flags:
            calibrated = self._calibrate(network, config)
            if calibrated is None:
                return None
            calib_batches, calib_means = calibrated
        delay = float(os.environ.get("FAKE_TRT_BUILD_DELAY", "0") or 0)
        if delay:
            time.sleep(delay)
        timing = config.timing_cache
        if timing is not None:
            timing.builds += 1

        def io(t: ITensor) -> dict[str, Any]:
            return {"name": t.name, "shape": list(t.shape), "dtype": t.dtype.name}

        surface = self._surface()
        header: dict[str, Any] = {
            "onnx_sha256": network.onnx_sha256,
            "network_flags": network.flags,
            "builder_flags": sorted(f.name for f in config.flags),
            "workspace": config.pools.get(MemoryPoolType.WORKSPACE),
            "profiles": [
                {name: [list(s) for s in shapes] for name, shapes in p.shapes.items()} for p in config.profiles
            ],
            "fp16_weights": network.fp16_weights,
            "calibration_batches": calib_batches,
            "calibration_means": calib_means,
            "timing_cache_builds": timing.builds if timing is not None else None,
            "inputs": [io(t) for t in network.inputs],
            "outputs": [io(t) for t in network.outputs],
        }
        if surface.rtx:
            assert isinstance(config, RTXBuilderConfig)
            targets = [config.compute_capabilities.get(i) for i in range(config.num_compute_capabilities)]
            if any(t is None for t in targets):
                _log(logger, _Severity.ERROR, "num_compute_capabilities set but a capability is missing")
                return None
            names = [FAKE_CURRENT_CC if t.name == "CURRENT" else f"{t.value // 10}.{t.value % 10}" for t in targets]
            header["compute_capabilities"] = names or ["8.0", "8.6", "8.9", "12.0"]  # none set: Ampere+ all
        FakeBuildCounter.builds += 1
        FakeBuildCounter.last_header = header
        log_file = os.environ.get("FAKE_TRT_BUILD_LOG")
        if log_file:
            with open(log_file, "a", encoding="utf-8") as handle:
                handle.write(f"{os.getpid()}\n")
        return IHostMemory(serialize_header(header))


def _execute_on_cuda(stream: int) -> bool:
    if EXECUTE_DEVICE is not None:
        return EXECUTE_DEVICE == "cuda"
    import torch

    return bool(stream) or torch.cuda.is_available()


# -- runtime -------------------------------------------------------------------------------
class IExecutionContext:
    """Runs the fake network (:func:`fake_logits`) on the addresses it was given."""

    def __init__(self, engine: "ICudaEngine") -> None:
        self.engine = engine
        self.addresses: dict[str, int] = {}
        self.input_shapes: dict[str, tuple[int, ...]] = {}
        self.active_optimization_profile = 0
        self.streams: list[int] = []

    def set_optimization_profile_async(self, profile_index: int, stream_handle: int) -> bool:
        if not 0 <= profile_index < self.engine.num_optimization_profiles:
            return False
        self.active_optimization_profile = profile_index
        return True

    def set_input_shape(self, name: str, shape: Any) -> bool:
        shape = tuple(int(d) for d in shape)
        profiles = self.engine.header["profiles"]
        if profiles:
            low, _opt, high = profiles[self.active_optimization_profile][name]
            if not all(lo <= d <= hi for lo, d, hi in zip(low, shape, high)):
                return False
        self.input_shapes[name] = shape
        return True

    def set_tensor_address(self, name: str, memory: int) -> bool:
        self.engine._find(name)
        self.addresses[name] = int(memory)
        return True

    def execute_async_v3(self, stream_handle: int) -> bool:
        import torch

        self.streams.append(int(stream_handle))
        (inp,) = self.engine.header["inputs"]
        (out,) = self.engine.header["outputs"]
        in_shape = self.input_shapes.get(inp["name"], tuple(inp["shape"]))
        if -1 in in_shape or inp["name"] not in self.addresses or out["name"] not in self.addresses:
            return False
        rows = in_shape[0]
        out_shape = (rows, *out["shape"][1:])
        cuda = _execute_on_cuda(stream_handle)
        scope: Any = (
            torch.cuda.stream(torch.cuda.ExternalStream(stream_handle)) if cuda and stream_handle else _nullcontext()
        )
        with scope:
            x = tensor_at(self.addresses[inp["name"]], in_shape, inp["dtype"], cuda)
            y = tensor_at(self.addresses[out["name"]], out_shape, out["dtype"], cuda)
            y.copy_(fake_logits(x, int(out_shape[1])).to(y.dtype))
        return True


class _nullcontext:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


class IRuntimeCache:
    def __init__(self) -> None:
        self.entries: list[str] = []

    def deserialize(self, data: bytes) -> bool:
        text = bytes(data).decode("ascii", "replace")
        if not text.startswith("FAKE-RTCACHE "):
            raise RuntimeError("runtime cache: bad magic")
        self.entries = [e for e in text.split(" ", 1)[1].split(",") if e]
        return True

    def serialize(self) -> IHostMemory:
        return IHostMemory(("FAKE-RTCACHE " + ",".join(self.entries)).encode())


class IRuntimeConfig:
    def __init__(self) -> None:
        self.runtime_cache: IRuntimeCache | None = None

    def create_runtime_cache(self) -> IRuntimeCache:
        return IRuntimeCache()

    def set_runtime_cache(self, cache: IRuntimeCache) -> bool:
        self.runtime_cache = cache
        return True


class ICudaEngine:
    surface: Surface | None = None

    def __init__(self, header: dict[str, Any]) -> None:
        self.header = header
        self._tensors = [(t, TensorIOMode.INPUT) for t in header["inputs"]] + [
            (t, TensorIOMode.OUTPUT) for t in header["outputs"]
        ]
        self.jit_compilations = 0

    @property
    def num_io_tensors(self) -> int:
        return len(self._tensors)

    @property
    def num_optimization_profiles(self) -> int:
        return max(1, len(self.header["profiles"]))

    @property
    def device_memory_size(self) -> int:
        return FAKE_DEVICE_MEMORY_SIZE

    @property
    def device_memory_size_v2(self) -> int:
        if not (self.surface or _surface_from_version()).memory_v2:
            raise AttributeError("'tensorrt.ICudaEngine' object has no attribute 'device_memory_size_v2'")
        return FAKE_DEVICE_MEMORY_SIZE_V2

    def get_tensor_name(self, index: int) -> str:
        return str(self._tensors[index][0]["name"])

    def _find(self, name: str) -> tuple[dict[str, Any], TensorIOMode]:
        for tensor, mode in self._tensors:
            if tensor["name"] == name:
                return tensor, mode
        raise KeyError(name)

    def get_tensor_mode(self, name: str) -> TensorIOMode:
        return self._find(name)[1]

    def get_tensor_shape(self, name: str) -> Dims:
        return Dims(self._find(name)[0]["shape"])

    def get_tensor_dtype(self, name: str) -> DataType:
        return DataType[self._find(name)[0]["dtype"]]

    def create_execution_context(self, runtime_config: "IRuntimeConfig | None" = None) -> IExecutionContext:
        if self.surface is not None and self.surface.rtx:
            cache = runtime_config.runtime_cache if runtime_config is not None else None
            key = f"jit:{self.header['onnx_sha256'][:12]}"
            if cache is None or key not in cache.entries:
                self.jit_compilations += 1  # the JIT compiles the kernels for this GPU
                FakeBuildCounter.jit_compilations += 1
                if cache is not None:
                    cache.entries.append(key)
        return IExecutionContext(self)


class RTXCudaEngine(ICudaEngine):
    def create_runtime_config(self) -> IRuntimeConfig:
        return IRuntimeConfig()


class Runtime:
    surface: Surface | None = None
    engine_class: type = ICudaEngine

    def __init__(self, logger: ILogger) -> None:
        self.logger = logger

    def deserialize_cuda_engine(self, serialized_engine: bytes) -> ICudaEngine | None:
        header = parse_blob(bytes(serialized_engine))
        if header is None:
            _log(self.logger, _Severity.ERROR, "Serialization assertion failed: magic or checksum mismatch")
            return None
        surface = self.surface or _surface_from_version()
        if surface.rtx:
            here = FAKE_CURRENT_CC
            if here not in RTX_SUPPORTED:
                _log(
                    self.logger,
                    _Severity.ERROR,
                    f"Device compute capability {here} is not supported. Supported compute capabilities: "
                    + " ".join(RTX_SUPPORTED),
                )
                return None
            if here not in header.get("compute_capabilities", []):
                _log(self.logger, _Severity.ERROR, f"The engine was not compiled for compute capability {here}")
                return None
        engine: ICudaEngine = self.engine_class(header)
        return engine


def header_of(path: Path) -> dict[str, Any] | None:
    """The description inside a fake engine file (for assertions)."""
    return parse_blob(path.read_bytes())


# -- per-version API surfaces -------------------------------------------------------------
class _StrongBuilderFlag(enum.IntEnum):
    TF32 = 7


class ComputeCapability(enum.IntEnum):
    CURRENT = 0
    SM75 = 75
    SM80 = 80
    SM86 = 86
    SM89 = 89
    SM120 = 120
    SM121 = 121


SURFACES: dict[str, Surface] = {
    "8.6": Surface("8.6.1.6", explicit_batch_required=True, progress_monitor=False, memory_v2=False),
    "10.3": Surface("10.3.0.26"),
    "11": Surface("11.1.0.12", strongly_typed_only=True),
    "rtx": Surface("1.7.1.116", strongly_typed_only=True, rtx=True),
}


def variant(name: str) -> types.ModuleType:
    """A fresh module with one TensorRT version's API surface (see :data:`SURFACES`):
    ``"8.6"``, ``"10.3"``, ``"11"`` or ``"rtx"``."""
    surface = SURFACES[name]
    module = types.ModuleType("tensorrt_rtx" if surface.rtx else "tensorrt")
    module.__dict__.update({k: v for k, v in globals().items() if not k.startswith("__")})
    import importlib.machinery

    module.__spec__ = importlib.machinery.ModuleSpec(module.__name__, None)  # find_spec() sees it
    module.__version__ = surface.version  # type: ignore[attr-defined]
    module.FAKE_SURFACE = surface  # type: ignore[attr-defined]
    config_class = RTXBuilderConfig if surface.rtx else IBuilderConfig
    module.Builder = type("Builder", (Builder,), {"surface": surface, "config_class": config_class})  # type: ignore[attr-defined]
    engine_class = type("ICudaEngine", (RTXCudaEngine if surface.rtx else ICudaEngine,), {"surface": surface})
    module.ICudaEngine = engine_class  # type: ignore[attr-defined]
    module.Runtime = type("Runtime", (Runtime,), {"surface": surface, "engine_class": engine_class})  # type: ignore[attr-defined]
    if not surface.progress_monitor:
        del module.IProgressMonitor  # type: ignore[attr-defined]
    if surface.strongly_typed_only:
        module.BuilderFlag = _StrongBuilderFlag  # type: ignore[attr-defined]
        del module.IInt8EntropyCalibrator2  # type: ignore[attr-defined]
        del module.IInt8Calibrator  # type: ignore[attr-defined]
    if not surface.rtx:
        del module.ComputeCapability  # type: ignore[attr-defined]
    del module.variant  # type: ignore[attr-defined]
    return module
