"""Annotated video files through PyAV (FFmpeg's libraries), written under a hidden temporary name and renamed when finalised.

H.264 (libx264, yuv420p) by default, so the file plays in a browser; the input's
audio is copied over (or re-encoded when the output container cannot hold its
codec); the input's own time base and frame times are kept.  PyAV reports every
write error of FFmpeg's muxer, so a full disk, a file size limit or an I/O error
ends the run at the first failed write, with one line, and nothing is saved.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from engines.errors import ConfigError, SinkError
from engines.paths import fsync_file
from streamer.outputs import OutputLock, hidden_name
from streamer.sinks.base import VIDEO_EXTENSIONS, Sink, check_output_path

if TYPE_CHECKING:
    pass

log = logging.getLogger(__name__)

CODECS: dict[str, str] = {
    "h264": "libx264",
    "h265": "libx265",
    "hevc": "libx265",
    "vp9": "libvpx-vp9",
    "vp8": "libvpx",
    "av1": "libsvtav1",
    "mjpeg": "mjpeg",
    "mpeg4": "mpeg4",
}
"""``--codec`` name -> FFmpeg encoder."""

CONTAINER_CODECS: dict[str, tuple[str, ...]] = {
    ".mp4": ("h264", "h265", "hevc", "vp9", "av1", "mpeg4"),
    ".mov": ("h264", "h265", "hevc", "mpeg4", "mjpeg"),
    ".mkv": tuple(CODECS),
    ".webm": ("vp9", "vp8", "av1"),
    ".avi": ("mjpeg", "mpeg4", "h264"),
}
"""Which codecs each container may hold (what FFmpeg muxes and players read)."""

DEFAULT_CODEC = {".mp4": "h264", ".mkv": "h264", ".mov": "h264", ".webm": "vp9", ".avi": "mjpeg"}

FOURCC_CODECS = {"mp4v": "mpeg4", "mjpg": "mjpeg", "avc1": "h264", "h264": "h264", "x264": "h264", "hev1": "h265", "hvc1": "h265", "vp90": "vp9", "vp80": "vp8", "av01": "av1"}
"""``--fourcc`` (the OpenCV writer's option, kept for old command lines) -> ``--codec``."""

AUDIO_COPY: dict[str, frozenset[str]] = {
    ".mp4": frozenset({"aac", "mp3", "opus", "alac", "flac", "ac3", "eac3"}),
    ".mov": frozenset({"aac", "mp3", "alac", "ac3", "pcm_s16le", "pcm_s24le"}),
    ".mkv": frozenset({"aac", "mp3", "opus", "vorbis", "flac", "ac3", "eac3", "dts", "alac", "pcm_s16le", "pcm_s24le", "mp2"}),
    ".webm": frozenset({"opus", "vorbis"}),
    ".avi": frozenset({"mp3", "ac3", "pcm_s16le", "mp2", "aac"}),
}
"""Audio codecs copied without re-encoding, by container; any other is encoded (AUDIO_ENCODE)."""

AUDIO_ENCODE = {".webm": "libopus"}
"""The audio encoder used when the input's codec cannot be copied (AAC unless listed)."""

X264_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow")
DEFAULT_PRESET = "superfast"
"""x264 at 720p on 2 loaded cores: 41 ms a frame and 1.9 Mbit/s (ultrafast: 29 ms, 5.0 Mbit/s; veryfast: 56 ms, 1.2 Mbit/s; mp4v: 24 ms, 4.6 Mbit/s)."""
MAX_CRF = {"h264": 51, "h265": 51, "vp9": 63, "vp8": 63, "av1": 63}


@dataclass
class VideoOptions:
    """How to encode (``--codec``, ``--crf``, ``--preset``); validated against the container by :class:`VideoFileSink`."""

    codec: str | None = None
    crf: int | None = None
    preset: str | None = None
    threads: int | None = None
    """Encoder threads (None: the CPUs this process may use, at most :data:`MAX_THREADS`; the bench's one-thread ceiling sets 1)."""


@dataclass
class _InputInfo:
    """What the sink keeps of a file input: its video timing and its audio stream."""

    time_base: Fraction | None = None
    rate: Fraction | None = None
    pts: list[int] = field(default_factory=list)
    """Video presentation times in ``time_base``, from 0, in presentation order."""
    start_pts: int = 0
    has_audio: bool = False


@dataclass(frozen=True)
class _Prepared:
    """A frame :meth:`VideoFileSink.prepare` converted for the encoder (an ``av.VideoFrame``)."""

    frame: Any


MAX_THREADS = 16
"""Encoder threads at most: x264's frame threads each hold a frame back, and 16 encode 4K in real time."""


def _threads() -> int:
    """The CPUs this process may use (its affinity, as in a container), at most :data:`MAX_THREADS`."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, MAX_THREADS))


def _av_error_line(exc: BaseException) -> str:
    strerror = getattr(exc, "strerror", None)
    return str(strerror or exc)


def _fps_fraction(fps: float) -> Fraction:
    if not (fps > 0 and np.isfinite(fps)):
        fps = 30.0
    return Fraction(fps).limit_denominator(1001)


def probe_input(path: Path, with_pts: bool = True) -> _InputInfo:
    """The time base, average rate, frame times and audio of the video file ``path`` (empty if PyAV cannot read it)."""
    import av

    info = _InputInfo()
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                return info
            stream = container.streams.video[0]
            info.time_base = stream.time_base
            rate = stream.average_rate or stream.guessed_rate or stream.base_rate
            info.rate = Fraction(rate) if rate else None
            info.has_audio = bool(container.streams.audio)
            if with_pts and info.time_base is not None:
                pts = [p.pts for p in container.demux(stream) if p.pts is not None and p.size > 0]
                pts.sort()
                if pts:
                    info.start_pts = pts[0]
                    info.pts = [p - pts[0] for p in pts]
    except (av.FFmpegError, OSError, ValueError) as exc:
        log.debug("cannot probe %s with PyAV: %s", path, exc)
        return _InputInfo()
    return info


class VideoFileSink(Sink):
    """Writes an ``.mp4``, ``.mkv``, ``.mov``, ``.webm`` or ``.avi`` through PyAV.

    ``input_path``: the file the frames come from (its audio is passed through,
    its time base and frame times kept); ``keep_pts``: False when frames may be
    dropped (``--realtime``), so frame times follow the average rate instead.
    """

    def __init__(
        self,
        path: Path,
        overwrite: bool = False,
        fourcc: str | None = None,
        options: VideoOptions | None = None,
        input_path: Path | None = None,
        keep_pts: bool = True,
    ) -> None:
        import importlib.util

        ext = path.suffix.lower()
        if ext not in VIDEO_EXTENSIONS:
            raise ConfigError(f"{path}: unsupported video extension; use one of {', '.join(VIDEO_EXTENSIONS)}")
        if importlib.util.find_spec("av") is None:
            raise ConfigError(f"{path}: writing video files needs PyAV (pip install av)")
        opts = options or VideoOptions()
        codec = opts.codec
        if fourcc is not None:
            if len(fourcc) != 4:
                raise ConfigError(f"--fourcc needs four characters, got {fourcc!r}")
            mapped = FOURCC_CODECS.get(fourcc.lower())
            if mapped is None:
                raise ConfigError(f"--fourcc {fourcc}: unknown; use --codec {'|'.join(sorted(set(CODECS) - {'hevc'}))}")
            if codec is not None and codec != mapped:
                raise ConfigError(f"--fourcc {fourcc} contradicts --codec {codec}")
            codec = mapped
        codec = (codec or DEFAULT_CODEC[ext]).lower()
        if codec not in CODECS:
            raise ConfigError(f"--codec {codec}: unknown; use one of {', '.join(c for c in CODECS if c != 'hevc')}")
        if codec not in CONTAINER_CODECS[ext]:
            allowed = ", ".join(c for c in CONTAINER_CODECS[ext] if c != "hevc")
            raise ConfigError(f"--codec {codec} does not go in {ext}; use one of {allowed} (or .mkv, which takes any)")
        if opts.crf is not None:
            if codec not in MAX_CRF:
                raise ConfigError(f"--crf does not apply to {codec}")
            if not 0 <= opts.crf <= MAX_CRF[codec]:
                raise ConfigError(f"--crf for {codec} must be between 0 and {MAX_CRF[codec]}, got {opts.crf}")
        if opts.preset is not None:
            if codec not in ("h264", "h265", "vp9", "vp8"):
                raise ConfigError(f"--preset does not apply to {codec}")
            if opts.preset not in X264_PRESETS:
                raise ConfigError(f"--preset must be one of {', '.join(X264_PRESETS)}, got {opts.preset!r}")
        self.path = path
        self.overwrite = overwrite
        self.codec = codec
        self.crf = opts.crf
        self.preset = opts.preset
        if opts.threads is not None and opts.threads < 1:
            raise ConfigError(f"encoder threads must be >= 1, got {opts.threads}")
        self.threads = opts.threads
        self.input_path = input_path
        self.keep_pts = keep_pts
        # .STEM.partial-PID.EXT (a hash for STEM when that would pass 255 bytes); the final path is locked for the run.
        self.temp_path = hidden_name(path.with_name(path.stem), f"partial-{os.getpid()}", ext)
        self._lock = OutputLock(path)
        self.frames_written = 0
        self.audio_packets_written = 0
        self.time_base: Fraction | None = None
        self.rate: Fraction | None = None
        self._container: Any = None
        self._stream: Any = None
        self._audio_in: Any = None
        self._audio_iter: Any = None
        self._audio_out: Any = None
        self._audio_codec: Any = None
        self._audio_resampler: Any = None
        self._audio_offset = 0
        self._audio_next_pts = 0
        self._pending_audio: Any = None
        self._size: tuple[int, int] | None = None
        self._yuv420 = False
        self._info = _InputInfo()
        self._last_pts = -1
        check_output_path(path, overwrite)

    @property
    def description(self) -> str:
        return str(self.path)

    # -- open ----------------------------------------------------------------
    def open(self, frame_size: tuple[int, int], fps: float) -> "VideoFileSink":
        import av

        check_output_path(self.path, self.overwrite)
        self._lock.acquire()  # a second run writing this file fails here, with one line
        width, height = frame_size
        if width <= 0 or height <= 0:
            raise SinkError(f"{self.path}: invalid frame size {frame_size}")
        # yuv420p needs even dimensions; keep the size fixed for the whole file.
        self._size = (width - width % 2 or 2, height - height % 2 or 2)
        if self.input_path is not None:
            self._info = probe_input(self.input_path, with_pts=self.keep_pts)
        self.rate = self._info.rate or _fps_fraction(fps)
        self.time_base = self._info.time_base if self._info.time_base is not None else Fraction(1, 1) / self.rate
        ext = self.path.suffix.lower()
        if ext == ".avi":
            # AVI has one frame rate and no frame times: one tick per frame.
            self.time_base = 1 / self.rate
            self._info.pts = []
        if not self.keep_pts:
            self._info.pts = []
        container_options: dict[str, str] = {}
        if ext in (".mp4", ".mov"):
            container_options["movflags"] = "+faststart"
        else:
            # Streamable containers: every packet reaches the file at once, so a killed
            # run's partial file plays up to its last frame.
            container_options["flush_packets"] = "1"
            if ext in (".mkv", ".webm"):
                # Matroska holds a cluster in memory until it closes: close one every second
                # (or 256 KiB), so at most a second of video is lost to kill -9.
                container_options["cluster_time_limit"] = "1000"
                container_options["cluster_size_limit"] = str(256 * 1024)
        try:
            self._container = av.open(str(self.temp_path), "w", options=container_options)
            self._add_video_stream(av)
            if self._info.has_audio and self.input_path is not None:
                self._open_audio(av)
            self._container.start_encoding()  # creates the file and writes the header now: fail early
        except (av.FFmpegError, OSError, ValueError) as exc:
            self._close(quiet=True)
            self._remove_temp()
            raise SinkError(f"{self.path}: cannot open the {self.codec} writer ({_av_error_line(exc)})") from exc
        return self

    def _add_video_stream(self, av: Any) -> None:
        assert self._size is not None and self.rate is not None and self.time_base is not None
        encoder = CODECS[self.codec]
        stream = self._container.add_stream(encoder, rate=self.rate)
        stream.width, stream.height = self._size
        stream.time_base = self.time_base
        ctx = stream.codec_context
        ctx.time_base = self.time_base
        ctx.framerate = self.rate
        options: dict[str, str] = {}
        threads = self.threads or _threads()
        if self.codec in ("h264", "h265"):
            stream.pix_fmt = "yuv420p"
            options["preset"] = self.preset or DEFAULT_PRESET
            options["crf"] = str(self.crf if self.crf is not None else (23 if self.codec == "h264" else 28))
            if self.codec == "h265":
                options["x265-params"] = f"log-level=error:pools={threads}"
                if self.path.suffix.lower() in (".mp4", ".mov"):
                    ctx.codec_tag = "hvc1"  # the tag Safari and Chromium play
        elif self.codec in ("vp9", "vp8"):
            stream.pix_fmt = "yuv420p"
            options["crf"] = str(self.crf if self.crf is not None else 33)
            options["b"] = "0"
            fast = (self.preset or DEFAULT_PRESET) in X264_PRESETS[:4]
            options["deadline"] = "realtime" if fast else "good"
            options["cpu-used"] = "8" if fast else "2"
            options["row-mt"] = "1"
        elif self.codec == "av1":
            stream.pix_fmt = "yuv420p"
            options["crf"] = str(self.crf if self.crf is not None else 35)
            options["preset"] = "10"
        elif self.codec == "mjpeg":
            stream.pix_fmt = "yuvj420p"
            ctx.bit_rate = int(self._size[0] * self._size[1] * float(self.rate) * 1.5)
        else:  # mpeg4
            stream.pix_fmt = "yuv420p"
            ctx.bit_rate = int(self._size[0] * self._size[1] * float(self.rate) * 0.3)
        ctx.thread_count = threads
        if self.codec not in ("h264", "h265"):
            ctx.thread_type = "AUTO"  # FFmpeg's own frame/slice threads; x264/x265 run a fixed pool of their own
        stream.options = options
        ctx.open()
        self._stream = stream
        self._yuv420 = stream.pix_fmt == "yuv420p"

    def _open_audio(self, av: Any) -> None:
        assert self.input_path is not None
        ext = self.path.suffix.lower()
        self._audio_in = av.open(str(self.input_path))
        in_stream = self._audio_in.streams.audio[0]
        name = in_stream.codec_context.name
        if name in AUDIO_COPY[ext]:
            self._audio_out = self._container.add_stream_from_template(in_stream)
        else:
            encoder = AUDIO_ENCODE.get(ext, "aac")
            rate = 48000 if encoder == "libopus" else (in_stream.rate or 48000)
            out = self._container.add_stream(encoder, rate=rate)
            out.layout = in_stream.layout.name if in_stream.layout else "stereo"
            out.time_base = Fraction(1, rate)
            self._audio_codec = in_stream
            fmt = out.codec_context.codec.audio_formats[0].name
            self._audio_resampler = av.AudioResampler(format=fmt, layout=out.layout.name, rate=rate)
            self._audio_out = out
        # Audio times are kept relative to the first video frame, as the video's are.
        assert self._info.time_base is not None
        offset = Fraction(self._info.start_pts) * self._info.time_base
        self._audio_offset = int(round(offset / in_stream.time_base))
        self._audio_in_tb = in_stream.time_base
        self._audio_iter = self._audio_in.demux(in_stream)

    # -- write ---------------------------------------------------------------
    def _pts(self, index: int) -> int:
        assert self.rate is not None and self.time_base is not None
        pts = self._info.pts
        if index < len(pts):
            value = pts[index]
        else:
            step = 1 / (self.rate * self.time_base)
            base = pts[-1] + step * (index - len(pts) + 1) if pts else step * index
            value = int(round(base))
        if value <= self._last_pts:
            value = self._last_pts + 1
        self._last_pts = value
        return value

    def prepare(self, image: np.ndarray) -> "_Prepared":
        """The frame converted for the encoder (size, grey, BGR -> I420), on the caller's thread.

        :class:`~streamer.sinks.ThreadedSink` calls this on the render thread, so that the
        conversion runs beside the encoding of the frames before instead of on the writer thread.
        """
        import av

        if self._container is None or self._size is None:
            raise SinkError(f"{self.path}: write before open")
        return _Prepared(self._frame(av, self._fit(image)))

    def _fit(self, image: np.ndarray) -> np.ndarray:
        """``image`` at the file's (even) size, in BGR."""
        assert self._size is not None
        if (image.shape[1], image.shape[0]) != self._size:
            import cv2

            image = cv2.resize(image, self._size, interpolation=cv2.INTER_AREA)
        if image.ndim == 2:
            import cv2

            image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
        return image

    def write(self, image: "np.ndarray | _Prepared", name: str) -> None:
        import av

        if self._container is None or self._size is None:
            raise SinkError(f"{self.path}: write before open")
        frame = image.frame if isinstance(image, _Prepared) else self._frame(av, self._fit(image))
        frame.pts = self._pts(self.frames_written)
        frame.time_base = self.time_base
        try:
            packets = self._stream.encode(frame)
            self._mux(packets)
            self.frames_written += 1
            if self._audio_iter is not None:
                assert self.time_base is not None
                self._mux_audio_until(Fraction(frame.pts) * self.time_base)
        except (av.FFmpegError, OSError) as exc:
            raise SinkError(f"{self.path}: write failed ({_av_error_line(exc)}); nothing saved") from exc

    def _frame(self, av: Any, image: np.ndarray) -> Any:
        """The BGR ``image`` as a PyAV frame in the encoder's pixel format, converted once.

        yuv420p (every codec but MJPEG): OpenCV converts BGR to I420 (BT.601, limited
        range, as swscale does by default) in one SIMD pass straight into a new buffer,
        which the frame wraps without a copy (FFmpeg keeps a reference to it while the
        encoder holds the frame). swscale through ``from_ndarray(...).reformat(...)``
        took two copies and a new scaler per frame: 2-4 ms at 640x272 against 0.1 ms.
        """
        if self._yuv420:
            import cv2

            yuv = cv2.cvtColor(image, cv2.COLOR_BGR2YUV_I420)
            return av.VideoFrame.from_numpy_buffer(yuv, format="yuv420p")
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="bgr24")
        return frame.reformat(format=self._stream.pix_fmt)

    def _mux(self, packets: Any) -> None:
        for packet in packets:
            self._container.mux(packet)

    def _mux_audio_until(self, t: Fraction | None) -> None:
        """Mux the input's audio up to time ``t`` (seconds from the first video frame); all of it if None."""
        import av

        while True:
            packet = self._pending_audio
            self._pending_audio = None
            if packet is None:
                try:
                    packet = next(self._audio_iter)
                except (StopIteration, av.FFmpegError):
                    self._audio_iter = None
                    return
            if packet.pts is None or packet.size == 0:
                continue
            pts = packet.pts - self._audio_offset
            start = Fraction(pts) * self._audio_in_tb
            if t is not None and start > t:
                self._pending_audio = packet
                return
            if pts < 0:
                continue
            if self._audio_resampler is None:
                packet.pts = pts
                packet.dts = pts if packet.dts is None else packet.dts - self._audio_offset
                packet.stream = self._audio_out
                self._container.mux(packet)
            else:
                self._encode_audio(packet)
            self.audio_packets_written += 1

    def _encode_audio(self, packet: Any) -> None:
        for frame in packet.decode():
            for out in self._audio_resampler.resample(frame):
                out.pts = self._audio_next_pts
                self._audio_next_pts += out.samples
                self._mux(self._audio_out.encode(out))

    # -- finalize / abort ----------------------------------------------------
    def _video_end(self) -> Fraction | None:
        if self.frames_written == 0 or self.time_base is None or self.rate is None:
            return None
        # The last frame lasts until the next frame's time (or one average frame).
        return Fraction(self._last_pts) * self.time_base + 1 / self.rate

    def _close(self, quiet: bool = False) -> None:
        import av

        container, self._container = self._container, None
        audio_in, self._audio_in = self._audio_in, None
        self._audio_iter = None
        try:
            if container is not None:
                container.close()
        except (av.FFmpegError, OSError) as exc:
            if not quiet:
                raise
            log.debug("closing %s: %s", self.temp_path, exc)
        finally:
            if audio_in is not None:
                audio_in.close()

    def finalize(self) -> None:
        try:
            self._finalize()
        finally:
            self._lock.release()

    def _finalize(self) -> None:
        import av

        if self._container is None:
            if self.temp_path.exists():
                self._remove_temp()
            return
        if self.frames_written == 0:
            self._close(quiet=True)
            self._remove_temp()
            raise SinkError(f"{self.path}: no frames were written; nothing saved")
        try:
            self._mux(self._stream.encode(None))
            if self._audio_iter is not None:
                end = self._video_end()
                # Audio up to the end of the last frame written: trimmed with --max-frames or Ctrl-C.
                self._mux_audio_until(end - Fraction(1, 10**6) if end is not None else None)
            if self._audio_resampler is not None:
                for out in self._audio_resampler.resample(None):
                    out.pts = self._audio_next_pts
                    self._audio_next_pts += out.samples
                    self._mux(self._audio_out.encode(out))
                self._mux(self._audio_out.encode(None))
            self._close()
        except (av.FFmpegError, OSError) as exc:
            self._close(quiet=True)
            self._remove_temp()
            raise SinkError(f"{self.path}: write failed ({_av_error_line(exc)}); nothing saved") from exc
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
        """Read the finished file's frame count back with PyAV and compare it to the frames written."""
        on_disk = frames_in_video(self.temp_path)
        if on_disk is None:
            self._remove_temp()
            raise SinkError(
                f"{self.path}: the video written cannot be read back (a write failed: file size limit, quota or disk full?); nothing saved"
            )
        if on_disk != self.frames_written:
            self._remove_temp()
            raise SinkError(
                f"{self.path}: only {on_disk} of {self.frames_written} frames reached the disk "
                "(a write failed: file size limit, quota or disk full?); nothing saved"
            )

    def abort(self) -> None:
        self._close(quiet=True)
        self._remove_temp()
        self._lock.release()

    def _remove_temp(self) -> None:
        try:
            self.temp_path.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("could not remove %s: %s", self.temp_path, exc)


def frames_in_video(path: Path) -> int | None:
    """How many video frames the file at ``path`` holds (packets demuxed, nothing decoded); None if it cannot be read."""
    import av

    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                return None
            stream = container.streams.video[0]
            return sum(1 for p in container.demux(stream) if p.size > 0)
    except (av.FFmpegError, OSError, ValueError):
        return None


_frames_in_video = frames_in_video
