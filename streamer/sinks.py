"""Where annotated frames go: a video file, a folder of images, a window, or nowhere.

A video is written under a hidden temporary name in the destination folder and
renamed over the final name only when it is finalised, so a killed run never
leaves a broken file under the name the user asked for.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, TextIO

import numpy as np

from engines.errors import ConfigError, SinkError
from engines.paths import fsync_file

if TYPE_CHECKING:
    from concurrent.futures import ThreadPoolExecutor

    from engines.backends.base import Prediction
    from streamer.sources import Frame
    from streamer.stats import Histogram

log = logging.getLogger(__name__)

VIDEO_EXTENSIONS = {".mp4": "mp4v", ".mkv": "mp4v", ".avi": "MJPG", ".mov": "mp4v"}
IMAGE_OUTPUT_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp"})


class Sink(ABC):
    """Receives annotated BGR frames in order."""

    def open(self, frame_size: tuple[int, int], fps: float) -> "Sink":  # noqa: B027
        """Prepare to write frames of ``frame_size`` (width, height); fail early."""
        return self

    @abstractmethod
    def write(self, image: np.ndarray, name: str) -> None: ...

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


class PredictionsWriter:
    """A :class:`ResultSink`: one JSON object per frame to a temporary file, renamed on finalize."""

    def __init__(self, path: Path, overwrite: bool = False) -> None:
        check_output_path(path, overwrite)
        self.path = path
        self.overwrite = overwrite
        self.temp_path = path.with_name(f".{path.name}.partial-{os.getpid()}")
        self._fh: "TextIO | None" = None
        """Opened on the first write (or an empty finalize): nothing is on disk before the run writes."""
        self._done = False

    def _file(self) -> "TextIO":
        if self._fh is None:
            if self._done:
                raise SinkError(f"{self.path}: predictions already finalised or discarded")
            check_output_path(self.path, self.overwrite)
            try:
                self._fh = open(self.temp_path, "w", encoding="utf-8")
            except OSError as exc:
                raise SinkError(f"{self.path}: cannot write predictions ({exc.strerror})") from exc
        return self._fh

    def write(self, frame: "Frame", prediction: "Prediction", latency_ms: float) -> None:
        fh = self._file()
        record = {
            "frame": frame.index,
            "source": frame.name,
            "topk": prediction.as_json(),
            "latency_ms": round(latency_ms, 3),
        }
        try:
            fh.write(json.dumps(record) + "\n")
        except OSError as exc:
            raise SinkError(f"{self.path}: write failed ({exc.strerror})") from exc

    def finalize(self) -> None:
        if self._done:
            return
        fh = self._file()  # a run that labelled nothing still leaves an (empty) file
        try:
            fh.flush()
            os.fsync(fh.fileno())
            fh.close()
        except OSError as exc:
            self.abort()
            raise SinkError(f"{self.path}: write failed ({exc.strerror or exc}); predictions discarded") from exc
        self._done = True
        os.replace(self.temp_path, self.path)

    def abort(self) -> None:
        self._done = True
        if self._fh is None:
            return
        try:
            self.temp_path.unlink()  # first: closing may fail (a full disk flushes on close)
        except FileNotFoundError:
            pass
        if not self._fh.closed:
            try:
                self._fh.close()
            except OSError:
                pass


def check_output_path(path: Path, overwrite: bool) -> None:
    """Refuse destinations we must not write: existing files, symlinks, missing or read-only folders."""
    if path.is_symlink():
        raise SinkError(f"{path}: destination is a symbolic link; refusing to write through it")
    if path.exists():
        if path.is_dir():
            raise SinkError(f"{path}: is a folder")
        if not overwrite:
            raise SinkError(f"{path} exists; pass --overwrite to replace it")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise SinkError(f"{parent}: output folder does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise SinkError(f"{parent}: output folder is not writable")


class VideoFileSink(Sink):
    """Writes an ``.mp4``, ``.mkv``, ``.avi`` or ``.mov`` through OpenCV's FFmpeg writer."""

    def __init__(self, path: Path, overwrite: bool = False, fourcc: str | None = None) -> None:
        ext = path.suffix.lower()
        if ext not in VIDEO_EXTENSIONS:
            raise ConfigError(f"{path}: unsupported video extension; use one of {', '.join(VIDEO_EXTENSIONS)}")
        if fourcc is not None and len(fourcc) != 4:
            raise ConfigError(f"--fourcc needs four characters, got {fourcc!r}")
        self.path = path
        self.overwrite = overwrite
        self.fourcc = fourcc or VIDEO_EXTENSIONS[ext]
        self.temp_path = path.with_name(f".{path.stem}.partial-{os.getpid()}{ext}")
        self.frames_written = 0
        self._writer: object | None = None
        self._size: tuple[int, int] | None = None
        check_output_path(path, overwrite)

    @property
    def description(self) -> str:
        return str(self.path)

    def open(self, frame_size: tuple[int, int], fps: float) -> "VideoFileSink":
        import cv2

        check_output_path(self.path, self.overwrite)
        width, height = frame_size
        if width <= 0 or height <= 0:
            raise SinkError(f"{self.path}: invalid frame size {frame_size}")
        # Most codecs need even dimensions; keep the size fixed for the whole file.
        self._size = (width - width % 2 or 2, height - height % 2 or 2)
        try:
            writer = cv2.VideoWriter(str(self.temp_path), cv2.CAP_FFMPEG, cv2.VideoWriter.fourcc(*self.fourcc), float(fps), self._size)
        except cv2.error as exc:
            self._remove_temp()
            raise SinkError(f"{self.path}: cannot open the video writer ({exc})") from exc
        if not writer.isOpened():
            writer.release()
            self._remove_temp()
            raise SinkError(
                f"{self.path}: cannot open a {self.fourcc} writer for {self.path.suffix} "
                "(folder not writable, or codec missing from this OpenCV build)"
            )
        self._writer = writer
        return self

    def write(self, image: np.ndarray, name: str) -> None:
        import cv2

        if self._writer is None or self._size is None:
            raise SinkError(f"{self.path}: write before open")
        if (image.shape[1], image.shape[0]) != self._size:
            image = cv2.resize(image, self._size, interpolation=cv2.INTER_AREA)
        self._writer.write(image)  # type: ignore[attr-defined]
        self.frames_written += 1
        if self.frames_written % 64 == 1:
            self._check_growing()

    def _check_growing(self) -> None:
        # OpenCV's writer reports no I/O errors; a temp file that vanished or a full
        # disk would otherwise fail silently, so look at the file now and then.
        try:
            st = os.stat(self.temp_path)
        except OSError as exc:
            raise SinkError(f"{self.path}: output file disappeared while writing ({exc.strerror})") from exc
        if self.frames_written > 64 and st.st_size == 0:
            raise SinkError(f"{self.path}: nothing reaches the disk (disk full?)")
        try:
            vfs = os.statvfs(self.temp_path.parent)
            if vfs.f_bavail * vfs.f_frsize < 1 << 20:
                raise SinkError(f"{self.path}: disk full (less than 1 MiB free)")
        except (OSError, AttributeError):
            pass

    def _release(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.release()  # type: ignore[attr-defined]

    def finalize(self) -> None:
        self._release()
        if not self.temp_path.exists():
            return
        if self.frames_written == 0:
            self._remove_temp()
            raise SinkError(f"{self.path}: no frames were written; nothing saved")
        self._check_frames_on_disk()
        try:
            fsync_file(self.temp_path)
        except OSError as exc:
            self._remove_temp()
            raise SinkError(f"{self.path}: write failed ({exc.strerror or exc}); nothing saved") from exc
        if self.path.is_symlink():
            self._remove_temp()
            raise SinkError(f"{self.path}: destination became a symbolic link; output discarded")
        if self.path.exists() and not self.overwrite:
            self._remove_temp()
            raise SinkError(f"{self.path} appeared while writing; output discarded (use --overwrite)")
        os.replace(self.temp_path, self.path)

    def _check_frames_on_disk(self) -> None:
        """Read the finished file's frame count back: the one way to see writes that failed.

        OpenCV's writer reports no write errors, and a file size limit, a quota or EFBIG
        leave space free, so the free-space check misses them; the file is then truncated
        (an ``.mkv`` or ``.avi`` plays its first frames; an ``.mp4`` lacks its index).
        """
        on_disk = _frames_in_video(self.temp_path)
        if on_disk is None:
            self._remove_temp()
            raise SinkError(
                f"{self.path}: the video written cannot be read back (a write failed: file size limit, quota or disk full?); nothing saved"
            )
        if self.frames_written - on_disk > 1:
            self._remove_temp()
            raise SinkError(
                f"{self.path}: only {on_disk} of {self.frames_written} frames reached the disk "
                "(a write failed: file size limit, quota or disk full?); nothing saved"
            )

    def abort(self) -> None:
        self._release()
        self._remove_temp()

    def _remove_temp(self) -> None:
        try:
            self.temp_path.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("could not remove %s: %s", self.temp_path, exc)


def _frames_in_video(path: Path) -> int | None:
    """How many frames the video file at ``path`` holds; None if it cannot be opened.

    The container's own count (``CAP_PROP_FRAME_COUNT``: the index, or the duration
    times the frame rate) costs about a millisecond and is exact for what
    :class:`VideoFileSink` writes; a truncated ``.mkv`` has no usable duration, so
    when the count is missing or absurd the frames are counted by demuxing them.
    """
    import cv2

    try:
        cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    except cv2.error:
        return None
    try:
        if not cap.isOpened():
            return None
        count = cap.get(cv2.CAP_PROP_FRAME_COUNT)
        if 0 < count < 1 << 31:
            return int(round(count))
        frames = 0
        while cap.grab():
            frames += 1
        return frames
    except cv2.error:
        return None
    finally:
        cap.release()


class GStreamerSink(Sink):
    """Writes through a GStreamer pipeline that starts with ``appsrc`` (``-o PIPELINE --gst-output``).

    OpenCV's GStreamer writer feeds BGR frames into the ``appsrc``; the rest of the
    pipeline encodes and carries them (``x264enc``/``nvv4l2h264enc`` into a file,
    ``rtspclientsink``, ``udpsink``...).  Missing elements are named before anything
    runs; the pipeline is started in :meth:`open`, before the first frame, under
    ``timeout_s``.  :meth:`finalize` sends end-of-stream and waits for it to reach the
    end, so a muxer writes its index.  A ``filesink`` target is checked like a file
    output (``--overwrite``) and removed again by :meth:`abort`.
    """

    def __init__(self, pipeline: str, overwrite: bool = False, timeout_s: float = 10.0) -> None:
        from streamer import gst
        from streamer.sources import opencv_has_gstreamer

        self.pipeline = pipeline.strip()
        self.info = gst.parse(self.pipeline)
        self.timeout_s = timeout_s
        self.frames_written = 0
        self._writer: object | None = None
        self._size: tuple[int, int] | None = None
        self.location = gst.filesink_location(self.pipeline)
        self.overwrite = overwrite
        if self.info.first != "appsrc":
            raise ConfigError(f"{self.description}: a --gst-output pipeline must start with appsrc (OpenCV feeds the frames into it)")
        if not opencv_has_gstreamer():
            raise SinkError("--gst-output needs an OpenCV built with GStreamer (the PyPI wheels are not; use the system OpenCV, e.g. on a Jetson)")
        message = gst.missing_element_message(self.description, self.pipeline)
        if message is not None:
            raise SinkError(message)
        if self.location is not None:
            check_output_path(self.location, overwrite)

    @property
    def description(self) -> str:
        return f"gstreamer output ({' ! '.join(self.info.elements[:2])}{' ! ...' if len(self.info.elements) > 2 else ''})"

    def open(self, frame_size: tuple[int, int], fps: float) -> "GStreamerSink":
        import cv2

        from streamer import gst

        width, height = frame_size
        if width <= 0 or height <= 0:
            raise SinkError(f"{self.description}: invalid frame size {frame_size}")
        if self.location is not None:
            check_output_path(self.location, self.overwrite)
        size = (width - width % 2 or 2, height - height % 2 or 2)  # encoders want even sizes
        self._size = size

        def opened() -> object:
            return cv2.VideoWriter(self.pipeline, cv2.CAP_GSTREAMER, 0, float(fps), size, True)

        try:
            writer = gst.call_with_timeout(opened, self.timeout_s, name="gst-output-open")
        except gst.OpenTimeout as exc:
            raise SinkError(f"{self.description}: {exc} (is the server there?)") from None
        except cv2.error as exc:
            raise SinkError(f"{self.description}: cannot open ({exc})") from exc
        if not writer.isOpened():  # type: ignore[attr-defined]
            writer.release()  # type: ignore[attr-defined]
            self._remove_target()
            raise SinkError(
                f"{self.description}: GStreamer could not start the pipeline (an element refused its settings or "
                "the caps do not match; try it with gst-launch-1.0, videotestsrc in place of appsrc)"
            )
        self._writer = writer
        return self

    def write(self, image: np.ndarray, name: str) -> None:
        import cv2

        if self._writer is None or self._size is None:
            raise SinkError(f"{self.description}: write before open")
        if (image.shape[1], image.shape[0]) != self._size:
            image = cv2.resize(image, self._size, interpolation=cv2.INTER_AREA)
        self._writer.write(image)  # type: ignore[attr-defined]
        self.frames_written += 1

    def _release(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.release()  # type: ignore[attr-defined]  # sends end-of-stream and waits for it

    def finalize(self) -> None:
        self._release()
        if self.location is not None and self.frames_written > 0:
            try:
                size = self.location.stat().st_size
            except OSError:
                size = 0
            if size == 0:
                raise SinkError(f"{self.location}: the GStreamer output wrote nothing")

    def abort(self) -> None:
        self._release()
        self._remove_target()

    def _remove_target(self) -> None:
        if self.location is None:
            return
        try:
            self.location.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("could not remove %s: %s", self.location, exc)


class ImageFolderSink(Sink):
    """Writes each annotated frame as an image named like its input (``frame_000123.jpg`` for videos).

    Images are encoded and written by a small pool of threads (``workers``; OpenCV
    releases the GIL while it encodes), since one thread encoding one JPEG after
    another is what bounds a folder run on a machine with cores to spare.  Names
    are given in frame order; a failed write is raised by the next call, and
    :meth:`finalize` returns only when every image is on disk.
    """

    def __init__(self, folder: Path, overwrite: bool = False, workers: int | None = None) -> None:
        import threading
        from collections import deque
        from concurrent.futures import Future

        from streamer.imageio import default_workers

        self.folder = folder
        self.overwrite = overwrite
        self.frames_written = 0
        self.written: list[Path] = []
        self._created_folder = False
        self._names_used: set[str] = set()
        self._names_given = 0
        self._workers = max(1, workers if workers is not None else default_workers())
        self._pool: "ThreadPoolExecutor | None" = None
        self._inflight: "deque[Future[None]]" = deque()
        self._lock = threading.Lock()
        self._error: SinkError | None = None
        if folder.is_symlink():
            raise SinkError(f"{folder}: destination is a symbolic link; refusing to write through it")
        if folder.exists() and not folder.is_dir():
            raise SinkError(f"{folder}: exists and is not a folder")

    @property
    def description(self) -> str:
        return f"{self.folder}/"

    def open(self, frame_size: tuple[int, int], fps: float) -> "ImageFolderSink":
        try:
            self._created_folder = not self.folder.exists()
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SinkError(f"{self.folder}: cannot create output folder ({exc.strerror})") from exc
        if not os.access(self.folder, os.W_OK | os.X_OK):
            raise SinkError(f"{self.folder}: output folder is not writable")
        return self

    def _target(self, name: str) -> Path:
        base = Path(name).name
        path = Path(base)
        if path.suffix.lower() not in IMAGE_OUTPUT_EXTENSIONS:
            base = f"frame_{self._names_given:06d}.jpg"
            path = Path(base)
        self._names_given += 1
        # Two inputs with one name (a glob across folders) must not overwrite each other.
        n = 1
        while base in self._names_used:
            base = f"{path.stem}_{n}{path.suffix}"
            n += 1
        self._names_used.add(base)
        return self.folder / base

    def _wait(self, cancel: bool) -> None:
        """Wait for the writes in flight (``cancel``: drop those not started)."""
        while self._inflight:
            future = self._inflight.popleft()
            if cancel:
                future.cancel()
            if not future.cancelled():
                future.result()  # _store keeps its errors; nothing is raised here
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise self._error

    def abort(self) -> None:
        """Remove what this run wrote (and the folder, if this run created it)."""
        self._wait(cancel=True)
        for target in self.written:
            try:
                target.unlink()
            except OSError:
                pass
        self.written.clear()
        if self._created_folder:
            try:
                self.folder.rmdir()
            except OSError:
                pass

    def finalize(self) -> None:
        self._wait(cancel=False)
        if self._error is not None:
            self.abort()  # as a failed run: no half-written set of images is left
            raise self._error

    def write(self, image: np.ndarray, name: str) -> None:
        self._raise_if_failed()
        target = self._target(name)
        if target.is_symlink() or (target.exists() and not self.overwrite):
            raise SinkError(f"{target} exists; pass --overwrite to replace it")
        if self._workers == 1:
            self._store(image, target)
            self._raise_if_failed()
            return
        if self._pool is None:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(self._workers, thread_name_prefix="streamer-encode")
        while len(self._inflight) >= 2 * self._workers:  # bounded memory: wait for the oldest
            self._inflight.popleft().result()
            self._raise_if_failed()
        self._inflight.append(self._pool.submit(self._store, image, target))

    def _store(self, image: np.ndarray, target: Path) -> None:
        """Encode and write one image under a hidden name, then rename it; errors are kept for the caller."""
        import cv2

        if self._error is not None:
            return
        temp = target.with_name(f".{target.stem}.partial{target.suffix}")
        try:
            ok, data = cv2.imencode(target.suffix, image)
            if not ok:
                raise SinkError(f"{target}: cannot encode image")
            try:
                with open(temp, "wb") as fh:
                    fh.write(data.tobytes())
                os.replace(temp, target)
            except OSError as exc:
                try:
                    temp.unlink()
                except OSError:
                    pass
                raise SinkError(f"{target}: write failed ({exc.strerror})") from exc
        except Exception as exc:  # noqa: BLE001 - cv2.error, MemoryError...: kept for the caller as ours
            error = exc if isinstance(exc, SinkError) else SinkError(f"{target}: cannot encode image ({exc})")
            with self._lock:
                if self._error is None:
                    self._error = error
            return
        with self._lock:
            self.frames_written += 1
            self.written.append(target)


class WindowSink(Sink):
    """Shows frames in an OpenCV window; ``q`` or Esc asks the pipeline to stop."""

    def __init__(self, title: str = "streamer") -> None:
        self.title = title
        self._stop = False
        self._opened = False

    @property
    def description(self) -> str:
        return "window"

    def open(self, frame_size: tuple[int, int], fps: float) -> "WindowSink":
        import cv2

        try:
            cv2.namedWindow(self.title, cv2.WINDOW_NORMAL)
        except cv2.error as exc:
            raise SinkError(f"cannot open a window ({exc}); this OpenCV may be headless, use -o FILE instead") from exc
        self._opened = True
        return self

    def write(self, image: np.ndarray, name: str) -> None:
        import cv2

        cv2.imshow(self.title, image)
        key = cv2.waitKey(1) & 0xFF
        if key in (ord("q"), 27):
            self._stop = True
        try:
            if cv2.getWindowProperty(self.title, cv2.WND_PROP_VISIBLE) < 1:
                self._stop = True
        except cv2.error:
            self._stop = True

    @property
    def stop_requested(self) -> bool:
        return self._stop

    def finalize(self) -> None:
        import cv2

        if self._opened:
            cv2.destroyWindow(self.title)
            cv2.waitKey(1)

    abort = finalize


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

    Encoding is the slowest CPU stage of file mode (about 6 ms per 720p frame
    with mp4v); on its own thread it overlaps with drawing the next frame.
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
        self._queue: "queue.Queue[tuple[np.ndarray, str] | None]" = queue.Queue(queue_size)
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


def display_available() -> bool:
    """A window can be shown: a display server is set and OpenCV has a GUI backend."""
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return False
    import cv2

    info = cv2.getBuildInformation()
    gui = ""
    for line in info.splitlines():
        if line.strip().startswith("GUI:"):
            gui = line.split(":", 1)[1].strip().upper()
    return bool(gui) and gui != "NONE"


def make_sink(
    output: str | None,
    show: bool,
    overwrite: bool = False,
    fourcc: str | None = None,
    gst_output: bool = False,
    timeout_s: float = 10.0,
) -> Sink:
    """Build the sink for ``-o``/``--show``: a file, a folder of images, a GStreamer pipeline
    (``gst_output``), a window, several, or none."""
    from streamer.gst import looks_like_output_pipeline

    sinks: list[Sink] = []
    if gst_output and not output:
        raise ConfigError("--gst-output needs -o 'appsrc ! ... '")
    if output and gst_output:
        if fourcc is not None:
            raise ConfigError("--fourcc does not apply to --gst-output: the pipeline's encoder decides")
        sinks.append(ThreadedSink(GStreamerSink(output, overwrite=overwrite, timeout_s=timeout_s)))
    elif output:
        path = Path(output).expanduser()
        if looks_like_output_pipeline(output) and not path.exists():
            raise ConfigError("-o looks like a GStreamer pipeline; pass --gst-output to run it")
        if path.suffix.lower() in VIDEO_EXTENSIONS:
            sinks.append(ThreadedSink(VideoFileSink(path, overwrite=overwrite, fourcc=fourcc)))
        elif path.suffix == "" or output.endswith(("/", os.sep)) or path.is_dir():
            sinks.append(ThreadedSink(ImageFolderSink(path, overwrite=overwrite)))
        else:
            raise ConfigError(
                f"{output}: output must be a video file ({', '.join(VIDEO_EXTENSIONS)}) or a folder for images"
            )
    if show:
        sinks.append(WindowSink())
    if not sinks:
        return NullSink()
    return sinks[0] if len(sinks) == 1 else TeeSink(sinks)
