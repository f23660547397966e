"""Annotated video files, written under a hidden temporary name and renamed when finalised."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from engines.errors import ConfigError, SinkError
from engines.paths import fsync_file

if TYPE_CHECKING:

    pass

from streamer.sinks.base import VIDEO_EXTENSIONS, Sink, check_output_path

log = logging.getLogger(__name__)

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
