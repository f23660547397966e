"""A client of a Triton Inference Server that serves streamer's own model (``streamer serve``).

The network runs on the server; this backend preprocesses frames here (the same
``engines.preprocess`` code every local backend runs, so the tensor sent is the one a local
backend would feed its network) and sends the (N, 3, H, W) float batch over gRPC or HTTP with
``tritonclient``.  The server answers (N, classes) float32 logits, and top-k runs here.

``load`` connects, waits up to ``connect_timeout_s`` for the server and the model to be ready,
and checks that what the server serves is this run's ModelSpec: the model's name, its input and
output shapes, and, from the server id ``streamer serve`` sets, its weights and precision.

``infer`` survives a restart of the server: on a connection error or UNAVAILABLE it retries
with backoff for up to ``retry_s`` and sends the same batch again, so a file loses no frame.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import urlsplit

from engines.backends.base import Backend, BackendOptions
from engines.errors import BackendError, BackendUnavailable, ConfigError, EngineError

if TYPE_CHECKING:
    import torch

    from engines.models import ModelSpec, WeightsChoice

log = logging.getLogger(__name__)

INPUT = "input"
OUTPUT = "logits"
DEFAULT_PORTS = {"grpc": 8001, "http": 8000}
SERVER_ID_PREFIX = "streamer"
"""``streamer serve`` names its server ``streamer:MODEL:WEIGHTS:PRECISION`` (Triton's server id)."""
_DTYPES = {"fp32": "FP32", "fp16": "FP16", "int8": "FP32"}
"""The input tensor's type on the wire, by precision (an int8 engine takes float32 input)."""


@dataclass(frozen=True)
class TritonUrl:
    """``grpc://HOST:PORT`` or ``http://HOST:PORT`` (a bare ``HOST:PORT`` is gRPC)."""

    protocol: str
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> "TritonUrl":
        raw = text.strip()
        if "://" not in raw:
            raw = "grpc://" + raw
        parts = urlsplit(raw)
        protocol = parts.scheme.lower()
        if protocol not in DEFAULT_PORTS:
            raise ConfigError(f"--url must be grpc://HOST:PORT or http://HOST:PORT, got {text!r}")
        if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username or parts.password:
            raise ConfigError(f"--url takes only a scheme, a host and a port, got {text!r}")
        try:
            port = parts.port or DEFAULT_PORTS[protocol]
        except ValueError:
            raise ConfigError(f"--url has an invalid port: {text!r}") from None
        if not parts.hostname:
            raise ConfigError(f"--url has no host: {text!r}")
        return cls(protocol, parts.hostname, port)

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def __str__(self) -> str:
        return f"{self.protocol}://{self.address}"


@dataclass(frozen=True)
class ServerIdentity:
    """What a ``streamer serve`` server says it serves (parsed from its Triton server id)."""

    model: str
    weights: str
    precision: str

    def server_id(self) -> str:
        return f"{SERVER_ID_PREFIX}:{self.model}:{self.weights}:{self.precision}"

    @classmethod
    def parse(cls, server_id: str) -> "ServerIdentity | None":
        parts = server_id.split(":")
        if len(parts) != 4 or parts[0] != SERVER_ID_PREFIX:
            return None  # a Triton server that streamer serve did not start: only the model's shapes are checked
        return cls(parts[1], parts[2], parts[3])


def weights_tag(weights: "WeightsChoice") -> str:
    """The weights as the server id names them: ``imagenet``, ``random`` or ``file-SHA12``."""
    if weights.kind != "file" or weights.path is None:
        return weights.kind
    from engines.paths import sha256_file

    try:
        return "file-" + sha256_file(weights.path)[:12]
    except OSError as exc:
        raise ConfigError(f"cannot read --weights {weights.path}: {exc.strerror or exc}") from None


def _is_unavailable(exc: BaseException) -> bool:
    """A connection-level failure worth retrying (the server is restarting), not a bad request."""
    status = getattr(exc, "status", None)
    text = status() if callable(status) else status
    if text is not None:
        code = str(text).upper()
        return any(word in code for word in ("UNAVAILABLE", "DEADLINE_EXCEEDED")) or code in (
            "502", "503", "504",
        )  # fmt: skip
    if isinstance(exc, (ConnectionError, TimeoutError, OSError)):
        return True
    module = type(exc).__module__.split(".")[0]
    if module in ("gevent", "geventhttpclient", "http", "ssl", "socket", "urllib3"):
        return True  # the HTTP client's transport (geventhttpclient raises its own "connection closed.")
    message = str(exc).lower()
    return any(
        word in message
        for word in ("connection refused", "connection reset", "connection closed", "unavailable", "broken pipe", "timed out", "socket closed", "failed to connect")
    )


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:300]


class _Client:
    """The few calls this backend makes, over gRPC or HTTP."""

    def __init__(self, url: TritonUrl, timeout_s: float) -> None:
        self.url = url
        self.timeout_s = timeout_s
        try:
            if url.protocol == "grpc":
                import tritonclient.grpc as module
            else:
                import tritonclient.http as module
        except ImportError as exc:
            raise BackendUnavailable(f"the triton backend needs tritonclient[{url.protocol}]: pip install 'streamer[triton]' ({exc})") from None
        self.module: Any = module
        if url.protocol == "grpc":
            self.client: Any = module.InferenceServerClient(url=url.address)
        else:
            self.client = module.InferenceServerClient(
                url=url.address, connection_timeout=timeout_s, network_timeout=max(timeout_s, 60.0)
            )

    def _kw(self) -> dict[str, Any]:
        return {"client_timeout": self.timeout_s} if self.url.protocol == "grpc" else {}

    def live_and_ready(self) -> bool:
        return bool(self.client.is_server_live(**self._kw())) and bool(self.client.is_server_ready(**self._kw()))

    def server_id(self) -> str:
        meta = self.client.get_server_metadata(**self._kw())
        return str(meta.name if self.url.protocol == "grpc" else meta["name"])

    def model_ready(self, name: str) -> bool:
        return bool(self.client.is_model_ready(name, **self._kw()))

    def model_metadata(self, name: str) -> tuple[list[tuple[str, str, list[int]]], list[tuple[str, str, list[int]]]]:
        meta = self.client.get_model_metadata(name, **self._kw())
        if self.url.protocol == "grpc":
            ins = [(t.name, t.datatype, [int(d) for d in t.shape]) for t in meta.inputs]
            outs = [(t.name, t.datatype, [int(d) for d in t.shape]) for t in meta.outputs]
        else:
            ins = [(t["name"], t["datatype"], [int(d) for d in t["shape"]]) for t in meta["inputs"]]
            outs = [(t["name"], t["datatype"], [int(d) for d in t["shape"]]) for t in meta["outputs"]]
        return ins, outs

    def max_batch(self, name: str) -> int:
        config = self.client.get_model_config(name, **self._kw())
        if self.url.protocol == "grpc":
            return int(config.config.max_batch_size)
        return int(config.get("max_batch_size", 0))

    def infer(self, name: str, array: Any, datatype: str, timeout_s: float) -> Any:
        m = self.module
        tensor = m.InferInput(INPUT, list(array.shape), datatype)
        if self.url.protocol == "grpc":
            tensor.set_data_from_numpy(array)
            result = self.client.infer(name, [tensor], outputs=[m.InferRequestedOutput(OUTPUT)], client_timeout=timeout_s)
        else:
            tensor.set_data_from_numpy(array, binary_data=True)
            result = self.client.infer(name, [tensor], outputs=[m.InferRequestedOutput(OUTPUT, binary_data=True)])
        return result.as_numpy(OUTPUT)

    def close(self) -> None:
        try:
            self.client.close()
        except Exception:  # noqa: BLE001 - closing a dead channel
            pass


class TritonBackend(Backend):
    """Runs the network on a Triton Inference Server (``streamer serve``) through tritonclient."""

    name: ClassVar[str] = "triton"
    RETRY_FIRST_S: ClassVar[float] = 0.1
    RETRY_MAX_S: ClassVar[float] = 2.0

    def __init__(
        self,
        spec: "ModelSpec",
        weights: "WeightsChoice",
        options: BackendOptions | None = None,
        *,
        url: str | None = None,
        connect_timeout_s: float = 10.0,
        retry_s: float = 60.0,
    ) -> None:
        options = options or BackendOptions()
        # The network runs on the server: here only preprocessing runs, on the CPU.
        from dataclasses import replace

        super().__init__(spec, weights, replace(options, device="cpu"))
        if url is None:
            raise ConfigError("--backend triton needs --url grpc://HOST:PORT (or http://HOST:PORT) of a streamer serve")
        self.url = TritonUrl.parse(url)
        self.connect_timeout_s = connect_timeout_s
        self.retry_s = retry_s
        self._client: _Client | None = None
        self._input_datatype = _DTYPES[options.precision]
        self._server_max_batch = 1
        self.retries = 0
        """Requests sent again after a connection failure, over the backend's life."""

    @property
    def description(self) -> str:
        return f"{self.spec.name} | triton {self.precision} at {self.url}"

    @property
    def input_dtype_name(self) -> str:
        return "fp16" if self._input_datatype == "FP16" else "fp32"

    # -- lifecycle -----------------------------------------------------------------
    def _load_impl(self) -> None:
        client = _Client(self.url, self.connect_timeout_s)
        try:
            self._connect(client)
        except BaseException:
            client.close()
            raise
        self._client = client

    def _connect(self, client: _Client) -> None:
        where = f"Triton server at {self.url}"
        deadline = time.monotonic() + self.connect_timeout_s
        last: BaseException | None = None
        reachable = False
        while True:
            try:
                if client.live_and_ready():
                    break
                reachable = True
            except Exception as exc:  # noqa: BLE001 - tritonclient raises its own and grpc's types
                last = exc
                if not _is_unavailable(exc):
                    raise BackendUnavailable(f"{where}: {_short(exc)}") from None
            if time.monotonic() >= deadline:
                if reachable:
                    raise BackendUnavailable(f"{where} is not ready after {self.connect_timeout_s:g} s")
                reason = f" ({_short(last)})" if last is not None else ""
                raise BackendUnavailable(f"cannot reach the {where} within {self.connect_timeout_s:g} s{reason}")
            time.sleep(0.25)
        name = self.spec.name
        identity = ServerIdentity.parse(client.server_id())
        if not client.model_ready(name):
            serves = f" (it serves {identity.model})" if identity is not None else ""
            raise BackendUnavailable(f"{where} has no ready model {name!r}{serves}; start it with streamer serve --model {name}")
        if identity is not None:
            self._check_identity(identity, where)
        ins, outs = client.model_metadata(name)
        c, h, w = self.spec.preprocess.input_shape
        if len(ins) != 1 or ins[0][0] != INPUT or ins[0][2][1:] != [c, h, w] or ins[0][1] not in ("FP32", "FP16"):
            raise EngineError(f"{where}: model {name!r} takes {ins}, not one {INPUT} of shape (N, {c}, {h}, {w})")
        if len(outs) != 1 or outs[0][0] != OUTPUT or outs[0][2][1:] != [self.spec.num_classes]:
            raise EngineError(f"{where}: model {name!r} answers {outs}, not {OUTPUT} of shape (N, {self.spec.num_classes})")
        if ins[0][1] != self._input_datatype:
            raise ConfigError(f"{where}: model {name!r} takes {ins[0][1]} input; run with --precision {self._precision_for(ins[0][1])}")
        max_batch = client.max_batch(name)
        if max_batch < 1:
            raise EngineError(f"{where}: model {name!r} does not batch (max_batch_size {max_batch})")
        self._server_max_batch = max_batch  # a larger batch goes as several requests

    @staticmethod
    def _precision_for(datatype: str) -> str:
        return "fp16" if datatype == "FP16" else "fp32"

    def _check_identity(self, identity: ServerIdentity, where: str) -> None:
        mine = weights_tag(self.weights)
        if identity.weights != mine:
            raise ConfigError(
                f"{where} serves {identity.model} with {identity.weights} weights, this run asked for {mine} (--weights); "
                "labels would differ"
            )
        if identity.precision != self.precision:
            raise ConfigError(f"{where} serves {identity.model} at {identity.precision}; run with --precision {identity.precision}")

    def _infer_impl(self, batch: "torch.Tensor") -> "torch.Tensor":
        import numpy as np
        import torch

        client = self._client
        if client is None:  # pragma: no cover - guarded by Backend.infer
            raise BackendError("triton backend: not connected")
        dtype = np.float16 if self._input_datatype == "FP16" else np.float32
        whole = np.ascontiguousarray(batch.detach().to("cpu").numpy().astype(dtype, copy=False))
        step = self._server_max_batch
        parts = []
        for start in range(0, whole.shape[0], step):  # the server takes at most `step` frames a request
            array = whole[start : start + step]
            logits = self._send(client, array)
            if logits is None or logits.shape != (array.shape[0], self.spec.num_classes):
                shape = None if logits is None else logits.shape
                raise EngineError(f"Triton server at {self.url} answered logits of shape {shape} for a batch of {array.shape[0]}")
            parts.append(np.array(logits, dtype=np.float32))  # a copy: tritonclient's array is read-only
        return torch.from_numpy(parts[0] if len(parts) == 1 else np.concatenate(parts))

    def _send(self, client: _Client, array: Any) -> Any:
        """One request; on a connection failure, the same request again with backoff for up to ``retry_s``."""
        first_failure: float | None = None
        wait = self.RETRY_FIRST_S
        timeout = max(self.connect_timeout_s, 30.0)
        while True:
            try:
                logits = client.infer(self.spec.name, array, self._input_datatype, timeout)
                if first_failure is not None:
                    log.warning("Triton server at %s answers again after %.1f s", self.url, time.monotonic() - first_failure)
                return logits
            except Exception as exc:  # noqa: BLE001 - tritonclient raises its own and grpc's types
                now = time.monotonic()
                if not _is_unavailable(exc) and not self._model_missing(exc):
                    raise EngineError(f"Triton server at {self.url}: {_short(exc)}") from None
                if first_failure is None:
                    first_failure = now
                    log.warning("Triton server at %s unavailable (%s); retrying for up to %g s", self.url, _short(exc), self.retry_s)
                if now - first_failure >= self.retry_s:
                    raise BackendUnavailable(f"Triton server at {self.url} unavailable for {self.retry_s:g} s: {_short(exc)}") from None
                self.retries += 1
                time.sleep(min(wait, max(0.0, self.retry_s - (now - first_failure))))
                wait = min(wait * 2, self.RETRY_MAX_S)

    @staticmethod
    def _model_missing(exc: BaseException) -> bool:
        """A server that restarted answers before its model is loaded again, or while the model's Python
        backend stub does not answer Triton's health check yet ("Stub process '...' is not healthy", a 500):
        wait for it like a refused connection."""
        text = str(exc).lower()
        return (
            "unknown model" in text
            or "is not ready" in text
            or "not found" in text and "model" in text
            or "stub process" in text and "is not healthy" in text
        )

    def _close_impl(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


def served_identity(url: str, timeout_s: float = 10.0) -> ServerIdentity | None:
    """What the server at ``url`` says it serves, or None for a Triton server streamer serve did not start.

    Waits up to ``timeout_s`` for it to answer; raises :class:`BackendUnavailable` when it does not.
    """
    parsed = TritonUrl.parse(url)
    client = _Client(parsed, timeout_s)
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            try:
                return ServerIdentity.parse(client.server_id())
            except Exception as exc:  # noqa: BLE001
                if not _is_unavailable(exc):
                    raise BackendUnavailable(f"Triton server at {parsed}: {_short(exc)}") from None
                if time.monotonic() >= deadline:
                    raise BackendUnavailable(f"cannot reach the Triton server at {parsed} within {timeout_s:g} s ({_short(exc)})") from None
                time.sleep(0.25)
    finally:
        client.close()
