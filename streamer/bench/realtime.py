"""Real-time verdict: can this backend keep up with the source at its frame rate?

Two measurements feed it, and a case is real-time only when both hold:

* the live replay: the file is replayed at the target rate as a live source
  (``SourceOptions(realtime=True)``), where the pipeline keeps only the newest
  frame and counts the ones it had to drop; it holds when it drops at most
  :data:`MAX_DROP_FRACTION` of the frames offered and sustains at least
  :data:`MIN_RATE_FRACTION` of the target rate;
* headroom = frame budget (1000 / target FPS ms) / p99 time per frame of the
  lossless file run (the interval between frames leaving the pipeline); it
  holds when it is at least 1 (the pipeline has time to spare on 99 % of frames).

The verdict names what failed, and names the busiest thread (which sets the
pipeline's rate) apart from the slowest stage (which may sit on another thread).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from streamer.bench.results import Replay, Verdict
from streamer.stats import interval_rate

if TYPE_CHECKING:
    from streamer.bench.latency import PipelineRun

MAX_DROP_FRACTION = 0.01
MIN_RATE_FRACTION = 0.95
MIN_HEADROOM = 1.0

RULE_TEXT = (
    f"Real-time = the live replay holds (the file played at the target rate as a live source, newest frame wins: "
    f"at most {MAX_DROP_FRACTION * 100:g} % of frames dropped and at least {MIN_RATE_FRACTION * 100:g} % of the target "
    f"rate sustained) AND p99 headroom >= {MIN_HEADROOM:g} (frame budget / p99 time per frame of the lossless file run, "
    "the interval between frames leaving the pipeline). Otherwise the verdict says which of the two failed. "
    "The busiest thread (sum of its stages' mean ms per frame) sets the pipeline's rate; the slowest stage is named "
    "apart, since it may sit on another thread."
)


def replay_summary(run: PipelineRun, target_fps: float) -> Replay:
    lat = np.asarray(run.recorder.latency_ms, dtype=np.float64)
    offered = run.frames_in
    return Replay(
        target_fps=target_fps,
        frames_offered=offered,
        frames_processed=run.frames_out,
        dropped=run.dropped,
        dropped_fraction=(run.dropped / offered) if offered else None,
        sustained_fps=interval_rate(run.recorder.times),
        latency_p50_ms=float(np.percentile(lat, 50)) if lat.size else None,
        latency_p99_ms=float(np.percentile(lat, 99)) if lat.size else None,
        latency_max_ms=float(lat.max()) if lat.size else None,
    )


def verdict(
    label: str,
    target_fps: float,
    replay: Replay | None,
    p99_interval_ms: float | None,
    busiest_thread: tuple[str, float] | None,
    slowest_stage: tuple[str, float] | None,
) -> Verdict:
    """The headroom, a yes/no with what failed, and the busiest thread and slowest stage."""
    budget = 1000.0 / target_fps
    headroom = budget / p99_interval_ms if p99_interval_ms is not None and p99_interval_ms > 0 else None
    parts = []
    if busiest_thread is not None:
        parts.append(f"busiest thread: {busiest_thread[0]} {busiest_thread[1]:.1f} ms/frame")
    if slowest_stage is not None:
        parts.append(f"slowest stage: {slowest_stage[0]} {slowest_stage[1]:.1f} ms/frame")
    where = "; ".join(parts) or "stage times unknown"
    failed: list[str] = []
    if replay is None:
        capable = None
        text = f"{label}: no verdict (no live replay: batch > 1, not a video file, or --no-realtime); p99 headroom {_fmt(headroom)}; {where}"
    else:
        frac, fps = replay.dropped_fraction, replay.sustained_fps
        if frac is None or fps is None or frac > MAX_DROP_FRACTION or fps < MIN_RATE_FRACTION * target_fps:
            failed.append("replay")
        if headroom is None or headroom < MIN_HEADROOM:
            failed.append("headroom")
        capable = not failed
        fps_text = f"{fps:.1f}" if fps is not None else "--"
        replay_text = f"live replay {'held' if 'replay' not in failed else 'FAILED'}: {fps_text} FPS, {replay.dropped}/{replay.frames_offered} dropped"
        head_text = f"p99 headroom {_fmt(headroom)}{' (below 1: FAILED)' if 'headroom' in failed else ''}"
        head = "REAL-TIME" if capable else "NOT real-time"
        text = f"{label}: {head} at {target_fps:g} FPS ({replay_text}; {head_text}); {where}"
    return Verdict(
        frame_budget_ms=budget,
        headroom_p99=headroom,
        capable=capable,
        failed=failed,
        busiest_thread=busiest_thread[0] if busiest_thread else None,
        busiest_thread_ms=busiest_thread[1] if busiest_thread else None,
        slowest_stage=slowest_stage[0] if slowest_stage else None,
        slowest_stage_ms=slowest_stage[1] if slowest_stage else None,
        verdict=text,
    )


def _fmt(headroom: float | None) -> str:
    return f"{headroom:.2f}x" if headroom is not None else "--"
