"""A local MJPEG-over-HTTP camera, and sockets that misbehave.

:class:`MjpegCamera` serves ``multipart/x-mixed-replace`` JPEG frames (what
most IP cameras and ``mjpg-streamer`` send) on 127.0.0.1 from its own threads.
OpenCV's FFmpeg backend reads it as ``http://127.0.0.1:PORT/stream.mjpg``
(FFmpeg's ``mpjpeg`` demuxer).  Every frame carries a serial number stamped
into the picture (:func:`faults.media.stamp`) that keeps counting across
restarts, so frames sent after a restart are recognisably new.

The camera can be stalled (connections stay open, nothing is sent: a hung
camera), killed (listener and every connection closed at once: a crashed or
unplugged camera) and restarted on the same port.  It is bounded: it sends at
most ``max_frames`` frames and shuts itself down after ``max_seconds``.

The sockets that misbehave, :func:`silent_server` (accepts, never answers) and
:func:`closed_port`, are :func:`helpers.silent_tcp_server` and
:func:`helpers.closed_port`.
"""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import cv2
import numpy as np

from faults.media import STAMP_BITS, stamp
from helpers import closed_port  # noqa: F401 - re-exported
from helpers import silent_tcp_server as silent_server  # noqa: F401 - re-exported

BOUNDARY = b"faultsframe"


@dataclass(frozen=True)
class Sent:
    serial: int
    at: float
    """``time.monotonic()`` when the frame's last byte was handed to the socket (CLOCK_MONOTONIC:
    comparable with the same clock in a child process)."""
    generation: int
    """How many times the camera had been (re)started when this frame was sent (1 = first run)."""


class MjpegCamera:
    """See the module docstring.  Use as a context manager; ``url`` is ready once entered."""

    def __init__(
        self,
        frames: Sequence[np.ndarray],
        fps: float = 25.0,
        max_frames: int = 3000,
        max_seconds: float = 120.0,
        quality: int = 85,
        stall_after: int | None = None,
    ) -> None:
        if not frames:
            raise ValueError("no frames to serve")
        self.frames = list(frames)
        self.period = 1.0 / fps
        self.max_frames = max_frames
        self.max_seconds = max_seconds
        self.quality = quality
        self.stall_after = stall_after
        """Stall by itself once this many frames have been sent in all (exact, whatever the timing)."""
        self.port = 0
        self.generation = 0
        self.sent: list[Sent] = []
        self.connections = 0
        """Client connections accepted over the camera's life (reconnect attempts that got through)."""
        self._lock = threading.Lock()
        self._serial = 0
        self._listener: socket.socket | None = None
        self._accept_thread: threading.Thread | None = None
        self._clients: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._running = threading.Event()
        self._stalled = threading.Event()
        self._closed = threading.Event()
        self._deadline = time.monotonic() + max_seconds

    # -- control -----------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/stream.mjpg"

    def start(self) -> "MjpegCamera":
        """Listen (on the same port as before, after a kill) and serve."""
        if self._closed.is_set():
            raise RuntimeError("camera closed")
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(8)
        listener.settimeout(0.05)
        self.port = int(listener.getsockname()[1])
        self._listener = listener
        self.generation += 1
        self._stalled.clear()
        self._running.set()
        self._accept_thread = self._spawn(self._accept_loop, listener, self.generation)
        return self

    def stall(self) -> None:
        """Keep every connection open and send nothing (a hung camera)."""
        self._stalled.set()

    def kill(self) -> None:
        """Close the listener and every connection at once (a crashed camera)."""
        self._running.clear()
        with self._lock:
            listener, self._listener = self._listener, None
            clients, self._clients = self._clients, []
        for sock in clients:
            _hard_close(sock)
        if listener is not None:
            _hard_close(listener)  # shutdown() stops the listening at once, even with accept() pending
        accept, self._accept_thread = self._accept_thread, None
        if accept is not None and accept is not threading.current_thread():
            accept.join(5)  # the port is free once the accept loop has let go of it

    def restart(self) -> None:
        self.kill()
        self.start()

    def close(self) -> None:
        self._closed.set()
        self.kill()
        for thread in self._threads:
            thread.join(5)

    def __enter__(self) -> "MjpegCamera":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- what was sent --------------------------------------------------------------
    def sent_in(self, generation: int) -> list[Sent]:
        with self._lock:
            return [s for s in self.sent if s.generation == generation]

    def last_sent(self) -> Sent | None:
        with self._lock:
            return self.sent[-1] if self.sent else None

    def wait_for_frames(self, count: int, timeout: float) -> bool:
        """Wait until ``count`` frames have been sent in all."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if len(self.sent) >= count:
                    return True
            time.sleep(0.02)
        return False

    # -- serving ------------------------------------------------------------------
    def _spawn(self, target: Callable[..., None], *args: object) -> threading.Thread:
        thread = threading.Thread(target=target, args=args, daemon=True, name="mjpeg-camera")
        self._threads.append(thread)
        thread.start()
        return thread

    def _live(self, generation: int) -> bool:
        if time.monotonic() > self._deadline:
            self.kill()  # bounded in time: stops itself
        return self._running.is_set() and self.generation == generation and not self._closed.is_set()

    def _accept_loop(self, listener: socket.socket, generation: int) -> None:
        while self._live(generation):
            try:
                conn, _addr = listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            with self._lock:
                if not self._running.is_set() or self.generation != generation:
                    _hard_close(conn)
                    return
                self._clients.append(conn)
                self.connections += 1
            self._spawn(self._serve, conn, generation)

    def _next_jpeg(self) -> tuple[int, bytes] | None:
        with self._lock:
            if self._serial >= min(self.max_frames, 1 << STAMP_BITS):
                return None
            serial = self._serial
            self._serial += 1
        image = stamp(self.frames[serial % len(self.frames)].copy(), serial)
        ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, self.quality])
        assert ok
        return serial, data.tobytes()

    def _serve(self, conn: socket.socket, generation: int) -> None:
        conn.settimeout(2.0)
        try:
            request = b""
            while b"\r\n\r\n" not in request and len(request) < 65536:
                chunk = conn.recv(4096)
                if not chunk:
                    return
                request += chunk
            conn.sendall(
                b"HTTP/1.0 200 OK\r\nCache-Control: no-cache\r\nConnection: close\r\n"
                b"Content-Type: multipart/x-mixed-replace; boundary=" + BOUNDARY + b"\r\n\r\n"
            )
            due = time.monotonic()
            while self._live(generation):
                if self._stalled.is_set():
                    time.sleep(0.02)
                    due = time.monotonic()
                    continue
                item = self._next_jpeg()
                if item is None:
                    return  # bounded in frames: hang up
                serial, jpeg = item
                part = (
                    b"--" + BOUNDARY + b"\r\nContent-Type: image/jpeg\r\nContent-Length: "
                    + str(len(jpeg)).encode() + b"\r\n\r\n" + jpeg + b"\r\n"
                )  # fmt: skip
                conn.sendall(part)
                with self._lock:
                    self.sent.append(Sent(serial, time.monotonic(), generation))
                    if self.stall_after is not None and len(self.sent) == self.stall_after:
                        self._stalled.set()
                due += self.period
                delay = due - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                else:
                    due = time.monotonic()  # fell behind: do not burst to catch up
        except OSError:
            return
        finally:
            with self._lock:
                if conn in self._clients:
                    self._clients.remove(conn)
            _hard_close(conn)


def _hard_close(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()
