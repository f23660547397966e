"""Several sources in one run (streamer/multi.py) and ``bench --streams`` (streamer/bench/streams.py).

Real video from samples/ (re-encoded small clips), the real model (efficientnet_lite0 on torch, CPU),
a real MJPEG camera on 127.0.0.1 (tests/faults/mjpeg.py) and a real HTTP client; no timing assertions.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import threading
import time
import urllib.request
from pathlib import Path
from typing import Callable

import pytest
from faults.media import sample_frames
from faults.mjpeg import MjpegCamera
from helpers import (
    MODEL,
    SAMPLE_IMAGES,
    assert_clean_failure,
    count_frames,
    run_cli,
    start_run_with_live_view,
)

from streamer.multi import base_name, read_sources_file, stream_names, video_extension

MODEL_ARGS = ["-m", MODEL, "--backend", "torch", "--device", "cpu"]
LIVE_URL = re.compile(r"live view of \d+ streams at (http://\S+)")


def _records(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _labels(records: list[dict[str, object]]) -> list[tuple[object, list[object], list[float]]]:
    out = []
    for r in records:
        topk = r["topk"]
        assert isinstance(topk, list)
        out.append((r["frame"], [t["label"] for t in topk], [float(t["score"]) for t in topk]))
    return out


@pytest.fixture(scope="module")
def second_clip(clip_factory: Callable[..., Path]) -> Path:
    """12 other frames of the sample (from frame 0, another size) as a second, different file."""
    return clip_factory("other.mp4", 12, size=(256, 144))


# -- names and the sources file -------------------------------------------------------------------------
def test_names_are_short_unique_and_safe() -> None:
    sources = ["0", "/dev/video2", "csi://1", "clips/bikes.mp4", "other/bikes.mp4", "BIKES.mkv", "photos/", "imgs/*.jpg",
               "rtsp://admin:secret@10.0.0.5:8554/live/cam.sdp?token=x", "http://cam.local/stream.mjpg", "bikes-2.mp4", "!!!.mp4"]  # fmt: skip
    names = stream_names(sources)
    assert names == ["cam0", "cam2", "csi1", "bikes", "bikes-3", "BIKES-4", "photos", "imgs", "10-0-0-5-8554-cam", "cam-local-stream", "bikes-2", "stream"]
    assert len({n.lower() for n in names}) == len(names)
    assert all(re.fullmatch(r"[A-Za-z0-9._-]+", n) for n in names)
    assert not any("secret" in n or "admin" in n or "token" in n for n in names)
    assert base_name("a pipeline ! appsink", gst=True) == "gst"
    assert len(base_name("x" * 300 + ".mp4")) <= 48
    assert video_extension(None) == ".mp4" and video_extension("vp9") == ".webm" and video_extension("mjpeg") == ".avi"


def test_sources_file_skips_comments_and_blank_lines(tmp_path: Path) -> None:
    listing = tmp_path / "cams.txt"
    listing.write_text("# cameras\n\n  clips/a.mp4  \n\t# off: rtsp://x/y\nrtsp://host/path#frag\n   \nmy folder/with space/\n", encoding="utf-8")
    assert read_sources_file(listing) == ["clips/a.mp4", "rtsp://host/path#frag", "my folder/with space/"]


@pytest.mark.parametrize("content", ["", "# only comments\n\n"])
def test_empty_sources_file_is_one_line(tmp_path: Path, content: str) -> None:
    listing = tmp_path / "cams.txt"
    listing.write_text(content, encoding="utf-8")
    line = assert_clean_failure(run_cli(["run", "--sources", listing, "-o", "out/", *MODEL_ARGS], cwd=tmp_path))
    assert "no sources in it" in line


def test_missing_sources_file_and_no_source_are_one_line(tmp_path: Path) -> None:
    assert "no such file" in assert_clean_failure(run_cli(["run", "--sources", "nope.txt", *MODEL_ARGS], cwd=tmp_path))
    assert "needs a SOURCE" in assert_clean_failure(run_cli(["run", *MODEL_ARGS], cwd=tmp_path))


# -- files ----------------------------------------------------------------------------------------------
def test_several_files_each_lossless_and_labelled_as_alone(tmp_path: Path, short_clip: Path, second_clip: Path) -> None:
    """Two files, one of them twice, and an image folder: every frame of each in its own outputs,
    the same labels (and scores, within float noise of another batch size) as single runs."""
    listing = tmp_path / "sources.txt"
    listing.write_text(f"# a sources file\n{second_clip}\n\n{SAMPLE_IMAGES}\n", encoding="utf-8")
    result = run_cli(
        ["run", short_clip, short_clip, "--sources", listing, "-o", "out/", "--predictions", "preds/", "--max-batch", "4", *MODEL_ARGS],
        cwd=tmp_path, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["images", "other.mp4", "short-2.mp4", "short.mp4"]
    assert count_frames(out / "short.mp4") == 20 and count_frames(out / "short-2.mp4") == 20
    assert count_frames(out / "other.mp4") == 12
    assert len(list((out / "images").glob("*.jpg"))) == 8
    for name in ("short", "short-2", "other", "images"):
        assert (tmp_path / "preds" / f"{name}.jsonl").is_file()
    assert "4 of 4 ok" in result.stdout and "short-2" in result.stdout  # the table: a row per stream and a total

    for source, name in ((short_clip, "short"), (second_clip, "other"), (SAMPLE_IMAGES, "images")):
        single = tmp_path / f"single-{name}.jsonl"
        alone = run_cli(["run", source, "--predictions", single, "--no-summary", *MODEL_ARGS], cwd=tmp_path, timeout=300)
        assert alone.returncode == 0, alone.stderr
        expected = _labels(_records(single))
        for got_name in ([name, "short-2"] if name == "short" else [name]):
            got = _labels(_records(tmp_path / "preds" / f"{got_name}.jsonl"))
            assert [g[:2] for g in got] == [e[:2] for e in expected], got_name  # every frame, in order, same labels
            for (_f, _l, scores), (_f2, _l2, want) in zip(got, expected):
                assert scores == pytest.approx(want, abs=1e-3)


def test_failing_sources_do_not_stop_the_others(tmp_path: Path, short_clip: Path) -> None:
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 64)
    result = run_cli(["run", short_clip, "missing.mp4", corrupt, "-o", "out/", "--predictions", "out/", *MODEL_ARGS], cwd=tmp_path, timeout=300)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if "error" in line]
    assert any(line.startswith("streamer: error: stream missing: ") for line in lines), result.stderr
    assert any(line.startswith("streamer: error: stream corrupt: ") for line in lines), result.stderr
    assert lines[-1] == "streamer: error: 2 of 3 streams failed: missing, corrupt"
    assert len(lines) == 3
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["short.jsonl", "short.mp4"]  # nothing partial from the failed ones
    assert count_frames(out / "short.mp4") == 20 and len(_records(out / "short.jsonl")) == 20


def test_every_source_failing_is_an_error_and_no_output(tmp_path: Path) -> None:
    result = run_cli(["run", "a.mp4", "b.mp4", "-o", "out/", *MODEL_ARGS], cwd=tmp_path)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "none of the 2 sources could be opened" in result.stderr.splitlines()[-1]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        (["-o", "one.mp4"], "with several sources -o is a folder"),
        (["--predictions", "p.jsonl"], "with several sources give a folder"),
        (["--show"], "--show takes one source"),
        (["-o", "http://127.0.0.1:0/", "-o", "http://127.0.0.1:1/"], "one live view"),
        (["-o", "out/", "-o", "./out"], "the same folder given twice"),
    ],
)
def test_outputs_that_do_not_fit_several_sources_are_one_line(tmp_path: Path, short_clip: Path, extra: list[str], words: str) -> None:
    line = assert_clean_failure(run_cli(["run", short_clip, short_clip, *extra, *MODEL_ARGS], cwd=tmp_path))
    assert words in line
    assert not (tmp_path / "one.mp4").exists() and not (tmp_path / "p.jsonl").exists()


def test_an_existing_output_needs_overwrite(tmp_path: Path, short_clip: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "short.mp4").write_bytes(b"keep")
    line = assert_clean_failure(run_cli(["run", short_clip, short_clip, "-o", "out/", *MODEL_ARGS], cwd=tmp_path))
    assert "exists" in line and "--overwrite" in line
    assert (tmp_path / "out" / "short.mp4").read_bytes() == b"keep"


def test_headless_lines_name_their_stream(tmp_path: Path, short_clip: Path, second_clip: Path) -> None:
    result = run_cli(["run", short_clip, second_clip, "--max-frames", "3", "--no-summary", *MODEL_ARGS], cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if " frame " in line]
    assert sorted(line.split(" frame ")[0] for line in lines) == ["other"] * 3 + ["short"] * 3


def test_json_lines_on_stdout_carry_the_stream(tmp_path: Path, short_clip: Path, second_clip: Path) -> None:
    result = run_cli(["run", short_clip, second_clip, "--max-frames", "4", "--predictions", "-", *MODEL_ARGS], cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert sorted((r["stream"], r["frame"]) for r in records) == [(s, i) for s in ("other", "short") for i in range(4)]


# -- live and file together, the live view, signals -----------------------------------------------------------
def _start(tmp_path: Path, *args: str | Path) -> tuple[subprocess.Popen[str], str, list[str]]:
    return start_run_with_live_view(tmp_path, args, LIVE_URL)


def _first_jpeg(url: str, timeout: float = 60.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        assert response.headers["Content-Type"].startswith("multipart/x-mixed-replace")
        data = b""
        while b"\xff\xd9" not in data:
            chunk = response.read1(65536)
            assert chunk, "the stream ended before a frame"
            data += chunk
    start = data.index(b"\xff\xd8")
    return data[start : data.index(b"\xff\xd9", start) + 2]


def test_live_camera_and_file_on_one_page_then_sigterm_finalises_both(tmp_path: Path, short_clip: Path) -> None:
    """A live MJPEG camera and a file in one run: the page lists both, each has its own MJPEG URL;
    the file ends (complete) while the camera goes on; SIGTERM finalises the camera's recording."""
    with MjpegCamera(sample_frames(20, (320, 180)), fps=25, max_frames=6000, max_seconds=120) as cam:
        process, url, lines = _start(tmp_path, cam.url, short_clip, "-o", "http://127.0.0.1:0/", "-o", "out/", "--predictions", "out/", *MODEL_ARGS)
        try:
            with urllib.request.urlopen(url, timeout=30) as response:
                page = response.read().decode()
            assert 'data-streams="2"' in page
            base = url.rstrip("/")
            with urllib.request.urlopen(base + "/streams.json", timeout=30) as response:
                listing = json.loads(response.read())
            names = [s["name"] for s in listing["streams"]]
            assert names == ["127-0-0-1-" + str(cam.port) + "-stream", "short"]
            for name in names:
                assert f'href="s/{name}/"' in page and f'data-src="s/{name}/stream.mjpg"' in page
            camera_name = names[0]
            jpeg = _first_jpeg(f"{base}/s/{camera_name}/stream.mjpg")
            assert jpeg.startswith(b"\xff\xd8")
            with urllib.request.urlopen(f"{base}/s/{camera_name}/", timeout=30) as response:
                assert "stream.mjpg" in response.read().decode()  # the one-stream page
            deadline = time.monotonic() + 120
            while not (tmp_path / "out" / "short.mp4").exists():  # the file ends first and is finalised alone
                assert time.monotonic() < deadline, "".join(lines)
                assert process.poll() is None, "".join(lines)
                time.sleep(0.2)
            time.sleep(1.0)  # a few more camera frames
            process.send_signal(signal.SIGTERM)
            stdout, _ = process.communicate(timeout=60)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    assert process.returncode == 130, "".join(lines)
    assert "Traceback" not in "".join(lines), "".join(lines)
    out = tmp_path / "out"
    said = "".join(lines) + f"\nin {out}: {sorted(p.name for p in out.iterdir())}"
    assert count_frames(out / "short.mp4") == 20 and len(_records(out / "short.jsonl")) == 20, said
    recorded = count_frames(out / f"{camera_name}.mp4")
    assert recorded > 0, said
    assert (out / f"{camera_name}.jsonl").exists(), said
    assert recorded == len(_records(out / f"{camera_name}.jsonl")), said
    assert "interrupted" in stdout or "interrupted" in "".join(lines)



class _FinalisingPipeline:
    """Stands in for a stream's Pipeline: runs until interrupted, then takes a while to finalise,
    and notes whether the shared worker was still open when it finished."""

    def __init__(self, worker: "_Worker") -> None:
        self.worker = worker
        self.asked = threading.Event()
        self.worker_open_at_end: bool | None = None
        self.summary = None  # what MultiRun reads when run() ends by an interrupt

    def interrupt(self) -> None:
        self.asked.set()

    def run(self) -> None:
        assert self.asked.wait(30)
        time.sleep(0.3)  # finalising its outputs
        self.worker_open_at_end = not self.worker.closed
        raise KeyboardInterrupt


class _Worker:
    thread = None
    batches_done = 0
    closed = False

    def start(self) -> None:
        pass

    def close(self, timeout: float | None = None) -> bool:
        self.closed = True
        return True


def test_stop_signals_interrupt_every_stream_and_the_worker_closes_after_them() -> None:
    """SIGTERM three times during a several-stream run (the CLI's handler raises KeyboardInterrupt on the
    first): every stream is interrupted, nothing escapes the run, the shared worker is closed only after
    every stream finalised, and the handler is the CLI's again afterwards."""
    from streamer.multi import MultiRun, Stream

    calls: list[int] = []

    def cli_like(signum: int, frame: object) -> None:
        calls.append(signum)
        if len(calls) == 1:
            raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, cli_like)
    try:
        worker = _Worker()
        streams = [Stream(f"s{i}", f"s{i}") for i in range(4)]
        for stream in streams:
            stream.pipeline = _FinalisingPipeline(worker)  # type: ignore[assignment]

        def kill_thrice() -> None:
            for _ in range(3):
                time.sleep(0.05)
                signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGTERM)

        killer = threading.Thread(target=kill_thrice)
        killer.start()
        result = MultiRun(streams, worker).run()  # type: ignore[arg-type]
        killer.join()
        assert signal.getsignal(signal.SIGTERM) is cli_like
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert result.interrupted and calls == [signal.SIGTERM] * 3
    assert all(s.interrupted and not s.failed for s in streams)
    assert [s.pipeline.worker_open_at_end for s in streams] == [True] * 4  # type: ignore[union-attr]
    assert worker.closed


def test_a_camera_lost_mid_run_ends_only_its_stream(tmp_path: Path, clip_factory: Callable[..., Path]) -> None:
    """The camera dies while a file is still being labelled: one line names the camera's stream, the file
    is labelled to its last frame, the camera's recording up to the loss is kept, and the exit is non-zero."""
    clip = clip_factory("thirty.mp4", 30)
    with MjpegCamera(sample_frames(20, (320, 180)), fps=25, max_frames=6000, max_seconds=300) as cam:
        camera = "127-0-0-1-" + str(cam.port) + "-stream"
        process, url, lines = _start(
            tmp_path, cam.url, clip, "-o", "http://127.0.0.1:0/", "-o", "out/", "--predictions", "out/", "--reconnect", "1", *MODEL_ARGS
        )
        try:
            assert _first_jpeg(f"{url.rstrip('/')}/s/{camera}/stream.mjpg", timeout=300)  # a labelled camera frame
            cam.kill()
            process.wait(600)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    time.sleep(0.5)  # the last stderr lines
    stderr = "".join(lines)
    assert process.returncode == 1, stderr
    assert "Traceback" not in stderr
    errors = [line for line in stderr.splitlines() if "error" in line]
    assert len(errors) == 2 and errors[0].startswith(f"streamer: error: stream {camera}: "), stderr
    assert errors[1] == f"streamer: error: 1 of 2 streams failed: {camera}"
    out = tmp_path / "out"
    assert count_frames(out / "thirty.mp4") == 30 and len(_records(out / "thirty.jsonl")) == 30
    kept = count_frames(out / f"{camera}.mp4")
    assert kept > 0 and kept == len(_records(out / f"{camera}.jsonl"))


# -- bench --streams ----------------------------------------------------------------------------------------
def test_bench_streams_smoke_on_cpu(tmp_path: Path, short_clip: Path) -> None:
    result = run_cli(
        ["bench", short_clip, "--streams", "1,2", "--stream-processes", "1", "--model", MODEL, "--weights", "imagenet",
         "--device", "cpu", "--max-frames", "30", "--report", "rep", "--no-progress"],
        cwd=tmp_path, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "rep" / "streams.json").read_text())
    assert report["frames_per_stream"] == 30 and report["source_fps"] == pytest.approx(25.0)
    (case,) = report["cases"]
    assert (case["model"], case["backend"], case["precision"], case["device"]) == (MODEL, "torch", "fp32", "cpu")
    points = [(p["mode"], p["streams"]) for p in case["points"]]
    assert points == [("one process", 1), ("one process", 2), ("N processes", 1)]
    for p in case["points"]:
        assert p["ok_streams"] == p["streams"], p
        assert p["frames_out"] > 0 and p["p99_ms"] is not None
        assert p["realtime"] == (not p["failed"])
        if p["mode"] == "one process":  # where the CPU went, by thread role (Linux /proc)
            assert {"capture", "render", "batcher", "inference worker"} <= set(p["cpu_cores"]), p["cpu_cores"]
            assert sum(p["cpu_cores"].values()) > 0.1, p["cpu_cores"]
            assert p["gil_wait_ms"] is not None and 0 <= p["gil_wait_ms"][0] <= p["gil_wait_ms"][1]
    markdown = (tmp_path / "rep" / "report.md").read_text()
    assert "## Several streams" in markdown and "Largest real-time N" in markdown
    assert "Where the CPU went in one process" in markdown


def test_bench_streams_as_processes_of_several_streams(tmp_path: Path, short_clip: Path) -> None:
    """--streams-per-process 2: N = 2 streams as one `streamer run SRC SRC` process, its figures per stream
    from that process's summary table and predictions folder."""
    result = run_cli(
        ["bench", short_clip, "--streams", "1", "--stream-processes", "2", "--streams-per-process", "2", "--model", MODEL,
         "--weights", "imagenet", "--device", "cpu", "--max-frames", "30", "--report", "rep", "--no-progress"],
        cwd=tmp_path, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "processes of 2" in result.stdout, result.stdout
    (case,) = json.loads((tmp_path / "rep" / "streams.json").read_text())["cases"]
    (point,) = [p for p in case["points"] if p["mode"] == "processes of 2"]
    assert point["streams"] == 2 and point["ok_streams"] == 2, point
    assert point["frames_out"] + point["dropped"] <= 60 and point["frames_out"] > 0, point
    assert point["p99_ms"] is not None and point["fps_min"] is not None, point
    assert "--streams-per-process 2" in (tmp_path / "rep" / "report.md").read_text()


# -- the pinned upload buffer under batches of every size ------------------------------------------------------
def test_pinned_staging_grows_to_the_largest_batch_and_reuses_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """Batches of 1..48 frames (several streams batched together) pin one buffer per frame shape a few
    times (powers of two), not once per batch size; each upload carries exactly its frames.
    Pinning and CUDA events are stood in for on the CPU; the copy logic is the real one."""
    import numpy as np
    import torch

    from engines.preprocess import PinnedStaging

    pinned: list[tuple[int, ...]] = []

    def pin(self: torch.Tensor) -> torch.Tensor:
        pinned.append(tuple(self.shape))
        return self

    class Event:
        def record(self, stream: object) -> None:
            pass

        def synchronize(self) -> None:
            pass

    monkeypatch.setattr(torch.Tensor, "pin_memory", pin)
    monkeypatch.setattr(torch.cuda, "Event", Event)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: None)
    staging = PinnedStaging()
    rng = np.random.default_rng(0)
    for n in [1, 3, 2, 16, 5, 48, 1, 33, 64, 7]:
        frames = [rng.integers(0, 255, (18, 32, 3), dtype=np.uint8) for _ in range(n)]
        out = staging.upload(frames, torch.device("cpu"))
        assert tuple(out.shape) == (n, 18, 32, 3)
        assert np.array_equal(out.numpy(), np.stack(frames))
    assert pinned == [(1, 18, 32, 3), (4, 18, 32, 3), (16, 18, 32, 3), (64, 18, 32, 3)]
    assert [PinnedStaging.capacity(n) for n in (1, 2, 3, 8, 9, 48)] == [1, 2, 4, 8, 16, 64]


# -- the live view of several streams, in process -------------------------------------------------------------
def test_hub_routes_tokens_and_stops_with_its_last_stream() -> None:
    import io
    import urllib.error

    import cv2

    from streamer.sinks.http import HttpAddress, HttpHub

    hub = HttpHub(HttpAddress("127.0.0.1", 0), ["cam0", "bikes"], token="secret-token", announce=io.StringIO())
    views = [hub.view("cam0"), hub.view("bikes")]
    try:
        for view in views:
            view.open((320, 180), 25.0)
        image = cv2.imread(str(SAMPLE_IMAGES / "cat.jpg"))
        assert image is not None
        photo = cv2.resize(image, (320, 180))
        views[0].write(photo, "x")
        base = f"http://127.0.0.1:{hub.port}"
        with pytest.raises(urllib.error.HTTPError) as denied:
            urllib.request.urlopen(base + "/", timeout=10)
        assert denied.value.code == 403
        with urllib.request.urlopen(base + "/?token=secret-token", timeout=10) as response:
            page = response.read().decode()
        assert 'data-streams="2"' in page and "cam0" in page and "bikes" in page
        with urllib.request.urlopen(base + "/streams.json?token=secret-token", timeout=10) as response:
            assert [s["name"] for s in json.loads(response.read())["streams"]] == ["cam0", "bikes"]
        assert _first_jpeg(base + "/s/cam0/stream.mjpg?token=secret-token", timeout=30).startswith(b"\xff\xd8")
        with pytest.raises(urllib.error.HTTPError) as missing:
            urllib.request.urlopen(base + "/s/nope/?token=secret-token", timeout=10)
        assert missing.value.code == 404
        with urllib.request.urlopen(base + "/s/bikes?token=secret-token", timeout=10) as response:  # redirected to /s/bikes/
            assert response.url.endswith("/s/bikes/?token=secret-token") and "stream.mjpg" in response.read().decode()
        views[0].finalize()  # one stream ended: the others are still served
        assert not hub.stopping
        with urllib.request.urlopen(base + "/streams.json?token=secret-token", timeout=10) as response:
            assert [s["live"] for s in json.loads(response.read())["streams"]] == [False, True]
        views[1].events.finalize()
        assert hub.stopping  # the last one: the server is gone
    finally:
        hub.stop()


@pytest.mark.skipif(not Path("/usr/bin/chromium").exists(), reason="chromium is not installed")
def test_chromium_shows_every_stream_on_the_page_with_the_token() -> None:
    """A real browser: the page's images load each stream's MJPEG, the token passed on from the page's address."""
    import io

    import cv2
    from test_http_view import Chromium

    from streamer.sinks.http import HttpAddress, HttpHub

    hub = HttpHub(HttpAddress("127.0.0.1", 0), ["cam0", "bikes"], token="tok", announce=io.StringIO())
    sizes = {"cam0": (320, 180), "bikes": (256, 144)}
    image = cv2.imread(str(SAMPLE_IMAGES / "cat.jpg"))
    assert image is not None
    stop = threading.Event()

    def feed() -> None:
        while not stop.is_set():
            for name, size in sizes.items():
                hub.view(name).write(cv2.resize(image, size), "x")
            time.sleep(0.04)

    for name, size in sizes.items():
        hub.view(name).open(size, 25.0)
    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    chromium = Chromium()
    try:
        session = chromium.open(f"http://127.0.0.1:{hub.port}/?token=tok")
        widths: object = None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            widths = chromium.evaluate(session, "JSON.stringify([...document.images].map(i => [i.alt, i.naturalWidth]))")
            if widths == json.dumps([["cam0", 320], ["bikes", 256]], separators=(",", ":")):
                break
            time.sleep(0.3)
        assert widths == json.dumps([["cam0", 320], ["bikes", 256]], separators=(",", ":"))
        links = chromium.evaluate(session, "JSON.stringify([...document.querySelectorAll('a.page')].map(a => a.getAttribute('href')))")
        assert links == json.dumps(["s/cam0/?token=tok", "s/bikes/?token=tok"], separators=(",", ":"))
    finally:
        chromium.close()
        stop.set()
        feeder.join(5)
        hub.stop()
