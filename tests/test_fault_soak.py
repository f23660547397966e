"""Soak: a live camera for minutes, through the real model, in a real ``streamer run`` process.

Duration: ``$FAULTS_SOAK_S`` seconds of streaming (default 120, so CI stays
short; at least 30; set it to 3600 for an hour before a release).  Marked ``slow`` but not
deselected anywhere: it runs by default.

Bounds (measured on the child with psutil, after a warm-up of WARMUP_S):
resident memory grows by less than RSS_GROWTH_MB, threads do not accumulate (the
last third of the samples is back at the first count; a one-sample thread is not growth), and the median capture-to-render latency of the last minute is
at most twice that of the first minute plus LATENCY_SLACK_MS.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from pathlib import Path

import pytest

from faults.fixtures import fault_env  # noqa: F401 - fixture
from faults.media import count_frames, sample_frames
from faults.mjpeg import MjpegCamera
from faults.proc import MODEL_ARGS, LiveProcess, ResourceSampler, streamer

SOAK_S = max(30.0, float(os.environ.get("FAULTS_SOAK_S", "120")))
FPS = 15.0
WARMUP_S = min(20.0, SOAK_S / 3)
RSS_GROWTH_MB = 50.0
LATENCY_SLACK_MS = 50.0
SHUTDOWN_S = 6.0


@pytest.mark.slow
def test_soak_memory_threads_and_latency_stay_flat(tmp_path: Path) -> None:
    frames = int(SOAK_S * FPS)
    out, jsonl = tmp_path / "soak.mkv", tmp_path / "soak.jsonl"
    with MjpegCamera(sample_frames(132, (320, 240)), fps=FPS, max_frames=frames + 600, max_seconds=SOAK_S + 240) as cam:
        cmd = streamer(
            "run", cam.url, "-o", out, "--predictions", jsonl, "--backend", "torch", "--device", "cpu",
            "--timeout", "10", "--max-frames", str(frames), "--no-progress", *MODEL_ARGS,
        )  # fmt: skip
        with LiveProcess(cmd, tmp_path) as proc, ResourceSampler(proc.pid, interval=min(2.0, SOAK_S / 60)) as sampler:
            started = proc.wait_for_line(" -> ", timeout=120, stream="out").at
            code = proc.wait(SOAK_S + 180)
            ended = time.monotonic()
    assert code == 0, proc.stderr
    assert ended - started >= SOAK_S * 0.9, "the soak ended early"

    # Only the streaming counts, not the shutdown: the camera paces the frames, so capture reads its
    # --max-frames until at least SOAK_S after the run started; finalising (which decodes the video to count
    # its frames) and exit follow. Idle, they took about 2 s (main and this code alike); on a loaded machine
    # over 3 s (the capture thread gone in the last samples) and once about 30 s (RSS +55 MB decoding the file).
    steady = sampler.between(started + WARMUP_S, min(started + SOAK_S, ended - SHUTDOWN_S))
    assert len(steady) >= 10, sampler.samples
    base = steady[0]
    growth_mb = (max(s.rss for s in steady) - base.rss) / 2**20
    assert growth_mb < RSS_GROWTH_MB, f"RSS grew {growth_mb:.1f} MB: {[s.rss >> 20 for s in steady]}"
    # Threads must not accumulate: every sample of the last third is back at the first one's count.
    # A thread that lives for one sample (libx264's lookahead, FFmpeg's reconnect) is not growth; more
    # than one sample in ten above the base is.
    counts = [s.threads for s in steady]
    tail = counts[len(counts) * 2 // 3 :]
    assert max(tail) <= base.threads, f"threads accumulated during the soak: {counts}"
    assert sum(c > base.threads for c in counts) <= len(counts) // 10, f"thread count kept changing during the soak: {counts}"

    records = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert count_frames(out) == len(records) > 0
    # Frame indices count every frame read (dropped ones too), so index / FPS is capture time.
    minute = min(60.0, (SOAK_S - WARMUP_S) / 2)
    first = [r["latency_ms"] for r in records if WARMUP_S <= r["frame"] / FPS < WARMUP_S + minute]
    last = [r["latency_ms"] for r in records if r["frame"] / FPS >= SOAK_S - minute]
    assert len(first) >= 10 and len(last) >= 10, (len(first), len(last))
    first_ms, last_ms = statistics.median(first), statistics.median(last)
    assert last_ms <= 2 * first_ms + LATENCY_SLACK_MS, f"latency drifted: median {first_ms:.0f} ms -> {last_ms:.0f} ms"
    print(
        f"MEASURED soak {SOAK_S:.0f} s: {len(records)} frames classified of {frames}; RSS {base.rss >> 20} MB, "
        f"+{growth_mb:.1f} MB; threads {base.threads}; latency median {first_ms:.0f} -> {last_ms:.0f} ms"
    )


SHORT_SOAK_S = 60.0
SHORT_WARMUP_S = 20.0
SHORT_RSS_GROWTH_MB = 8.0
"""Bound on the median RSS of the last third of the 40 s after warm-up minus that of the first third.
Measured +2.6 MB on the shared, loaded 2-core machine (its maximum, a few decoded frames in flight, moves
more: +6 to +14 MB). A per-frame list at 30 FPS (0.4 MB a minute) would not show in a minute, so the
statistics' own size is checked exactly as well."""


@pytest.mark.slow
def test_short_soak_with_the_soak_tool_keeps_memory_and_statistics_bounded(tmp_path: Path) -> None:
    """``tools/soak.py`` for a minute: a 30 FPS looping replay through the real Pipeline and model, in
    its own process. The per-frame statistics hold the same bytes from the warm-up to the end however
    many frames pass, and resident memory after the warm-up grows by less than SHORT_RSS_GROWTH_MB
    (medians of the first and last thirds)."""
    import subprocess
    import sys

    from faults.proc import cli_env

    repo = Path(__file__).resolve().parent.parent
    cmd = [
        sys.executable, str(repo / "tools" / "soak.py"), "--minutes", str(SHORT_SOAK_S / 60), "--warmup", str(SHORT_WARMUP_S),
        "--interval", "2", "--out", str(tmp_path), *MODEL_ARGS, "--backend", "torch", "--device", "cpu",
    ]  # fmt: skip
    done = subprocess.run(cmd, cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=SHORT_SOAK_S + 240)
    assert done.returncode == 0, done.stderr
    result = json.loads((tmp_path / "soak.json").read_text())
    assert (tmp_path / "soak.csv").read_text().count("\n") == len(result["samples"]) + 1
    assert result["frames_in"] == int(SHORT_SOAK_S * 30) and result["frames_out"] > 0
    assert len(result["stats_bytes"]) == 1, f"the statistics grew with the frames: {result['stats_bytes']}"
    assert result["stats_bytes"][0] < 200_000
    growth = result["rss_mb"]["median_growth_after_warmup"]
    assert growth is not None and growth < SHORT_RSS_GROWTH_MB, result["rss_mb"]
    assert result["rss_slope_mb_per_hour"] is not None
    print(
        f"MEASURED short soak {SHORT_SOAK_S:.0f} s: {result['frames_out']} of {result['frames_in']} frames labelled; "
        f"RSS +{growth:.1f} MB after {SHORT_WARMUP_S:.0f} s; stats {result['stats_bytes'][0]} bytes throughout"
    )
