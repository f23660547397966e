"""Frame sources chosen from the SOURCE string by one factory, :func:`open_source`.

Every source yields :class:`Frame` objects (BGR uint8, OpenCV's layout) and
never blocks forever: network streams open and read under FFmpeg time limits,
and the pipeline's watchdog catches a source that stops delivering.
"""

from __future__ import annotations

import glob as globlib
import logging
import math
import os
import re
import sys
import tempfile
import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, TypeVar

import numpy as np

from engines.errors import ConfigError, SourceError
from streamer.redact import redact_url

if TYPE_CHECKING:
    from streamer.imageio import OrderedPrefetcher

log = logging.getLogger(__name__)
_T = TypeVar("_T")

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm"})
STREAM_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://", "udp://", "tcp://", "srt://")
DEFAULT_FPS = 30.0
MAX_SANE_FPS = 240.0
DECODERS = ("auto", "ffmpeg", "gstreamer", "nvdec")
CSI_SCHEME = "csi://"


@dataclass
class Frame:
    """One captured frame and where it came from."""

    index: int
    image: np.ndarray
    t_capture: float
    """``time.perf_counter()`` when the frame was handed to the pipeline."""
    name: str
    """Image file name for image inputs, else the (redacted) source."""
    decode_s: float = 0.0
    pts_s: float | None = None
    """The frame's time in the source, seconds: its timestamp in a video file, the time since the
    first frame for a live source; None for images."""
    device_image: Any = None
    """The same pixels as ``image``, (H, W, 3) uint8 BGR, as a torch tensor on the GPU that decoded
    them (nvJPEG, NVDEC), or None: the backend preprocesses it without a host upload
    (:mod:`streamer.gpu_frames`)."""


@dataclass
class SourceOptions:
    """How to open a source; validated on creation."""

    gst: bool = False
    open_timeout_s: float = 10.0
    read_timeout_s: float = 5.0
    realtime: bool = False
    """Replay a file at its own frame rate and treat it as a live source."""
    width: int | None = None
    height: int | None = None
    fps: float | None = None
    """Cameras and ``csi://N``: the capture size and frame rate asked of the device (``--input-*``)."""
    lossless: bool = False
    """A live GStreamer pipeline is read like a file: every frame queued, no reconnect."""
    decoder: str = "auto"
    """Video files: ``auto`` (GStreamer's hardware decoder where ``nvv4l2decoder`` exists, else
    FFmpeg), ``ffmpeg``, ``gstreamer`` (the hardware decoder if present, else ``decodebin``), or
    ``nvdec`` (NVIDIA's decoder through PyNvVideoCodec, frames left on the GPU: ``pip install .[nvdec]``).
    ``auto`` never picks NVDEC: one NVDEC session was not faster than FFmpeg on the H200 machine except for
    1080p without a video output (docs/benchmarks/h200-nvdec)."""
    device: str | None = None
    """Where the model will run (``cuda:N`` or ``cpu``; None: not said).  On a CUDA device, folders of
    JPEGs are decoded on it in batches (:class:`streamer.gpu_frames.GpuJpegFolderSource`) and
    ``--decoder nvdec`` decodes on it; elsewhere the CPU path."""
    extra: dict[str, str] = field(default_factory=dict)
    decode_threads: int | None = None
    """Video files and network streams through FFmpeg: the decoder's threads (OpenCV's
    ``CAP_PROP_N_THREADS``); None: OpenCV's default, one per core.  Several streams in one process
    share the cores instead (:func:`streamer.multi.decode_threads_for`): 32 decoders of 16 threads
    each spent about twice the CPU per frame (docs/benchmarks/h200-streams)."""

    def __post_init__(self) -> None:
        if self.decode_threads is not None and not (isinstance(self.decode_threads, int) and 1 <= self.decode_threads <= 64):
            raise ConfigError(f"decode threads must be between 1 and 64, got {self.decode_threads!r}")
        if self.decoder not in DECODERS:
            raise ConfigError(f"decoder must be one of {', '.join(DECODERS)}, got {self.decoder!r}")
        for name in ("width", "height"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, int) and 0 < value <= 16384):
                raise ConfigError(f"input {name} must be between 1 and 16384, got {value!r}")
        if self.fps is not None and not (math.isfinite(self.fps) and 0 < self.fps <= MAX_SANE_FPS):
            raise ConfigError(f"input fps must be between 0 and {MAX_SANE_FPS:.0f}, got {self.fps!r}")
        for name in ("open_timeout_s", "read_timeout_s"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and 0 < value <= 3600):
                raise ConfigError(f"{name.replace('_s', '').replace('_', ' ')} must be between 0 and 3600 s, got {value!r}")


class Source(ABC):
    """A stream of frames. ``open`` reads the first frame, so a source that opens can decode."""

    live: bool = False
    reconnectable: bool = False
    """A live source whose end means a lost connection, not the end of the input."""
    kind: str = "source"

    def __init__(self, display_name: str) -> None:
        self.display_name = display_name
        self.fps: float = DEFAULT_FPS
        self.fps_trusted = False
        self.total_hint: int | None = None
        self.frame_size: tuple[int, int] | None = None  # (width, height)
        self._first: Frame | None = None
        self._index = 0
        self.unreadable = 0
        self._t_first: float | None = None

    def open(self) -> "Source":
        self._open_impl()
        first = self._read_impl()
        if first is None:
            self.close()
            raise SourceError(f"{self.display_name}: no decodable frame")
        self._first = first
        h, w = first.image.shape[:2]
        self.frame_size = (w, h)
        return self

    def read(self) -> Frame | None:
        """The next frame, or None at the end of the stream."""
        if self._first is not None:
            frame, self._first = self._first, None
            return frame
        return self._read_impl()

    def __iter__(self) -> Iterator[Frame]:
        while True:
            frame = self.read()
            if frame is None:
                return
            yield frame

    def reopen(self) -> None:
        """Close and open again after a lost connection (live sources)."""
        self.close()
        self._open_impl()

    def _make_frame(self, image: np.ndarray, name: str, decode_s: float) -> Frame:
        now = time.perf_counter()
        if self._t_first is None:
            self._t_first = now
        frame = Frame(self._index, image, now, name, decode_s, self._pts_s(now))
        self._index += 1
        return frame

    def _pts_s(self, now: float) -> float | None:
        """The time of the frame being made: since the first frame for live sources (see subclasses)."""
        return now - self._t_first if self.live and self._t_first is not None else None

    @abstractmethod
    def _open_impl(self) -> None: ...

    @abstractmethod
    def _read_impl(self) -> Frame | None: ...

    def close(self) -> None:  # noqa: B027 - optional hook
        pass

    def __enter__(self) -> "Source":
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()


def _opencv_decode(data: np.ndarray, name: str) -> np.ndarray | None:
    """OpenCV's decoder, with what its native libraries print caught (one call at a time)."""
    import cv2

    image, said = _quiet_native_stderr(lambda: cv2.imdecode(data, cv2.IMREAD_COLOR))
    if said:
        log.debug("%s: the image decoder said: %s", name, said)
    return image if image is not None and image.size else None


def _read_image(path: Path) -> np.ndarray | None:
    """The image at ``path`` as BGR uint8, or None when it is not a readable image.

    Pillow first (quiet, and parallel across the decode threads), OpenCV for what
    Pillow cannot read: see :mod:`streamer.imageio`.
    """
    from streamer.imageio import UnreadableImage, decode_image_bytes, read_file_bytes

    try:
        return decode_image_bytes(read_file_bytes(path), path.name, lambda data: _opencv_decode(data, path.name))
    except UnreadableImage as exc:
        log.debug("%s: %s", path.name, exc)
        return None


def _timed_read(path: Path) -> tuple[np.ndarray | None, float]:
    start = time.perf_counter()
    image = _read_image(path)
    return image, time.perf_counter() - start


_STDERR_LOCK = threading.Lock()


def _quiet_native_stderr(call: Callable[[], _T]) -> tuple[_T, str]:
    """``call()`` with file descriptor 2 sent to a temporary file; its result and what was written.

    Image libraries written in C print their own errors straight to fd 2 (libpng:
    ``libpng error: bad adaptive filter value``), where no Python setting reaches them;
    the caller turns the failure into one clear line of ours.  Only one call redirects
    at a time.  Lines of ours that another thread logs meanwhile are passed on to stderr.
    """
    with _STDERR_LOCK:
        try:
            saved = os.dup(2)
        except OSError:  # no stderr at all: nothing to keep quiet
            return call(), ""
        try:
            with tempfile.TemporaryFile() as sink:
                _flush_stderr()
                os.dup2(sink.fileno(), 2)
                try:
                    result = call()
                finally:
                    _flush_stderr()
                    os.dup2(saved, 2)
                sink.seek(0)
                said = sink.read(64 * 1024).decode("utf-8", "replace")
        finally:
            os.close(saved)
    ours = [line for line in said.splitlines() if line.startswith("streamer:")]
    if ours:
        print("\n".join(ours), file=sys.stderr, flush=True)
    return result, " ".join(line.strip() for line in said.splitlines() if line.strip() and not line.startswith("streamer:"))


def _flush_stderr() -> None:
    try:
        sys.stderr.flush()
    except (AttributeError, OSError, ValueError):
        pass


class ImageListSource(Source):
    """One image, a folder of images or a glob, in name order. Lossless."""

    kind = "images"

    def __init__(self, paths: list[Path], display_name: str) -> None:
        super().__init__(display_name)
        if not paths:
            raise SourceError(f"{display_name}: no images found")
        self.paths = paths
        self.total_hint = len(paths)
        self._reader: "OrderedPrefetcher[Path, tuple[np.ndarray | None, float]] | None" = None
        """Decodes the images ahead of the pipeline, several at a time, handing them out in order."""

    def _open_impl(self) -> None:
        from streamer.imageio import OrderedPrefetcher, default_workers

        self.close()
        workers = default_workers() if len(self.paths) > 1 else 1
        self._reader = OrderedPrefetcher(_timed_read, self.paths, workers)

    def _read_impl(self) -> Frame | None:
        reader = self._reader
        while reader is not None:
            got = reader.next()
            if got is None:
                return None
            path, (image, decode_s) = got
            if image is None:
                self._skip_unreadable(path)
                continue
            return self._make_frame(image, path.name, decode_s)
        return None

    def _skip_unreadable(self, path: Path) -> None:
        """An image that does not decode: the error when it is the only one, else counted, one warning, skipped."""
        if len(self.paths) == 1:
            raise SourceError(f"{path}: not a readable image")
        self.unreadable += 1
        log.warning("skipping %s: not a readable image", path.name)

    def close(self) -> None:
        reader, self._reader = self._reader, None
        if reader is not None:
            reader.close()


class CaptureSource(Source):
    """Anything ``cv2.VideoCapture`` opens: files, cameras, network streams, GStreamer."""

    sets_input_format = False
    """Ask the device for ``--input-width/--input-height/--input-fps`` (cameras)."""

    def __init__(self, target: str | int, display_name: str, options: SourceOptions, api: int | None = None) -> None:
        super().__init__(display_name)
        self.target = target
        self.options = options
        self.api = api
        self._cap: object | None = None
        self._opened_once = False

    def _open_params(self) -> list[int]:
        import cv2

        params = [
            int(cv2.CAP_PROP_OPEN_TIMEOUT_MSEC),
            int(self.options.open_timeout_s * 1000),
            int(cv2.CAP_PROP_READ_TIMEOUT_MSEC),
            int(self.options.read_timeout_s * 1000),
        ]
        threads = getattr(cv2, "CAP_PROP_N_THREADS", None)  # OpenCV >= 4.6
        if self.options.decode_threads is not None and threads is not None and self.api == cv2.CAP_FFMPEG:
            params += [int(threads), self.options.decode_threads]  # FFmpeg only: another backend refuses to open on a parameter it does not know
        return params

    _not_opened_reason = ""
    """Said after "cannot open KIND" when ``cv2.VideoCapture`` does not open."""

    def _open_impl(self) -> None:
        import cv2

        api = self.api if self.api is not None else cv2.CAP_ANY
        try:
            cap = cv2.VideoCapture(self.target, api, self._open_params())
        except cv2.error as exc:
            raise SourceError(f"{self.display_name}: cannot open ({exc})") from exc
        if not cap.isOpened():
            cap.release()
            raise SourceError(f"{self.display_name}: cannot open {self.kind}{self._not_opened_reason}")
        if self.sets_input_format:
            self._set_input_format(cap)
        self._cap = cap
        if self._opened_once:
            return
        self._opened_once = True
        self._read_properties(cap)

    def _read_properties(self, cap: object) -> None:
        import cv2

        fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)  # type: ignore[attr-defined]
        if math.isfinite(fps) and 1.0 <= fps <= MAX_SANE_FPS:
            self.fps, self.fps_trusted = fps, True
        else:
            self.fps, self.fps_trusted = DEFAULT_FPS, False
            log.warning("%s: frame rate metadata %r is not plausible; assuming %.0f FPS", self.display_name, fps, DEFAULT_FPS)
        count = cap.get(cv2.CAP_PROP_FRAME_COUNT)  # type: ignore[attr-defined]
        if not self.live and math.isfinite(count) and 0 < count < 1e8:
            self.total_hint = int(count)

    def _set_input_format(self, cap: object) -> None:
        """Ask the device for the size and rate the user gave; say so when it picks another."""
        import cv2

        asked = ((cv2.CAP_PROP_FRAME_WIDTH, self.options.width, "width"), (cv2.CAP_PROP_FRAME_HEIGHT, self.options.height, "height"), (cv2.CAP_PROP_FPS, self.options.fps, "fps"))
        for prop, value, _ in asked:
            if value:
                cap.set(prop, float(value))  # type: ignore[attr-defined]
        for prop, value, label in asked:
            if value:
                got = float(cap.get(prop) or 0.0)  # type: ignore[attr-defined]
                if got and abs(got - float(value)) > 0.5:
                    log.warning("%s: asked for input %s %g, the device gives %g", self.display_name, label, value, got)

    def _grab(self) -> np.ndarray | None:
        import cv2

        cap = self._cap
        if cap is None:
            return None
        try:
            ok, image = cap.read()  # type: ignore[attr-defined]
        except cv2.error as exc:
            raise SourceError(f"{self.display_name}: read failed ({exc})") from exc
        if not ok or image is None or image.size == 0:
            return None
        if image.ndim == 2:
            image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
        elif image.shape[2] == 4:
            image = cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
        return image

    def _read_impl(self) -> Frame | None:
        start = time.perf_counter()
        image = self._grab()
        if image is None:
            self._check_complete()
            return None
        return self._make_frame(image, self.display_name, time.perf_counter() - start)

    def _check_complete(self) -> None:
        """At the end of a file (local or over HTTP): say so when fewer frames came than the container announced.

        A truncated file or a server that closed the connection early ends like a complete file
        for FFmpeg.  One warning line; the run still exits 0 with what arrived (every frame it
        labelled is sound), as for a folder with unreadable images.  A frame or 1 % short is
        tolerated: some containers' counts are estimates from the duration.
        """
        total = self.total_hint
        if self.live or total is None or getattr(self, "_completeness_said", False):
            return
        self._completeness_said = True
        got = self._index
        if 0 < got < total - max(1, total // 100):  # none at all: opening fails with its own line
            log.warning("%s: got %d of %d frames the container announced (file truncated, or the server closed the connection early)", self.display_name, got, total)

    def close(self) -> None:
        cap, self._cap = self._cap, None
        if cap is not None:
            cap.release()  # type: ignore[attr-defined]


class VideoFileSource(CaptureSource):
    """A video file, read to its end (the frame count is only a hint). Lossless."""

    kind = "video file"

    def __init__(self, path: Path, options: SourceOptions) -> None:
        import cv2

        super().__init__(cv_path(path), path.name, options, api=cv2.CAP_FFMPEG)
        self.path = path
        self.live = options.realtime
        self._t0: float | None = None

    def _pts_s(self, now: float) -> float | None:
        """The decoded frame's timestamp in the file (CAP_PROP_POS_MSEC), else index / fps."""
        import cv2

        msec = float(self._cap.get(cv2.CAP_PROP_POS_MSEC) or 0.0) if self._cap is not None else 0.0  # type: ignore[attr-defined]
        if math.isfinite(msec) and (msec > 0 or self._index == 0):
            return round(msec / 1000.0, 6)
        return round(self._index / self.fps, 6)

    def _read_impl(self) -> Frame | None:
        frame = super()._read_impl()
        if frame is not None and self.options.realtime:
            # Replay at the file's own rate: frame i is due i/fps after the first.
            now = time.perf_counter()
            if self._t0 is None:
                self._t0 = now
            due = self._t0 + frame.index / self.fps
            if due > now:
                time.sleep(due - now)
            frame.t_capture = time.perf_counter()
        return frame

    def read(self) -> Frame | None:
        if self.options.realtime and self._first is not None:
            # The replay's clock starts when the pipeline first reads, not when the file was
            # opened (the model may have loaded in between): frame 0 is "captured" now.
            now = time.perf_counter()
            self._t0 = now
            self._first.t_capture = now
        return super().read()


class CameraSource(CaptureSource):
    """A local camera by index or /dev/videoN. Live: the newest frame wins."""

    kind = "camera"
    live = True
    reconnectable = True
    sets_input_format = True


class StreamSource(CaptureSource):
    """An RTSP/HTTP(S)/RTMP/UDP stream through FFmpeg.

    Live (newest frame wins, reconnect when lost) unless the server says how
    many frames there are - a video file served over HTTP - which is then read
    losslessly to its end like a local file.
    """

    kind = "network stream"
    live = True
    reconnectable = True

    def _open_impl(self) -> None:
        import cv2

        first_open = not self._opened_once
        super()._open_impl()
        if first_open and self._cap is not None:
            count = self._cap.get(cv2.CAP_PROP_FRAME_COUNT)  # type: ignore[attr-defined]
            if math.isfinite(count) and 0 < count < 1e8:
                self.live = False
                self.reconnectable = False
                self.total_hint = int(count)


class _GStreamerOpen(CaptureSource):
    """Opens through OpenCV's GStreamer backend, under the open timeout.

    OpenCV's GStreamer open (and the first read, which waits for the first buffer)
    can block without end - a camera that never starts, a server that never
    answers - so both run on a helper thread; past ``--timeout`` the run ends with
    one line.  Missing elements are found in GStreamer's registry before that.
    """

    pipeline: str
    _not_opened_reason = ": GStreamer could not start it (an element refused its settings, the caps do not match, or the input is missing)"

    def _open_params(self) -> list[int]:
        return []

    def _check_elements(self) -> None:
        from streamer import gst

        message = gst.missing_element_message(self.display_name, self.pipeline)
        if message is not None:
            raise SourceError(message)

    def open(self) -> "Source":
        from streamer import gst

        self._check_elements()
        try:
            return gst.call_with_timeout(super().open, self.options.open_timeout_s)
        except gst.OpenTimeout as exc:
            raise SourceError(f"{self.display_name}: {exc} (is the camera, file or server there?)") from None

    def reopen(self) -> None:
        from streamer import gst

        self.close()
        try:
            gst.call_with_timeout(self._open_impl, self.options.open_timeout_s)
        except gst.OpenTimeout as exc:
            raise SourceError(f"{self.display_name}: {exc}") from None


class GStreamerSource(_GStreamerOpen):
    """A GStreamer pipeline string (needs an OpenCV built with GStreamer, e.g. on a Jetson).

    The pipeline ends at its end-of-stream.  Without a live source element
    (``videotestsrc``, ``filesrc``, ``multifilesrc``...) or with ``--lossless`` it is
    read like a file: every frame, in order, no reconnect.  With one (``v4l2src``,
    ``nvarguscamerasrc``, ``rtspsrc``, ``udpsrc``, ``is-live=true``...) the newest frame
    wins and a lost stream is reconnected - unless a ``num-buffers`` limit says the
    end is meant.
    """

    kind = "GStreamer pipeline"

    def __init__(self, pipeline: str, options: SourceOptions, display_name: str | None = None) -> None:
        import cv2

        from streamer import gst

        info = gst.parse(pipeline)
        super().__init__(pipeline, display_name or gst.describe(pipeline), options, api=cv2.CAP_GSTREAMER)
        self.pipeline = pipeline
        self.live = info.live and not options.lossless
        self.reconnectable = self.live and not info.finite
        if "appsink" not in info.elements:
            raise SourceError(f"{self.display_name}: a --gst pipeline must end in appsink (OpenCV reads the frames from it)")


class CsiCameraSource(GStreamerSource):
    """``csi://N``: a Jetson CSI camera through ``nvarguscamerasrc`` (see :func:`streamer.gst.csi_pipeline`)."""

    kind = "CSI camera"

    def __init__(self, sensor_id: int, options: SourceOptions) -> None:
        from streamer import gst

        pipeline = gst.csi_pipeline(sensor_id, options.width, options.height, options.fps)
        super().__init__(pipeline, options, display_name=f"csi://{sensor_id}")


class GStreamerVideoFileSource(_GStreamerOpen, VideoFileSource):
    """A video file decoded by GStreamer (a Jetson's ``nvv4l2decoder``, or ``decodebin``). Lossless."""

    def __init__(self, path: Path, options: SourceOptions, pipeline: str, decoder: str) -> None:
        import cv2

        VideoFileSource.__init__(self, path, options)
        self.api = cv2.CAP_GSTREAMER
        self.target = pipeline
        self.pipeline = pipeline
        self.decoder = decoder
        """``nvv4l2decoder`` or ``decodebin``: which decoder the pipeline uses."""

    def _read_properties(self, cap: object) -> None:
        super()._read_properties(cap)
        if self.total_hint is None:  # GStreamer often cannot say; the container can
            self.total_hint = _ffmpeg_probe(self.path).frames


@dataclass
class _Probe:
    codec: str | None = None
    frames: int | None = None


def cv_path(path: Path) -> str:
    """``str(path)``, or an ASCII alias of it if the name is not UTF-8 (bytes from another system).

    OpenCV converts a path to UTF-8 and crashes (SIGSEGV) on one that is not, in VideoCapture and
    VideoWriter alike.  Such a path is opened through a symbolic link with an ASCII name in a
    private temporary folder (removed at exit).
    """
    text = str(path)
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        pass
    with _ALIAS_LOCK:
        if text in _ALIASES:
            return _ALIASES[text]
        import atexit
        import shutil

        folder = tempfile.mkdtemp(prefix="streamer-name-")
        suffix = path.suffix if path.suffix.isascii() else ""
        alias = os.path.join(folder, f"input{suffix}")
        os.symlink(os.path.abspath(path), alias)
        atexit.register(shutil.rmtree, folder, True)
        _ALIASES[text] = alias
        return alias


_ALIASES: dict[str, str] = {}
_ALIAS_LOCK = threading.Lock()


def _ffmpeg_probe(path: Path) -> _Probe:
    """The codec and frame count FFmpeg reads from the container (nothing is decoded)."""
    import cv2

    from streamer import gst

    try:
        cap = cv2.VideoCapture(cv_path(path), cv2.CAP_FFMPEG)
    except cv2.error:
        return _Probe()
    try:
        if not cap.isOpened():
            return _Probe()
        tag = int(cap.get(cv2.CAP_PROP_FOURCC) or 0)
        fourcc = bytes((tag >> (8 * i)) & 0xFF for i in range(4)).decode("latin-1")
        count = cap.get(cv2.CAP_PROP_FRAME_COUNT)
        frames = int(count) if math.isfinite(count) and 0 < count < 1e8 else None
        return _Probe(gst.codec_of_fourcc(fourcc), frames)
    finally:
        cap.release()


def _video_file_source(path: Path, options: SourceOptions) -> Source:
    """FFmpeg, or GStreamer's hardware decoder on a Jetson (see ``SourceOptions.decoder``)."""
    from streamer import gst

    if options.decoder == "ffmpeg":
        return VideoFileSource(path, options)
    if options.decoder == "nvdec":
        from streamer.sources_nvdec import NvdecVideoSource

        return NvdecVideoSource(path, options)
    has_gst = opencv_has_gstreamer()
    if options.decoder == "auto" and not has_gst:
        return VideoFileSource(path, options)
    if not has_gst:
        raise SourceError("--decoder gstreamer needs an OpenCV built with GStreamer (the PyPI wheels are not; use the system OpenCV)")
    hardware = all(gst.element_available(name) for name in gst.JETSON_DECODE_ELEMENTS)
    if hardware:
        probe = _ffmpeg_probe(path)
        pipeline = gst.jetson_decode_pipeline(Path(cv_path(path)), probe.codec) if probe.codec else None
        if pipeline is not None and gst.element_available(gst.PARSERS[probe.codec or ""]):
            log.info("%s: hardware decode: %s", path.name, pipeline)
            return GStreamerVideoFileSource(path, options, pipeline, "nvv4l2decoder")
        if options.decoder == "auto":
            log.info("%s: not an H.264/H.265 MP4/MOV/MKV the hardware decoder takes; decoding with FFmpeg", path.name)
            return VideoFileSource(path, options)
    elif options.decoder == "auto":
        return VideoFileSource(path, options)
    pipeline = gst.software_decode_pipeline(Path(cv_path(path)))
    log.info("%s: GStreamer decode: %s", path.name, pipeline)
    return GStreamerVideoFileSource(path, options, pipeline, "decodebin")


def opencv_has_gstreamer() -> bool:
    import cv2

    info = cv2.getBuildInformation()
    match = re.search(r"GStreamer:\s*(\S+)", info)
    return bool(match and match.group(1).upper().startswith("YES"))


def _looks_like_gst(text: str) -> bool:
    return " ! " in text or text.strip().startswith(("v4l2src", "nvarguscamerasrc", "rtspsrc", "filesrc", "videotestsrc", "uridecodebin"))


def _image_paths_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def _image_list_source(paths: list[Path], display_name: str, options: SourceOptions) -> ImageListSource:
    """Images in name order: JPEGs decoded in batches on the GPU when the model runs on one, else on the CPU."""
    from streamer.gpu_frames import GpuJpegFolderSource, cuda_device, gpu_jpeg_available

    device = cuda_device(options.device)
    if device is not None and paths and gpu_jpeg_available(device):
        return GpuJpegFolderSource(paths, display_name, device)
    return ImageListSource(paths, display_name)


def open_source(text: str, options: SourceOptions | None = None) -> Source:
    """Pick and open the right source for ``text``; raises :class:`SourceError`."""
    import cv2

    options = options or SourceOptions()
    text = text.strip()
    if not text:
        raise SourceError("empty source")
    source: Source
    csi = re.fullmatch(r"csi://(\d+)", text, re.I)
    if options.gst or csi:
        if not opencv_has_gstreamer():
            what = "csi:// cameras need" if csi and not options.gst else "--gst needs"
            raise SourceError(
                f"{what} an OpenCV built with GStreamer (the PyPI wheels are not; use the system OpenCV, e.g. on a Jetson)"
            )
        if options.gst:
            source = GStreamerSource(text, options)
        else:
            assert csi is not None
            source = CsiCameraSource(int(csi.group(1)), options)
    elif text.lower().startswith(CSI_SCHEME):
        raise SourceError(f"{text}: a CSI camera is csi://N with N the sensor id (csi://0)")
    elif re.fullmatch(r"\d+", text):
        source = CameraSource(int(text), f"camera {text}", options, api=cv2.CAP_V4L2 if os.name == "posix" else None)
    elif re.fullmatch(r"/dev/video\d+", text):
        if not os.path.exists(text):
            raise SourceError(f"{text}: no such camera")
        source = CameraSource(text, text, options, api=cv2.CAP_V4L2)
    elif text.lower().startswith(STREAM_SCHEMES):
        source = StreamSource(text, redact_url(text), options, api=cv2.CAP_FFMPEG)
    elif _looks_like_gst(text) and not os.path.exists(text):
        raise SourceError("this looks like a GStreamer pipeline; pass --gst to run it")
    else:
        path = Path(text).expanduser()
        if path.is_dir():
            source = _image_list_source(_image_paths_in(path), str(path), options)
        elif path.is_file():
            if path.stat().st_size == 0:
                raise SourceError(f"{path}: empty file")
            if path.suffix.lower() in IMAGE_EXTENSIONS:
                source = _image_list_source([path], path.name, options)
            else:
                source = _video_file_source(path, options)
        elif any(ch in text for ch in "*?["):
            matches = sorted(Path(p) for p in globlib.glob(os.path.expanduser(text)))
            images = [p for p in matches if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS]
            if not images:
                raise SourceError(f"{text}: no images match")
            source = _image_list_source(images, text, options)
        elif path.exists():
            raise SourceError(f"{path}: not a regular file or folder")
        else:
            raise SourceError(f"{text}: no such file or folder")
    if isinstance(source, ImageListSource) and options.realtime:
        raise ConfigError("--realtime replays video files; it does not apply to images")
    input_format = options.width or options.height or options.fps
    if input_format and not isinstance(source, (CameraSource, CsiCameraSource)):
        raise ConfigError("--input-width/--input-height/--input-fps apply to cameras and csi://N only")
    if options.lossless and not isinstance(source, GStreamerSource):
        raise ConfigError("--lossless applies to GStreamer pipelines (--gst, csi://N); files and folders are lossless already")
    return source.open()
