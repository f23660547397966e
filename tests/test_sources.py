"""Every source kind through ``streamer.sources.open_source``, on real media."""

from __future__ import annotations

import http.server
import math
import shutil
import threading
import time
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import pytest

from engines.errors import ConfigError, SourceError
from helpers import (
    SAMPLE_VIDEO_FRAMES,
    closed_port,
    count_frames,
    http_file_server,
    make_clip,
    silent_tcp_server,
)
from streamer import sources
from streamer.sources import (
    DEFAULT_FPS,
    CameraSource,
    ImageListSource,
    SourceOptions,
    StreamSource,
    VideoFileSource,
    open_source,
)


def _drain(source: sources.Source) -> list[sources.Frame]:
    try:
        return list(source)
    finally:
        source.close()


# -- video files ------------------------------------------------------------------
def test_video_file_reads_every_frame(sample_video: Path) -> None:
    source = open_source(str(sample_video))
    assert isinstance(source, VideoFileSource)
    assert not source.live
    assert source.frame_size == (1280, 720)
    assert source.fps == pytest.approx(25.0) and source.fps_trusted
    frames = _drain(source)
    assert len(frames) == SAMPLE_VIDEO_FRAMES == count_frames(sample_video)
    assert [f.index for f in frames] == list(range(SAMPLE_VIDEO_FRAMES))
    assert all(f.image.shape == (720, 1280, 3) and f.image.dtype == np.uint8 for f in frames)
    assert all(f.name == sample_video.name for f in frames)
    # real content: consecutive frames of a moving clip are not all identical
    assert len({f.image[::40, ::40].tobytes() for f in frames}) > 60


class _LyingCapture:
    """cv2.VideoCapture whose frame-count metadata says ``count``; everything else is real."""

    def __init__(self, count: float, fps: float | None, *args: object) -> None:
        self._cap = _REAL_CAPTURE(*args)
        self._count = count
        self._fps = fps

    def get(self, prop: int) -> float:
        if prop == cv2.CAP_PROP_FRAME_COUNT:
            return self._count
        if prop == cv2.CAP_PROP_FPS and self._fps is not None:
            return self._fps
        return self._cap.get(prop)

    def __getattr__(self, name: str) -> object:
        return getattr(self._cap, name)


_REAL_CAPTURE = cv2.VideoCapture


def _patch_capture(monkeypatch: pytest.MonkeyPatch, count: float, fps: float | None = None) -> None:
    monkeypatch.setattr(cv2, "VideoCapture", lambda *a: _LyingCapture(count, fps, *a))


@pytest.mark.parametrize("claimed", [50, 10_000, 0, float("nan")], ids=["too-few", "too-many", "zero", "nan"])
def test_video_file_reads_to_the_end_when_frame_count_lies(sample_video: Path, monkeypatch: pytest.MonkeyPatch, claimed: float) -> None:
    _patch_capture(monkeypatch, claimed)
    source = open_source(str(sample_video))
    if claimed == 50 or claimed == 10_000:
        assert source.total_hint == claimed  # used only as a progress hint
    else:
        assert source.total_hint is None
    assert len(_drain(source)) == SAMPLE_VIDEO_FRAMES


@pytest.mark.parametrize("reported", [0.0, -5.0, float("nan"), float("inf"), 1000.0, 90000.0])
def test_absurd_fps_metadata_is_replaced(sample_video: Path, monkeypatch: pytest.MonkeyPatch, reported: float) -> None:
    _patch_capture(monkeypatch, SAMPLE_VIDEO_FRAMES, fps=reported)
    source = open_source(str(sample_video))
    try:
        assert source.fps == DEFAULT_FPS
        assert not source.fps_trusted
        assert math.isfinite(source.fps)
    finally:
        source.close()


def test_absurd_fps_in_a_real_file_is_replaced(tmp_path: Path) -> None:
    """A real file whose container says 1000 FPS (written so by the encoder, not patched)."""
    clip = make_clip(tmp_path / "fast.mp4", 6, size=(160, 90), fps=1000.0)
    probe = cv2.VideoCapture(str(clip), cv2.CAP_FFMPEG)
    assert probe.get(cv2.CAP_PROP_FPS) == pytest.approx(1000.0)  # the premise
    probe.release()
    source = open_source(str(clip))
    assert (source.fps, source.fps_trusted) == (DEFAULT_FPS, False)
    assert len(_drain(source)) == 6


def test_plausible_fps_is_kept(tmp_path: Path) -> None:
    clip = make_clip(tmp_path / "slow.mp4", 4, size=(160, 90), fps=12.5)
    source = open_source(str(clip))
    assert (source.fps, source.fps_trusted) == (pytest.approx(12.5), True)
    source.close()


def test_realtime_video_is_live_and_paced(short_clip: Path) -> None:
    source = open_source(str(short_clip), SourceOptions(realtime=True))
    assert isinstance(source, VideoFileSource) and source.live
    frames = _drain(source)
    assert len(frames) == 20
    # frame i is due i/fps after the first: 19 intervals at 25 FPS >= 0.76 s (a lower bound, not a speed)
    assert frames[-1].t_capture - frames[0].t_capture >= 19 / 25.0 - 0.02


# -- images -----------------------------------------------------------------------
def test_one_image(sample_images: Path) -> None:
    source = open_source(str(sample_images / "cat.jpg"))
    assert isinstance(source, ImageListSource) and not source.live
    frames = _drain(source)
    assert len(frames) == 1
    assert frames[0].name == "cat.jpg"
    assert frames[0].image.shape == cv2.imread(str(sample_images / "cat.jpg")).shape
    assert np.array_equal(frames[0].image, cv2.imread(str(sample_images / "cat.jpg")))


def test_folder_is_read_in_name_order(sample_images: Path, tmp_path: Path) -> None:
    # copy under names whose order differs from creation order; add files that are not images
    names = ["b_rocket.jpg", "a_cat.jpg", "C_coffee.png", "10_flower.jpg", "2_palace.jpg"]
    originals = ["rocket.jpg", "cat.jpg", "coffee.jpg", "flower.jpg", "palace.jpg"]
    for name, original in zip(names, originals):
        image = cv2.imread(str(sample_images / original))
        cv2.imwrite(str(tmp_path / name), image)
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "sub").mkdir()
    cv2.imwrite(str(tmp_path / "sub" / "nested.jpg"), cv2.imread(str(sample_images / "cat.jpg")))
    source = open_source(str(tmp_path))
    assert source.total_hint == 5
    frames = _drain(source)
    assert [f.name for f in frames] == sorted(names)
    assert [f.index for f in frames] == list(range(5))
    assert source.unreadable == 0


def test_glob_selects_matching_images_sorted(sample_images: Path) -> None:
    pattern = str(sample_images / "c*.jpg")
    frames = _drain(open_source(pattern))
    assert [f.name for f in frames] == ["cameraman.jpg", "cat.jpg", "coffee.jpg"]


def test_glob_without_matches_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="no images match"):
        open_source(str(tmp_path / "*.jpg"))


def test_unreadable_images_in_a_folder_are_skipped_and_counted(sample_images: Path, tmp_path: Path) -> None:
    for name in ("a.jpg", "c.jpg"):
        shutil.copy(sample_images / "cat.jpg", tmp_path / name)
    (tmp_path / "b.jpg").write_bytes(b"this is not a jpeg" * 50)
    (tmp_path / "d.png").write_bytes(b"")
    truncated = (sample_images / "rocket.jpg").read_bytes()[:200]
    (tmp_path / "e.jpg").write_bytes(truncated)
    source = open_source(str(tmp_path))
    frames = _drain(source)
    assert [f.name for f in frames] == ["a.jpg", "c.jpg"]
    assert source.unreadable == 3  # garbage, zero bytes, and a JPEG cut after its header


def test_folder_without_images_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "readme.txt").write_text("x")
    with pytest.raises(SourceError, match="no images"):
        open_source(str(tmp_path))


def test_single_unreadable_image_is_an_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8 definitely not a whole jpeg")
    with pytest.raises(SourceError, match="bad.jpg"):
        open_source(str(bad))


def test_realtime_does_not_apply_to_images(sample_images: Path) -> None:
    with pytest.raises(ConfigError):
        open_source(str(sample_images), SourceOptions(realtime=True))


# -- cameras -----------------------------------------------------------------------
def test_missing_camera_index_fails_quickly() -> None:
    start = time.perf_counter()
    with pytest.raises(SourceError, match="camera 99"):
        open_source("99", SourceOptions(open_timeout_s=2.0))
    assert time.perf_counter() - start < 10.0  # no hang; a missing device needs no timeout at all


def test_missing_camera_device_path() -> None:
    with pytest.raises(SourceError, match="/dev/video99"):
        open_source("/dev/video99")


def test_camera_sources_are_live() -> None:
    assert CameraSource.live and StreamSource.live and not VideoFileSource.live


# -- network streams ------------------------------------------------------------------
def test_closed_port_stream_fails_within_open_timeout() -> None:
    url = f"http://127.0.0.1:{closed_port()}/x"
    start = time.perf_counter()
    with pytest.raises(SourceError, match="127.0.0.1"):
        open_source(url, SourceOptions(open_timeout_s=1.0, read_timeout_s=1.0))
    assert time.perf_counter() - start < 1.0 + 3.0


@pytest.mark.parametrize("scheme", ["http", "rtsp"])
def test_silent_server_fails_within_open_timeout(scheme: str) -> None:
    """The socket accepts but nothing ever answers: open must give up at its time limit."""
    with silent_tcp_server() as port:
        start = time.perf_counter()
        with pytest.raises(SourceError):
            open_source(f"{scheme}://127.0.0.1:{port}/stream", SourceOptions(open_timeout_s=1.0, read_timeout_s=1.0))
        elapsed = time.perf_counter() - start
    assert 0.5 <= elapsed < 1.0 + 3.0


def test_stream_url_password_is_redacted_in_errors() -> None:
    url = f"rtsp://admin:hunter2@127.0.0.1:{closed_port()}/live"
    with pytest.raises(SourceError) as info:
        open_source(url, SourceOptions(open_timeout_s=1.0, read_timeout_s=1.0))
    assert "hunter2" not in str(info.value)
    assert "admin:***@" in str(info.value)


def test_http_stream_reads_real_frames(sample_video: Path) -> None:
    """The sample served by a local HTTP server (with byte ranges, as a real one has), read as a stream.

    The server says how long the video is, so it is a file over HTTP: read
    losslessly to its end (not live, no reconnect that would replay it forever).
    """
    payload = sample_video.read_bytes()
    with http_file_server(payload) as port:
        source = open_source(f"http://127.0.0.1:{port}/clip.mp4", SourceOptions(open_timeout_s=5.0, read_timeout_s=5.0))
        assert isinstance(source, StreamSource)
        assert not source.live and not source.reconnectable
        assert source.frame_size == (1280, 720)
        assert source.total_hint == SAMPLE_VIDEO_FRAMES
        frames = _drain(source)
    assert len(frames) == SAMPLE_VIDEO_FRAMES
    reference = cv2.VideoCapture(str(sample_video), cv2.CAP_FFMPEG)
    for i in (0, 60, 131):
        reference.set(cv2.CAP_PROP_POS_FRAMES, i)
        ok, image = reference.read()
        assert ok
        assert np.abs(frames[i].image.astype(int) - image.astype(int)).mean() < 1.0
    reference.release()


class _StallingHandler(http.server.BaseHTTPRequestHandler):
    payload = b""
    stall_s = 6.0

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass

    def do_GET(self) -> None:  # noqa: N802
        self.send_response(200)
        self.send_header("Content-Type", "video/x-matroska")
        self.send_header("Content-Length", str(len(self.payload)))
        self.end_headers()
        try:
            self.wfile.write(self.payload[: len(self.payload) // 2])
            self.wfile.flush()
        except OSError:
            return
        time.sleep(self.stall_s)  # then hang up without the rest


def _stalling_server(payload: bytes) -> http.server.ThreadingHTTPServer:
    handler = type("H", (_StallingHandler,), {"payload": payload})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return server


def _read_stalled_stream(clip_factory: Callable[..., Path]) -> tuple[list[float], int, BaseException | None]:
    clip = clip_factory("stall.mkv", 40)
    server = _stalling_server(clip.read_bytes())
    try:
        source = open_source(f"http://127.0.0.1:{server.server_address[1]}/live.mkv", SourceOptions(open_timeout_s=3.0, read_timeout_s=1.0))
        durations: list[float] = []
        frames = 0
        error: BaseException | None = None
        try:
            while True:
                start = time.perf_counter()
                try:
                    frame = source.read()
                except SourceError as exc:
                    error = exc
                    durations.append(time.perf_counter() - start)
                    break
                durations.append(time.perf_counter() - start)
                if frame is None:
                    break
                frames += 1
        finally:
            source.close()
    finally:
        server.shutdown()
        server.server_close()
    return durations, frames, error


def test_stalled_stream_read_times_out_instead_of_blocking(clip_factory: Callable[..., Path]) -> None:
    durations, frames, _error = _read_stalled_stream(clip_factory)
    assert 0 < frames < 40  # got the first half, not the rest
    assert max(durations) < 1.0 + 2.5  # the server stalls for 6 s; the read gives up at its 1 s limit


# -- GStreamer ------------------------------------------------------------------------
def test_gstreamer_looking_text_without_gst_flag_gets_a_hint() -> None:
    with pytest.raises(SourceError, match="--gst"):
        open_source("videotestsrc num-buffers=10 ! videoconvert ! appsink")


@pytest.mark.skipif(sources.opencv_has_gstreamer(), reason="this OpenCV has GStreamer (tests/test_gstreamer.py covers --gst)")
def test_gst_flag_without_gstreamer_support() -> None:
    with pytest.raises(SourceError, match="GStreamer"):
        open_source("videotestsrc num-buffers=10 ! videoconvert ! appsink", SourceOptions(gst=True))


# -- bad paths and options -------------------------------------------------------------
def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="no such file"):
        open_source(str(tmp_path / "nope.mp4"))


def test_empty_file(tmp_path: Path) -> None:
    (tmp_path / "empty.mp4").write_bytes(b"")
    with pytest.raises(SourceError, match="empty"):
        open_source(str(tmp_path / "empty.mp4"))


def test_text_file_named_like_a_video(tmp_path: Path) -> None:
    fake = tmp_path / "fake.mp4"
    fake.write_text("hello, I am not a video\n" * 100)
    with pytest.raises(SourceError, match="fake.mp4"):
        open_source(str(fake))


@pytest.mark.parametrize("text", ["", "   "])
def test_empty_source_text(text: str) -> None:
    with pytest.raises(SourceError):
        open_source(text)


@pytest.mark.parametrize("value", [0, -1, float("nan"), float("inf"), 1e9])
def test_invalid_timeouts_are_rejected(value: float) -> None:
    with pytest.raises(ConfigError):
        SourceOptions(open_timeout_s=value)


def test_cameras_ask_the_device_for_the_input_size_and_rate(caplog: pytest.LogCaptureFixture) -> None:
    """``--input-width/--input-height/--input-fps`` reach the capture as CAP_PROP_*; what the
    device picks instead is said in one warning (a real camera cannot be attached here)."""

    class Device:
        def __init__(self) -> None:
            self.props: dict[int, float] = {}

        def set(self, prop: int, value: float) -> bool:
            self.props[prop] = value if prop != cv2.CAP_PROP_FPS else 15.0  # this device tops out at 15 FPS
            return True

        def get(self, prop: int) -> float:
            return self.props.get(prop, 0.0)

    device = Device()
    camera = CameraSource(0, "camera 0", SourceOptions(width=1280, height=720, fps=60.0))
    assert camera.sets_input_format
    with caplog.at_level("WARNING", logger="streamer.sources"):
        camera._set_input_format(device)
    assert device.props == {cv2.CAP_PROP_FRAME_WIDTH: 1280.0, cv2.CAP_PROP_FRAME_HEIGHT: 720.0, cv2.CAP_PROP_FPS: 15.0}
    assert [r.getMessage() for r in caplog.records] == ["camera 0: asked for input fps 60, the device gives 15"]
    assert not VideoFileSource.sets_input_format
