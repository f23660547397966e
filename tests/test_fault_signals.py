"""Killed runs: ``streamer run VIDEO --realtime`` (a live replay, so it runs for a while) in a child
process, stopped by a signal once a few hundred KB of video are on disk.

The child is the real command line with an instant fake model (:mod:`faults.fakecli`): signal
handling, the pipeline and the file sinks are the product's; the fake keeps the frame rate (and
so the amount of video on disk at the signal) independent of how busy the CPU is.

* SIGINT (Ctrl-C) and SIGTERM (service managers, ``timeout``) finalise: exit 130, the video plays
  under its final name, and its frames match the JSON lines one to one.
* SIGKILL cannot be caught: nothing appears under the final names, and the hidden partial file
  ``.NAME.partial-PID.EXT`` is what is left.  An .mkv partial plays up to (nearly) the kill; an .mp4
  partial does not play at all (its index is written last).  Hence the advice in
  docs/RELIABILITY.md: record to .mkv when a run must survive a kill.
"""

from __future__ import annotations

import json
import re
import signal
from pathlib import Path

import pytest

from faults.fixtures import fault_env, long_clip  # noqa: F401 - fixtures
from faults.media import count_frames, is_blank, read_frames, read_serial
from faults.proc import MODEL_ARGS, LiveProcess, fake_streamer, wait_until

ON_DISK_BEFORE_SIGNAL = 400 * 1024
"""Bytes of video in the partial file before the signal: enough that FFmpeg has flushed whole clusters."""


def _start(long_clip: Path, tmp_path: Path, out: Path) -> LiveProcess:
    cmd = fake_streamer(
        "instant", "run", long_clip, "--realtime", "-o", out, "--predictions", tmp_path / "run.jsonl",
        "--no-progress", *MODEL_ARGS, "--weights", "random",
    )  # fmt: skip
    return LiveProcess(cmd, tmp_path).start()


def _partial(tmp_path: Path, ext: str) -> Path | None:
    found = [p for p in tmp_path.iterdir() if p.name.startswith(".") and p.suffix == ext]
    return found[0] if found else None


def _wait_for_video_on_disk(proc: LiveProcess, tmp_path: Path, ext: str) -> Path:
    proc.wait_for_line(" -> ", timeout=120, stream="out")  # the pipeline is starting

    def big_enough() -> bool:
        assert proc.poll() is None, f"exited early:\n{proc.stderr}"
        partial = _partial(tmp_path, ext)
        return partial is not None and partial.stat().st_size >= ON_DISK_BEFORE_SIGNAL

    wait_until(big_enough, timeout=60, what="partial video reaching 400 KB")
    partial = _partial(tmp_path, ext)
    assert partial is not None
    return partial


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_interrupt_finalises_a_playable_video(tmp_path: Path, long_clip: Path, signum: int) -> None:
    out = tmp_path / "run.mkv"
    proc = _start(long_clip, tmp_path, out)
    try:
        _wait_for_video_on_disk(proc, tmp_path, ".mkv")
        proc.signal(signum)
        code = proc.wait(30)
    finally:
        proc.kill()
    assert code == 130, proc.stderr
    assert "Traceback" not in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.jsonl", "run.mkv"], "no partial file is left"
    match = re.search(r"interrupted; finalised the output with (\d+) frames", proc.stderr)
    assert match, proc.stderr
    records = [json.loads(line) for line in (tmp_path / "run.jsonl").read_text().splitlines()]
    frames = read_frames(out)
    assert len(frames) == len(records) == int(match.group(1)) > 0
    print(f"MEASURED {signal.Signals(signum).name}: exit 130, {len(frames)} frames finalised = {len(records)} JSON lines")
    # The replay is live (newest frame wins), so the clip's frames appear in order, some skipped.
    stamps = [read_serial(f) for f in frames]
    assert stamps == sorted(set(stamps)) and [r["frame"] for r in records] == stamps


@pytest.mark.parametrize("ext", [".mkv", ".mp4"])
def test_sigkill_leaves_nothing_under_the_final_name(tmp_path: Path, long_clip: Path, ext: str) -> None:
    out = tmp_path / f"run{ext}"
    proc = _start(long_clip, tmp_path, out)
    try:
        partial = _wait_for_video_on_disk(proc, tmp_path, ext)
        proc.kill()  # SIGKILL
    finally:
        proc.kill()
    assert proc.proc is not None and proc.proc.returncode == -signal.SIGKILL
    assert not out.exists() and not (tmp_path / "run.jsonl").exists()
    assert re.fullmatch(rf"\.run\.partial-{proc.pid}\{ext}", partial.name), partial.name
    readable = count_frames(partial)
    print(f"MEASURED SIGKILL {ext}: {partial.stat().st_size // 1024} KB partial, {readable} readable frames")
    if ext == ".mkv":
        # Matroska is written front to back: everything up to the last flushed cluster plays.
        assert readable > 0, "the .mkv partial has no readable frame"
        frames = read_frames(partial)
        assert not any(is_blank(f) for f in frames)
        stamps = [read_serial(f) for f in frames]
        assert stamps == sorted(set(stamps))
    else:
        # MP4 writes its index (moov) at the end: a killed .mp4 does not play.  If this starts
        # failing, FFmpeg changed (e.g. fragmented MP4 by default): update docs/RELIABILITY.md.
        assert readable == 0
