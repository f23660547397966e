"""Shared test helpers: sample paths, clip making, fake backends/sources/sinks, local servers, CLI runner.

The fake backends are deliberately named for what they do (``SlowBackend``,
``RaisingBackend``); they subclass the real :class:`engines.backends.base.Backend`
so the pipeline drives them exactly as it drives the torch backend.

The fault suite's package ``tests/faults/`` imports its general helpers from here (paths, frame
reading and counting, the clip encoder, the fake backends, the silent socket, ``cli_env``), also in
the child process of ``python -m faults.fakecli``: keep this module free of pytest and conftest.
"""

from __future__ import annotations

import http.server
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Sequence

import cv2
import numpy as np
import torch

from engines.backends.base import Backend, BackendOptions
from engines.models import WeightsChoice, get_spec
from streamer.sinks import VideoFileSink
from streamer.sources import Frame, Source

REPO = Path(__file__).resolve().parents[1]
TESTS = REPO / "tests"
SAMPLES = REPO / "samples"
SAMPLE_VIDEO = SAMPLES / "video" / "bigbuckbunny.mp4"
SAMPLE_IMAGES = SAMPLES / "images"
SAMPLE_LABELS = SAMPLES / "labels.json"
SAMPLE_VIDEO_FRAMES = 132  # documented in samples/README.md; test_sources checks it by decoding
MODEL = "efficientnet_lite0"  # the one model whose ImageNet weights ship offline

JSONL_KEYS = {"frame", "source", "pts_s", "topk", "latency_ms"}
TOPK_KEYS = {"index", "label", "score"}


# -- video helpers ------------------------------------------------------------
def read_frames(path: Path | str, limit: int | None = None, params: Sequence[int] = ()) -> list[np.ndarray]:
    """Every frame cv2 can decode from ``path`` (BGR uint8), up to ``limit``; ``params`` are
    ``cv2.VideoCapture`` open parameters (a URL's timeouts)."""
    cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG, list(params))
    frames: list[np.ndarray] = []
    try:
        while limit is None or len(frames) < limit:
            ok, image = cap.read()
            if not ok:
                break
            frames.append(image)
    finally:
        cap.release()
    return frames


def count_frames(path: Path | str) -> int:
    """Frames that actually decode from ``path`` (read to pictures, not the container's frame count)."""
    cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    n = 0
    try:
        while True:
            ok, _image = cap.read()
            if not ok:
                break
            n += 1
    finally:
        cap.release()
    return n


# A frame-dependent signal that survives lossy coding: the frame index as 8 big
# black/white blocks across the middle of the frame, away from the overlay bands.
_BITS = 8


def _stamp_boxes(width: int, height: int) -> list[tuple[int, int, int, int]]:
    side = max(8, width // (2 * _BITS + 1))
    y0 = height // 2 - side // 2
    return [(side * (2 * b + 1), y0, side, side) for b in range(_BITS)]


def stamp_index(image: np.ndarray, index: int) -> None:
    h, w = image.shape[:2]
    for b, (x, y, s, _) in enumerate(_stamp_boxes(w, h)):
        image[y : y + s, x : x + s] = 255 if (index >> b) & 1 else 0


def read_stamp(image: np.ndarray) -> int:
    h, w = image.shape[:2]
    value = 0
    for b, (x, y, s, _) in enumerate(_stamp_boxes(w, h)):
        q = s // 4
        centre = image[y + q : y + s - q, x + q : x + s - q]
        if float(centre.mean()) > 127:
            value |= 1 << b
    return value


def make_clip(
    dest: Path,
    frames: int,
    size: tuple[int, int] | None = (320, 180),
    fps: float = 25.0,
    fourcc: str = "mp4v",
    stamp: Callable[[np.ndarray, int], object] | None = None,
    source: Path = SAMPLE_VIDEO,
    loop: bool = False,
) -> Path:
    """Re-encode the first ``frames`` frames of ``source`` (the sample video) into ``dest``.

    Each frame is resized to ``size`` (kept as decoded for None) and, with ``stamp``, has its index
    drawn in by ``stamp(image, index)`` (:func:`stamp_index`, or :func:`faults.media.stamp`).
    With ``loop`` the source starts over at its end; without, it must hold ``frames`` frames."""
    cap = cv2.VideoCapture(str(source), cv2.CAP_FFMPEG)
    decoded: list[np.ndarray] = []  # kept for a loop
    writer = None
    written = 0
    try:
        while written < frames:
            ok, image = cap.read()
            if ok:
                if size is not None:
                    image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
                if loop:
                    decoded.append(image)
                    image = image.copy()
            elif loop and decoded:
                image = decoded[written % len(decoded)].copy()
            else:
                break
            if stamp is not None:
                stamp(image, written)
            if writer is None:
                h, w = image.shape[:2]
                writer = cv2.VideoWriter(str(dest), cv2.CAP_FFMPEG, cv2.VideoWriter_fourcc(*fourcc), fps, (w, h))
                assert writer.isOpened(), f"cannot write {dest} with {fourcc}"
            writer.write(image)
            written += 1
    finally:
        cap.release()
        if writer is not None:
            writer.release()
    assert written == frames, f"sample has only {written} frames"
    return dest


def sample_labels() -> dict[str, list[int]]:
    data = json.loads(SAMPLE_LABELS.read_text())
    return {k: v for k, v in data.items() if not k.startswith("_")}


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def files_in(folder: Path) -> list[str]:
    """Every entry in ``folder``, hidden ones included, sorted."""
    return sorted(p.name for p in folder.iterdir())


# -- fake backends --------------------------------------------------------------
class FakeBackend(Backend):
    """A real :class:`Backend` whose "network" is cheap and deterministic.

    Logits depend on the frame: the class is a fine-grained function of the mean
    of the preprocessed input, so consecutive frames of a clip usually differ.
    """

    name = "fake"

    def __init__(self, options: BackendOptions | None = None) -> None:
        super().__init__(get_spec(MODEL), WeightsChoice("random"), options or BackendOptions(device="cpu", batch=64))
        self.infer_calls = 0
        self.closed = False

    def _load_impl(self) -> None:
        pass

    def _warmup(self) -> None:
        # No network to warm up; warm the preprocessing instead (torch's first resize is slow).
        self.preprocess([np.zeros((240, 320, 3), dtype=np.uint8)])

    def _logits(self, batch: torch.Tensor) -> torch.Tensor:
        n = int(batch.shape[0])
        logits = torch.zeros((n, 1000))
        idx = (batch.reshape(n, -1).double().mean(dim=1) * 1e4).round().long() % 1000
        logits[torch.arange(n), idx] = 10.0
        return logits

    def _infer_impl(self, batch: torch.Tensor) -> torch.Tensor:
        self.infer_calls += 1
        return self._logits(batch)

    def _close_impl(self) -> None:
        self.closed = True


class SlowBackend(FakeBackend):
    """Sleeps ``delay`` seconds per inference call: a model slower than the source."""

    name = "slow"

    def __init__(self, delay: float, options: BackendOptions | None = None) -> None:
        super().__init__(options)
        self.delay = delay

    def _infer_impl(self, batch: torch.Tensor) -> torch.Tensor:
        time.sleep(self.delay)
        return super()._infer_impl(batch)


class RaisingBackend(FakeBackend):
    """Raises ``error`` on inference call number ``fail_on`` (1-based); ``failed_at`` says when
    (``time.monotonic()``)."""

    name = "raising"

    def __init__(self, fail_on: int, error: BaseException | None = None, options: BackendOptions | None = None) -> None:
        super().__init__(options)
        self.fail_on = fail_on
        self.error = error or RuntimeError("simulated inference failure")
        self.failed_at: float | None = None

    def _infer_impl(self, batch: torch.Tensor) -> torch.Tensor:
        if self.infer_calls + 1 >= self.fail_on:
            self.infer_calls += 1
            self.failed_at = time.monotonic()
            self._on_failure(self.failed_at)
            raise self.error
        return super()._infer_impl(batch)

    def _on_failure(self, at: float) -> None:
        """Called just before the error is raised (a subclass may record the moment elsewhere)."""


# -- fake sources and sinks --------------------------------------------------------
class FailingSource(Source):
    """Wraps a real source and raises ``error`` when asked for frame ``fail_at``."""

    def __init__(self, inner: Source, fail_at: int, error: BaseException | None = None) -> None:
        super().__init__(f"failing({inner.display_name})")
        self.inner = inner
        self.fail_at = fail_at
        self.error = error or OSError("simulated read failure")
        self.live = inner.live
        self.reads = 0
        self.closed = False

    def _open_impl(self) -> None:
        pass

    def _read_impl(self) -> Frame | None:
        if self.reads >= self.fail_at:
            raise self.error
        self.reads += 1
        frame = self.inner.read()
        if frame is not None:
            frame.index = self._index
            self._index += 1
        return frame

    def close(self) -> None:
        self.closed = True
        self.inner.close()


class StallingSource(Source):
    """Delivers ``frames`` frames of a real image, then blocks in read() for ``stall_s``."""

    def __init__(self, image: np.ndarray, frames: int, stall_s: float) -> None:
        super().__init__("stalling")
        self.image = image
        self.frames = frames
        self.stall_s = stall_s

    def _open_impl(self) -> None:
        pass

    def _read_impl(self) -> Frame | None:
        if self._index >= self.frames:
            time.sleep(self.stall_s)
            return None
        return self._make_frame(self.image.copy(), "stalling", 0.0)


class FailingVideoSink(VideoFileSink):
    """A real video sink whose write raises ``error`` on frame ``fail_at`` (0-based)."""

    def __init__(self, path: Path, fail_at: int, error: BaseException | None = None) -> None:
        super().__init__(path)
        self.fail_at = fail_at
        self.error = error or OSError(28, "No space left on device")
        self.aborted = False

    def write(self, image: np.ndarray, name: str) -> None:
        if self.frames_written >= self.fail_at:
            raise self.error
        super().write(image, name)

    def abort(self) -> None:
        self.aborted = True
        super().abort()


class FrameCounter:
    """A run observer (:class:`streamer.sinks.ResultSink`): the running count at each labelled frame, and how the run ended."""

    def __init__(self) -> None:
        self.counts: list[int] = []
        self.ended: str | None = None

    def write(self, frame: Frame, prediction: object, latency_ms: float) -> None:
        self.counts.append(len(self.counts) + 1)

    def finalize(self) -> None:
        self.ended = "finalized"

    def abort(self) -> None:
        self.ended = "aborted"

    def __len__(self) -> int:
        return len(self.counts)

    def __eq__(self, other: object) -> bool:
        return self.counts == other if isinstance(other, list) else NotImplemented


def run_with_deadline(fn, deadline_s: float):  # type: ignore[no-untyped-def]
    """Call ``fn()`` on a thread; fail the test (instead of hanging the suite) past ``deadline_s``.

    Returns (result, exception, seconds).
    """
    box: dict[str, object] = {}

    def target() -> None:
        start = time.perf_counter()
        try:
            box["result"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed back to the test
            box["error"] = exc
        box["seconds"] = time.perf_counter() - start

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(deadline_s)
    assert not thread.is_alive(), f"still running after {deadline_s} s: the error path hangs"
    return box.get("result"), box.get("error"), box["seconds"]


# -- local network servers -----------------------------------------------------------
class _RangeHandler(http.server.BaseHTTPRequestHandler):
    """Serves one in-memory file at any path, with byte ranges (as nginx or a camera would)."""

    payload = b""
    content_type = "video/mp4"

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - quiet
        pass

    def do_GET(self) -> None:  # noqa: N802
        data = self.payload
        size = len(data)
        start, end = 0, size - 1
        header = self.headers.get("Range")
        match = re.fullmatch(r"bytes=(\d*)-(\d*)", header.strip()) if header else None
        if match:
            if match.group(1):
                start = int(match.group(1))
            if match.group(2):
                end = min(int(match.group(2)), size - 1)
            if start >= size:
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{size}")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        else:
            self.send_response(200)
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Type", self.content_type)
        self.send_header("Content-Length", str(end - start + 1))
        self.end_headers()
        try:
            self.wfile.write(data[start : end + 1])
        except (BrokenPipeError, ConnectionResetError):
            pass


@contextmanager
def http_file_server(payload: bytes, max_seconds: float = 60.0) -> Iterator[int]:
    """Serve ``payload`` over HTTP on 127.0.0.1; yields the port. Stops itself after ``max_seconds``."""
    handler = type("Handler", (_RangeHandler,), {"payload": payload})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    guard = threading.Timer(max_seconds, server.shutdown)
    guard.daemon = True
    guard.start()
    try:
        yield int(server.server_address[1])
    finally:
        guard.cancel()
        server.shutdown()
        server.server_close()
        thread.join(5)


@contextmanager
def silent_tcp_server(max_seconds: float = 60.0) -> Iterator[int]:
    """Accepts connections and never answers (a dead camera behind a live socket); yields the port."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    sock.settimeout(0.05)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        deadline = time.monotonic() + max_seconds
        while not stop.is_set() and time.monotonic() < deadline:
            try:
                conn, _ = sock.accept()
                held.append(conn)
            except OSError:  # socket.timeout included
                continue

    thread = threading.Thread(target=accept, daemon=True, name="silent-server")
    thread.start()
    try:
        yield int(sock.getsockname()[1])
    finally:
        stop.set()
        thread.join(5)
        for conn in held:
            conn.close()
        sock.close()


def closed_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- CLI ------------------------------------------------------------------------------
def cli_env(*, importable: Sequence[Path] = (), **extra: str) -> dict[str, str]:
    """Environment for ``python -m streamer``: no display, the repo (then the folders in
    ``importable``) importable, the session's private cache folders (set by conftest or the fault
    suite in os.environ) and ``extra``. OpenCV's and FFmpeg's log levels are left unset, so the child
    runs with the product's own defaults, as a user's does."""
    env = dict(os.environ)
    for key in ("DISPLAY", "WAYLAND_DISPLAY", "OPENCV_LOG_LEVEL", "OPENCV_FFMPEG_LOGLEVEL"):
        env.pop(key, None)
    # The editable install in .venv maps ``streamer`` as a namespace package when run from
    # outside the repository; put the repository first so the real package is imported.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), *map(str, importable), env.get("PYTHONPATH")]))
    env.update(extra)
    return env


def streamer_cmd(*args: str | Path) -> list[str]:
    return [sys.executable, "-m", "streamer", *map(str, args)]


def run_cli(args: Sequence[str | Path], cwd: Path, timeout: float = 120.0, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(streamer_cmd(*args), cwd=cwd, env=cli_env(**env), capture_output=True, text=True, timeout=timeout)


def assert_clean_failure(result: subprocess.CompletedProcess[str]) -> str:
    """Non-zero exit, exactly one stderr line saying 'error', no traceback. Returns that line."""
    assert result.returncode != 0, f"expected failure, got 0; stderr:\n{result.stderr}"
    assert "Traceback" not in result.stderr, result.stderr
    error_lines = [line for line in result.stderr.splitlines() if "error" in line.lower()]
    assert len(error_lines) == 1, f"expected one error line, got {len(error_lines)}:\n{result.stderr}"
    return error_lines[0]


def start_run_with_live_view(cwd: Path, args: Sequence[str | Path], url_line: "re.Pattern[str]") -> tuple[subprocess.Popen[str], str, list[str]]:
    """``streamer run ARGS`` in the background, read until stderr prints the live view's URL (``url_line``'s
    group 1); returns the process, the URL and stderr's lines, which a thread keeps appending to."""
    import pytest

    process = subprocess.Popen(
        streamer_cmd("run", *args), cwd=cwd, env=cli_env(), stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    stderr = process.stderr
    assert stderr is not None
    lines: list[str] = []
    while True:
        line = stderr.readline()
        if not line:
            process.wait(30)
            pytest.fail("the run ended before serving its live view:\n" + "".join(lines))
        lines.append(line)
        match = url_line.search(line)
        if match:
            break
    threading.Thread(target=lambda: lines.extend(stderr.readlines()), daemon=True).start()  # keep draining
    return process, match.group(1), lines
