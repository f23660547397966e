"""A GStreamer pipeline as an output (``appsrc ! ...``)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np

from engines.errors import ConfigError, SinkError

if TYPE_CHECKING:

    pass

from streamer.sinks.base import Sink, check_output_path

log = logging.getLogger(__name__)

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
