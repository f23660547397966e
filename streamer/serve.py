"""``streamer serve``: streamer's model behind a real Triton Inference Server (PyTriton).

PyTriton starts the ``tritonserver`` binary it bundles (gRPC, HTTP and Prometheus metrics
endpoints, Triton's own dynamic batcher and health checks) and hands each batch Triton forms
to a Python callable in this process.  That callable runs the batch on a local backend
(torch, onnxruntime, tensorrt...) owned by an :class:`~streamer.inference.InferenceWorker`,
so the backend lives on one thread as in ``streamer run``.

What travels: the client (``--backend triton``) preprocesses frames with the same code as a
local backend and sends the (N, 3, H, W) float32 (fp16 at ``--precision fp16``) tensor named
``input``; the server answers (N, classes) float32 ``logits``.  Sending the preprocessed tensor
(float32 for an int8 engine) keeps the labels identical to a local run (one preprocessing, one place) and the server busy
only with the network; it costs 4 (fp32) or 2 (fp16) bytes per pixel of the 224x224 crop,
about 600 KB per frame at fp32, which a LAN carries at hundreds of frames per second.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import socket
import sys
import sysconfig
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, TextIO

from engines.errors import BackendUnavailable, ConfigError, PipelineError

if TYPE_CHECKING:
    from engines.backends.base import BackendOptions
    from engines.models import ModelSpec, WeightsChoice

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServeConfig:
    """Where Triton listens and how its dynamic batcher batches."""

    host: str = "0.0.0.0"
    grpc_port: int = 8001
    http_port: int = 8000
    metrics_port: int = 8002
    max_batch: int = 8
    """Largest batch Triton's dynamic batcher forms (and the backend is built for)."""
    max_queue_delay_us: int = 1000
    """How long Triton holds a request for others to join its batch."""
    verbose: int = 0

    def __post_init__(self) -> None:
        ports = {"--grpc-port": self.grpc_port, "--http-port": self.http_port, "--metrics-port": self.metrics_port}
        for flag, port in ports.items():
            if not 1 <= port <= 65535:
                raise ConfigError(f"{flag} must be from 1 to 65535, got {port}")
        if len(set(ports.values())) != len(ports):
            raise ConfigError(f"the gRPC, HTTP and metrics ports must differ, got {self.grpc_port}, {self.http_port}, {self.metrics_port}")
        if not 1 <= self.max_batch <= 1024:
            raise ConfigError(f"--max-batch must be from 1 to 1024, got {self.max_batch}")
        if not 0 <= self.max_queue_delay_us <= 10_000_000:
            raise ConfigError(f"--max-queue-delay must be from 0 to 10000000 microseconds, got {self.max_queue_delay_us}")


def _check_port_free(host: str, port: int, flag: str) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise ConfigError(f"cannot listen on {host}:{port} ({flag}): {exc.strerror or exc}") from None


def _python_library_first() -> None:
    """Triton's Python backend stub links ``libpython3.X.so``: make it this interpreter's.

    Else the stub can load the system's libpython (Debian's 3.11.2) under this interpreter's
    standard library (a pyenv 3.11.7), and the model fails to load with an AttributeError from
    multiprocessing.  PyTriton appends its own libraries to ``LD_LIBRARY_PATH``.
    """
    libdir = sysconfig.get_config_var("LIBDIR")
    if not sysconfig.get_config_var("Py_ENABLE_SHARED") or not libdir or not os.path.isdir(libdir):
        return
    current = os.environ.get("LD_LIBRARY_PATH", "")
    if libdir not in current.split(":"):
        os.environ["LD_LIBRARY_PATH"] = f"{libdir}:{current}" if current else libdir


_LEGACY_WORKSPACE = re.compile(r"pid-\d+")
_WORKSPACE = re.compile(r"pid-\d+-[0-9a-f]{8}")


@dataclass
class _Workspace:
    """This server's PyTriton workspace (its model store, about 20 MB), ``$TMPDIR/streamer-serve/pid-N-RANDOM``.

    Beside it, ``pid-N-RANDOM.lock`` stays locked (``flock``) for the server's life.  A server
    killed with SIGKILL cannot remove its workspace, but the kernel drops its lock: the next
    ``streamer serve`` removes the workspaces whose lock it can take, and only those.  A lock,
    unlike the pid the name carries, says the truth about a server in another pid namespace
    sharing this temp folder, after its pid was reused, or beside a pid that is alive but not a
    serve; the random part keeps two servers (or a server and a reused pid) off one name.
    """

    path: Path
    lock: Path
    fd: int

    @classmethod
    def create(cls) -> "_Workspace":
        import fcntl
        import secrets

        root = Path(tempfile.gettempdir()) / "streamer-serve"
        root.mkdir(parents=True, exist_ok=True)
        _remove_stale_workspaces(root)
        name = f"pid-{os.getpid()}-{secrets.token_hex(4)}"
        lock = root / f"{name}.lock"
        # Locked before it has its name: another serve never sees this lock file unlocked.
        pending = root / f".{name}.lock.new"
        fd = os.open(pending, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.rename(pending, lock)
        return cls(root / name, lock, fd)  # PyTriton makes the folder

    def remove(self) -> None:
        import shutil

        shutil.rmtree(self.path, ignore_errors=True)
        self.lock.unlink(missing_ok=True)
        os.close(self.fd)


def _remove_stale_workspaces(root: Path) -> None:
    """Remove the workspaces of servers that are gone (see :class:`_Workspace`)."""
    import fcntl
    import shutil

    for lock in root.glob("pid-*.lock"):
        folder = lock.with_suffix("")
        if not _WORKSPACE.fullmatch(folder.name):
            continue
        try:
            fd = os.open(lock, os.O_RDWR)
        except OSError:
            continue  # removed by another serve meanwhile
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue  # its server runs
            shutil.rmtree(folder, ignore_errors=True)
            lock.unlink(missing_ok=True)
        finally:
            os.close(fd)
    for old in root.glob("pid-*"):  # workspaces of an earlier streamer, named by the pid alone
        if not old.is_dir() or not _LEGACY_WORKSPACE.fullmatch(old.name):
            continue
        try:
            os.kill(int(old.name[4:]), 0)
        except ProcessLookupError:
            shutil.rmtree(old, ignore_errors=True)
        except OSError:
            pass  # alive (another user's)


HANDSHAKE_S = 60.0
"""How long ``serve`` waits for the model's Python backend stub to hand over its config (see :func:`_run_triton`)."""


def _handshake_timed_out(exc: BaseException) -> bool:
    return isinstance(exc, TimeoutError) and "config file" in str(exc)


@contextlib.contextmanager
def _patient_handshake(timeout_s: float) -> Iterator[None]:
    """PyTriton's ``Model.setup`` with ``timeout_s`` for the stub's answer instead of its one second."""
    try:
        import pytriton.models.model as model_module
    except ImportError:
        yield
        return
    original = getattr(model_module, "get_config_from_handshake_server", None)
    if original is None:  # another PyTriton: _run_triton's retries still apply
        yield
        return

    def patient(socket_path: Any, timeout_s_: float = 1.0) -> Any:
        return original(socket_path, timeout_s=max(timeout_s_, timeout_s))

    model_module.get_config_from_handshake_server = patient
    try:
        yield
    finally:
        model_module.get_config_from_handshake_server = original


def _run_triton(triton: Any, timeout_s: float = HANDSHAKE_S) -> None:
    """``triton.run()``, patient with a model stub that is slow to hand over its config.

    Once tritonserver has loaded the model (and answers that it is ready), PyTriton fetches the
    config of the model's Python backend stub over a Unix socket in the workspace, and gives it
    one second (``get_config_from_handshake_server``'s default, which ``Model.setup`` does not
    change).  On a loaded machine the stub can take longer: ``run`` raised TimeoutError, serve
    stopped tritonserver, and a server that had answered "ready" a moment before went away.
    Here the stub gets ``timeout_s``; should a PyTriton without that function time out anyway,
    ``run`` again (the running tritonserver is kept; nothing of the model's side is set up before
    that answer) asks again until ``timeout_s`` has passed.
    """
    deadline = time.monotonic() + timeout_s
    with _patient_handshake(timeout_s):
        while True:
            try:
                triton.run()
                return
            except TimeoutError as exc:
                if not _handshake_timed_out(exc) or time.monotonic() >= deadline:
                    raise
                log.warning("the Triton model's stub was slow to hand over its config; asking again")
                time.sleep(1.0)


def _import_pytriton() -> Any:
    try:
        import pytriton.triton as triton_module
    except ImportError as exc:
        raise BackendUnavailable(f"streamer serve needs NVIDIA's PyTriton: pip install 'streamer[triton]' ({exc})") from None
    return triton_module


def serve(
    spec: "ModelSpec",
    weights: "WeightsChoice",
    backend_name: str,
    options: "BackendOptions",
    config: ServeConfig,
    *,
    out: TextIO = sys.stdout,
    on_ready: Callable[[], None] | None = None,
) -> int:
    """Serve ``spec`` until Ctrl-C / SIGTERM (KeyboardInterrupt); returns 0, or raises when Triton dies."""
    import numpy as np

    from engines.backends import create_backend
    from engines.backends.triton_backend import INPUT, OUTPUT, ServerIdentity, weights_tag
    from streamer.inference import InferenceWorker

    triton_module = _import_pytriton()
    from pytriton.decorators import batch as pytriton_batch
    from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor

    for flag, port in (("--grpc-port", config.grpc_port), ("--http-port", config.http_port), ("--metrics-port", config.metrics_port)):
        _check_port_free(config.host, port, flag)
    identity = ServerIdentity(spec.name, weights_tag(weights), options.precision)
    wire_dtype = np.float16 if options.precision == "fp16" else np.float32

    worker = InferenceWorker(lambda: create_backend(backend_name, spec, weights, options))
    try:
        loaded = worker.start().wait_loaded()
        description = loaded.description

        def run_on_backend(array: np.ndarray) -> np.ndarray:
            import torch

            def on_worker(backend: Any) -> np.ndarray:
                dtype = torch.float16 if backend.input_dtype_name == "fp16" else torch.float32
                x = torch.from_numpy(np.ascontiguousarray(array)).to(backend.input_device, dtype)
                logits = backend.infer(x)
                return logits.float().cpu().numpy()

            return worker.call(on_worker).result()

        @pytriton_batch
        def infer(**inputs: np.ndarray) -> dict[str, np.ndarray]:
            return {OUTPUT: run_on_backend(inputs[INPUT])}

        _python_library_first()
        logging.getLogger("pytriton").setLevel(logging.INFO if config.verbose >= 2 else logging.ERROR)
        # tritonserver's own log (its start-up tables, CUDA and NVML probes) goes to a file unless -v:
        # the terminal gets streamer's lines only.  The file is kept when the server fails.
        log_file: Path | None = None
        if config.verbose < 1:
            handle, name = tempfile.mkstemp(prefix="streamer-serve-", suffix=".log")
            os.close(handle)
            log_file = Path(name)
        triton_config = triton_module.TritonConfig(
            id=identity.server_id(),
            http_address=config.host,
            http_port=config.http_port,
            grpc_address=config.host,
            grpc_port=config.grpc_port,
            metrics_address=config.host,
            metrics_port=config.metrics_port,
            log_verbose=max(0, config.verbose - 1),
            exit_on_error=True,
            strict_readiness=True,
            log_file=log_file,
            allow_gpu_metrics=options.device.startswith("cuda"),
        )
        c, h, w = spec.preprocess.input_shape
        workspace = _Workspace.create()
        triton = triton_module.Triton(config=triton_config, workspace=workspace.path)
        try:
            triton.bind(
                model_name=spec.name,
                infer_func=infer,
                inputs=[Tensor(name=INPUT, dtype=wire_dtype, shape=(c, h, w))],
                outputs=[Tensor(name=OUTPUT, dtype=np.float32, shape=(spec.num_classes,))],
                config=ModelConfig(
                    max_batch_size=config.max_batch,
                    batcher=DynamicBatcher(max_queue_delay_microseconds=config.max_queue_delay_us),
                ),
                strict=True,
            )
            try:
                _run_triton(triton)
            except KeyboardInterrupt:
                raise
            except Exception as exc:  # noqa: BLE001 - PyTriton's own error types
                text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                where = f" (its log: {log_file})" if log_file is not None else ""
                log_file = None  # kept
                raise PipelineError(f"the Triton server did not start: {text}{where}") from None
            shown = f"[{config.host}]" if ":" in config.host else config.host
            print(
                f"streamer: serving {description} on Triton: grpc://{shown}:{config.grpc_port} http://{shown}:{config.http_port} "
                f"metrics http://{shown}:{config.metrics_port}/metrics; max batch {config.max_batch}, "
                f"queue delay {config.max_queue_delay_us} us; Ctrl-C stops",
                file=out,
                flush=True,
            )
            if on_ready is not None:
                on_ready()
            try:
                while triton.is_alive():
                    if not worker.alive:
                        raise PipelineError("the inference worker stopped")
                    time.sleep(0.5)
            except KeyboardInterrupt:
                raise
            where = f" (its log: {log_file})" if log_file is not None else ""
            log_file = None  # kept
            raise PipelineError(f"the Triton server exited{where}")
        finally:
            triton.stop()
            workspace.remove()
            if log_file is not None:
                log_file.unlink(missing_ok=True)
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM (the CLI turns both into KeyboardInterrupt)
        print("streamer: stopped the Triton server", file=out, flush=True)
        return 0
    finally:
        worker.close(timeout=10.0)


def triton_client_recipe(args: Any, options: "BackendOptions") -> "tuple[ModelSpec, WeightsChoice, Callable[[], Any]]":
    """``streamer run --backend triton``: the model spec, the weights choice and the backend recipe.

    The model defaults to the one the server says it serves (``--model`` may name it too); the
    weights are not needed here, only named (the server checks they are the ones it serves).
    """
    from engines.backends.triton_backend import TritonBackend, TritonUrl, served_identity
    from engines.models import WeightsChoice, get_spec

    if args.url is None:
        raise ConfigError("--backend triton needs --url grpc://HOST:PORT (or http://HOST:PORT) of a streamer serve")
    url = str(TritonUrl.parse(args.url))
    model = args.model
    if model is None:
        identity = served_identity(url, timeout_s=args.timeout)
        if identity is None:
            raise ConfigError(f"the Triton server at {url} was not started by streamer serve: name its model with --model")
        model = identity.model
    spec = get_spec(model)
    weights = WeightsChoice.parse(args.weights)
    timeout, retry = float(args.timeout), max(0.0, float(args.reconnect))

    def recipe() -> TritonBackend:
        return TritonBackend(spec, weights, options, url=url, connect_timeout_s=timeout, retry_s=retry)

    return spec, weights, recipe
