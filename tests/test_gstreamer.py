"""GStreamer in and out, against the real GStreamer of the system OpenCV.

The tests marked ``gstreamer`` need an OpenCV built with GStreamer (Debian's ``python3-opencv``
in the CI's second venv, made the README's Jetson way by ``.ci/run``); on the PyPI wheel they
skip with a reason.  The rest check the pipeline strings streamer builds and the errors it
gives without running GStreamer, and run everywhere.

What needs a Jetson (``nvarguscamerasrc``, ``nvv4l2decoder``, ``nvv4l2h264enc``) never runs
here: those tests check the exact pipeline text, and that a missing element is one clear line.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
from pathlib import Path

import numpy as np
import pytest

from engines.errors import ConfigError, SinkError, SourceError
from helpers import (
    SAMPLE_VIDEO,
    SAMPLE_VIDEO_FRAMES,
    assert_clean_failure,
    count_frames,
    read_frames,
    read_jsonl,
    read_stamp,
    run_cli,
)
from streamer import gst
from streamer.sinks import GStreamerSink, ThreadedSink, make_sink
from streamer.sources import (
    CsiCameraSource,
    GStreamerSource,
    GStreamerVideoFileSource,
    SourceOptions,
    VideoFileSource,
    open_source,
    opencv_has_gstreamer,
)

HAS_GST = opencv_has_gstreamer()
needs_gst = pytest.mark.skipif(
    not HAS_GST, reason="this OpenCV has no GStreamer (the PyPI wheel); .ci/run runs these in the system-OpenCV venv"
)
RUN = ("--no-progress", "--no-summary", "-m", "efficientnet_lite0", "--backend", "torch", "--device", "cpu", "--weights", "random")
TEST_CAPS = "video/x-raw,width=160,height=120,framerate=25/1"


def _frames_of(source_text: str, options: SourceOptions) -> list[np.ndarray]:
    source = open_source(source_text, options)
    try:
        return [frame.image for frame in source]
    finally:
        source.close()


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- pipeline text (everywhere) -----------------------------------------------------------------
@pytest.mark.parametrize(
    ("pipeline", "live", "finite"),
    [
        ("videotestsrc num-buffers=10 ! videoconvert ! appsink", False, True),
        ("videotestsrc is-live=true ! videoconvert ! appsink", True, False),
        ("videotestsrc is-live=true num-buffers=5 ! videoconvert ! appsink", True, True),
        ('filesrc location="my clip.mp4" ! decodebin ! videoconvert ! appsink', False, False),
        ("multifilesrc location=img_%03d.jpg ! jpegdec ! videoconvert ! appsink", False, False),
        ("v4l2src device=/dev/video0 ! video/x-raw,width=640 ! videoconvert ! appsink", True, False),
        ("rtspsrc location=rtsp://cam/stream latency=0 ! rtph264depay ! avdec_h264 ! videoconvert ! appsink", True, False),
        ("uridecodebin uri=rtsp://cam/stream ! videoconvert ! appsink", True, False),
        ("uridecodebin uri=file:///tmp/a.mp4 ! videoconvert ! appsink", False, False),
        ("udpsrc port=5000 ! application/x-rtp ! rtph264depay ! avdec_h264 ! videoconvert ! appsink", True, False),
        (gst.csi_pipeline(0), True, False),
    ],
)
def test_liveness_comes_from_the_source_element(pipeline: str, live: bool, finite: bool) -> None:
    info = gst.parse(pipeline)
    assert (info.live, info.finite) == (live, finite)
    assert info.elements[-1] == "appsink"


def test_parse_skips_caps_pad_references_and_quoted_values() -> None:
    info = gst.parse('filesrc location="a ! b.mp4" ! qtdemux name=demux demux.video_0 ! queue ! h264parse ! video/x-raw(memory:NVMM),format=NV12 ! nvv4l2decoder ! appsink')
    assert info.elements == ("filesrc", "qtdemux", "queue", "h264parse", "nvv4l2decoder", "appsink")
    assert info.first == "filesrc"
    assert gst.describe("nvarguscamerasrc sensor-id=0 ! appsink") == "gstreamer pipeline (nvarguscamerasrc ! ...)"


def test_csi_pipeline_is_the_argus_to_bgr_appsink_shape() -> None:
    assert gst.csi_pipeline(1, 1280, 720, 60) == (
        "nvarguscamerasrc sensor-id=1 ! video/x-raw(memory:NVMM),width=1280,height=720,format=NV12,framerate=60/1 ! "
        "nvvidconv ! video/x-raw,format=BGRx ! videoconvert ! video/x-raw,format=BGR ! appsink drop=true max-buffers=1"
    )
    assert "width=1920,height=1080" in gst.csi_pipeline(0) and "framerate=30/1" in gst.csi_pipeline(0)
    assert "framerate=30000/1001" in gst.csi_pipeline(0, fps=29.97)


def test_jetson_decode_pipeline_per_container_and_codec(tmp_path: Path) -> None:
    clip = tmp_path / 'my "clip".mp4'
    assert gst.jetson_decode_pipeline(clip, "h264") == (
        f'filesrc location="{tmp_path}/my \\"clip\\".mp4" ! qtdemux name=demux demux.video_0 ! queue ! h264parse ! '
        "nvv4l2decoder ! nvvidconv ! video/x-raw,format=BGRx ! videoconvert ! video/x-raw,format=BGR ! appsink sync=false"
    )
    mkv = gst.jetson_decode_pipeline(tmp_path / "a.mkv", "h265")
    assert mkv is not None and "matroskademux name=demux demux.video_0 ! queue ! h265parse ! nvv4l2decoder" in mkv
    assert gst.jetson_decode_pipeline(tmp_path / "a.avi", "h264") is None
    assert gst.jetson_decode_pipeline(tmp_path / "a.mp4", "mpeg4") is None
    assert [gst.codec_of_fourcc(t) for t in ("avc1", "H264", "hev1", "hvc1", "mp4v")] == ["h264", "h264", "h265", "h265", None]


def test_filesink_location_of_an_output_pipeline() -> None:
    assert gst.filesink_location("appsrc ! videoconvert ! x264enc ! matroskamux ! filesink location=out.mkv") == Path("out.mkv")
    assert gst.filesink_location('appsrc ! x264enc ! filesink location="a b.mkv" sync=false') == Path("a b.mkv")
    assert gst.filesink_location("appsrc ! x264enc ! rtph264pay ! udpsink host=127.0.0.1 port=5000") is None


def test_output_pipeline_without_the_flag_is_refused_with_a_hint(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--gst-output"):
        make_sink(f"appsrc ! videoconvert ! x264enc ! matroskamux ! filesink location={tmp_path}/x.mkv", False)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ConfigError, match="--gst-output needs -o"):
        make_sink(None, False, gst_output=True)
    with pytest.raises(ConfigError, match="--fourcc does not apply to --gst-output"):
        make_sink(f"appsrc ! x264enc ! filesink location={tmp_path}/x.mkv", False, fourcc="avc1", gst_output=True)


def test_input_format_applies_to_cameras_only(sample_video: Path) -> None:
    with pytest.raises(ConfigError, match="--input-width"):
        open_source(str(sample_video), SourceOptions(width=640))
    with pytest.raises(ConfigError, match="--lossless"):
        open_source(str(sample_video), SourceOptions(lossless=True))
    with pytest.raises(ConfigError, match="input fps"):
        SourceOptions(fps=0.0)
    with pytest.raises(ConfigError, match="decoder"):
        SourceOptions(decoder="vaapi")  # nvdec is a decoder now (streamer.sources_nvdec)


def test_decoder_auto_is_ffmpeg_without_the_hardware_decoder(sample_video: Path) -> None:
    source = open_source(str(sample_video))
    try:
        if not (HAS_GST and gst.element_available("nvv4l2decoder")):
            assert type(source) is VideoFileSource
    finally:
        source.close()


@pytest.mark.skipif(HAS_GST, reason="this OpenCV has GStreamer")
def test_gstreamer_features_without_gstreamer_are_one_clear_line(tmp_path: Path, sample_video: Path) -> None:
    with pytest.raises(SourceError, match="csi:// cameras need an OpenCV built with GStreamer"):
        open_source("csi://0")
    with pytest.raises(SourceError, match="--decoder gstreamer needs an OpenCV built with GStreamer"):
        open_source(str(sample_video), SourceOptions(decoder="gstreamer"))
    with pytest.raises(SinkError, match="--gst-output needs an OpenCV built with GStreamer"):
        make_sink(f"appsrc ! videoconvert ! jpegenc ! avimux ! filesink location={tmp_path}/x.avi", False, gst_output=True)


# -- real GStreamer: sources --------------------------------------------------------------------
@pytest.mark.gstreamer
@needs_gst
@pytest.mark.parametrize("n", [1, 12])
def test_videotestsrc_num_buffers_gives_exactly_n_frames(n: int) -> None:
    source = open_source(f"videotestsrc num-buffers={n} ! {TEST_CAPS} ! videoconvert ! appsink", SourceOptions(gst=True))
    assert isinstance(source, GStreamerSource) and not source.live and not source.reconnectable
    assert source.frame_size == (160, 120) and source.fps == pytest.approx(25.0)
    frames = [f for f in source]
    source.close()
    assert [f.index for f in frames] == list(range(n))


@pytest.mark.gstreamer
@needs_gst
def test_cli_videotestsrc_num_buffers_exits_0_with_exactly_n_frames(tmp_path: Path) -> None:
    out, preds = tmp_path / "out.mkv", tmp_path / "p.jsonl"
    pipeline = f"videotestsrc num-buffers=15 ! {TEST_CAPS} ! videoconvert ! appsink"
    result = run_cli(["run", pipeline, "--gst", "-o", out, "--predictions", preds, "--batch", "8", *RUN], cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "reconnect" not in result.stderr
    assert [row["frame"] for row in read_jsonl(preds)] == list(range(15))
    assert count_frames(out) == 15


@pytest.mark.gstreamer
@needs_gst
def test_live_pipeline_with_num_buffers_ends_instead_of_reconnecting(tmp_path: Path) -> None:
    preds = tmp_path / "p.jsonl"
    live = f"videotestsrc is-live=true num-buffers=20 ! {TEST_CAPS} ! videoconvert ! appsink"
    source = open_source(live, SourceOptions(gst=True))
    assert source.live and not source.reconnectable  # newest frame wins; the end is meant
    source.close()
    result = run_cli(["run", live, "--gst", "--predictions", preds, *RUN], cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "reconnect" not in result.stderr
    # newest frame wins: what arrived while the model warmed up is dropped (maybe all 20)
    assert len(read_jsonl(preds)) <= 20
    # --lossless: the same live pipeline, every frame
    result = run_cli(["run", live, "--gst", "--lossless", "--batch", "8", "--predictions", preds, "--overwrite", *RUN], cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr
    assert [row["frame"] for row in read_jsonl(preds)] == list(range(20))


@pytest.mark.gstreamer
@needs_gst
def test_filesrc_decodebin_of_the_sample_gives_every_frame_in_order(sample_video: Path) -> None:
    pipeline = f'filesrc location="{sample_video}" ! decodebin ! videoconvert ! video/x-raw,format=BGR ! appsink sync=false'
    via_gst = _frames_of(pipeline, SourceOptions(gst=True))
    via_ffmpeg = read_frames(sample_video)
    assert len(via_gst) == len(via_ffmpeg) == SAMPLE_VIDEO_FRAMES
    # the same pictures in the same order (two decoders, two colour converters: close, not equal)
    diffs = [float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean()) for a, b in zip(via_gst, via_ffmpeg)]
    assert max(diffs) < 4.0, max(diffs)
    shifted = float(np.abs(via_gst[10].astype(np.int16) - via_ffmpeg[40].astype(np.int16)).mean())
    assert shifted > 4 * max(diffs)


@pytest.mark.gstreamer
@needs_gst
def test_decoder_gstreamer_reads_a_file_losslessly(sample_video: Path, stamped_clip: Path, tmp_path: Path) -> None:
    source = open_source(str(sample_video), SourceOptions(decoder="gstreamer"))
    assert isinstance(source, GStreamerVideoFileSource) and source.decoder == "decodebin"
    assert not source.live and source.total_hint == SAMPLE_VIDEO_FRAMES
    assert len([f for f in source]) == SAMPLE_VIDEO_FRAMES
    source.close()
    # end to end: every frame of a stamped clip, in order, through the CLI
    out, preds = tmp_path / "out.mkv", tmp_path / "p.jsonl"
    result = run_cli(["run", stamped_clip, "--decoder", "gstreamer", "-o", out, "--predictions", preds, "--batch", "8", *RUN], cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr
    assert [read_stamp(image) for image in read_frames(out)] == list(range(24))
    assert len(read_jsonl(preds)) == 24


@pytest.mark.gstreamer
@needs_gst
def test_missing_element_is_one_line_naming_it(tmp_path: Path) -> None:
    pipeline = "nvarguscamerasrc sensor-id=0 ! nvvidconv ! videoconvert ! appsink"
    result = run_cli(["run", pipeline, "--gst", "--timeout", "5", "-o", tmp_path / "out.mkv", *RUN], cwd=tmp_path, timeout=120)
    line = assert_clean_failure(result)
    assert "gstreamer pipeline (nvarguscamerasrc ! ...): no GStreamer element 'nvarguscamerasrc' (the pipeline's first element)" in line
    assert list(tmp_path.iterdir()) == []


@pytest.mark.gstreamer
@needs_gst
@pytest.mark.parametrize(
    ("text", "options", "named"),
    [
        ("videotestsrc ! videoconvrt ! appsink", SourceOptions(gst=True), "'videoconvrt' (in the pipeline that starts with videotestsrc)"),
        ("csi://0", SourceOptions(), "csi://0: no GStreamer element 'nvarguscamerasrc' (the pipeline's first element)"),
        ("videotestsrc ! videoconvert", SourceOptions(gst=True), "must end in appsink"),
    ],
    ids=["typo", "csi-without-argus", "no-appsink"],
)
def test_bad_pipelines_are_refused_before_gstreamer_runs(text: str, options: SourceOptions, named: str) -> None:
    with pytest.raises(SourceError) as info:
        open_source(text, options)
    assert named in str(info.value)


@pytest.mark.gstreamer
@needs_gst
def test_a_pipeline_that_never_delivers_ends_at_the_timeout(tmp_path: Path) -> None:
    pipeline = f"udpsrc port={_free_udp_port()} ! video/x-raw,format=BGR,width=64,height=64,framerate=25/1 ! appsink"
    result = run_cli(["run", pipeline, "--gst", "--timeout", "2", *RUN], cwd=tmp_path, timeout=120)
    line = assert_clean_failure(result)
    assert "udpsrc" in line and "did not open within 2 s" in line


@pytest.mark.gstreamer
@needs_gst
def test_csi_source_builds_its_pipeline_from_the_input_options() -> None:
    source = CsiCameraSource(2, SourceOptions(width=1280, height=720, fps=60.0))
    assert source.pipeline == gst.csi_pipeline(2, 1280, 720, 60.0)
    assert source.live and source.reconnectable and source.display_name == "csi://2"


# -- real GStreamer: outputs --------------------------------------------------------------------
def _encoder() -> str:
    for element in ("x264enc", "avenc_mpeg4", "jpegenc"):
        if gst.element_available(element):
            return element
    pytest.skip("no GStreamer video encoder installed (x264enc, avenc_mpeg4 or jpegenc)")


@pytest.mark.gstreamer
@needs_gst
def test_gst_output_writes_a_playable_file_with_every_frame(stamped_clip: Path, tmp_path: Path) -> None:
    out = tmp_path / "annotated.mkv"
    pipeline = f'appsrc ! videoconvert ! {_encoder()} ! matroskamux ! filesink location="{out}"'
    result = run_cli(["run", stamped_clip, "--gst-output", "-o", pipeline, "--batch", "8", *RUN], cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "gstreamer output (appsrc ! videoconvert ! ...)" in result.stdout
    frames = read_frames(out)  # played back by FFmpeg
    assert [read_stamp(image) for image in frames] == list(range(24))
    assert frames[0].shape == (180, 320, 3)
    # ... and by GStreamer itself, through streamer and through gst-launch-1.0
    played = _frames_of(f'filesrc location="{out}" ! decodebin ! videoconvert ! appsink sync=false', SourceOptions(gst=True))
    assert [read_stamp(image) for image in played] == list(range(24))
    launch = shutil.which("gst-launch-1.0")
    if launch is not None:
        played_by_launch = subprocess.run([launch, "-q", "filesrc", f"location={out}", "!", "decodebin", "!", "fakesink"], capture_output=True, timeout=60)
        assert played_by_launch.returncode == 0, played_by_launch.stderr


@pytest.mark.gstreamer
@needs_gst
def test_gst_output_sink_api_and_its_refusals(tmp_path: Path) -> None:
    out = tmp_path / "x.mkv"
    sink = make_sink(f"appsrc ! videoconvert ! {_encoder()} ! matroskamux ! filesink location={out}", False, gst_output=True)
    assert isinstance(sink, ThreadedSink) and isinstance(sink.inner, GStreamerSink)
    sink.open((63, 48), 25.0)  # an odd width is cut to an even one
    for i in range(5):
        sink.write(np.full((48, 63, 3), 40 * i, np.uint8), f"frame {i}")
    sink.finalize()
    assert count_frames(out) == 5
    with pytest.raises(SinkError, match="exists; pass --overwrite"):
        make_sink(f"appsrc ! videoconvert ! {_encoder()} ! matroskamux ! filesink location={out}", False, gst_output=True)
    # aborted: the partial file is removed
    aborted = tmp_path / "aborted.mkv"
    sink = make_sink(f"appsrc ! videoconvert ! {_encoder()} ! matroskamux ! filesink location={aborted}", False, gst_output=True)
    sink.open((64, 48), 25.0)
    sink.write(np.zeros((48, 64, 3), np.uint8), "0")
    sink.abort()
    assert not aborted.exists()
    with pytest.raises(ConfigError, match="must start with appsrc"):
        make_sink(f"videotestsrc ! filesink location={tmp_path}/y.mkv", False, gst_output=True)


@pytest.mark.gstreamer
@needs_gst
def test_gst_output_with_a_missing_element_fails_before_processing(stamped_clip: Path, tmp_path: Path) -> None:
    out = tmp_path / "x.mkv"
    pipeline = f"appsrc ! videoconvert ! nvv4l2h264enc ! h264parse ! matroskamux ! filesink location={out}"
    result = run_cli(["run", stamped_clip, "--gst-output", "-o", pipeline, *RUN], cwd=tmp_path, timeout=120)
    line = assert_clean_failure(result)
    assert "no GStreamer element 'nvv4l2h264enc'" in line and "appsrc" in line
    assert "streamer: efficientnet_lite0 on" not in result.stdout  # nothing was processed
    assert sorted(p.name for p in tmp_path.iterdir()) == []
