"""File throughput against the codec ceiling, over several videos in one process (issue #15, targets 1 and 2).

    python -m streamer.bench.files VIDEO[:LOOPS] ... --model alexnet,efficientnet_lite0 --backend torch
        --device cuda --precision fp16 --batch 1,8 --repeats 3 --json OUT.json

For each video (looped LOOPS times by stream copy, so that a short clip gives a run long
enough to time: the same real frames, repeated), it measures the codec ceiling
(:func:`streamer.bench.codec.decode_encode`: decode-only with OpenCV as the pipeline's
source decodes, encode-only through the pipeline's own H.264 sink with its encoder threads)
and then the pipeline (:func:`streamer.bench.latency.run_pipeline`, the real
``make_sink`` H.264 file, as ``streamer run -o`` writes it) for every model and batch,
each on its own :class:`~streamer.inference.InferenceWorker` loaded once and reused across
videos: frames / wall time from the source opening to the output finalised, the median of
``repeats`` runs after one warm-up run.  With ``--network`` it also times the network alone
on the video's frames (:func:`streamer.bench.latency.time_network`), for the CPU target
(pipeline against inference-only FPS).  Others' CPU use during each measurement is recorded.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Video:
    path: Path
    loops: int = 1


def parse_video(text: str) -> Video:
    """``PATH`` or ``PATH:LOOPS``."""
    head, sep, tail = text.rpartition(":")
    if sep and tail.isdigit() and head:
        return Video(Path(head), max(1, int(tail)))
    return Video(Path(text), 1)


def loop_video(src: Path, dst: Path, loops: int) -> int:
    """Write ``src``'s video stream ``loops`` times one after the other into ``dst`` (no re-encoding); returns the frames."""
    import av

    frames = 0
    with av.open(str(src)) as inp, av.open(str(dst), "w") as out:
        in_stream = inp.streams.video[0]
        out_stream = out.add_stream_from_template(in_stream)
        packets = [p for p in inp.demux(in_stream) if p.size > 0 and p.pts is not None]
        if not packets:
            raise ValueError(f"{src}: no video packets")
        first = min(p.pts for p in packets)
        span = max(p.pts for p in packets) - first + max(1, int(packets[0].duration or 1))
        for k in range(loops):
            for packet in packets:
                shift = k * span - first
                packet.pts = packet.pts + shift
                if packet.dts is not None:
                    packet.dts = packet.dts + shift
                packet.stream = out_stream
                out.mux(packet)
                frames += 1
    return frames


def _weights(model: str) -> str:
    from engines.models import get_spec, imagenet_weights_available

    return "imagenet" if imagenet_weights_available(get_spec(model)) else "random"


def _worker(model: str, backend: str, device: str, precision: str, batch: int, cuda_graphs: bool, threads: int | None) -> Any:
    from engines.backends import create_backend
    from engines.backends.base import BackendOptions
    from engines.models import WeightsChoice, get_spec
    from streamer.inference import InferenceWorker

    options = BackendOptions.for_batch(batch, device=device, precision=precision, cuda_graphs=cuda_graphs, threads=threads)
    spec = get_spec(model)
    weights = WeightsChoice.parse(_weights(model))
    return InferenceWorker(lambda: create_backend(backend, spec, weights, options)).start()


def _median(values: list[float]) -> float | None:
    from statistics import median

    return float(median(values)) if values else None


def measure(args: argparse.Namespace) -> dict[str, Any]:
    from streamer.bench.codec import decode_encode
    from streamer.bench.environment import CpuUsage, collect, cpu_model
    from streamer.bench.latency import run_pipeline, source_batches, summarize_pipeline, time_network
    from streamer.sources import SourceOptions, open_source

    models = [m for m in args.model.split(",") if m]
    batches = [int(b) for b in args.batch.split(",") if b]
    work = Path(tempfile.mkdtemp(prefix="files-bench-"))
    report: dict[str, Any] = {
        "command": " ".join(sys.argv),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "cpu": cpu_model(),
        "cpus_allowed": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "environment": collect(args.device),
        "videos": [],
    }
    workers: dict[tuple[str, int], Any] = {}
    t_load = time.perf_counter()
    for model in models:
        for batch in batches:
            # One at a time: CUDA graph capture (and the ONNX export) must not run beside another load.
            workers[(model, batch)] = _worker(model, args.backend, args.device, args.precision, batch, args.cuda_graphs, args.threads)
            workers[(model, batch)].wait_loaded()
    loaded = {f"{m} b{b}": w.wait_loaded().description for (m, b), w in workers.items()}
    report["workers"] = loaded
    report["load_s"] = time.perf_counter() - t_load
    try:
        for video in [parse_video(v) for v in args.videos]:
            src = video.path
            if video.loops > 1:
                looped = work / f"{src.stem}-x{video.loops}{src.suffix}"
                loop_video(src, looped, video.loops)
                src = looped
            with open_source(str(src), SourceOptions()) as probe:
                fps_in, size, total = probe.fps, probe.frame_size, probe.total_hint
            entry: dict[str, Any] = {"video": str(video.path), "loops": video.loops, "frame_size": size, "frames": total, "fps": fps_in}
            print(f"== {video.path.name} x{video.loops}: {size} {total} frames", flush=True)
            usage = CpuUsage()
            ceiling = decode_encode(src, args.ceiling_repeats, work / "codec", one_thread_passes=args.one_thread_passes, one_thread_frames=args.one_thread_frames)
            ceiling["machine_load"] = usage.result()
            entry["ceiling"] = ceiling
            print(
                f"   ceiling {ceiling['bound_fps']:.1f} FPS ({ceiling['bound_by']}); decode {ceiling['decode_fps']['p50']:.1f}, "
                f"encode {ceiling['encode_fps']['p50']:.1f} ({ceiling['encoder_threads']} threads), "
                f"1 thread {((ceiling.get('encode_fps_1thread') or {}).get('p50') or 0):.1f}",
                flush=True,
            )
            entry["cases"] = []
            for (model, batch), worker in workers.items():
                usage = CpuUsage()
                case: dict[str, Any] = {"model": model, "batch": batch, "backend": loaded[f"{model} b{batch}"]}
                if args.network:

                    def network(backend: Any) -> Any:
                        batches_in = source_batches(backend, str(video.path), batch)
                        return time_network(backend, batches_in, args.repeats, args.warmup)

                    net = worker.call(network).result()
                    case["network_fps"] = net.throughput_fps
                    case["network_ms_per_image"] = net.per_image_ms
                common: dict[str, Any] = dict(sink_kind="video", out_dir=work, fps=fps_in, batch=batch)
                run_pipeline(str(src), worker, max_frames=max(args.warmup, batch * 4), **common)
                runs = [run_pipeline(str(src), worker, **common) for _ in range(args.repeats)]
                figures = summarize_pipeline(runs, "video")
                fps = [r.fps for r in runs if r.fps is not None]
                case["pipeline_fps_runs"] = fps
                case["pipeline_fps"] = _median(fps)
                case["frames_per_run"] = runs[0].frames_out
                case["stages_ms"] = {k: v.get("mean") for k, v in figures.stages_ms.items()}
                case["thread_ms_per_frame"] = figures.thread_ms_per_frame
                case["busiest_thread"] = figures.busiest_thread
                case["ratio_to_ceiling"] = (case["pipeline_fps"] / ceiling["bound_fps"]) if case["pipeline_fps"] else None
                if case.get("network_fps"):
                    case["ratio_to_network"] = case["pipeline_fps"] / case["network_fps"] if case["pipeline_fps"] else None
                case["machine_load"] = usage.result()
                entry["cases"].append(case)
                extra = f", network alone {case['network_fps']:.1f} FPS -> {case['ratio_to_network']:.2f}x" if case.get("network_fps") else ""
                print(
                    f"   {model} b{batch}: {case['pipeline_fps']:.1f} FPS = {case['ratio_to_ceiling']:.2f}x ceiling{extra}; "
                    f"busiest {figures.busiest_thread} {figures.busiest_thread_ms or 0:.2f} ms; "
                    f"stages {', '.join(f'{k} {v:.2f}' for k, v in case['stages_ms'].items() if isinstance(v, float))}; "
                    f"others' CPU {100 * (case['machine_load'].get('other_processes') or 0):.0f} %",
                    flush=True,
                )
            report["videos"].append(entry)
            if args.json is not None:  # after every video: a run cut short keeps what it measured
                _write(args.json, report)
    finally:
        for worker in workers.values():
            worker.close(timeout=10.0)
    return report


def markdown(report: dict[str, Any]) -> str:
    """The report's tables: one row per video and case, the pipeline beside its ceiling (and the network alone)."""
    lines = [
        "| video | ceiling FPS (bound) | decode-only | encode-only (threads) | encode, 1 thread | case | pipeline FPS | x ceiling | network-alone FPS | x network | busiest thread ms/frame | others' CPU |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for entry in report["videos"]:
        c = entry["ceiling"]
        w, h = entry["frame_size"]
        one = (c.get("encode_fps_1thread") or {}).get("p50")
        head = [
            f"{Path(entry['video']).stem} {w}x{h} ({entry['frames']} frames)",
            f"{c['bound_fps']:.0f} ({c['bound_by']})",
            f"{c['decode_fps']['p50']:.0f}",
            f"{c['encode_fps']['p50']:.0f} ({c.get('encoder_threads')})",
            f"{one:.0f}" if one else "",
        ]
        for i, case in enumerate(entry["cases"]):
            net = case.get("network_fps")
            busiest = (case.get("busiest_thread") or "").split(" (")[0]
            ms = (case.get("thread_ms_per_frame") or {}).get(case.get("busiest_thread") or "", 0.0)
            other = (case.get("machine_load") or {}).get("other_processes")
            lines.append(
                "| "
                + " | ".join(
                    (head if i == 0 else [""] * len(head))
                    + [
                        f"{case['model']} b{case['batch']}",
                        f"{case['pipeline_fps']:.0f}",
                        f"**{case['ratio_to_ceiling']:.2f}**",
                        f"{net:.0f}" if net else "",
                        f"**{case['ratio_to_network']:.2f}**" if case.get("ratio_to_network") else "",
                        f"{busiest} {ms:.2f}",
                        f"{100 * other:.0f} %" if other is not None else "",
                    ]
                )
                + " |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m streamer.bench.files", description=__doc__.split("\n\n")[0])
    p.add_argument("videos", nargs="+", help="VIDEO or VIDEO:LOOPS")
    p.add_argument("--model", default="alexnet,efficientnet_lite0")
    p.add_argument("--backend", default="torch")
    p.add_argument("--device", default="cuda")
    p.add_argument("--precision", default="fp16")
    p.add_argument("--batch", default="1,8")
    p.add_argument("--cuda-graphs", action="store_true")
    p.add_argument("--threads", type=int, default=None, help="CPU threads of a CPU backend (default: the library's)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--ceiling-repeats", type=int, default=5)
    p.add_argument("--one-thread-passes", type=int, default=2)
    p.add_argument("--one-thread-frames", type=int, default=264, help="the one-thread encode runs on at most this many frames")
    p.add_argument("--network", action="store_true", help="also time the network alone on each video (inference-only FPS)")
    p.add_argument("--json", type=Path, required=True)
    p.add_argument("--markdown", action="store_true", help="print the tables of the --json report already written; measure nothing")
    args = p.parse_args(argv)
    if args.markdown:
        print(markdown(json.loads(args.json.read_text(encoding="utf-8"))), end="")
        return 0
    _write(args.json, measure(args))
    return 0


def _write(path: Path, report: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1, default=str) + "\n", encoding="utf-8")


if __name__ == "__main__":
    raise SystemExit(main())
