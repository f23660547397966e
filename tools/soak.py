"""Soak: a looping live replay at 30 FPS through the real Pipeline and model, RSS sampled over minutes.

The replay is the sample video (or ``--source``), paced at ``--fps`` from its
own clock and looped for ever, read as a live source (newest frame wins,
drops counted), so the run is what a camera gives ``streamer run`` for as
long as it lasts.  Every ``--interval`` seconds the process's resident memory
(psutil), its thread count, the frames labelled so far and the bytes held by
the run's per-frame statistics are recorded.  At the end it writes
``soak.csv`` and ``soak.json`` to ``--out`` and prints the least-squares RSS
slope, in MB per hour, over the samples after ``--warmup`` seconds.

    PYTHONPATH=. python tools/soak.py --minutes 30 --out docs/benchmarks/soak-cpu/
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from engines.errors import SourceError  # noqa: E402
from streamer.sources import Frame, Source  # noqa: E402

DEFAULT_SOURCE = REPO / "samples" / "video" / "bigbuckbunny.mp4"


class LoopingReplay(Source):
    """A video file replayed at ``fps`` as a live source, from the start again at its end, until closed."""

    live = True
    kind = "replay"

    def __init__(self, path: Path, fps: float) -> None:
        super().__init__(path.name)
        self.path = path
        self.fps = fps
        self.fps_trusted = True
        self._cap: object | None = None
        self._t0: float | None = None
        self.loops = 0

    def _open_impl(self) -> None:
        import cv2

        cap = cv2.VideoCapture(str(self.path))
        if not cap.isOpened():
            raise SourceError(f"{self.path}: cannot open")
        self._cap = cap

    def _read_impl(self) -> Frame | None:
        import cv2

        cap = self._cap
        assert isinstance(cap, cv2.VideoCapture)
        t0 = time.perf_counter()
        ok, image = cap.read()
        if not ok:
            self.loops += 1
            cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
            ok, image = cap.read()
            if not ok:
                return None
        decode_s = time.perf_counter() - t0
        now = time.perf_counter()
        if self._t0 is None:
            self._t0 = now
        due = self._t0 + self._index / self.fps
        if due > now:
            time.sleep(due - now)
        return self._make_frame(image, f"{self._index:08d}", decode_s)

    def close(self) -> None:
        cap, self._cap = self._cap, None
        if cap is not None:
            cap.release()  # type: ignore[attr-defined]


@dataclass
class Sample:
    t_s: float
    rss_mb: float
    threads: int
    frames_out: int
    stats_bytes: int
    """Bytes held by the run's per-frame statistics (stage histograms and the latency histogram)."""
    running: bool = True
    """False for the last sample, taken after the run ended (left out of every figure but ``last``)."""


def slope_mb_per_hour(samples: list[Sample]) -> float | None:
    """Least-squares slope of RSS over time, in MB per hour."""
    if len(samples) < 2:
        return None
    import numpy as np

    t = np.array([s.t_s for s in samples]) / 3600.0
    if float(t.max() - t.min()) <= 0:
        return None
    return float(np.polyfit(t, np.array([s.rss_mb for s in samples]), 1)[0])


def median_growth(samples: list[Sample]) -> float | None:
    """Median RSS of the last third of ``samples`` minus that of the first third, in MB.

    Robust to the transient peaks of a few decoded frames in flight, which the
    maximum is not (a 720p frame is 2.6 MB, and the allocator returns them late).
    """
    import statistics

    third = len(samples) // 3
    if third < 2:
        return None
    return statistics.median(s.rss_mb for s in samples[-third:]) - statistics.median(s.rss_mb for s in samples[:third])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=30.0, help="length of the replay (default: 30)")
    parser.add_argument("--out", type=Path, default=None, help="folder for soak.csv and soak.json")
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help="video file to loop (default: the sample video)")
    parser.add_argument("--fps", type=float, default=30.0, help="replay rate (default: 30)")
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between RSS samples (default: 5)")
    parser.add_argument("--warmup", type=float, default=60.0, help="seconds left out of the slope (default: 60, at most a third of the run)")
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--backend", default="torch")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--weights", default="imagenet")
    parser.add_argument("--output", type=Path, default=None, help="also write the annotated video here (default: no file; the frames are drawn and dropped)")
    args = parser.parse_args(argv)

    import psutil

    from engines.backends import create_backend
    from engines.backends.base import BackendOptions
    from engines.models import WeightsChoice, get_spec
    from streamer.inference import InferenceWorker
    from streamer.pipeline import Pipeline, PipelineConfig
    from streamer.sinks import NullSink, make_sink

    seconds = args.minutes * 60.0
    warmup = min(args.warmup, seconds / 3)
    spec, weights = get_spec(args.model), WeightsChoice.parse(args.weights)
    options = BackendOptions(device=args.device, precision=args.precision)
    worker = InferenceWorker(lambda: create_backend(args.backend, spec, weights, options)).start()
    info = worker.wait_loaded()
    source = LoopingReplay(args.source, args.fps)
    source.open()
    sink = make_sink(str(args.output), False, overwrite=True) if args.output else NullSink()
    config = PipelineConfig(max_frames=max(1, round(seconds * args.fps)), reconnect_timeout_s=0)
    pipeline = Pipeline(source, sink, worker, config)
    me = psutil.Process()
    samples: list[Sample] = []
    done = threading.Event()
    start = time.perf_counter()

    def stats_bytes() -> int:
        return sum(h.nbytes for h in pipeline.times.stages.values()) + pipeline.latency.nbytes

    def sample() -> None:
        while True:
            with me.oneshot():
                samples.append(
                    Sample(time.perf_counter() - start, me.memory_info().rss / 2**20, me.num_threads(), pipeline.summary.frames_out, stats_bytes())
                )
            if done.wait(args.interval):
                return

    sampler = threading.Thread(target=sample, name="rss-sampler", daemon=True)
    sampler.start()
    print(f"soak: {info.description}; {args.source.name} looped at {args.fps:g} FPS for {args.minutes:g} min", flush=True)
    try:
        summary = pipeline.run()
    finally:
        done.set()
        sampler.join(5)
        worker.close(5)
    with me.oneshot():
        final = Sample(time.perf_counter() - start, me.memory_info().rss / 2**20, me.num_threads(), summary.frames_out, stats_bytes(), False)
    samples.append(final)
    steady = [s for s in samples if s.running and s.t_s >= warmup]
    slope = slope_mb_per_hour(steady)
    result = {
        "what": "RSS of one process running a looping live replay through streamer.pipeline.Pipeline",
        "source": args.source.name,
        "fps": args.fps,
        "minutes": args.minutes,
        "warmup_s": warmup,
        "interval_s": args.interval,
        "backend": info.description,
        "sink": sink.description,
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "cpus": psutil.cpu_count()},
        "frames_in": summary.frames_in,
        "frames_out": summary.frames_out,
        "dropped": summary.dropped,
        "loops": source.loops,
        "pipeline_fps": summary.pipeline_fps,
        "rss_mb": {
            "first": samples[0].rss_mb,
            "after_warmup": steady[0].rss_mb if steady else None,
            "last": samples[-1].rss_mb,
            "max": max(s.rss_mb for s in samples),
            "growth_after_warmup": (max(s.rss_mb for s in steady) - steady[0].rss_mb) if steady else None,
            "median_growth_after_warmup": median_growth(steady),
        },
        "rss_slope_mb_per_hour": slope,
        "threads": sorted({s.threads for s in steady}),
        "stats_bytes": sorted({s.stats_bytes for s in steady}),
        "samples": [asdict(s) for s in samples],
    }
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        with open(args.out / "soak.csv", "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(asdict(samples[0])))
            writer.writeheader()
            writer.writerows(asdict(s) for s in samples)
        (args.out / "soak.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    growth = result["rss_mb"]["growth_after_warmup"]
    print(
        f"soak: {summary.frames_out} frames labelled of {summary.frames_in} read ({summary.dropped} dropped), "
        f"{source.loops} loops; RSS {samples[0].rss_mb:.0f} -> {samples[-1].rss_mb:.0f} MB"
        + (f", +{growth:.1f} MB at most after the {warmup:.0f} s warm-up" if growth is not None else "")
        + (f" (+{result['rss_mb']['median_growth_after_warmup']:.1f} MB median to median)" if result["rss_mb"]["median_growth_after_warmup"] is not None else "")
        + (f"; slope {slope:+.2f} MB/hour" if slope is not None else "; too few samples for a slope"),
        flush=True,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
