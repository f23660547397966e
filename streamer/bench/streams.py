"""``streamer bench --streams N[,N2,...]``: how many live streams one process labels in real time.

For each N, N copies of a real video are replayed as live sources at the
file's own frame rate (``--realtime``: frame i is due i/fps after the first
read, newest frame wins, drops counted) through ONE process: N pipelines on
one shared :class:`~streamer.inference.InferenceWorker` that batches across
them (:mod:`streamer.multi`, what ``streamer run A B C ...`` does), with the
overlay drawn and frames discarded (no encoder: the bench measures decode,
model and render, not H.264 encoding).  Beside it, the same with N separate
``streamer run SRC --realtime --headless`` processes started together
(``--stream-processes``), each with its own model.

Per N it reports the sustained FPS per stream (labelled frames over the time
from the first to the last, the load not in it), the drops (frames replaced
before the model was free, and frames too old to classify), the
capture->render p99 (the worst stream's) and whether it stays real-time:
zero drops, p99 <= 2 frame intervals, and every stream within 5 % of the
source's rate.  The last condition catches a decoder that falls behind: a
late frame is stamped when it is decoded, so it is neither a drop nor late.

A source shorter than ``--max-frames`` is made longer by remuxing it onto
itself (no re-encoding), so every stream replays the same real H.264.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engines.errors import ConfigError, SourceError
from streamer.bench.results import JsonRecord

if TYPE_CHECKING:
    import argparse

REALTIME_FPS_SHARE = 0.95
"""A stream is real-time only if it labels at least this share of the source's frame rate."""
PROCESS_TIMEOUT_S = 300.0


@dataclass(frozen=True)
class StreamsPoint(JsonRecord):
    """N streams, in one process or in N processes."""

    mode: str
    """``"one process"`` or ``"N processes"``."""
    streams: int
    ok_streams: int
    frames_out: int
    dropped: int
    fps_min: float | None
    """The slowest stream's sustained FPS."""
    fps_mean: float | None
    p99_ms: float | None
    """The worst stream's capture->render p99."""
    p50_ms: float | None
    mean_batch: float | None = None
    """Frames per model batch (one process: across streams)."""
    ready_spread_s: float | None = None
    """N processes: how far apart their models became ready (they overlap for the rest)."""
    worker_busy: float | None = None
    """One process: share of the run's wall time the one shared inference worker spent in batches (1.0: it bounds the run)."""
    stage_ms: dict[str, float] = field(default_factory=dict)
    """Mean ms per frame of each stage over the streams (decode, preprocess, inference, render)."""
    realtime: bool = False
    failed: list[str] = field(default_factory=list)
    """Why a stream failed or what was not real-time."""
    cpu_cores: dict[str, float] = field(default_factory=dict)
    """One process: CPU seconds per wall second by thread role (render, capture, batcher, inference worker,
    native: FFmpeg's and CUDA's own threads), from /proc (:mod:`streamer.bench.threads`)."""
    gil_wait_ms: tuple[float, float] | None = None
    """One process: p50 / p99 of how late a 1 ms sleep woke (the wait for Python's GIL, plus the scheduler's)."""


@dataclass(frozen=True)
class StreamsCase(JsonRecord):
    model: str
    weights: str
    backend: str
    precision: str
    device: str
    description: str
    points: list[StreamsPoint]

    def largest_realtime(self, mode: str) -> int | None:
        good = [p.streams for p in self.points if p.mode == mode and p.realtime]
        return max(good) if good else None


@dataclass(frozen=True)
class StreamsReport(JsonRecord):
    source: str
    width: int
    height: int
    source_fps: float
    frames_per_stream: int
    max_wait_ms: float
    command: str
    environment: dict[str, Any]
    cases: list[StreamsCase]
    switch_interval_ms: float | None = None
    """Python's thread switch interval in the one-process runs (``$STREAMER_SWITCH_INTERVAL_MS``; 5 is Python's)."""
    decode_threads: str = ""
    """FFmpeg threads per decoder in the one-process runs."""

    def markdown(self) -> str:
        interval = 1000.0 / self.source_fps
        lines = [
            "## Several streams",
            "",
            f"`{self.command}`",
            "",
            f"Source: `{self.source}` ({self.width}x{self.height}, {self.source_fps:g} FPS), {self.frames_per_stream} frames per stream, "
            f"replayed live at its frame rate. Real-time: zero drops, capture->render p99 <= 2 frame intervals "
            f"({2 * interval:.0f} ms) and every stream at >= {REALTIME_FPS_SHARE:.0%} of {self.source_fps:g} FPS. "
            f"One process: N pipelines on one inference worker batching across streams (max wait {self.max_wait_ms:g} ms), overlay drawn, "
            "frames discarded (no encoder). N processes: N `streamer run SRC --realtime --headless` started together; "
            "processes of M: N/M `streamer run SRC x M --realtime --headless` (each batching its M streams, FFmpeg threads the cores / N).",
            "",
        ]
        if self.switch_interval_ms is not None or self.decode_threads:
            lines += [
                f"One process: Python's thread switch interval {self.switch_interval_ms:g} ms; "
                f"FFmpeg threads per decoder: {self.decode_threads or 'OpenCV default'}.",
                "",
            ]
        for case in self.cases:
            one = case.largest_realtime("one process")
            others = list(dict.fromkeys(p.mode for p in case.points if p.mode != "one process"))
            largest = "".join(f", {mode} **{_or_none(case.largest_realtime(mode))}**" for mode in others)
            lines += [
                f"### {case.model} ({case.weights} weights), {case.backend} {case.precision} {case.device}",
                "",
                f"Largest real-time N: one process **{_or_none(one)}**{largest}",
                "",
                "| mode | N | ok | FPS per stream min / mean | dropped | p50 / p99 ms | mean batch | worker busy | decode / preprocess / render ms | real-time | notes |",
                "|---|---|---|---|---|---|---|---|---|---|---|",
            ]
            for p in case.points:
                fps = f"{_f(p.fps_min)} / {_f(p.fps_mean)}"
                lat = f"{_f(p.p50_ms)} / {_f(p.p99_ms)}"
                notes = "; ".join(p.failed[:3]) + (f" (+{len(p.failed) - 3} more)" if len(p.failed) > 3 else "")
                if p.ready_spread_s is not None:
                    notes = (notes + "; " if notes else "") + f"models ready over {p.ready_spread_s:.1f} s"
                busy = f"{p.worker_busy:.0%}" if p.worker_busy is not None else "--"
                stages = " / ".join(f"{p.stage_ms[k]:.2f}" if k in p.stage_ms else "--" for k in ("decode", "preprocess", "render"))
                lines.append(
                    f"| {p.mode} | {p.streams} | {p.ok_streams} | {fps} | {p.dropped} | {lat} | {_f(p.mean_batch)} | {busy} | "
                    f"{stages if p.stage_ms else '--'} | {'yes' if p.realtime else 'no'} | {notes} |"
                )
            lines.append("")
            cpu = [p for p in case.points if p.cpu_cores]
            if cpu:
                roles = sorted({r for p in cpu for r in p.cpu_cores}, key=lambda r: -max(p.cpu_cores.get(r, 0.0) for p in cpu))
                lines += [
                    "Where the CPU went in one process (cores busy, i.e. CPU seconds per second, by thread role; "
                    "GIL wait: how late a 1 ms sleep woke):",
                    "",
                    "| N | " + " | ".join(roles) + " | total | GIL wait p50 / p99 ms |",
                    "|---|" + "---|" * (len(roles) + 2),
                ]
                for p in cpu:
                    gil = f"{p.gil_wait_ms[0]:.2f} / {p.gil_wait_ms[1]:.2f}" if p.gil_wait_ms else "--"
                    cells = " | ".join(f"{p.cpu_cores[r]:.2f}" if r in p.cpu_cores else "--" for r in roles)
                    lines.append(f"| {p.streams} | {cells} | {sum(p.cpu_cores.values()):.2f} | {gil} |")
                lines.append("")
        return "\n".join(lines)


def _f(value: float | None) -> str:
    return "--" if value is None else f"{value:.1f}"


# -- the media -----------------------------------------------------------------------------------------
def probe(path: Path) -> tuple[int, int, float, int]:
    """(width, height, fps, frames) of a video file, by decoding it (the container's count is a hint)."""
    import cv2

    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise SourceError(f"{path}: cannot open as a video")
    try:
        fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        frames = 0
        width = height = 0
        while True:
            ok, image = cap.read()
            if not ok:
                break
            height, width = image.shape[:2]
            frames += 1
    finally:
        cap.release()
    if not frames or fps <= 0:
        raise SourceError(f"{path}: no frames, or no frame rate, in this video")
    return width, height, fps, frames


def loop_video(source: Path, target: Path, times: int) -> None:
    """``source``'s video stream ``times`` times over, remuxed into ``target`` (no re-encoding)."""
    import av

    with av.open(str(source)) as inp, av.open(str(target), "w") as out:
        ist = inp.streams.video[0]
        ost = out.add_stream_from_template(ist)
        offset = 0
        for _ in range(times):
            inp.seek(0)
            end = offset
            for packet in inp.demux(ist):
                if packet.dts is None or packet.pts is None:
                    continue
                packet.pts += offset
                packet.dts += offset
                end = max(end, packet.pts + (packet.duration or 0))
                packet.stream = ost
                out.mux(packet)
            offset = end


# -- one process -------------------------------------------------------------------------------------------
def run_one_process(path: Path, n: int, worker: Any, frames: int, source_fps: float) -> StreamsPoint:
    """N live replays of ``path`` through N pipelines on ``worker`` (loaded, shared)."""
    from streamer.multi import MultiRun, Stream, decode_threads_for, switch_interval_s
    from streamer.overlay import LabelAnnotator, StatsAnnotator, StreamNameAnnotator
    from streamer.pipeline import Pipeline, PipelineConfig
    from streamer.sinks import NullSink
    from streamer.sources import SourceOptions, open_source

    from streamer.bench.threads import ThreadSampler

    config = PipelineConfig(batch=1, topk=1, max_frames=frames)
    streams = []
    try:
        for i in range(n):
            name = f"stream{i}"
            stream = Stream(name, str(path))
            stream.source = open_source(str(path), SourceOptions(realtime=True, decode_threads=decode_threads_for(n)))
            stream.pipeline = Pipeline(
                stream.source, NullSink(), worker, config,
                annotators=[StreamNameAnnotator(name), LabelAnnotator(1), StatsAnnotator()],
            )  # fmt: skip
            streams.append(stream)
    except BaseException:
        for s in streams:
            if s.source is not None:
                s.source.close()
        raise
    before = _busy_s(worker)
    with ThreadSampler() as sampler:
        result = MultiRun(streams, worker, close_worker=False, switch_interval_s=switch_interval_s()).run()
    use = sampler.result
    busy = (_busy_s(worker) - before) / result.elapsed_s if result.elapsed_s > 0 else None
    stage_ms: dict[str, float] = {}
    for stage in ("decode", "preprocess", "inference", "render"):
        means = [s.summary.stages[stage]["mean_ms"] for s in streams if s.summary is not None and stage in s.summary.stages]
        if means:
            stage_ms[stage] = round(sum(means) / len(means), 3)
    rows = []
    for s in result.streams:
        summ = s.summary
        lat = summ.latency if summ is not None else None
        rows.append(
            {
                "name": s.name,
                "error": s.error,
                "out": summ.frames_out if summ else 0,
                "dropped": summ.dropped if summ else 0,
                "fps": summ.pipeline_fps if summ else None,
                "p50": lat.p50_ms if lat else None,
                "p99": lat.p99_ms if lat else None,
            }
        )
    point = _point("one process", n, rows, source_fps, mean_batch=result.mean_batch, worker_busy=busy, stage_ms=stage_ms)
    if use is None:
        return point
    gil = (use.gil_wait_p50_ms, use.gil_wait_p99_ms) if use.gil_wait_p50_ms is not None and use.gil_wait_p99_ms is not None else None
    return replace(point, cpu_cores=dict(use.cores), gil_wait_ms=gil)


def _busy_s(worker: Any) -> float:
    """Seconds the worker has spent in batches (preprocess, network, top-k), over its life."""
    return sum(float(h.mean or 0.0) * h.count for h in worker.times.snapshot().values())


def _point(
    mode: str, n: int, rows: list[dict[str, Any]], source_fps: float, mean_batch: float | None = None,
    ready_spread_s: float | None = None, worker_busy: float | None = None, stage_ms: dict[str, float] | None = None,
) -> StreamsPoint:  # fmt: skip
    interval_ms = 1000.0 / source_fps
    ok = [r for r in rows if not r["error"]]
    fps = [r["fps"] for r in ok if r["fps"] is not None]
    p99 = [r["p99"] for r in ok if r["p99"] is not None]
    p50 = [r["p50"] for r in ok if r["p50"] is not None]
    dropped = sum(int(r["dropped"]) for r in rows)
    notes = [f"{r['name']}: {r['error']}" for r in rows if r["error"]]
    worst_p99 = max(p99) if p99 else None
    slowest = min(fps) if len(fps) == len(ok) and fps else None
    if dropped:
        notes.append(f"{dropped} frames dropped")
    if worst_p99 is not None and worst_p99 > 2 * interval_ms:
        notes.append(f"p99 {worst_p99:.0f} ms > {2 * interval_ms:.0f} ms")
    if slowest is not None and slowest < REALTIME_FPS_SHARE * source_fps:
        notes.append(f"slowest stream {slowest:.1f} FPS < {REALTIME_FPS_SHARE * source_fps:.1f}")
    realtime = len(ok) == n and slowest is not None and worst_p99 is not None and not notes
    return StreamsPoint(
        mode=mode, streams=n, ok_streams=len(ok), frames_out=sum(int(r["out"]) for r in rows), dropped=dropped,
        fps_min=slowest, fps_mean=sum(fps) / len(fps) if fps else None, p99_ms=worst_p99,
        p50_ms=sorted(p50)[len(p50) // 2] if p50 else None, mean_batch=mean_batch, ready_spread_s=ready_spread_s,
        worker_busy=worker_busy, stage_ms=dict(stage_ms or {}), realtime=realtime, failed=notes,
    )  # fmt: skip


# -- N processes -------------------------------------------------------------------------------------------
_ROW = re.compile(r"^\s*[│|]?\s*(?P<what>[^│|]+?)\s*[│|]\s*(?P<value>[^│|]+?)\s*[│|]?\s*$")


def parse_summary(text: str) -> dict[str, str]:
    """The rows of ``streamer run``'s summary table (``what`` -> ``value``)."""
    rows: dict[str, str] = {}
    for line in text.splitlines():
        match = _ROW.match(line)
        if match:
            rows[match.group("what").strip()] = match.group("value").strip()
    return rows


def process_mode(per_process: int) -> str:
    """The report's name for N streams run as separate processes of ``per_process`` streams each."""
    return "N processes" if per_process <= 1 else f"processes of {per_process}"


def parse_stream_rows(text: str) -> dict[str, dict[str, Any]]:
    """The per-stream rows of a several-source ``streamer run``'s summary: name -> frames in / out /
    dropped and FPS (None where it printed none)."""
    rows: dict[str, dict[str, Any]] = {}
    for line in text.splitlines():
        cells = [c.strip() for c in re.split(r"[│|]", line)]
        cells = [c for c in cells[1:-1]] if len(cells) >= 7 else []
        if len(cells) != 5 or cells[0] in ("stream", "total"):
            continue
        counts = re.fullmatch(r"(\d+) / (\d+) / (\d+)", cells[1])
        if counts is None:
            continue
        fps = float(cells[2]) if re.fullmatch(r"[\d.]+", cells[2]) else None
        rows[cells[0]] = {"in": int(counts[1]), "out": int(counts[2]), "dropped": int(counts[3]), "fps": fps, "status": cells[4]}
    return rows


def _latencies(path: Path) -> list[float]:
    with open(path, encoding="utf-8") as fh:
        return sorted(float(json.loads(line)["latency_ms"]) for line in fh if line.strip())


def _percentiles(latencies: list[float]) -> tuple[float | None, float | None]:
    if not latencies:
        return None, None
    return latencies[len(latencies) // 2], latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))]


def _run_all(cmds: list[list[str]], outputs: list[Path], columns: int) -> list[tuple[str, str | None]]:
    """Start every command together (stdout and stderr into its file), wait for all within
    ``PROCESS_TIMEOUT_S`` (killing the late), and return each one's output and, when it failed, a
    one-line error (its exit status and last line)."""
    env = dict(os.environ, COLUMNS=str(columns), PYTHONUNBUFFERED="1")
    procs = []
    for cmd, path in zip(cmds, outputs):
        out = open(path, "w+", encoding="utf-8")  # noqa: SIM115 - closed below
        procs.append((subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env), out))
    results = []
    deadline = time.monotonic() + PROCESS_TIMEOUT_S
    for proc, out in procs:
        try:
            proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        out.seek(0)
        text = out.read()
        out.close()
        error = None
        if proc.returncode != 0:
            last = [line for line in text.splitlines() if line.strip()]
            error = f"exit {proc.returncode}: {last[-1][:120] if last else ''}"
        results.append((text, error))
    return results


def run_process_groups(
    path: Path, n: int, per_process: int, case: dict[str, str], frames: int, source_fps: float, workdir: Path
) -> StreamsPoint:
    """N streams as ceil(N / M) ``streamer run PATH x M --realtime --headless`` processes, started together
    (each with its model, batching its M streams); FFmpeg's threads per decoder are the cores / N, as
    in one process.  Figures from each process's summary table and per-stream predictions."""
    from streamer.multi import decode_threads_for

    sizes = [min(per_process, n - start) for start in range(0, n, per_process)]
    threads = decode_threads_for(n) or 1
    folders = [workdir / f"g{n}-{per_process}-{i}" for i in range(len(sizes))]
    cmds = [
        [
            sys.executable, "-m", "streamer", "run", *([str(path)] * m), "--realtime", "--headless", "--no-progress",
            "--max-frames", str(frames), "--predictions", f"{predictions}/", "--overwrite", "--decode-threads", str(threads),
            "-m", case["model"], "--weights", case["weights"], "-b", case["backend"], "-p", case["precision"], "-d", case["device"],
        ]  # fmt: skip
        for m, predictions in zip(sizes, folders)
    ]
    rows: list[dict[str, Any]] = []
    results = _run_all(cmds, [folder.with_suffix(".out") for folder in folders], columns=240)
    for i, ((text, failure), predictions, m) in enumerate(zip(results, folders, sizes)):
        table = parse_stream_rows(text)
        if len(table) != m and failure is None:
            failure = f"{len(table)} of {m} streams in its summary"
        for name in sorted(table) or [f"process{i}"]:
            row = table.get(name, {})
            error = failure
            if error is None and row and row["status"] != "ok":
                error = f"status {row['status']}"
            try:
                p50, p99 = _percentiles(_latencies(predictions / f"{name}.jsonl"))
            except (OSError, ValueError, KeyError):
                p50 = p99 = None
                error = error or "no predictions file"
            rows.append(
                {"name": f"process{i}/{name}", "error": error, "out": row.get("out", 0), "dropped": row.get("dropped", 0),
                 "fps": row.get("fps"), "p50": p50, "p99": p99}
            )  # fmt: skip
    return _point(process_mode(per_process), n, rows, source_fps)


def run_processes(path: Path, n: int, case: dict[str, str], frames: int, source_fps: float, workdir: Path) -> StreamsPoint:
    """N ``streamer run PATH --realtime --headless`` processes, started together; figures from each one's summary."""
    files = [workdir / f"p{n}-{i}.jsonl" for i in range(n)]
    cmds = [
        [
            sys.executable, "-m", "streamer", "run", str(path), "--realtime", "--headless", "--no-progress",
            "--max-frames", str(frames), "--predictions", str(predictions), "--overwrite",
            "-m", case["model"], "--weights", case["weights"], "-b", case["backend"], "-p", case["precision"], "-d", case["device"],
        ]  # fmt: skip
        for predictions in files
    ]
    rows = []
    readies = []
    results = _run_all(cmds, [predictions.with_suffix(".out") for predictions in files], columns=200)
    for i, ((text, error), predictions) in enumerate(zip(results, files)):
        table = parse_summary(text)
        latencies = []
        try:
            latencies = _latencies(predictions)
        except (OSError, ValueError, KeyError):
            if error is None:
                error = "no predictions file"
        p50, p99 = _percentiles(latencies)
        counts = table.get("frames in / out / dropped", "")
        parts = [int(x) for x in re.findall(r"\d+", counts)][:3]
        fps_text = table.get("pipeline FPS (from first frame out)", "")
        ready = re.findall(r"[\d.]+", table.get("start to model ready", ""))
        if ready:
            readies.append(float(ready[0]))
        rows.append(
            {
                "name": f"process{i}",
                "error": error,
                "out": parts[1] if len(parts) == 3 else len(latencies),
                "dropped": parts[2] if len(parts) == 3 else 0,
                "fps": float(fps_text) if re.fullmatch(r"[\d.]+", fps_text) else None,
                "p50": p50,
                "p99": p99,
            }
        )
    spread = max(readies) - min(readies) if len(readies) >= 2 else None
    return _point("N processes", n, rows, source_fps, ready_spread_s=spread)


# -- the command -------------------------------------------------------------------------------------------
def parse_counts(text: str, flag: str) -> list[int]:
    values = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        if not part.isdigit() or int(part) < 0:
            raise ConfigError(f"{flag}: expected stream counts like 1,8,16, got {text!r}")
        values.append(int(part))
    return sorted({v for v in values if v > 0})


def cmd_bench_streams(args: "argparse.Namespace") -> int:
    """``streamer bench --streams LIST``: writes ``streams.json`` and ``report.md`` (a "Several streams" section) to ``--report``."""
    from engines.backends import create_backend
    from engines.backends.base import resolve_device_name
    from engines.models import WeightsChoice, get_spec, imagenet_weights_available
    from streamer.bench.cli import DEFAULT_SOURCE
    from streamer.bench.config import split_list
    from streamer.bench.environment import collect
    from streamer.cli import backend_options_from_args
    from streamer.inference import InferenceWorker, freeze_heap
    from streamer.multi import decode_threads_for, switch_interval_s

    counts = parse_counts(args.streams, "--streams")
    if not counts:
        raise ConfigError("--streams: give at least one stream count, e.g. --streams 1,8,16")
    process_counts = counts if args.stream_processes is None else parse_counts(args.stream_processes, "--stream-processes")
    source = Path(args.source).expanduser() if args.source else DEFAULT_SOURCE
    if not source.is_file():
        raise SourceError(f"{source}: no such video file (bench --streams replays a video file)")
    report_dir: Path = args.report.expanduser()
    if (report_dir / "streams.json").exists() and not args.overwrite:
        raise ConfigError(f"{report_dir}/streams.json exists; pass --overwrite to replace it")
    width, height, fps, total = probe(source)
    frames = args.max_frames or total
    from engines.backends import BACKEND_NAMES

    models = split_list(args.model or "efficientnet_lite0", "--model")
    # bench's defaults (every backend, fp32 and fp16) are for the per-case bench; here one of each unless given
    backends = split_list("torch" if args.backends == ",".join(BACKEND_NAMES) else args.backends, "--backends")
    precisions = split_list("fp32" if args.precision == "fp32,fp16" else args.precision, "--precision")
    device = resolve_device_name(split_list(args.device, "--device")[0])
    report_dir.mkdir(parents=True, exist_ok=True)
    cases: list[StreamsCase] = []
    command = ["streamer", "bench", str(args.source or source), "--streams", ",".join(map(str, counts))]
    if args.stream_processes is not None:
        command += ["--stream-processes", args.stream_processes]
    command += ["--model", ",".join(models), "--weights", args.weights, "--backends", ",".join(backends), "--precision", ",".join(precisions), "--device", device]
    if args.max_frames:
        command += ["--max-frames", str(args.max_frames)]
    if args.max_wait_ms:
        command += ["--max-wait-ms", f"{args.max_wait_ms:g}"]
    if args.streams_per_process > 1:
        command += ["--streams-per-process", str(args.streams_per_process)]
    command += ["--report", str(args.report)]
    environment = collect(device)

    def write_report(partial: StreamsCase | None = None) -> None:
        """Both files, after every measurement: a run cut short keeps what it measured."""
        report = StreamsReport(
            source=source.name, width=width, height=height, source_fps=fps, frames_per_stream=frames, max_wait_ms=args.max_wait_ms,
            command=shlex.join(command), environment=environment, cases=cases + ([partial] if partial is not None else []),
            switch_interval_ms=round((switch_interval_s() or sys.getswitchinterval()) * 1000.0, 3),
            decode_threads="the cores / N (" + ", ".join(f"N={n}: {decode_threads_for(n) or 'default'}" for n in counts) + ")",
        )  # fmt: skip
        (report_dir / "streams.json").write_text(json.dumps(report.to_json(), indent=2) + "\n", encoding="utf-8")
        (report_dir / "report.md").write_text(f"# streamer bench --streams\n\n{report.markdown()}\n", encoding="utf-8")

    with tempfile.TemporaryDirectory(prefix="streamer-streams-") as tmp:
        workdir = Path(tmp)
        clip = source
        if frames > total:
            clip = workdir / f"looped{source.suffix or '.mp4'}"
            loop_video(source, clip, -(-frames // total))
        for model in models:
            spec = get_spec(model)
            weights_text = args.weights
            if weights_text == "auto":
                weights_text = "imagenet" if imagenet_weights_available(spec) else "random"
            weights = WeightsChoice.parse(weights_text)
            for backend in backends:
                for precision in precisions:
                    max_batch = min(64, max(counts))
                    options = replace(backend_options_from_args(args, precision=precision, batch=max_batch), device=device)
                    worker = InferenceWorker(
                        functools.partial(create_backend, backend, spec, weights, options), 1,
                        max_batch=max_batch, max_wait_s=args.max_wait_ms / 1000.0,
                    )  # fmt: skip
                    points: list[StreamsPoint] = []
                    try:
                        info = worker.wait_loaded(timeout=600)
                        _progress(args, f"{model} {backend} {precision} {device}: {info.description}")
                        _warm_up(worker, width, height, max_batch)
                        freeze_heap()  # as streamer run does once its model is loaded
                        for n in counts:
                            point = run_one_process(clip, n, worker, frames, fps)
                            points.append(point)
                            _progress(args, _line(point))
                            write_report(StreamsCase(model, weights_text, backend, precision, device, info.description, points))
                    finally:
                        worker.close(timeout=5.0)
                    choice = {"model": model, "weights": weights_text, "backend": backend, "precision": precision, "device": device}
                    for n in process_counts:
                        if args.streams_per_process > 1:
                            point = run_process_groups(clip, n, args.streams_per_process, choice, frames, fps, workdir)
                        else:
                            point = run_processes(clip, n, choice, frames, fps, workdir)
                        points.append(point)
                        _progress(args, _line(point))
                        write_report(StreamsCase(model, weights_text, backend, precision, device, info.description, points))
                    cases.append(StreamsCase(model, weights_text, backend, precision, device, info.description, points))
                    write_report()
    print(f"streamer: several-streams report in {report_dir}/report.md")
    for case in cases:
        many_mode = process_mode(args.streams_per_process)
        one, many = case.largest_realtime("one process"), case.largest_realtime(many_mode)
        print(f"  {case.model} {case.backend} {case.precision} {case.device}: largest real-time N: one process {one}, {many_mode} {many}")
    return 0


def _warm_up(worker: Any, width: int, height: int, max_batch: int) -> None:
    """One batch of every size the streams may form, before timing: a backend's first call on a new
    shape (cuDNN's choice of kernels, allocator growth) must not count as a late frame."""
    import numpy as np

    frame = np.zeros((height, width, 3), np.uint8)
    for size in range(1, max_batch + 1):
        worker.submit([frame] * size).result(timeout=600)


def _or_none(n: int | None) -> str:
    return "none" if n is None else str(n)


def _line(p: StreamsPoint) -> str:
    return (
        f"  {p.mode} N={p.streams}: ok {p.ok_streams}, FPS min {_f(p.fps_min)}, dropped {p.dropped}, "
        f"p99 {_f(p.p99_ms)} ms, batch {_f(p.mean_batch)}, worker busy {_f(None if p.worker_busy is None else 100 * p.worker_busy)} %, {'real-time' if p.realtime else 'NOT real-time: ' + '; '.join(p.failed[:2])}"
    )


def _progress(args: "argparse.Namespace", text: str) -> None:
    if not getattr(args, "no_progress", False):
        print(text, file=sys.stderr, flush=True)


def add_streams_arguments(parser: "argparse.ArgumentParser") -> None:
    from streamer.cli import _positive_int
    from streamer.multi import _non_negative_float

    parser.add_argument("--streams", default=None, metavar="N[,N2,...]", help="measure N live replays of SOURCE in one process (and in N processes): the largest N that stays real-time; writes streams.json and report.md")
    parser.add_argument("--stream-processes", default=None, metavar="N[,N2,...]", help="with --streams: the N to run as N separate streamer run processes (default: the --streams list; 0: none)")
    parser.add_argument("--streams-per-process", type=_positive_int, default=1, metavar="M", help="with --streams: run the --stream-processes counts as processes of M streams each (each its own model, batching its M; default 1: one stream a process)")
    parser.add_argument("--max-wait-ms", type=_non_negative_float, default=0.0, metavar="MS", help="with --streams: how long a batch waits for other streams' frames (default: 0)")


__all__ = ["StreamsCase", "StreamsPoint", "StreamsReport", "add_streams_arguments", "cmd_bench_streams", "loop_video", "parse_summary", "probe"]
