"""The sink interfaces (frame sinks and result observers), output-path checks, and the sinks that wrap others."""

from __future__ import annotations

import logging
import os
from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from engines.errors import SinkError

if TYPE_CHECKING:

    from engines.backends.base import Prediction
    from streamer.sources import Frame
    from streamer.stats import Histogram


log = logging.getLogger(__name__)

VIDEO_EXTENSIONS = {".mp4": "h264", ".mkv": "h264", ".avi": "mjpeg", ".mov": "h264", ".webm": "vp9"}
"""Video file extensions and their default codec (streamer/sinks/video.py)."""
IMAGE_OUTPUT_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp"})


class Sink(ABC):
    """Receives annotated BGR frames in order."""

    def open(self, frame_size: tuple[int, int], fps: float) -> "Sink":  # noqa: B027
        """Prepare to write frames of ``frame_size`` (width, height); fail early."""
        return self

    @abstractmethod
    def write(self, image: np.ndarray, name: str) -> None: ...

    def prepare(self, image: np.ndarray) -> Any:
        """Per-frame work for :meth:`write` that the caller may run on its own thread first; ``write``
        takes either the result or the plain image. The pipeline's render thread calls it, so behind a
        :class:`ThreadedSink` the video file's BGR -> I420 conversion runs beside the writer's encoding."""
        return image

    def finalize(self) -> None:  # noqa: B027
        """Complete the output (called on success and on Ctrl-C)."""

    def abort(self) -> None:  # noqa: B027
        """Discard a partial output (called when the run failed)."""

    @property
    def stop_requested(self) -> bool:
        """True once the user asked to quit (window: q or Esc)."""
        return False

    @property
    def description(self) -> str:
        return type(self).__name__

    @property
    def write_times(self) -> "Histogram | None":
        """Seconds per ``inner.write``, if this sink times its own writes (on its own thread); else None."""
        return None


class ResultSink(Protocol):
    """Receives every labelled frame after it was written (predictions file, progress bar, the bench's recorder).

    The run that is handed one owns it: it calls ``finalize`` when the run's
    outputs are kept (success, Ctrl-C, a lost camera) and ``abort`` when they
    are discarded, exactly once.
    """

    def write(self, frame: "Frame", prediction: "Prediction", latency_ms: float) -> None: ...

    def finalize(self) -> None: ...

    def abort(self) -> None: ...


def check_output_path(path: Path, overwrite: bool, allow_stream: bool = False) -> None:
    """Refuse destinations we must not write: existing files, symlinks, missing or read-only folders,
    and anything that is not a regular file (a device, a FIFO, a socket), which is never replaced.

    With ``allow_stream`` an existing character device or FIFO (``/dev/null``, a named pipe) is
    accepted: the caller writes to it in place (no temporary file, no rename, no --overwrite needed).
    """
    import stat

    from streamer.outputs import is_stream

    if allow_stream and is_stream(path):
        if not os.access(path, os.W_OK):
            raise SinkError(f"{path}: not writable")
        return
    if path.is_symlink():
        raise SinkError(f"{path}: destination is a symbolic link; refusing to write through it")
    if path.exists():
        if path.is_dir():
            raise SinkError(f"{path}: is a folder")
        if not stat.S_ISREG(path.stat().st_mode):
            raise SinkError(f"{path}: not a regular file (a device, pipe or socket); refusing to replace it")
        if not overwrite:
            raise SinkError(f"{path} exists; pass --overwrite to replace it")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise SinkError(f"{parent}: output folder does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise SinkError(f"{parent}: output folder is not writable")


class NullSink(Sink):
    """Discards frames (headless runs, benchmarks)."""

    @property
    def description(self) -> str:
        return "none"

    def write(self, image: np.ndarray, name: str) -> None:
        pass


class TeeSink(Sink):
    """Sends every frame to several sinks (``-o out.mp4 --show``)."""

    def __init__(self, sinks: list[Sink]) -> None:
        self.sinks = sinks

    @property
    def description(self) -> str:
        return " + ".join(s.description for s in self.sinks)

    def open(self, frame_size: tuple[int, int], fps: float) -> "TeeSink":
        opened: list[Sink] = []
        try:
            for sink in self.sinks:
                sink.open(frame_size, fps)
                opened.append(sink)
        except BaseException:
            for sink in opened:
                sink.abort()
            raise
        return self

    def write(self, image: np.ndarray, name: str) -> None:
        for sink in self.sinks:
            sink.write(image, name)

    def finalize(self) -> None:
        errors = []
        for sink in self.sinks:
            try:
                sink.finalize()
            except SinkError as exc:
                errors.append(exc)
        if errors:
            raise errors[0]

    def abort(self) -> None:
        for sink in self.sinks:
            sink.abort()

    @property
    def stop_requested(self) -> bool:
        return any(s.stop_requested for s in self.sinks)

    @property
    def write_times(self) -> "Histogram | None":
        """The first inner sink's own timing (the file writer; a window's writes are not timed then)."""
        return next((t for t in (s.write_times for s in self.sinks) if t is not None), None)


class ThreadedSink(Sink):
    """Runs another sink's writes on a writer thread, behind a bounded queue.

    Encoding is the slowest CPU stage of file mode; on its own thread it overlaps
    with drawing the next frame; the inner sink's :meth:`Sink.prepare` (the
    video file's BGR -> I420 conversion) is the caller's to run, on its own thread.
    Frames are written in order; a write error is raised by the next call.
    It times each inner write on the writer thread (:attr:`write_times`).
    """

    def __init__(self, inner: Sink, queue_size: int = 16) -> None:
        import queue
        import threading

        from streamer.stats import Histogram

        self.inner = inner
        self._write_times = Histogram()
        self._times_lock = threading.Lock()
        self._queue: "queue.Queue[tuple[Any, str] | None]" = queue.Queue(queue_size)
        self._error: BaseException | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def description(self) -> str:
        return self.inner.description

    @property
    def frames_written(self) -> int:
        return int(getattr(self.inner, "frames_written", 0))

    @property
    def write_times(self) -> "Histogram":
        """A copy of the seconds each inner write took so far."""
        with self._times_lock:
            return self._write_times.copy()

    def open(self, frame_size: tuple[int, int], fps: float) -> "ThreadedSink":
        import threading

        self.inner.open(frame_size, fps)
        self._thread = threading.Thread(target=self._run, name="writer", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        import queue
        import time

        while True:
            try:
                item = self._queue.get(timeout=0.05)
            except queue.Empty:
                if self._stop.is_set():
                    return
                continue
            if item is None:
                return
            if self._error is not None:
                continue  # drain without writing after a failure
            try:
                t0 = time.perf_counter()
                self.inner.write(*item)
                seconds = time.perf_counter() - t0
                with self._times_lock:
                    self._write_times.add(seconds)
            except BaseException as exc:  # noqa: BLE001 - handed to the caller
                self._error = exc

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise self._error

    def prepare(self, image: np.ndarray) -> Any:
        return self.inner.prepare(image)

    def write(self, image: np.ndarray, name: str) -> None:
        import queue

        self._raise_if_failed()
        while True:
            try:
                self._queue.put((image, name), timeout=0.05)
                return
            except queue.Full:
                self._raise_if_failed()
                if self._thread is None or not self._thread.is_alive():
                    raise SinkError(f"{self.description}: writer thread stopped") from None

    def _join(self, drain: bool) -> None:
        import queue

        if self._thread is None:
            return
        if not drain:
            self._stop.set()
            while True:  # discard what is queued so the thread sees the stop
                try:
                    self._queue.get_nowait()
                except queue.Empty:
                    break
        while self._thread.is_alive():
            try:
                self._queue.put(None, timeout=0.05)
                break
            except queue.Full:
                continue
        self._thread.join()
        self._thread = None

    def finalize(self) -> None:
        self._join(drain=True)
        if self._error is not None:
            self.inner.abort()
            raise self._error
        self.inner.finalize()

    def abort(self) -> None:
        self._join(drain=False)
        self.inner.abort()

    @property
    def stop_requested(self) -> bool:
        return self.inner.stop_requested
