"""Video files through PyAV: codecs and containers, low bitrates, audio passed through, the input's
real frame rate and frame times, errors at the first failed write, a killed ``.mkv``, and a real
headless Chromium playing what was written.

Frames are real (decoded from samples/video/bigbuckbunny.mp4); clips with audio, odd frame rates or
variable frame times are made here with PyAV.
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest

from engines.errors import ConfigError, SinkError
from faults.fixtures import InProcessCli, cli, fault_env, restore_logging  # noqa: F401 - fixtures
from faults.proc import MODEL_ARGS, assert_one_clear_line
from streamer.sinks import VideoOptions, make_sink
from streamer.sinks.video import VideoFileSink, frames_in_video

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "samples" / "video" / "bigbuckbunny.mp4"
CONTAINERS = (".mp4", ".mkv", ".mov", ".webm", ".avi")
COMMON = ("--no-progress", "--no-summary", *MODEL_ARGS, "--weights", "random")


@functools.lru_cache(maxsize=4)
def _sample_frames(count: int, size: tuple[int, int]) -> tuple[np.ndarray, ...]:
    frames: list[np.ndarray] = []
    with av.open(str(SAMPLE)) as container:
        for frame in container.decode(video=0):
            frames.append(frame.reformat(width=size[0], height=size[1], format="bgr24").to_ndarray())
            if len(frames) == count:
                break
    return tuple(frames)


def _write(path: Path, frames: list[np.ndarray] | tuple[np.ndarray, ...], fps: float = 25.0, **kwargs: object) -> VideoFileSink:
    sink = VideoFileSink(path, **kwargs)  # type: ignore[arg-type]
    h, w = frames[0].shape[:2]
    sink.open((w, h), fps)
    for i, image in enumerate(frames):
        sink.write(image, f"f{i}")
    sink.finalize()
    return sink


def _make_clip(
    path: Path,
    frames: int,
    rate: Fraction,
    size: tuple[int, int] = (320, 180),
    audio: bool = False,
    pts: list[int] | None = None,
    time_base: Fraction | None = None,
) -> Path:
    """A clip of the sample's first frames at ``rate`` (or at the frame times ``pts``), with an AAC sine tone if ``audio``."""
    images = _sample_frames(frames, size)
    with av.open(str(path), "w") as out:
        video = out.add_stream("libx264", rate=rate)
        video.width, video.height = size
        video.pix_fmt = "yuv420p"
        video.options = {"preset": "ultrafast"}
        if time_base is not None:
            video.time_base = time_base
            video.codec_context.time_base = time_base
        sound = None
        if audio:
            sound = out.add_stream("aac", rate=48000)
            sound.layout = "mono"
        for i, image in enumerate(images):
            frame = av.VideoFrame.from_ndarray(image, format="bgr24").reformat(format="yuv420p")
            if pts is not None:
                frame.pts = pts[i]
                frame.time_base = time_base
            else:
                frame.pts = i
                frame.time_base = 1 / rate
            for packet in video.encode(frame):
                out.mux(packet)
        for packet in video.encode(None):
            out.mux(packet)
        if sound is not None:
            seconds = float(frames / rate)
            n = int(48000 * seconds)
            tone = (0.3 * np.sin(2 * np.pi * 440 * np.arange(n) / 48000)).astype(np.float32)
            for start in range(0, n, 1024):
                chunk = tone[start : start + 1024]
                af = av.AudioFrame.from_ndarray(chunk[None, :], format="fltp", layout="mono")
                af.sample_rate = 48000
                af.pts = start
                for packet in sound.encode(af):
                    out.mux(packet)
            for packet in sound.encode(None):
                out.mux(packet)
    return path


def _decode(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [f.to_ndarray(format="bgr24") for f in container.decode(video=0)]


def _streams(path: Path) -> dict[str, Any]:
    with av.open(str(path)) as c:
        v = c.streams.video[0]
        pts = sorted(p.pts for p in c.demux(v) if p.pts is not None and p.size > 0)
    with av.open(str(path)) as c:
        audio = [(a.codec_context.name, a.time_base) for a in c.streams.audio]
        audio_end = 0.0
        if c.streams.audio:
            a = c.streams.audio[0]
            for p in c.demux(a):
                if p.pts is not None and p.size > 0:
                    audio_end = max(audio_end, float((p.pts + (p.duration or 0)) * a.time_base))
    with av.open(str(path)) as c:
        v = c.streams.video[0]
        return {
            "codec": v.codec_context.name,
            "pix_fmt": v.codec_context.pix_fmt,
            "rate": v.average_rate,
            "time_base": v.time_base,
            "pts": pts,
            "audio": audio,
            "audio_end": audio_end,
            "size": (v.width, v.height),
        }


# -- codecs and containers -------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("ext", "codec"),
    [(".mp4", "h264"), (".mkv", "h264"), (".mov", "h264"), (".webm", "vp9"), (".avi", "mjpeg")],
)
def test_default_codec_by_container(tmp_path: Path, ext: str, codec: str) -> None:
    out = tmp_path / f"out{ext}"
    frames = _sample_frames(20, (320, 180))
    _write(out, frames)
    info = _streams(out)
    assert info["codec"] == codec and info["size"] == (320, 180)
    if codec == "h264":
        assert info["pix_fmt"] == "yuv420p"
    assert len(_decode(out)) == 20


def test_mp4_has_its_index_first(tmp_path: Path) -> None:
    """Fast start: the ``moov`` box comes before ``mdat``, so a browser plays while downloading."""
    out = tmp_path / "out.mp4"
    _write(out, _sample_frames(20, (320, 180)))
    head = out.read_bytes()
    assert 0 <= head.find(b"moov") < head.find(b"mdat")


@pytest.mark.parametrize(("ext", "codec"), [(".mkv", "h265"), (".mp4", "h265"), (".mkv", "vp9"), (".webm", "vp9"), (".mkv", "mjpeg"), (".mov", "mjpeg"), (".mp4", "mpeg4")])
def test_other_codecs(tmp_path: Path, ext: str, codec: str) -> None:
    out = tmp_path / f"out{ext}"
    _write(out, _sample_frames(12, (320, 180)), options=VideoOptions(codec=codec, crf=None, preset="ultrafast" if codec in ("h265", "vp9") else None))
    assert _streams(out)["codec"] == {"h265": "hevc"}.get(codec, codec)
    assert frames_in_video(out) == 12


def test_frames_keep_their_colours(tmp_path: Path) -> None:
    """BGR -> I420 is one OpenCV pass: the same BT.601 limited-range matrix as swscale's (within a level), and
    what is decoded back from the file is the input within H.264's loss at a high quality."""
    import cv2

    frames = _sample_frames(10, (320, 180))
    for image in frames[:3]:
        ours = cv2.cvtColor(image, cv2.COLOR_BGR2YUV_I420).astype(int)
        swscale = av.VideoFrame.from_ndarray(image, format="bgr24").reformat(format="yuv420p").to_ndarray().astype(int)
        assert ours.shape == swscale.shape and np.abs(ours[:180] - swscale[:180]).max() <= 1
        assert np.abs(ours[180:] - swscale[180:]).mean() < 1.0
    out = tmp_path / "out.mp4"
    _write(out, frames, options=VideoOptions(crf=12))
    decoded = _decode(out)
    assert len(decoded) == len(frames)
    error = np.mean([np.abs(d.astype(int) - f.astype(int)).mean() for d, f in zip(decoded, frames)])
    assert error < 4.0, f"mean error {error:.2f} levels"


def test_odd_sized_and_grey_frames_are_converted(tmp_path: Path) -> None:
    import cv2

    frames = [cv2.cvtColor(f, cv2.COLOR_BGR2GRAY) for f in _sample_frames(6, (177, 145))]
    out = tmp_path / "out.mp4"
    _write(out, frames)
    assert _streams(out)["size"] == (176, 144) and frames_in_video(out) == 6


def test_frames_prepared_on_the_callers_thread_write_the_same_file(tmp_path: Path) -> None:
    """The pipeline converts each frame on the render thread (``sink.prepare``) and hands the result to the
    writer thread; the file is the one the plain images give."""
    frames = _sample_frames(8, (320, 180))
    plain = _write(tmp_path / "plain.mp4", frames, options=VideoOptions(threads=1))
    sink = make_sink(str(tmp_path / "prepared.mp4"), False, video=VideoOptions(threads=1))
    sink.open((320, 180), 25.0)
    for i, image in enumerate(frames):
        prepared = sink.prepare(image)
        assert not isinstance(prepared, np.ndarray)
        sink.write(prepared, f"f{i}")
    sink.finalize()
    ours, theirs = _decode(tmp_path / "prepared.mp4"), _decode(plain.path)
    assert len(ours) == len(theirs) == 8 and all(np.array_equal(a, b) for a, b in zip(ours, theirs))


def test_encoder_threads_option(tmp_path: Path) -> None:
    frames = _sample_frames(12, (320, 180))
    one = _write(tmp_path / "one.mp4", frames, options=VideoOptions(threads=1))
    assert one.threads == 1 and frames_in_video(one.path) == 12
    with pytest.raises(ConfigError, match="encoder threads must be >= 1"):
        VideoFileSink(tmp_path / "zero.mp4", options=VideoOptions(threads=0))


def test_crf_changes_the_size(tmp_path: Path) -> None:
    frames = _sample_frames(20, (320, 180))
    small = _write(tmp_path / "small.mp4", frames, options=VideoOptions(crf=40)).path.stat().st_size
    large = _write(tmp_path / "large.mp4", frames, options=VideoOptions(crf=10)).path.stat().st_size
    assert small < large


@pytest.mark.parametrize(
    ("name", "options", "fourcc", "message"),
    [
        ("out.webm", VideoOptions(codec="h264"), None, "does not go in .webm"),
        ("out.avi", VideoOptions(codec="vp9"), None, "does not go in .avi"),
        ("out.mp4", VideoOptions(codec="mjpeg"), None, "does not go in .mp4"),
        ("out.mp4", VideoOptions(crf=99), None, "between 0 and 51"),
        ("out.avi", VideoOptions(crf=20), None, "--crf does not apply to mjpeg"),
        ("out.mp4", VideoOptions(preset="warp"), None, "--preset must be one of"),
        ("out.mp4", VideoOptions(codec="vp9"), "mp4v", "contradicts"),
        ("out.mp4", VideoOptions(), "XVID", "unknown"),
    ],
)
def test_bad_codec_options_are_one_config_error(tmp_path: Path, name: str, options: VideoOptions, fourcc: str | None, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        VideoFileSink(tmp_path / name, options=options, fourcc=fourcc)
    assert list(tmp_path.iterdir()) == []


def test_old_fourcc_maps_to_a_codec(tmp_path: Path) -> None:
    out = tmp_path / "out.mkv"
    _write(out, _sample_frames(8, (320, 180)), fourcc="mp4v")
    assert _streams(out)["codec"] == "mpeg4"


def test_cli_codec_options(cli: InProcessCli, tmp_path: Path) -> None:
    out = tmp_path / "out.webm"
    result = cli("run", SAMPLE, "-o", out, "--codec", "vp9", "--crf", "40", "--preset", "ultrafast", "--max-frames", "10", *COMMON)
    assert result.returncode == 0, result.stderr
    assert _streams(out)["codec"] == "vp9" and frames_in_video(out) == 10
    result = cli("run", SAMPLE, "-o", tmp_path / "bad.webm", "--codec", "h264", "--max-frames", "10", *COMMON)
    assert "does not go in .webm" in assert_one_clear_line(result)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.webm"]


# -- low bitrates (issue #13 item 1): no size guess, every container -------------------------------
@pytest.mark.parametrize("ext", CONTAINERS)
def test_still_image_video_at_176x144_is_kept(tmp_path: Path, ext: str) -> None:
    """A still image for 300 frames at 176x144 compresses to a few KB: still a complete file."""
    still = _sample_frames(1, (176, 144))[0]
    out = tmp_path / f"still{ext}"
    sink = _write(out, [still] * 300)
    assert sink.frames_written == 300 and frames_in_video(out) == 300
    assert out.stat().st_size < 256 * 1024 or ext == ".avi"


@pytest.mark.parametrize("ext", CONTAINERS)
def test_3000_tiny_frames_are_kept(tmp_path: Path, ext: str) -> None:
    tiny = [f for f in _sample_frames(30, (32, 24))] * 100
    out = tmp_path / f"tiny{ext}"
    _write(out, tiny)
    assert frames_in_video(out) == 3000


def test_cli_low_bitrate_mkv(cli: InProcessCli, tmp_path: Path) -> None:
    """``streamer run`` of a 176x144 clip to ``.mkv``: the case that said "nothing reaches the disk"."""
    clip = _make_clip(tmp_path / "small.mp4", 100, Fraction(25), size=(176, 144))
    out = tmp_path / "out.mkv"
    result = cli("run", clip, "-o", out, *COMMON)
    assert result.returncode == 0, result.stderr
    assert frames_in_video(out) == 100


# -- audio passed through ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def aac_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _make_clip(tmp_path_factory.mktemp("aac") / "tone.mp4", 75, Fraction(25), audio=True)


@pytest.mark.parametrize(("ext", "audio_codec"), [(".mp4", "aac"), (".mkv", "aac"), (".mov", "aac"), (".webm", "opus"), (".avi", "aac")])
def test_audio_is_passed_through(tmp_path: Path, aac_clip: Path, ext: str, audio_codec: str) -> None:
    assert _streams(aac_clip)["audio"][0][0] == "aac"
    out = tmp_path / f"out{ext}"
    sink = _write(out, _decode(aac_clip), input_path=aac_clip)
    info = _streams(out)
    assert [a[0] for a in info["audio"]] == [audio_codec]
    assert sink.audio_packets_written > 0
    assert abs(float(info["audio_end"]) - 3.0) < 0.1, info["audio_end"]


def test_audio_is_trimmed_to_the_frames_written(tmp_path: Path, aac_clip: Path) -> None:
    """``--max-frames 25`` of a 3 s clip at 25 FPS: one second of video, one second of sound."""
    out = tmp_path / "out.mp4"
    _write(out, _decode(aac_clip)[:25], input_path=aac_clip)
    info = _streams(out)
    assert info["audio"] and abs(float(info["audio_end"]) - 1.0) < 0.05, info["audio_end"]


def test_cli_keeps_the_audio(cli: InProcessCli, tmp_path: Path, aac_clip: Path) -> None:
    out = tmp_path / "out.mp4"
    result = cli("run", aac_clip, "-o", out, "--max-frames", "50", *COMMON)
    assert result.returncode == 0, result.stderr
    info = _streams(out)
    assert [a[0] for a in info["audio"]] == ["aac"] and frames_in_video(out) == 50
    assert abs(float(info["audio_end"]) - 2.0) < 0.05


def test_the_sample_keeps_its_aac(tmp_path: Path) -> None:
    out = tmp_path / "out.mp4"
    _write(out, _sample_frames(40, (320, 180)), input_path=SAMPLE)
    assert [a[0] for a in _streams(out)["audio"]] == ["aac"]


# -- the input's frame rate and frame times (issue #13 item 5) -------------------------------------
@pytest.mark.parametrize("rate", [Fraction(1, 2), Fraction(480), Fraction(30000, 1001)])
@pytest.mark.parametrize("ext", [".mp4", ".mkv", ".webm"])
def test_the_input_rate_is_kept(tmp_path: Path, rate: Fraction, ext: str) -> None:
    clip = _make_clip(tmp_path / "in.mp4", 12, rate)
    out = tmp_path / f"out{ext}"
    # The fps handed to open() is deliberately wrong (what OpenCV may say): the input decides.
    _write(out, _decode(clip), fps=30.0, input_path=clip)
    info = _streams(out)
    assert info["rate"] == rate, info
    assert len(info["pts"]) == 12
    duration = float((info["pts"][-1] - info["pts"][0]) * info["time_base"])
    assert abs(duration - float(11 / rate)) < 0.002, duration


def test_avi_keeps_the_rate(tmp_path: Path) -> None:
    clip = _make_clip(tmp_path / "in.mp4", 6, Fraction(1, 2))
    out = tmp_path / "out.avi"
    _write(out, _decode(clip), fps=30.0, input_path=clip)
    assert _streams(out)["rate"] == Fraction(1, 2)


def test_without_an_input_file_the_given_fps_is_used(tmp_path: Path) -> None:
    out = tmp_path / "out.mkv"
    _write(out, _sample_frames(10, (320, 180)), fps=12.5)
    assert _streams(out)["rate"] == Fraction(25, 2)


@pytest.mark.parametrize("ext", [".mkv", ".mp4"])
def test_variable_frame_times_are_kept(tmp_path: Path, ext: str) -> None:
    tb = Fraction(1, 1000)
    pts = [0, 40, 80, 200, 240, 700, 740, 780, 1500, 1540]  # ms: pauses, as a phone or a motion camera records
    clip = _make_clip(tmp_path / "vfr.mkv", len(pts), Fraction(25), pts=pts, time_base=tb)
    out = tmp_path / f"out{ext}"
    _write(out, _decode(clip), input_path=clip)
    info = _streams(out)
    got = [round(float(p * info["time_base"]) * 1000) for p in info["pts"]]
    assert [g - got[0] for g in got] == pts


def test_realtime_ignores_the_frame_times(tmp_path: Path) -> None:
    """``--realtime`` may drop frames: the nth frame written is not the input's nth, so frames follow the average rate."""
    clip = _make_clip(tmp_path / "in.mp4", 10, Fraction(10))
    out = tmp_path / "out.mkv"
    _write(out, _decode(clip)[::2], input_path=clip, keep_pts=False)
    info = _streams(out)
    assert info["rate"] == Fraction(10) and len(info["pts"]) == 5


# -- write errors at the first failure, kill -9 ---------------------------------------------------
_EFBIG_CHILD = r"""
import resource, signal, sys
from pathlib import Path
import numpy as np
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))
from engines.errors import SinkError
from streamer.sinks.video import VideoFileSink
out = Path(sys.argv[1])
sink = VideoFileSink(out)
sink.open((320, 180), 25.0)
rng = np.random.default_rng(0)
try:
    for i in range(2000):
        sink.write(rng.integers(0, 255, (180, 320, 3), dtype=np.uint8), "noise")
except SinkError as exc:
    sink.abort()
    print("WRITE", sink.frames_written, exc)
    sys.exit(0)
print("NOFAIL")
"""


@pytest.mark.parametrize("ext", [".mkv", ".mp4"])
def test_a_file_size_limit_fails_the_write_that_hits_it(tmp_path: Path, ext: str) -> None:
    """EFBIG surfaces from ``write`` (not at the end of the run), as one SinkError line, and nothing is left."""
    out = tmp_path / f"out{ext}"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", _EFBIG_CHILD, str(out)], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr
    line = done.stdout.strip()
    assert line.startswith("WRITE"), line
    written = int(line.split()[1])
    assert written < 200, line  # noise at 320x180 is ~50 KB a frame: it fails within the first frames past 200 KB
    assert "File too large" in line and "nothing saved" in line and "\n" not in line
    assert list(tmp_path.iterdir()) == []


_KILL_CHILD = r"""
import sys
from pathlib import Path
import av
from streamer.sinks.video import VideoFileSink
out, ready = Path(sys.argv[1]), Path(sys.argv[2])
frames = [f.to_ndarray(format="bgr24") for _, f in zip(range(100), av.open(sys.argv[3]).decode(video=0))]
sink = VideoFileSink(out)
sink.open((frames[0].shape[1], frames[0].shape[0]), 25.0)
for i, image in enumerate(frames):
    sink.write(image, "f")
ready.write_text(str(sink.frames_written))
import time
time.sleep(600)
"""


def test_a_killed_mkv_holds_the_frames_written(tmp_path: Path) -> None:
    clip = _make_clip(tmp_path / "in.mp4", 100, Fraction(25))
    out, ready = tmp_path / "out.mkv", tmp_path / "ready"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    child = subprocess.Popen([sys.executable, "-c", _KILL_CHILD, str(out), str(ready), str(clip)], env=env, stderr=subprocess.PIPE, text=True)
    try:
        import time

        deadline = time.monotonic() + 120
        while not ready.exists() and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ready.exists(), child.stderr.read() if child.stderr else ""
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert not out.exists()
    partial = [p for p in tmp_path.iterdir() if p.name.startswith(".out.partial-")]
    assert len(partial) == 1
    frames = _decode(partial[0])
    # What is lost: the last cluster (at most 1 s, 25 frames) and the frames the encoder still
    # held (x264 veryfast: a lookahead of 10 plus one per thread, at most 16).
    print(f"{len(frames)} of 100 frames in the killed .mkv")
    assert 100 - 25 - 10 - 16 <= len(frames) <= 100, len(frames)
    assert not any(np.all(f == f.flat[0]) for f in frames), "no blank frame"


# -- a real browser plays it ------------------------------------------------------------------------
_PAGE = """<!doctype html><html><body><video id=v muted preload=auto></video><pre id=r>pending</pre><script>
const v = document.getElementById('v'), r = document.getElementById('r');
v.addEventListener('loadeddata', () => { r.textContent = 'RESULT ' + JSON.stringify({readyState: v.readyState, width: v.videoWidth, height: v.videoHeight}); });
v.addEventListener('error', () => { r.textContent = 'RESULT ' + JSON.stringify({error: v.error && v.error.message}); });
v.src = new URLSearchParams(location.search).get('src');
</script></body></html>
"""


@pytest.fixture(scope="module")
def browser_dir() -> Iterator[tuple[Path, int]]:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium is not installed (apt install chromium)")
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        (root / "page.html").write_text(_PAGE)
        handler = functools.partial(_QuietHandler, directory=str(root))
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield root, server.server_address[1]
        finally:
            server.shutdown()
            server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


def _play_in_chromium(root: Path, port: int, name: str) -> dict[str, Any]:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium is not None
    with tempfile.TemporaryDirectory() as profile:
        done = subprocess.run(
            [
                chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
                "--virtual-time-budget=15000", "--dump-dom", f"http://127.0.0.1:{port}/page.html?src={name}",
            ],
            capture_output=True, text=True, timeout=120,
        )
    match = re.search(r'<pre id="r">RESULT (\{.*?\})</pre>', done.stdout)
    assert match, f"no result from chromium (exit {done.returncode}): {done.stdout[-500:]} {done.stderr[-500:]}"
    result: dict[str, Any] = json.loads(match.group(1).replace("&quot;", '"'))
    return result


@pytest.mark.parametrize("ext", [".mp4", ".mkv", ".mov", ".webm"])
def test_chromium_plays_the_annotated_video(cli: InProcessCli, browser_dir: tuple[Path, int], aac_clip: Path, ext: str) -> None:
    root, port = browser_dir
    out = root / f"annotated{ext}"
    result = cli("run", aac_clip, "-o", out, "--max-frames", "40", *COMMON)
    assert result.returncode == 0, result.stderr
    assert _streams(out)["audio"]
    played = _play_in_chromium(root, port, out.name)
    assert "error" not in played, played
    assert int(played["readyState"]) >= 2 and (played["width"], played["height"]) == (320, 180), played
