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

Nothing here runs a network: ``execute_async_v3`` is absent on purpose
(``IExecutionContext`` has it only as a class attribute so that the backend
picks the TensorRT >= 8.5 code path).

Use it by putting this module in ``sys.modules["tensorrt"]``
(``monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt)``).
"""

from __future__ import annotations

import enum
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

__version__ = "10.13.0.35"
IS_FAKE_TENSORRT = True

MAGIC = b"FAKETRT1"

FAKE_DEVICE_MEMORY_SIZE = 3 << 20
"""What every fake engine reports as ``device_memory_size``."""
FAKE_DEVICE_MEMORY_SIZE_V2 = FAKE_DEVICE_MEMORY_SIZE + 4096
"""What it reports as ``device_memory_size_v2`` (TensorRT 10+; differs so that tests see which was read)."""


class FakeBuildCounter:
    """How many engines FakeBuilder built in this process (reset it in tests)."""

    builds = 0
    last_header: dict[str, Any] | None = None


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


class IBuilderConfig:
    def __init__(self) -> None:
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
    def __init__(self, logger: ILogger) -> None:
        self.logger = logger

    def create_network(self, flags: int = 0) -> INetworkDefinition:
        return INetworkDefinition(flags)

    def create_builder_config(self) -> IBuilderConfig:
        return IBuilderConfig()

    def create_optimization_profile(self) -> IOptimizationProfile:
        return IOptimizationProfile()

    def build_serialized_network(self, network: INetworkDefinition, config: IBuilderConfig) -> IHostMemory | None:
        dynamic = [t.name for t in network.inputs if -1 in t.shape]
        profiled = {name for p in config.profiles for name in p.shapes}
        if any(name not in profiled for name in dynamic):
            self.logger.log(_Severity.ERROR, "Network has dynamic inputs but no optimization profile")
            return None
        monitor = config.progress_monitor
        if monitor is not None:
            monitor.phase_start("Building engine", None, 3)  # type: ignore[attr-defined]
            for step in range(3):
                monitor.step_complete("Building engine", step)  # type: ignore[attr-defined]
            monitor.phase_finish("Building engine")  # type: ignore[attr-defined]
        calib_batches = 0
        if BuilderFlag.INT8 in config.flags:
            calibrator: Any = config.int8_calibrator
            if calibrator is None:
                self.logger.log(_Severity.ERROR, "INT8 without a calibrator")
                return None
            table = calibrator.read_calibration_cache()
            if not table:
                while calibrator.get_batch(["input"]):
                    calib_batches += 1
                calibrator.write_calibration_cache(f"FAKE-CALIBRATION batches={calib_batches}".encode())
        delay = float(os.environ.get("FAKE_TRT_BUILD_DELAY", "0") or 0)
        if delay:
            time.sleep(delay)

        def io(t: ITensor) -> dict[str, Any]:
            return {"name": t.name, "shape": list(t.shape), "dtype": t.dtype.name}

        header = {
            "onnx_sha256": network.onnx_sha256,
            "network_flags": network.flags,
            "builder_flags": sorted(f.name for f in config.flags),
            "workspace": config.pools.get(MemoryPoolType.WORKSPACE),
            "profiles": [
                {name: [list(s) for s in shapes] for name, shapes in p.shapes.items()} for p in config.profiles
            ],
            "fp16_weights": network.fp16_weights,
            "calibration_batches": calib_batches,
            "inputs": [io(t) for t in network.inputs],
            "outputs": [io(t) for t in network.outputs],
        }
        FakeBuildCounter.builds += 1
        FakeBuildCounter.last_header = header
        log_file = os.environ.get("FAKE_TRT_BUILD_LOG")
        if log_file:
            with open(log_file, "a", encoding="utf-8") as handle:
                handle.write(f"{os.getpid()}\n")
        return IHostMemory(serialize_header(header))


# -- runtime -------------------------------------------------------------------------------
class IExecutionContext:
    """Only marks the TensorRT >= 8.5 API as present; the fake never executes a network."""

    execute_async_v3 = None

    def __init__(self, engine: "ICudaEngine") -> None:
        self.engine = engine


class ICudaEngine:
    def __init__(self, header: dict[str, Any]) -> None:
        self.header = header
        self._tensors = [(t, TensorIOMode.INPUT) for t in header["inputs"]] + [
            (t, TensorIOMode.OUTPUT) for t in header["outputs"]
        ]

    @property
    def num_io_tensors(self) -> int:
        return len(self._tensors)

    @property
    def device_memory_size(self) -> int:
        return FAKE_DEVICE_MEMORY_SIZE

    @property
    def device_memory_size_v2(self) -> int:
        if int(__version__.split(".")[0]) < 10:
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

    def create_execution_context(self) -> IExecutionContext:
        return IExecutionContext(self)


class Runtime:
    def __init__(self, logger: ILogger) -> None:
        self.logger = logger

    def deserialize_cuda_engine(self, serialized_engine: bytes) -> ICudaEngine | None:
        header = parse_blob(bytes(serialized_engine))
        if header is None:
            self.logger.log(_Severity.ERROR, "Serialization assertion failed: magic or checksum mismatch")
            return None
        return ICudaEngine(header)


def header_of(path: Path) -> dict[str, Any] | None:
    """The description inside a fake engine file (for assertions)."""
    return parse_blob(path.read_bytes())
