"""Live sources under faults: a camera that hangs, dies and comes back; a host that never answers;
a model slower than the camera and a camera slower than the model.

The camera is :class:`faults.mjpeg.MjpegCamera`, a local MJPEG-over-HTTP server
(``multipart/x-mixed-replace``, what IP cameras and mjpg-streamer send) that
OpenCV's FFmpeg backend reads as ``http://127.0.0.1:PORT/stream.mjpg``.  Each
frame carries a serial number in its pixels, so the output video itself says
which camera frames were classified, in which order, and how old they were.

Command-line runs use :mod:`faults.fakecli`: the real ``streamer`` with an
instant fake model, so the timings measured are the pipeline's, not the CPU's.
"""

from __future__ import annotations

import json
import re
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from engines.backends.base import Backend
from faults.backends import InstantBackend, SleepingBackend
from faults.fixtures import fault_env  # noqa: F401 - fixture
from faults.media import count_frames, count_frames_of_copy, is_blank, read_frames, read_serial, sample_frames, video_size
from faults.mjpeg import MjpegCamera, closed_port, silent_server
from faults.proc import (
    MODEL_ARGS,
    LiveProcess,
    assert_one_clear_line,
    call_with_deadline,
    error_lines,
    fake_streamer,
    run,
)
from streamer.pipeline import Pipeline, PipelineConfig, RunSummary
from streamer.sinks import NullSink, Sink
from streamer.sources import Frame, Source, SourceOptions, open_source

READ_TIMEOUT_S = 2.0
"""``--timeout`` for runs whose camera hangs: FFmpeg's open and read limits, and the pipeline's
watchdog, which gives a live read a margin past it (see
test_read_that_times_out_a_little_late_is_a_lost_stream_not_a_fatal_stall)."""
OPEN_TIMEOUT_S = 2.0
"""``--timeout`` for the host that never answers."""
MAX_FRAME_AGE_S = PipelineConfig().max_frame_age_s


def _live_cmd(url: str, tmp_path: Path, *extra: str, backend: str = "instant") -> list[str]:
    return fake_streamer(
        backend, "run", url, "-o", tmp_path / "live.mkv", "--predictions", tmp_path / "live.jsonl",
        "--timeout", str(READ_TIMEOUT_S), "--no-progress", *MODEL_ARGS, "--weights", "random", *extra,
    )  # fmt: skip


def _hidden(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.name.startswith("."))


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# -- the test camera itself ---------------------------------------------------------------------
def test_opencv_reads_the_test_camera_frame_for_frame() -> None:
    """OpenCV's FFmpeg backend reads multipart MJPEG over HTTP (FFmpeg's mpjpeg demuxer): every
    frame, in order, at its size.  If this fails, the live tests below cannot mean anything."""
    import cv2

    with MjpegCamera(sample_frames(12, (640, 360)), fps=50, max_frames=12, max_seconds=30) as cam:
        timeouts = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, 5000, cv2.CAP_PROP_READ_TIMEOUT_MSEC, 5000]
        frames = read_frames(cam.url, limit=13, params=timeouts)
    assert [read_serial(f) for f in frames] == list(range(12))  # then the camera hung up: the end
    assert {f.shape for f in frames} == {(360, 640, 3)}


# -- 1. the camera dies mid-stream and comes back ---------------------------------------------
def test_camera_hangs_dies_and_returns_the_run_reconnects_and_goes_on(tmp_path: Path) -> None:
    phase1, phase2, outage_s = 100, 60, 2.5
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    out, jsonl = tmp_path / "live.mkv", tmp_path / "live.jsonl"
    with MjpegCamera(sample_frames(100, (640, 360)), fps=25, max_frames=400, max_seconds=120, stall_after=phase1) as cam:
        cmd = _live_cmd(cam.url, tmp_path, "--reconnect", "30", "--max-frames", str(phase1 + phase2))
        with LiveProcess(cmd, tmp_path) as proc:
            # The camera hangs after `phase1` frames (connection open, nothing sent).
            lost = proc.wait_for_line("stream lost; reconnecting", timeout=90)
            sent1 = cam.sent_in(1)
            assert len(sent1) == phase1
            detected_after = lost.at - sent1[-1].at
            assert READ_TIMEOUT_S - 0.5 <= detected_after <= READ_TIMEOUT_S + 1.5, f"stall noticed {detected_after:.2f} s after the last frame"

            # Then it crashes: listener and connections closed.  While it is down, the video
            # written so far is on disk under a hidden name and already plays.
            cam.kill()
            killed = time.monotonic()
            assert not out.exists()
            partial = [p for p in _hidden(tmp_path) if p.suffix == ".mkv"]
            assert len(partial) == 1, _hidden(tmp_path)
            playable_during_outage = count_frames_of_copy(partial[0], scratch)
            assert playable_during_outage > 0, "the .mkv written before the outage does not play"

            time.sleep(max(0.0, outage_s - (time.monotonic() - killed)))
            cam.start()  # same port
            restarted = time.monotonic()
            back = proc.wait_for_line("reconnected after", timeout=15)
            code = proc.wait(60)

    assert code == 0, proc.stderr
    # It said so, in two warning lines and nothing else.
    assert not error_lines(proc.stderr) and "Traceback" not in proc.stderr, proc.stderr
    warnings = [line.text for line in proc.err if "warning" in line.text]
    assert len(warnings) == 2, warnings
    match = re.search(r"reconnected after ([\d.]+) s \((\d+) attempts\)", back.text)
    assert match, back.text
    seconds, attempts = float(match.group(1)), int(match.group(2))
    assert seconds >= outage_s - 0.1
    # Exponential backoff (0.25 s doubling, capped at 5 s): a few attempts over the outage, not a
    # busy loop (a fixed 0.25 s retry would make 10 or more), and back soon after the camera is.
    assert 2 <= attempts <= 6, back.text
    assert back.at - restarted <= 5.0 + 2.0
    assert "reconnects" in proc.stdout

    # The finished video plays, and matches the JSON lines one to one.
    assert out.is_file() and not _hidden(tmp_path)
    frames = read_frames(out)
    records = _jsonl(jsonl)
    assert len(frames) == len(records) > 0
    # No blank frame, no stale one: the camera's serials only ever increase, so no frame from
    # before the outage was classified after it, and none was classified twice.
    assert not [i for i, f in enumerate(frames) if is_blank(f)]
    serials = [read_serial(f) for f in frames]
    sent = {s.serial for s in cam.sent}
    assert set(serials) <= sent, sorted(set(serials) - sent)
    assert serials == sorted(set(serials)), serials
    before = [s for s in serials if s < phase1]
    after = [s for s in serials if s >= phase1]
    assert before, "nothing from before the outage was kept"
    assert len(after) >= phase2 // 2, f"the run did not go on after the camera came back: {after}"
    indices = [r["frame"] for r in records]
    assert indices == sorted(set(indices))
    worst = max(r["latency_ms"] for r in records)
    assert worst <= (MAX_FRAME_AGE_S + 1.0) * 1000, f"a frame {worst:.0f} ms old was classified"
    print(
        f"MEASURED reconnect: stall noticed {detected_after:.2f} s after the last frame (read timeout {READ_TIMEOUT_S} s); "
        f"{playable_during_outage} frames playable during the outage; back {seconds:.1f} s after the loss in {attempts} "
        f"attempts, {back.at - restarted:.2f} s after the camera; {len(before)} + {len(after)} frames; worst latency {worst:.0f} ms"
    )


def test_camera_that_never_returns_keeps_what_was_recorded(tmp_path: Path) -> None:
    with MjpegCamera(sample_frames(60, (640, 360)), fps=25, max_frames=200, max_seconds=90, stall_after=60) as cam:
        with LiveProcess(_live_cmd(cam.url, tmp_path, "--reconnect", "2"), tmp_path) as proc:
            proc.wait_for_line("stream lost; reconnecting", timeout=90)
            cam.kill()
            code = proc.wait(60)
    assert code != 0
    assert "not back within 2 s" in assert_one_clear_line(proc), proc.stderr
    out = tmp_path / "live.mkv"
    assert out.is_file(), f"the recording was discarded: {sorted(p.name for p in tmp_path.iterdir())}"
    assert count_frames(out) == len(_jsonl(tmp_path / "live.jsonl")) > 0


class LateTimeoutSource(Source):
    """A live camera whose reads, once it hangs, give up a little after their timeout - as FFmpeg's
    read timeout does (it is checked from an interrupt callback) - and that is back after a reopen."""

    live = True
    reconnectable = True

    def __init__(self, read_timeout_s: float, hang_after: int, late_by_s: float = 0.3) -> None:
        super().__init__("late-timeout camera")
        self.image = sample_frames(1, (320, 240))[0]
        self.read_timeout_s = read_timeout_s
        self.hang_after = hang_after
        self.late_by_s = late_by_s
        self.opens = 0

    def _open_impl(self) -> None:
        self.opens += 1

    def _read_impl(self) -> Frame | None:
        if self.opens == 1 and self._index >= self.hang_after:
            time.sleep(self.read_timeout_s + self.late_by_s)
            return None  # timed out: the stream is lost
        time.sleep(0.04)
        return self._make_frame(self.image.copy(), "late-timeout camera", 0.0)


def test_read_that_times_out_a_little_late_is_a_lost_stream_not_a_fatal_stall() -> None:
    timeout_s = 1.0
    source = LateTimeoutSource(read_timeout_s=timeout_s, hang_after=10).open()
    config = PipelineConfig(stall_timeout_s=max(timeout_s, 1.0), reconnect_timeout_s=10.0, max_frames=30)  # as cmd_run builds it
    summary: RunSummary = call_with_deadline(Pipeline(source, NullSink(), InstantBackend, config).run, 30)
    assert summary.reconnects == 1 and summary.frames_in == 30


@pytest.mark.parametrize("scheme", ["http", "rtsp"])
def test_host_that_never_answers_fails_within_the_open_timeout(tmp_path: Path, scheme: str) -> None:
    """A socket that accepts and never says a word: one clear line, about OPEN_TIMEOUT_S after the
    start-up that a refused connection (which fails at once) also pays."""

    def timed(url: str) -> tuple[float, subprocess.CompletedProcess[str]]:
        start = time.monotonic()
        result = run(fake_streamer("instant", "run", url, "--timeout", str(OPEN_TIMEOUT_S), "--headless", *MODEL_ARGS), tmp_path, timeout=60)
        return time.monotonic() - start, result

    refused_s, refused = timed(f"{scheme}://127.0.0.1:{closed_port()}/stream")
    assert "cannot open" in assert_one_clear_line(refused)
    with silent_server() as port:
        silent_s, silent = timed(f"{scheme}://127.0.0.1:{port}/stream")
    line = assert_one_clear_line(silent)
    assert "cannot open network stream" in line and f"127.0.0.1:{port}" in line
    waited = silent_s - refused_s
    assert waited <= OPEN_TIMEOUT_S + 2.5, f"gave up {waited:.1f} s later than a refused connection"
    print(f"MEASURED silent {scheme} host: gave up {waited:.2f} s after a refused connection does (--timeout {OPEN_TIMEOUT_S})")
    assert list(tmp_path.iterdir()) == []


# -- 6 (live). the camera comes back at another resolution ------------------------------------
def test_camera_that_returns_at_another_size_is_resized_to_the_output(tmp_path: Path) -> None:
    big, small = sample_frames(40, (640, 360)), sample_frames(40, (320, 180))
    with MjpegCamera(big, fps=25, max_frames=200, max_seconds=90, stall_after=40) as cam:
        with LiveProcess(_live_cmd(cam.url, tmp_path, "--reconnect", "20", "--max-frames", "80"), tmp_path) as proc:
            proc.wait_for_line("stream lost; reconnecting", timeout=90)
            cam.kill()
            cam.frames = list(small)
            cam.start()
            code = proc.wait(60)
    assert code == 0, proc.stderr
    out = tmp_path / "live.mkv"
    assert video_size(out) == (640, 360)
    frames = read_frames(out)
    assert len(frames) == len(_jsonl(tmp_path / "live.jsonl"))
    serials = [read_serial(f) for f in frames]
    assert serials == sorted(set(serials)) and max(serials) >= 40, serials
    assert not any(is_blank(f) for f in frames)


# -- 2. a model slower than the camera, a camera slower than the model ------------------------
class StampClock(Sink):
    """Reads each written frame's serial and notes when it reached the sink (time.monotonic())."""

    def __init__(self) -> None:
        self.written: list[tuple[int, float]] = []

    def write(self, image: np.ndarray, name: str) -> None:
        self.written.append((read_serial(image), time.monotonic()))


def _run_live(cam: MjpegCamera, backend: Backend, max_frames: int) -> tuple[RunSummary, StampClock, list[int]]:
    import psutil

    me = psutil.Process()
    rss: list[int] = []
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.25):
            rss.append(me.memory_info().rss)

    source = open_source(cam.url, SourceOptions(open_timeout_s=5.0, read_timeout_s=5.0))
    sink = StampClock()
    config = PipelineConfig(max_frames=max_frames, stall_timeout_s=5.0, reconnect_timeout_s=0)
    pipeline = Pipeline(source, sink, lambda: backend, config)
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        summary: RunSummary = call_with_deadline(pipeline.run, 60)
    finally:
        done.set()
        sampler.join(2)
    return summary, sink, rss


def _ages(cam: MjpegCamera, sink: StampClock) -> list[float]:
    sent = {s.serial: s.at for s in cam.sent}
    return [at - sent[serial] for serial, at in sink.written]


def test_model_slower_than_the_camera_drops_frames_and_keeps_them_fresh(capsys: pytest.CaptureFixture[str]) -> None:
    """25 FPS camera, a model that takes 0.2 s a frame: most frames are dropped (counted and shown
    in the summary), and the age of each classified frame - camera send to sink, one clock - stays
    within two inferences instead of growing as a queue would."""
    delay = 0.2
    with MjpegCamera(sample_frames(50, (320, 240)), fps=25, max_frames=400, max_seconds=60) as cam:
        summary, sink, rss = _run_live(cam, SleepingBackend(delay), max_frames=150)
    assert summary.frames_in == 150
    assert summary.frames_out == len(sink.written) >= 10
    assert summary.dropped == summary.frames_in - summary.frames_out >= 100
    ages = _ages(cam, sink)[2:]  # the first frames waited for the backend to load
    assert float(np.median(ages)) <= 2 * delay + 0.3, ages
    assert max(ages) <= MAX_FRAME_AGE_S + delay + 0.3, ages
    assert np.mean(ages[-5:]) <= np.mean(ages[:5]) + 0.3, f"frames get older as the run goes on: {ages}"
    serials = [s for s, _ in sink.written]
    assert serials == sorted(set(serials))
    # Reported: the summary table says how many frames were dropped.
    from streamer.report import print_summary

    print_summary(summary, "camera")
    shown = capsys.readouterr().out
    assert f"{summary.frames_in} / {summary.frames_out} / {summary.dropped}" in shown
    # Memory stays flat: the mailbox holds one frame, whatever the backlog would have been.
    # (The first seconds of this process's first live run warm torch and FFmpeg up: judge the second half.)
    steady = rss[len(rss) // 2 :]
    assert len(steady) >= 5 and max(steady) - steady[0] < 20 * 2**20, [r // 2**20 for r in rss]
    with capsys.disabled():
        print(
            f"MEASURED slow model ({delay} s) on a 25 FPS camera: {summary.frames_out} of {summary.frames_in} frames "
            f"classified, {summary.dropped} dropped; age camera->sink median {np.median(ages):.2f} s, max {max(ages):.2f} s; "
            f"RSS {steady[0] >> 20} -> {max(steady) >> 20} MB over the second half"
        )


def test_camera_slower_than_the_model_loses_nothing_once_running() -> None:
    """6 FPS camera, instant model: frames that arrive while the backend loads are dropped (newest
    wins, by design), and from the first classified frame on, every frame is classified, fresh,
    the last one included."""
    with MjpegCamera(sample_frames(30, (320, 240)), fps=6, max_frames=200, max_seconds=60) as cam:
        summary, sink, _rss = _run_live(cam, InstantBackend(), max_frames=24)
    serials = [s for s, _ in sink.written]
    assert serials == list(range(serials[0], 24)), f"a frame was lost while running: {serials}"
    assert summary.stale == 0
    assert summary.frames_in == 24 and summary.dropped == summary.frames_in - summary.frames_out
    ages = _ages(cam, sink)
    assert max(ages) <= 0.5, ages
    print(f"MEASURED instant model on a 6 FPS camera: age camera->sink max {max(ages) * 1000:.0f} ms; {summary.dropped} dropped while loading")
