"""A live view over HTTP: ``-o http://HOST:PORT/``.

``/`` is a page showing the annotated stream and the latest labels,
``/stream.mjpg`` the stream as multipart MJPEG, ``/events`` one server-sent
event (a JSON object, as in the predictions file) per labelled frame.

* Loopback (127.0.0.1, ::1, localhost) needs no token unless one is given
  (requests must then name a loopback host, against DNS rebinding);
  any other address needs an access token (``--token``, or one generated
  and printed once with the URL), checked on every request (``?token=``,
  ``Authorization: Bearer``, or ``X-Streamer-Token``); 403 otherwise.
* The render thread only swaps the newest frame into a slot; one encoder
  thread JPEG-encodes it once; every viewer's own thread sends the newest
  encoded frame when it is ready for one, so a slow viewer skips frames and
  never slows the pipeline or the other viewers.  Events go to a bounded ring:
  a viewer that falls more than its length behind skips the oldest.
* The server starts when the run opens its outputs and stops when they are
  finalised or aborted (end of the run, an error, Ctrl-C), closing every
  connection.

:class:`HttpView` is the frame :class:`~streamer.sinks.base.Sink`; its
:attr:`HttpView.events` is the result observer that feeds ``/events``; the run
must be handed both (``make_http_view`` builds them).
"""

from __future__ import annotations

import hmac
import http.server
import ipaddress
import json
import logging
import secrets
import socket
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TextIO
from urllib.parse import parse_qs, urlsplit

import numpy as np

from engines.errors import ConfigError, SinkError
from streamer.sinks.base import Sink
from streamer.sinks.predictions import prediction_record

if TYPE_CHECKING:
    from engines.backends.base import Prediction
    from streamer.sources import Frame

log = logging.getLogger(__name__)

BOUNDARY = "streamerframe"
JPEG_QUALITY = 80
EVENT_RING = 256
"""Events kept for viewers that are behind; one that falls further behind skips the oldest."""
_WAIT_S = 0.5
"""Viewer threads wake this often to notice the end of the run."""
_SEND_TIMEOUT_S = 30.0
"""A viewer that accepts no data for this long is disconnected."""


@dataclass(frozen=True)
class HttpAddress:
    host: str
    port: int

    @property
    def loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False

    @property
    def key(self) -> str:
        """Identifies the listening socket (two outputs on one address are refused)."""
        return f"http://{self.host}:{self.port}/"


def looks_like_http_output(text: str) -> bool:
    return text.lower().startswith(("http://", "https://"))


def parse_http_output(text: str) -> HttpAddress:
    """``http://HOST:PORT/`` -> the address to listen on; one-line ConfigError otherwise."""
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as exc:
        raise ConfigError(f"{text}: not a valid http://HOST:PORT/ address ({exc})") from None
    if parts.scheme.lower() != "http":
        raise ConfigError(f"{text}: the live view speaks plain http:// (put a TLS proxy in front for https)")
    if not parts.hostname:
        raise ConfigError(f"{text}: needs a host to listen on, e.g. http://127.0.0.1:8080/")
    if port is None:
        raise ConfigError(f"{text}: needs a port, e.g. http://{parts.hostname}:8080/")
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username or parts.password:
        raise ConfigError(f"{text}: give only http://HOST:PORT/ (the view is served at /)")
    return HttpAddress(parts.hostname, port)


class _Mailbox:
    """The newest item and its sequence number, behind a condition variable."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.seq = 0
        self.item: bytes | None = None
        self.closed = False

    def publish(self, item: bytes) -> None:
        with self.cond:
            self.item = item
            self.seq += 1
            self.cond.notify_all()

    def wait_newer(self, seen: int, timeout: float) -> tuple[int, bytes | None]:
        """(seq, item) once seq > seen; (seen, None) on timeout or when closed."""
        with self.cond:
            if self.seq <= seen and not self.closed:
                self.cond.wait(timeout)
            if self.closed or self.seq <= seen:
                return seen, None
            return self.seq, self.item

    def close(self) -> None:
        with self.cond:
            self.closed = True
            self.cond.notify_all()


class _EventRing:
    """Server-sent events, numbered; viewers read what they have not seen yet."""

    def __init__(self, size: int = EVENT_RING) -> None:
        self.cond = threading.Condition()
        self.items: deque[tuple[int, bytes]] = deque(maxlen=size)
        self.seq = 0
        self.closed = False

    def publish(self, data: bytes) -> None:
        with self.cond:
            self.seq += 1
            self.items.append((self.seq, data))
            self.cond.notify_all()

    def wait_after(self, seen: int, timeout: float) -> tuple[int, list[bytes]]:
        with self.cond:
            if self.seq <= seen and not self.closed:
                self.cond.wait(timeout)
            if self.closed:
                return seen, []
            fresh = [data for seq, data in self.items if seq > seen]
            return self.seq, fresh

    def close(self) -> None:
        with self.cond:
            self.closed = True
            self.cond.notify_all()


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True

    def __init__(self, address: HttpAddress, view: "_Served") -> None:
        self.view = view
        if ":" in address.host:
            self.address_family = socket.AF_INET6
        super().__init__((address.host, address.port), _Handler)

    def server_bind(self) -> None:
        if self.address_family == socket.AF_INET6:
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        super().server_bind()


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    server_version = "streamer"
    sys_version = ""

    def log_message(self, format: str, *args: object) -> None:
        log.debug("http %s: %s", self.address_string(), format % args)

    def setup(self) -> None:
        super().setup()
        self.connection.settimeout(_SEND_TIMEOUT_S)
        self.server.view._track(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        except OSError:
            pass
        self.server.view._untrack(self.connection)

    def _authorised(self, query: dict[str, list[str]]) -> bool:
        token = self.server.view.token
        if token is None:
            # Loopback without a token: only requests addressed to a loopback name, so that a web
            # page whose own name resolves to 127.0.0.1 (DNS rebinding) cannot read the view.
            host = (self.headers.get("Host") or "").strip().lower()
            name = host[1:].split("]", 1)[0] if host.startswith("[") else host.rsplit(":", 1)[0]
            return HttpAddress(name, 0).loopback
        given = (query.get("token") or [""])[0]
        header = self.headers.get("Authorization", "")
        if header.lower().startswith("bearer "):
            given = given or header[7:].strip()
        given = given or self.headers.get("X-Streamer-Token", "").strip()
        return hmac.compare_digest(given.encode(), token.encode())

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        if not self._authorised(parse_qs(parts.query)):
            self._send_plain(403, "forbidden: this live view needs its access token (?token=...)\n")
            return
        try:
            route = self.server.view.route(parts.path)
            if route is None:
                self._send_plain(404, "not found\n")
            elif route[0] == "page":
                self._send_page(route[1])
            elif route[0] == "json":
                self._send_page(route[1], "application/json")
            elif route[0] == "redirect":
                self.send_response(301)
                self.send_header("Location", route[1] + (f"?{parts.query}" if parts.query else ""))
                self.send_header("Content-Length", "0")
                self.end_headers()
            elif route[0] == "stream":
                self._send_stream(route[1])
            else:
                self._send_events(route[1])
        except (OSError, ValueError):  # the viewer left (or we closed it at the end of the run)
            self.close_connection = True

    def _send_plain(self, code: int, text: str) -> None:
        body = text.encode()
        self.send_response(code)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def _send_page(self, body: bytes, kind: str = "text/html") -> None:
        self.send_response(200)
        self.send_header("Content-Type", f"{kind}; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("Referrer-Policy", "no-referrer")
        self.end_headers()
        self.wfile.write(body)

    def _send_stream(self, view: "HttpView") -> None:
        self.send_response(200)
        self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY}")
        self.send_header("Cache-Control", "no-store")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        seen = 0
        while not view.stopping:
            seen_now, jpeg = view.frames.wait_newer(seen, _WAIT_S)
            if jpeg is None:
                continue
            seen = seen_now
            head = f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(jpeg)}\r\n\r\n".encode()
            self.wfile.write(head + jpeg + b"\r\n")
            self.wfile.flush()

    def _send_events(self, view: "HttpView") -> None:
        seen = view.events_ring.seq  # from now on, not the backlog
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-store")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        self.wfile.write(b"retry: 2000\n\n")
        self.wfile.flush()
        while not view.stopping:
            seen, fresh = view.events_ring.wait_after(seen, _WAIT_S)
            if fresh:
                self.wfile.write(b"".join(b"data: " + data + b"\n\n" for data in fresh))
                self.wfile.flush()


class HttpEvents:
    """The :class:`~streamer.sinks.base.ResultSink` half of the live view: one event per labelled frame."""

    def __init__(self, view: HttpView) -> None:
        self._view = view

    def write(self, frame: Frame, prediction: Prediction, latency_ms: float) -> None:
        self._view.events_ring.publish(json.dumps(prediction_record(frame, prediction, latency_ms)).encode())

    def finalize(self) -> None:
        self._view.stop()

    def abort(self) -> None:
        self._view.stop()


class _Served:
    """What a one-stream view and a hub of several share: the address, the token rules, the one
    HTTP server and the connections it has open."""

    def __init__(self, address: HttpAddress, token: str | None = None, announce: TextIO | None = None) -> None:
        if token is not None and not token.strip():
            raise ConfigError("--token must not be empty")
        self.address = address
        self.generated_token = token is None and not address.loopback
        self.token: str | None = secrets.token_urlsafe(24) if self.generated_token else token
        self.stopping = False
        self.url = ""
        """Where to watch (with the token), once open."""
        self.port = address.port
        self._announce = announce
        self._server: _Server | None = None
        self._serve: threading.Thread | None = None
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()

    @property
    def description(self) -> str:
        return f"live view {self.address.key}"

    def route(self, path: str) -> "tuple[str, Any] | None":
        raise NotImplementedError

    def _listen(self) -> str:
        """Start the server on the address (its thread too); returns the base URL (the machine's name
        for a wildcard address)."""
        try:
            server = _Server(self.address, self)
        except OSError as exc:
            reason = "address already in use" if exc.errno in (98, 48, 10048) else (exc.strerror or str(exc))
            raise SinkError(f"{self.address.key}: cannot listen ({reason})") from None
        self._server = server
        host, port = str(server.server_address[0]), int(server.server_address[1])
        self.port = port
        if host in ("0.0.0.0", "::"):  # every address: name the machine, not the wildcard
            host = socket.gethostname()
        shown = f"[{host}]" if ":" in host else host
        self._serve = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2}, name="http-view", daemon=True)
        self._serve.start()
        return f"http://{shown}:{port}/"

    def _say_where(self, what: str) -> None:
        where = "" if self.address.loopback else " (anyone with this address and token can watch)"
        print(f"streamer: {what} at {self.url}{where}", file=self._announce or sys.stderr, flush=True)

    def _close_server(self, server: "_Server | None", deadline: float) -> None:
        """Stop ``server`` (taken from ``_server`` by the caller), cut every viewer's connection, wait for its thread."""
        if server is not None:
            server.shutdown()
            server.server_close()
        with self._connections_lock:
            connections = list(self._connections)
        for conn in connections:  # a viewer stuck in a send (a slow reader) is cut off here
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self._serve is not None:
            self._serve.join(timeout=max(0.0, deadline - time.monotonic()))

    @property
    def viewers(self) -> int:
        """Connections open now (page, stream and events requests)."""
        with self._connections_lock:
            return len(self._connections)

    def _track(self, conn: socket.socket) -> None:
        with self._connections_lock:
            self._connections.add(conn)

    def _untrack(self, conn: socket.socket) -> None:
        with self._connections_lock:
            self._connections.discard(conn)


class HttpView(_Served, Sink):
    """The live view's frame sink and server; see the module docstring."""

    def __init__(self, address: HttpAddress, token: str | None = None, announce: TextIO | None = None) -> None:
        super().__init__(address, token, announce)
        self.events = HttpEvents(self)
        self.frames = _Mailbox()
        self.events_ring = _EventRing()
        self.page = _load_page()
        self._raw = _Mailbox()
        self._raw_image: np.ndarray | None = None
        self._raw_lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        """The encoder's (the server's is ``_serve``)."""
        self.frames_encoded = 0

    def route(self, path: str) -> "tuple[str, Any] | None":
        """What the server sends for ``path``: the page, this view's stream or its events."""
        if path in ("/", "/index.html"):
            return ("page", self.page)
        if path == "/stream.mjpg":
            return ("stream", self)
        if path == "/events":
            return ("events", self)
        return None

    def open(self, frame_size: tuple[int, int], fps: float) -> HttpView:
        if self._server is not None:
            return self
        self.url = self._listen() + (f"?token={self.token}" if self.token else "")
        encode = threading.Thread(target=self._encode_loop, name="http-encoder", daemon=True)
        self._threads = [encode]
        encode.start()
        self._say_where("live view")
        return self

    def write(self, image: np.ndarray, name: str) -> None:
        """Hand the newest frame to the encoder thread; never blocks on it or on viewers."""
        with self._raw_lock:
            self._raw_image = image
        self._raw.publish(b"")

    def _encode_loop(self) -> None:
        import cv2

        seen = 0
        params = [int(cv2.IMWRITE_JPEG_QUALITY), JPEG_QUALITY]
        while not self.stopping:
            seen_now, item = self._raw.wait_newer(seen, _WAIT_S)
            if item is None:
                continue
            seen = seen_now
            with self._raw_lock:
                image, self._raw_image = self._raw_image, None
            if image is None:
                continue
            ok, jpeg = cv2.imencode(".jpg", image, params)
            if ok:
                self.frames.publish(jpeg.tobytes())
                self.frames_encoded += 1

    def stop(self) -> None:
        """Stop serving and close every viewer's connection (idempotent)."""
        if self.stopping:
            return
        self.stopping = True
        for box in (self._raw, self.frames):
            box.close()
        self.events_ring.close()
        server, self._server = self._server, None
        deadline = time.monotonic() + 2.0
        self._close_server(server, deadline)
        for thread in self._threads:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
        self._threads = []

    def finalize(self) -> None:
        self.stop()

    def abort(self) -> None:
        self.stop()


class HubStreamView(HttpView):
    """One stream of an :class:`HttpHub`: the frame sink (and ``.events``) of that stream's run.

    Its page, MJPEG stream and events are served at ``/s/NAME/`` by the hub's one server; it
    stops (and its viewers are let go) when its run finalises or aborts it.
    """

    def __init__(self, hub: "HttpHub", name: str) -> None:
        super().__init__(hub.address, token=hub.token)
        self.hub = hub
        self.name = name
        self.token = hub.token
        self.generated_token = False

    @property
    def description(self) -> str:
        return f"live view {self.hub.address.key}s/{self.name}/"

    def open(self, frame_size: tuple[int, int], fps: float) -> "HubStreamView":
        if self._threads or self.stopping:
            return self
        self.hub.open()
        self.url = f"{self.hub.base_url}s/{self.name}/" + (f"?token={self.token}" if self.token else "")
        encode = threading.Thread(target=self._encode_loop, name="http-encoder", daemon=True)
        self._threads = [encode]
        encode.start()
        return self

    def stop(self) -> None:
        if self.stopping:
            return
        self.stopping = True
        for box in (self._raw, self.frames):
            box.close()
        self.events_ring.close()
        for thread in self._threads:
            thread.join(timeout=2.0)
        self._threads = []
        self.hub._stream_stopped()


class HttpHub(_Served):
    """A live view of several streams on one address (``-o http://HOST:PORT/`` with several sources).

    ``/`` lists every stream (its MJPEG image and a link to its page); ``/streams.json``
    the same as JSON; ``/s/NAME/`` is the one-stream page (as for a single source) with
    ``/s/NAME/stream.mjpg`` and ``/s/NAME/events``.  The token rules are the single view's.
    The server starts with the first stream's run and stops when every stream's view has
    stopped (or :meth:`stop`).
    """

    def __init__(self, address: HttpAddress, names: "list[str]", token: str | None = None, announce: TextIO | None = None) -> None:
        super().__init__(address, token, announce)
        self.base_url = ""
        self._lock = threading.Lock()
        self.streams: dict[str, HubStreamView] = {}
        for name in names:
            self.streams[name] = HubStreamView(self, name)
        self.page = self._index_page()

    def view(self, name: str) -> HubStreamView:
        return self.streams[name]

    def _index_page(self) -> bytes:
        import html

        items = "\n".join(
            f'<figure data-stream="{html.escape(n)}"><a class="page" href="s/{html.escape(n)}/">'
            f'<img alt="{html.escape(n)}" data-src="s/{html.escape(n)}/stream.mjpg"></a>'
            f"<figcaption>{html.escape(n)}</figcaption></figure>"
            for n in self.streams
        )
        return (
            "<!doctype html><html><head><meta charset=\"utf-8\"><title>streamer: "
            f"{len(self.streams)} streams</title><style>body{{font-family:sans-serif;background:#111;color:#eee;margin:1em}}"
            "main{display:grid;grid-template-columns:repeat(auto-fill,minmax(320px,1fr));gap:1em}"
            "figure{margin:0}img{width:100%;background:#222}a{color:#9cf}</style></head>"
            f'<body data-streams="{len(self.streams)}"><h1>streamer: {len(self.streams)} streams</h1><main>\n{items}\n</main>'
            "<script>const q=location.search;for(const f of document.querySelectorAll('figure')){"
            "const img=f.querySelector('img');img.src=img.dataset.src+q;const a=f.querySelector('a');a.href=a.getAttribute('href')+q;}"
            "</script></body></html>"
        ).encode()

    def route(self, path: str) -> "tuple[str, Any] | None":
        if path in ("/", "/index.html"):
            return ("page", self.page)
        if path == "/streams.json":
            listing = [
                {"name": n, "page": f"/s/{n}/", "stream": f"/s/{n}/stream.mjpg", "events": f"/s/{n}/events", "live": not v.stopping}
                for n, v in self.streams.items()
            ]
            return ("json", json.dumps({"streams": listing}).encode())
        parts = path.split("/")  # "", "s", NAME, rest
        if len(parts) < 3 or parts[1] != "s" or parts[2] not in self.streams:
            return None
        view = self.streams[parts[2]]
        rest = "/".join(parts[3:]) if len(parts) > 3 else None
        if rest is None:
            return ("redirect", f"/s/{parts[2]}/")
        return view.route("/" + rest)

    def open(self) -> "HttpHub":
        """Start serving (once; the first stream's run calls it)."""
        with self._lock:
            if self._server is not None or self.stopping:
                return self
            self.base_url = self._listen()
            self.url = self.base_url + (f"?token={self.token}" if self.token else "")
        self._say_where(f"live view of {len(self.streams)} streams")
        return self

    def _stream_stopped(self) -> None:
        if all(v.stopping for v in self.streams.values()):
            self.stop()

    def stop(self) -> None:
        """Stop every stream's view and the server, closing every connection (idempotent)."""
        with self._lock:
            if self.stopping:
                return
            self.stopping = True
            server, self._server = self._server, None
        for view in self.streams.values():
            view.stop()
        self._close_server(server, time.monotonic() + 2.0)


def _load_page() -> bytes:
    from importlib.resources import files

    return files("streamer.web").joinpath("index.html").read_bytes()


def make_http_view(output: str, token: str | None = None) -> HttpView:
    """The live view for ``-o http://HOST:PORT/`` (add ``view.events`` to the run's observers)."""
    return HttpView(parse_http_output(output), token=token)


__all__ = ["HttpAddress", "HttpEvents", "HttpHub", "HttpView", "HubStreamView", "looks_like_http_output", "make_http_view", "parse_http_output"]
