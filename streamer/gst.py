"""GStreamer pipeline strings: what they contain, whether they are live, and the ones we build.

Nothing here imports GStreamer at import time.  Element availability is asked of
GStreamer's registry through its Python bindings (``gi``) where they are importable
(Debian/Ubuntu ``python3-gi``, seen by a ``--system-site-packages`` venv), else through
``gst-inspect-1.0 --exists``; when neither is there the check says "unknown" and the
open relies on its timeout alone.
"""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
import threading
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache
from pathlib import Path
from typing import Callable, TypeVar

log = logging.getLogger(__name__)
_T = TypeVar("_T")

LIVE_SOURCE_ELEMENTS = frozenset(
    {
        "v4l2src",
        "nvarguscamerasrc",
        "nvv4l2camerasrc",
        "libcamerasrc",
        "rtspsrc",
        "rtmpsrc",
        "rtmp2src",
        "srtsrc",
        "srtclientsrc",
        "srtserversrc",
        "udpsrc",
        "tcpclientsrc",
        "tcpserversrc",
        "shmsrc",
        "ximagesrc",
        "pipewiresrc",
        "autovideosrc",
        "uvch264src",
        "aravissrc",
        "decklinkvideosrc",
        "ksvideosrc",
        "mfvideosrc",
        "avfvideosrc",
        "appsrc",
    }
)
"""Source elements whose data arrives in real time (cameras, network receivers)."""

LIVE_URI_SCHEMES = ("rtsp://", "rtsps://", "rtspt://", "rtmp://", "rtmps://", "udp://", "srt://", "tcp://", "v4l2://")

_PAD_REF = re.compile(r"^[A-Za-z_][\w-]*\.[\w%-]*$")
"""``name.`` or ``name.pad`` (a named element's pad, e.g. ``demux.video_0``)."""
_ELEMENT = re.compile(r"^[A-Za-z][\w-]*$")


@dataclass(frozen=True)
class PipelineInfo:
    """What a pipeline string holds, as far as its text says."""

    elements: tuple[str, ...]
    """Element factory names in order of appearance (caps and pad references left out)."""
    live: bool
    finite: bool
    """A source element has ``num-buffers`` set: the pipeline ends by itself."""

    @property
    def first(self) -> str:
        return self.elements[0] if self.elements else "?"


def _split_outside_quotes(text: str, sep: str) -> list[str]:
    parts, current, quote, escape = [], [], "", False
    for ch in text:
        if escape:
            current.append(ch)
            escape = False
        elif ch == "\\":
            current.append(ch)
            escape = True
        elif quote:
            current.append(ch)
            if ch == quote:
                quote = ""
        elif ch in "\"'":
            current.append(ch)
            quote = ch
        elif ch == sep or (sep == " " and ch.isspace()):
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    parts.append("".join(current))
    return parts


def _properties(segment: str) -> list[tuple[str, str]]:
    props = []
    for token in _split_outside_quotes(segment.strip(), " "):
        if "=" in token and "/" not in token.split("=", 1)[0]:
            key, value = token.split("=", 1)
            props.append((key.strip().lower(), value.strip().strip("\"'")))
    return props


def parse(pipeline: str) -> PipelineInfo:
    """The elements of ``pipeline`` and whether its source is live; text only, nothing is run."""
    elements: list[str] = []
    live = False
    finite = False
    for segment in _split_outside_quotes(pipeline, "!"):
        for token in _split_outside_quotes(segment.strip(), " "):
            token = token.strip()
            if not token or "=" in token or "/" in token or token.startswith(("\"", "'", "(")):
                continue  # a property, caps (video/x-raw,...) or a quoted value
            if _PAD_REF.match(token):
                continue
            if _ELEMENT.match(token):
                elements.append(token.lower())
        props = dict(_properties(segment))
        if props.get("is-live", "").lower() in ("true", "1", "yes"):
            live = True
        if "num-buffers" in props and props["num-buffers"].lstrip("-").isdigit() and int(props["num-buffers"]) >= 0:
            finite = True
        uri = props.get("uri", "") or props.get("location", "")
        if uri.lower().startswith(LIVE_URI_SCHEMES):
            live = True
    if any(name in LIVE_SOURCE_ELEMENTS for name in elements):
        live = True
    return PipelineInfo(tuple(elements), live, finite)


def describe(pipeline: str) -> str:
    """A short, credential-free name for a pipeline: ``gstreamer pipeline (v4l2src ! ...)``."""
    info = parse(pipeline)
    more = " ! ..." if len(info.elements) > 1 else ""
    return f"gstreamer pipeline ({info.first}{more})"


# -- the registry ------------------------------------------------------------------------------
@lru_cache(maxsize=1)
def _gst_module() -> object | None:
    try:
        import gi  # type: ignore[import-not-found]

        gi.require_version("Gst", "1.0")
        from gi.repository import Gst  # type: ignore[import-not-found]
    except (ImportError, ValueError, AttributeError):
        return None
    try:
        Gst.init(None)
    except Exception:  # noqa: BLE001 - no usable GStreamer through gi
        return None
    return Gst


@lru_cache(maxsize=64)
def element_available(name: str) -> bool | None:
    """True/False if GStreamer's registry has (or lacks) element ``name``; None if it cannot be asked."""
    gst = _gst_module()
    if gst is not None:
        return gst.ElementFactory.find(name) is not None  # type: ignore[attr-defined]
    inspect = shutil.which("gst-inspect-1.0")
    if inspect is None:
        return None
    try:
        result = subprocess.run([inspect, "--exists", name], capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.returncode == 0


def missing_elements(pipeline: str) -> list[str]:
    """The pipeline's elements the registry does not have (empty when all are there or it cannot tell)."""
    missing = []
    for name in dict.fromkeys(parse(pipeline).elements):
        if element_available(name) is False:
            missing.append(name)
    return missing


def missing_element_message(what: str, pipeline: str) -> str | None:
    """One line naming the first element this GStreamer lacks, or None if none is missing."""
    missing = missing_elements(pipeline)
    if not missing:
        return None
    first = parse(pipeline).first
    where = "the pipeline's first element" if missing[0] == first else f"in the pipeline that starts with {first}"
    return f"{what}: no GStreamer element '{missing[0]}' ({where}): its plugin is not installed, or the name is mistyped"


# -- running a call that may block ------------------------------------------------------------
class OpenTimeout(Exception):
    """The call did not return in time (it keeps running on its abandoned thread)."""


def call_with_timeout(call: Callable[[], _T], timeout_s: float, name: str = "gst-open") -> _T:
    """``call()`` on a helper thread, waiting at most ``timeout_s``.

    OpenCV's GStreamer open blocks until the pipeline reaches PLAYING, which a
    missing camera or an unreachable server may never do; it cannot be cancelled,
    so on a timeout the thread is left behind (a daemon) and :class:`OpenTimeout` raised.
    """
    box: dict[str, object] = {}

    def target() -> None:
        try:
            box["result"] = call()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            box["error"] = exc

    thread = threading.Thread(target=target, name=name, daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        raise OpenTimeout(f"did not open within {timeout_s:g} s")
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["result"]  # type: ignore[return-value]


# -- pipelines we build --------------------------------------------------------------------------
def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _framerate(fps: float) -> str:
    """GStreamer's fraction for ``fps``: 30 -> 30/1, 29.97 -> 30000/1001 (the NTSC rates)."""
    if abs(fps - round(fps)) < 1e-6:
        return f"{round(fps)}/1"
    ntsc = round(fps * 1.001)
    if abs(fps - ntsc / 1.001) < 0.005:
        return f"{ntsc * 1000}/1001"
    frac = Fraction(fps).limit_denominator(1000)
    return f"{frac.numerator}/{frac.denominator}"


CSI_DEFAULT_SIZE = (1920, 1080)
CSI_DEFAULT_FPS = 30.0


def csi_pipeline(sensor_id: int, width: int | None = None, height: int | None = None, fps: float | None = None) -> str:
    """A Jetson CSI camera through Argus (``nvarguscamerasrc``), converted to BGR, newest frame only."""
    w = width or CSI_DEFAULT_SIZE[0]
    h = height or CSI_DEFAULT_SIZE[1]
    rate = _framerate(fps or CSI_DEFAULT_FPS)
    return (
        f"nvarguscamerasrc sensor-id={sensor_id} ! "
        f"video/x-raw(memory:NVMM),width={w},height={h},format=NV12,framerate={rate} ! "
        "nvvidconv ! video/x-raw,format=BGRx ! videoconvert ! video/x-raw,format=BGR ! "
        "appsink drop=true max-buffers=1"
    )


DEMUXERS = {".mp4": "qtdemux", ".mov": "qtdemux", ".m4v": "qtdemux", ".mkv": "matroskademux", ".webm": "matroskademux"}
PARSERS = {"h264": "h264parse", "h265": "h265parse"}
JETSON_DECODE_ELEMENTS = ("nvv4l2decoder", "nvvidconv")


def codec_of_fourcc(fourcc: str) -> str | None:
    """``h264`` / ``h265`` for the FourCCs FFmpeg reports for them, else None."""
    tag = fourcc.strip("\0 ").lower()
    if tag in ("avc1", "avc3", "h264", "x264"):
        return "h264"
    if tag in ("hvc1", "hev1", "hevc", "h265"):
        return "h265"
    return None


def jetson_decode_pipeline(path: Path, codec: str) -> str | None:
    """The hardware-decode pipeline for ``path`` (an H.264/H.265 MP4/MOV/MKV), or None for other files."""
    demuxer = DEMUXERS.get(path.suffix.lower())
    parser = PARSERS.get(codec)
    if demuxer is None or parser is None:
        return None
    return (
        f"filesrc location={_quote(str(path))} ! {demuxer} name=demux demux.video_0 ! queue ! {parser} ! "
        "nvv4l2decoder ! nvvidconv ! video/x-raw,format=BGRx ! videoconvert ! video/x-raw,format=BGR ! "
        "appsink sync=false"
    )


def software_decode_pipeline(path: Path) -> str:
    """Any file GStreamer can decode, with whatever decoder ``decodebin`` picks."""
    return (
        f"filesrc location={_quote(str(path))} ! decodebin ! videoconvert ! video/x-raw,format=BGR ! "
        "appsink sync=false"
    )


def filesink_location(pipeline: str) -> Path | None:
    """Where a ``filesink location=...`` in an output pipeline writes, if it has one."""
    for segment in _split_outside_quotes(pipeline, "!"):
        tokens = [t for t in _split_outside_quotes(segment.strip(), " ") if t]
        if tokens and tokens[0].lower() == "filesink":
            for key, value in _properties(segment):
                if key == "location" and value:
                    return Path(value).expanduser()
    return None


def looks_like_output_pipeline(text: str) -> bool:
    """``-o`` text that is a GStreamer pipeline rather than a file or folder name."""
    return " ! " in text or text.strip().lower().startswith("appsrc")
