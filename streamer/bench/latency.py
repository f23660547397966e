"""Processing time: the network alone, and the whole pipeline stage by stage.

Network alone
    The source's frames are decoded and preprocessed once (by the backend's own
    ``preprocess``, so they sit on its input device in its input dtype), then
    ``backend.infer`` is called on them: one untimed-in-the-stats first call
    (reported as the first-inference latency), ``warmup`` calls, then
    ``repeats`` passes over every frame.  Each call is timed on its own and the
    backend is synchronised before the timer is read: with CUDA events on a GPU
    (plus ``perf_counter`` wall time beside them), with ``perf_counter`` around
    ``infer`` + ``synchronize`` on the CPU.

Pipeline
    :class:`streamer.pipeline.Pipeline` over the same source into a real video
    sink (so the write stage is encoding) or a :class:`NullSink`: one warm-up
    run of ``warmup`` frames, then ``repeats`` full runs, all on the case's one
    :class:`~streamer.inference.InferenceWorker` (the network timing above ran
    on its thread too).  Per-stage times come from the pipeline's own bounded
    :class:`~streamer.stats.StageTimes` (percentiles within 1%); the time per
    frame is the interval between successive frames leaving the render stage.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from streamer.bench.results import NetworkFigures, PipelineFigures
from streamer.stats import (
    STAGES,
    Stats,
    across_repeats,
    interval_rate,
    intervals,
    summarize,
)

if TYPE_CHECKING:
    import torch

    from engines.backends.base import Backend, Prediction
    from streamer.inference import InferenceWorker
    from streamer.sources import Frame
    from streamer.stats import Histogram

StepFn = Callable[[str, int, int], None]

THREAD_GROUPS: dict[str, tuple[str, ...]] = {
    "capture thread (decode)": ("decode",),
    "inference thread (preprocess + inference + postprocess)": ("preprocess", "inference", "postprocess"),
    "render thread (render)": ("render",),
    "writer thread (write)": ("write",),
}
"""Which thread runs each stage. make_sink puts every file sink behind a ThreadedSink, so "write" (encoding)
runs on its own writer thread, not on the render thread; a sink without one ("null") has no write stage."""


SINK_TEXT = {
    "video": "H.264 video file (PyAV) in a temporary folder, built by make_sink as `streamer run -o` builds it (write = encoding)",
    "null": "NullSink (write = nothing)",
    "images": "JPEG files in a temporary folder, built by make_sink (write = encoding)",
}


class CallTimer:
    """Times one call: CUDA events and wall clock on a GPU, wall clock + synchronize on the CPU."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.cuda = backend.device.startswith("cuda")
        self.name = "cuda_events" if self.cuda else "perf_counter+synchronize"
        if self.cuda:
            import torch

            self._start = torch.cuda.Event(enable_timing=True)
            self._end = torch.cuda.Event(enable_timing=True)

    def time(self, fn: Callable[[], object]) -> tuple[float, float]:
        """(primary ms, wall ms). Primary is the CUDA-event time on a GPU, else the wall time."""
        self.backend.synchronize()
        if self.cuda:
            t0 = time.perf_counter()
            self._start.record()
            fn()
            self._end.record()
            self.backend.synchronize()
            t1 = time.perf_counter()
            return float(self._start.elapsed_time(self._end)), (t1 - t0) * 1000.0
        t0 = time.perf_counter()
        fn()
        self.backend.synchronize()
        t1 = time.perf_counter()
        wall = (t1 - t0) * 1000.0
        return wall, wall


def source_batches(backend: Backend, source_text: str, batch: int, max_frames: int | None = None) -> list[torch.Tensor]:
    """The source's frames, decoded once and preprocessed by the backend into full batches on its input device.

    Frames are preprocessed as they are decoded, so the decoded frames are not
    all held at once.  A trailing partial batch is left out; a source shorter
    than one batch is cycled to fill it.
    """
    from streamer.sources import SourceOptions, open_source

    out = []
    pending: list[np.ndarray] = []
    seen: list[np.ndarray] = []
    count = 0
    with open_source(source_text, SourceOptions()) as src:
        for frame in src:
            pending.append(frame.image)
            if len(seen) < batch:
                seen.append(frame.image)
            count += 1
            if len(pending) == batch:
                out.append(backend.preprocess(pending))
                pending = []
            if max_frames is not None and count >= max_frames:
                break
    if not out and seen:
        out.append(backend.preprocess([seen[i % len(seen)] for i in range(batch)]))
    backend.synchronize()
    return out


def time_network(
    backend: Backend,
    batches: list[torch.Tensor],
    repeats: int,
    warmup: int,
    step: StepFn | None = None,
) -> NetworkFigures:
    if not batches:
        raise ValueError("no input batches")
    batch = int(batches[0].shape[0])
    timer = CallTimer(backend)
    first_primary, first_wall = timer.time(lambda: backend.infer(batches[0]))
    for i in range(warmup):
        timer.time(lambda: backend.infer(batches[i % len(batches)]))
    primary: list[list[float]] = []
    wall: list[list[float]] = []
    fps: list[float] = []
    total = repeats * len(batches)
    done = 0
    for _ in range(repeats):
        p_rep: list[float] = []
        w_rep: list[float] = []
        for x in batches:
            p, w = timer.time(lambda: backend.infer(x))
            p_rep.append(p)
            w_rep.append(w)
            done += 1
            if step is not None and done % 8 == 0:
                step("network", done, total)
        primary.append(p_rep)
        wall.append(w_rep)
        fps.append(batch * len(w_rep) / (sum(w_rep) / 1000.0))
    lat = across_repeats(primary)
    mean = lat["mean"]
    rate = summarize(fps)
    return NetworkFigures(
        timer=timer.name,
        per_call=f"one infer() call on a batch of {batch}, synchronised",
        latency_ms=lat,
        latency_wall_ms=across_repeats(wall),
        per_image_ms=(mean / batch) if isinstance(mean, float) else None,
        throughput_fps=_float(rate["mean"]),
        throughput_fps_std=_float(rate["std"]),
        first_infer_ms=first_primary,
        first_infer_wall_ms=first_wall,
        calls_per_repeat=len(batches),
        samples=[v for rep in primary for v in rep],
    )


def _float(value: object) -> float | None:
    return float(value) if isinstance(value, (int, float)) else None


@dataclass
class FrameRecorder:
    """A run observer (:class:`streamer.sinks.ResultSink`): per-frame timestamps, latency and top-1 of one bench run."""

    times: list[float] = field(default_factory=list)
    latency_ms: list[float] = field(default_factory=list)
    top1: list[int] = field(default_factory=list)
    indices: list[int] = field(default_factory=list)

    def write(self, frame: Frame, prediction: Prediction, latency_ms: float) -> None:
        self.times.append(time.perf_counter())
        self.indices.append(int(frame.index))
        self.latency_ms.append(float(latency_ms))
        self.top1.append(int(prediction.indices[0]))

    def finalize(self) -> None:
        pass

    def abort(self) -> None:
        pass


@dataclass
class PipelineRun:
    wall_s: float
    """From the source opening to the output finalised."""
    frames_in: int
    frames_out: int
    dropped: int
    first_frame_s: float | None
    """From the source opening to the first annotated frame handed to the sink."""
    stages: dict[str, Histogram]
    """Seconds per frame, by stage (the pipeline's own bounded :class:`~streamer.stats.StageTimes`)."""
    recorder: FrameRecorder

    @property
    def fps(self) -> float | None:
        """Frames per second of the whole run: frames / wall time (the sink's output finalised)."""
        return self.frames_out / self.wall_s if self.wall_s > 0 and self.frames_out else None

    @property
    def render_fps(self) -> float | None:
        """Rate at which annotated frames left the render stage (intervals between them)."""
        return interval_rate(self.recorder.times)


def run_pipeline(
    source_text: str,
    worker: InferenceWorker,
    *,
    sink_kind: str,
    out_dir: Path,
    fps: float,
    batch: int = 1,
    max_frames: int | None = None,
    realtime: bool = False,
    target_fps: float | None = None,
    warning: str | None = None,
    decode_device: str | None = None,
    decoder: str = "auto",
) -> PipelineRun:
    """One run of the real pipeline (``make_sink``'s sink, as ``streamer run -o`` builds it) on a loaded worker.

    Every run of a case shares the case's one :class:`InferenceWorker`, so its
    thread is warm (it loaded the backend) and nothing is rebuilt per run; the
    worker is loaded before the source opens, so a live replay's clock starts
    with the model ready.  ``fps`` is the sink's frame rate (``target_fps`` for a live replay).
    ``decode_device`` and ``decoder`` are :class:`~streamer.sources.SourceOptions`' ``device`` and
    ``decoder`` (``streamer run`` sets ``device`` to the model's: GPU JPEG decoding there).
    """
    from streamer.pipeline import Pipeline, PipelineConfig
    from streamer.sinks import make_sink
    from streamer.sources import SourceOptions, open_source

    if sink_kind == "null":
        target: str | None = None
    elif sink_kind == "images":
        target = str(out_dir / f"bench-images-{time.perf_counter_ns()}") + "/"
    else:
        target = str(out_dir / f"bench-{'live' if realtime else 'file'}-{time.perf_counter_ns()}.mp4")
    sink = make_sink(target, False, overwrite=True)
    worker.wait_loaded()
    opened = time.perf_counter()
    source = open_source(source_text, SourceOptions(realtime=realtime, device=decode_device, decoder=decoder))
    # The sink's rate; a live replay also runs at it instead of the file's own.
    source.fps = target_fps if (realtime and target_fps is not None) else fps
    recorder = FrameRecorder()
    config = PipelineConfig(batch=batch, max_frames=max_frames, stall_timeout_s=120.0)
    pipeline = Pipeline(source, sink, worker, config, observers=[recorder], warning=warning)
    summary = pipeline.run()
    end = time.perf_counter()
    if target is not None:
        _remove(Path(target.rstrip("/")))
    return PipelineRun(
        wall_s=end - opened,
        frames_in=summary.frames_in,
        frames_out=summary.frames_out,
        dropped=summary.dropped,
        first_frame_s=(recorder.times[0] - opened) if recorder.times else None,
        stages=pipeline.times.snapshot(),
        recorder=recorder,
    )


def _remove(path: Path) -> None:
    import shutil

    try:
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
    except OSError:
        pass


def summarize_pipeline(runs: list[PipelineRun], sink_kind: str) -> PipelineFigures:
    """Per-stage mean ± std across runs and percentiles over frames; frame interval; FPS."""
    stages: dict[str, Any] = {}
    for stage in STAGES:
        per_run = [r.stages[stage] for r in runs if stage in r.stages]
        if per_run:
            stages[stage] = _in_ms(across_repeats(per_run))
    means = {k: v["mean"] for k, v in stages.items() if isinstance(v.get("mean"), float)}
    slowest = max(means, key=lambda k: means[k]) if means else None
    groups = {name: sum(means.get(s, 0.0) for s in members) for name, members in THREAD_GROUPS.items() if any(s in means for s in members)}
    busiest = max(groups, key=lambda k: groups[k]) if groups else None
    fps = [r.fps for r in runs if r.fps is not None]
    render_fps = [r.render_fps for r in runs if r.render_fps is not None]
    first = [r.first_frame_s * 1000.0 for r in runs if r.first_frame_s is not None]
    return PipelineFigures(
        sink=SINK_TEXT.get(sink_kind, sink_kind),
        runs=len(runs),
        frames_per_run=runs[0].frames_out if runs else 0,
        fps=summarize(fps),
        fps_of="frames / wall time from the source opening to the output finalised",
        render_fps=summarize(render_fps),
        frame_interval_ms=across_repeats([[i * 1000.0 for i in intervals(r.recorder.times)] for r in runs]),
        stages_ms=stages,
        serial_ms_per_frame=sum(means.values()) if means else None,
        slowest_stage=slowest,
        slowest_stage_ms=means.get(slowest) if slowest else None,
        thread_ms_per_frame=groups,
        busiest_thread=busiest,
        busiest_thread_ms=groups.get(busiest) if busiest else None,
        wall_s=summarize([r.wall_s for r in runs]),
        start_to_first_frame_ms=summarize(first),
        capture_to_render_ms=across_repeats([r.recorder.latency_ms for r in runs]),
        frame_interval_samples_ms=[(b - a) * 1000.0 for r in runs for a, b in zip(r.recorder.times, r.recorder.times[1:])],
    )


def _in_ms(stats: Stats) -> Stats:
    """``stats`` of seconds, in milliseconds."""
    out = dict(stats)
    for key in ("mean", "std", "min", "p50", "p95", "p99", "max"):
        value = out.get(key)
        if isinstance(value, float):
            out[key] = value * 1000.0
    return out
