"""Where annotated frames go: a video file, a folder of images, a window, a GStreamer pipeline, or nowhere.

A file output is written under a hidden temporary name in the destination folder and
renamed over the final name only when it is finalised, so a killed run never
leaves a broken file under the name the user asked for.  One module per kind of
output; :func:`make_sink` picks one from the ``-o`` text.
"""

from __future__ import annotations

import os
from pathlib import Path

from engines.errors import ConfigError
from streamer.sinks.base import (
    IMAGE_OUTPUT_EXTENSIONS,
    VIDEO_EXTENSIONS,
    NullSink,
    ResultSink,
    Sink,
    TeeSink,
    ThreadedSink,
    check_output_path,
)
from streamer.sinks.gst import GStreamerSink
from streamer.sinks.images import ImageFolderSink
from streamer.sinks.predictions import PredictionsWriter
from streamer.sinks.video import VideoFileSink, VideoOptions
from streamer.sinks.window import WindowSink, display_available

def make_sink(
    output: str | None,
    show: bool,
    overwrite: bool = False,
    fourcc: str | None = None,
    gst_output: bool = False,
    timeout_s: float = 10.0,
    video: VideoOptions | None = None,
    input_path: Path | None = None,
    keep_pts: bool = True,
) -> Sink:
    """Build the sink for ``-o``/``--show``: a file, a folder of images, a GStreamer pipeline
    (``gst_output``), a window, several, or none.

    ``video``: ``--codec``/``--crf``/``--preset`` of a video file; ``input_path``: the input
    file, whose audio and frame times a video file keeps (``keep_pts`` False when frames may
    be dropped, as with ``--realtime``)."""
    from streamer.gst import looks_like_output_pipeline

    sinks: list[Sink] = []
    if gst_output and not output:
        raise ConfigError("--gst-output needs -o 'appsrc ! ... '")
    if output and gst_output:
        if fourcc is not None:
            raise ConfigError("--fourcc does not apply to --gst-output: the pipeline's encoder decides")
        if video is not None and video != VideoOptions():
            raise ConfigError("--codec, --crf and --preset do not apply to --gst-output: the pipeline's encoder decides")
        sinks.append(ThreadedSink(GStreamerSink(output, overwrite=overwrite, timeout_s=timeout_s)))
    elif output:
        path = Path(output).expanduser()
        if looks_like_output_pipeline(output) and not path.exists():
            raise ConfigError("-o looks like a GStreamer pipeline; pass --gst-output to run it")
        if path.suffix.lower() in VIDEO_EXTENSIONS:
            sinks.append(
                ThreadedSink(
                    VideoFileSink(path, overwrite=overwrite, fourcc=fourcc, options=video, input_path=input_path, keep_pts=keep_pts)
                )
            )
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


__all__ = [
    "IMAGE_OUTPUT_EXTENSIONS",
    "VIDEO_EXTENSIONS",
    "GStreamerSink",
    "ImageFolderSink",
    "NullSink",
    "PredictionsWriter",
    "ResultSink",
    "Sink",
    "TeeSink",
    "ThreadedSink",
    "VideoFileSink",
    "VideoOptions",
    "WindowSink",
    "check_output_path",
    "display_available",
    "make_sink",
]
