"""Which TensorRT, the GPU, and the small helpers every TensorRT-family backend shares.

``trt`` stands for the TensorRT module: the first attribute read imports
``tensorrt``, else TensorRT for RTX (``tensorrt_rtx``, or its bare bindings
``tensorrt_rtx_bindings``), which have the same Python API.  The module found
is remembered for as long as it stays in ``sys.modules``.  For mypy, ``trt``
is the ``tensorrt`` module, checked against the TensorRT 10.13 stubs in
``typings/``; the 8.x binding API, absent from those stubs, goes through an
``Any`` handle.
"""

from __future__ import annotations

import importlib
import logging
import sys
import threading
from collections import deque
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any, Callable, Sequence, TypeVar

from engines.cache import TensorSpec
from engines.errors import BackendUnavailable

if TYPE_CHECKING:
    import tensorrt as trt

log = logging.getLogger("engines.backends.tensorrt")

MODULE_NAMES: tuple[str, ...] = ("tensorrt", "tensorrt_rtx", "tensorrt_rtx_bindings")
"""Where TensorRT's Python API is looked for, in order."""

_found: tuple[str, ModuleType] | None = None


def import_tensorrt(names: Sequence[str] = MODULE_NAMES) -> tuple[str, ModuleType]:
    """The first of ``names`` that imports with a ``Builder``, and its name; :class:`BackendUnavailable` if none."""
    problems = []
    for name in names:
        try:
            module = importlib.import_module(name)
        except ImportError as exc:
            problems.append(f"{name}: {exc}")
            continue
        if hasattr(module, "Builder"):  # an installed stub-only package imports as an empty namespace
            return name, module
        problems.append(f"{name}: imports but has no Builder (a stub or incomplete install)")
    raise BackendUnavailable(
        "tensorrt backend: neither TensorRT nor TensorRT for RTX can be imported ("
        + "; ".join(problems)
        + "). Install TensorRT's Python package (JetPack ships it; on x86: pip install tensorrt)"
    )


def tensorrt_module() -> ModuleType:
    """The TensorRT module (see the module docstring), remembered while it stays in ``sys.modules``."""
    global _found
    if _found is None or sys.modules.get(_found[0]) is not _found[1]:
        _found = import_tensorrt()
    return _found[1]


def tensorrt_module_name() -> str:
    """``tensorrt`` or ``tensorrt_rtx`` (the bare RTX bindings count as ``tensorrt_rtx``)."""
    module = tensorrt_module()
    assert _found is not None and _found[1] is module
    return "tensorrt" if _found[0] == "tensorrt" else "tensorrt_rtx"


class _TensorRTModule:
    """Attribute access on the module :func:`tensorrt_module` finds (imported on first use)."""

    def __getattr__(self, name: str) -> Any:
        return getattr(tensorrt_module(), name)


if not TYPE_CHECKING:
    trt = _TensorRTModule()


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
        return version_tuple(self.version)[0]


def version_tuple(text: str) -> tuple[int, ...]:
    parts = []
    for piece in text.split("."):
        digits = "".join(ch for ch in piece if ch.isdigit())
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts) or (0,)


def tensorrt_info() -> TensorRTInfo:
    name = tensorrt_module_name()
    version = str(getattr(tensorrt_module(), "__version__", "0"))
    major = version_tuple(version)[0]
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
    sm_count: int | None = None
    """Streaming multiprocessors: tells Jetson Orin modules apart (all report "Orin", 8.7)."""
    memory_mb: int | None = None
    """Total device memory in MiB (an AGX Orin 32/64 GB from an Orin Nano 4/8 GB)."""

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
    return DeviceInfo(
        props.name,
        (int(props.major), int(props.minor)),
        torch.version.cuda,
        device,
        sm_count=int(props.multi_processor_count),
        memory_mb=int(props.total_memory) >> 20,
    )


# -- logger, dtypes, dims, engine I/O, device memory -----------------------------------------
# -- exceptions raised inside TensorRT callbacks ------------------------------------------
T = TypeVar("T")


class CallbackErrors:
    """The first exception raised inside a TensorRT callback, kept for after the TensorRT call.

    TensorRT's pybind trampolines swallow what a Python override raises (the
    calibrator's ``get_batch`` then reads as "no more batches", a progress
    monitor's ``step_complete`` as "cancel", a logger's ``log`` as nothing).
    Every callback runs through :meth:`call`, which keeps the first exception
    (KeyboardInterrupt included: Ctrl-C lands in whichever Python callback runs
    on the main thread) and returns ``default``; the caller of the TensorRT
    function calls :meth:`reraise` once it returns.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.error: BaseException | None = None

    @property
    def failed(self) -> bool:
        return self.error is not None

    def keep(self, exc: BaseException) -> None:
        with self._lock:
            if self.error is None:
                self.error = exc

    def call(self, fn: Callable[[], T], default: T) -> T:
        if self.error is not None:
            return default
        try:
            return fn()
        except BaseException as exc:  # noqa: BLE001 - kept and re-raised after the TensorRT call
            self.keep(exc)
            return default

    def reraise(self) -> None:
        """Raise the kept exception (once), if any."""
        with self._lock:
            exc, self.error = self.error, None
        if exc is not None:
            raise exc


# -- the one logger ------------------------------------------------------------------------------
_SEVERITY_LEVELS: dict[str, int] = {
    "INTERNAL_ERROR": logging.CRITICAL,
    "ERROR": logging.ERROR,
    "WARNING": logging.WARNING,
    "INFO": logging.DEBUG,
    "VERBOSE": logging.DEBUG,
}


class LoggerState:
    """What the process-wide TensorRT logger saw: recent errors (numbered), and interrupts it caught."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.errors: deque[tuple[int, str]] = deque(maxlen=64)
        self.count = 0
        self.pending: CallbackErrors = CallbackErrors()

    def mark(self) -> int:
        """A position to read errors logged after it with :meth:`errors_since`."""
        with self.lock:
            return self.count

    def errors_since(self, mark: int) -> list[str]:
        with self.lock:
            return [msg for n, msg in self.errors if n > mark]

    def add_error(self, msg: str) -> None:
        with self.lock:
            self.count += 1
            self.errors.append((self.count, msg))


logger_state = LoggerState()
_logger: tuple[ModuleType, Any] | None = None
_logger_lock = threading.Lock()


def make_logger() -> "trt.ILogger":
    """THE TensorRT logger of this process (one per TensorRT module; TensorRT keeps one global logger).

    It writes into Python logging (``engines.backends.tensorrt.trt``); VERBOSE and
    INFO messages are dropped before formatting unless that logger is at DEBUG.
    ERROR and INTERNAL_ERROR messages are also kept in :data:`logger_state`, so a
    failed call can report the runtime's own reason.  An exception inside ``log``
    (Ctrl-C) is kept in ``logger_state.pending`` and re-raised by the caller.
    """
    global _logger
    module = tensorrt_module()
    with _logger_lock:
        if _logger is not None and _logger[0] is module:
            return _logger[1]
        trt_log = logging.getLogger("engines.backends.tensorrt.trt")
        severity = trt.ILogger.Severity
        levels = {getattr(severity, name): level for name, level in _SEVERITY_LEVELS.items() if hasattr(severity, name)}
        errors = {getattr(severity, n) for n in ("ERROR", "INTERNAL_ERROR") if hasattr(severity, n)}
        state = logger_state

        class _Logger(trt.ILogger):
            def __init__(self) -> None:
                trt.ILogger.__init__(self)

            def log(self, sev: "trt.ILogger.Severity", msg: str) -> None:
                def write() -> None:
                    if sev in errors:
                        state.add_error(str(msg))
                    level = levels.get(sev, logging.INFO)
                    if trt_log.isEnabledFor(level):
                        trt_log.log(level, "%s", msg)

                state.pending.call(write, None)

        logger = _Logger()
        _logger = (module, logger)
        return logger


def raise_pending_interrupt() -> None:
    """Re-raise an exception (Ctrl-C) the logger caught inside a TensorRT call."""
    logger_state.pending.reraise()


def trt_dtype_name(dtype: object) -> str:
    names = {
        trt.DataType.FLOAT: "float32",
        trt.DataType.HALF: "float16",
        trt.DataType.INT8: "int8",
        trt.DataType.INT32: "int32",
        trt.DataType.BOOL: "bool",
    }
    return names.get(dtype, str(dtype))  # type: ignore[call-overload]


def dims(value: "trt.Dims") -> tuple[int, ...]:
    """A TensorRT ``Dims`` as a tuple (-1 for a dynamic dimension)."""
    return tuple(int(value[i]) for i in range(len(value)))


def engine_io(engine: "trt.ICudaEngine", tensor_api: bool) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    """An engine's I/O tensors: the tensor API (TensorRT >= 8.5, ``tensor_api``), else the binding API."""
    inputs: list[TensorSpec] = []
    outputs: list[TensorSpec] = []
    if tensor_api:
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            spec = TensorSpec(name, dims(engine.get_tensor_shape(name)), trt_dtype_name(engine.get_tensor_dtype(name)))
            (inputs if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT else outputs).append(spec)
    else:  # TensorRT < 8.5: binding API, outside the 10.x stubs
        legacy: Any = engine
        for i in range(legacy.num_bindings):
            spec = TensorSpec(
                legacy.get_binding_name(i),
                tuple(int(d) for d in legacy.get_binding_shape(i)),
                trt_dtype_name(legacy.get_binding_dtype(i)),
            )
            (inputs if legacy.binding_is_input(i) else outputs).append(spec)
    return tuple(inputs), tuple(outputs)


def engine_device_memory_bytes(engine: object) -> int | None:
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
