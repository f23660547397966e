"""File throughput of the whole pipeline against decode-only and encode-only FPS.

Makes a longer 720p clip by looping the bundled sample, then measures in one
process: decode-only FPS, encode-only FPS (mp4v), and the full pipeline
(decode -> preprocess -> infer -> overlay -> encode) for each configuration.

    python tools/perf_pipeline.py --loops 5 --configs "torch:fp16:1,torch:fp16:8" --device cuda
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import cv2

from engines.backends import create_backend
from engines.backends.base import BackendOptions
from engines.models import WeightsChoice, get_spec
from streamer.pipeline import Pipeline, PipelineConfig
from streamer.sinks import NullSink, VideoFileSink
from streamer.sources import SourceOptions, open_source


def make_clip(src: Path, dst: Path, loops: int) -> int:
    frames = []
    cap = cv2.VideoCapture(str(src))
    while True:
        ok, f = cap.read()
        if not ok:
            break
        frames.append(f)
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(dst), cv2.CAP_FFMPEG, cv2.VideoWriter_fourcc(*"mp4v"), 25.0, (w, h))
    for _ in range(loops):
        for f in frames:
            writer.write(f)
    writer.release()
    return len(frames) * loops


def decode_fps(path: Path) -> tuple[float, list]:
    cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    frames = []
    t0 = time.perf_counter()
    while True:
        ok, f = cap.read()
        if not ok:
            break
        frames.append(f)
    return len(frames) / (time.perf_counter() - t0), frames


def encode_fps(frames: list, out: Path) -> float:
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(out), cv2.CAP_FFMPEG, cv2.VideoWriter_fourcc(*"mp4v"), 25.0, (w, h))
    t0 = time.perf_counter()
    for f in frames:
        writer.write(f)
    writer.release()
    return len(frames) / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--source", type=Path, default=Path("samples/video/bigbuckbunny.mp4"))
    ap.add_argument("--loops", type=int, default=5)
    ap.add_argument("--model", default="alexnet")
    ap.add_argument("--weights", default="random")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--configs", default="torch:fp16:1,torch:fp16:8")
    ap.add_argument("--null-sink", action="store_true")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--switch-interval", type=float, default=None, help="sys.setswitchinterval (seconds) for the pipeline runs")
    args = ap.parse_args()
    if args.switch_interval is not None:
        import sys

        sys.setswitchinterval(args.switch_interval)
    tmp = Path(tempfile.mkdtemp())
    clip = tmp / "clip.mp4"
    n = make_clip(args.source, clip, args.loops)
    dec, frames = decode_fps(clip)
    enc = encode_fps(frames, tmp / "enc.mp4")
    del frames
    print(f"clip {n} frames 720p: decode-only {dec:.1f} FPS, encode-only {enc:.1f} FPS", flush=True)
    spec = get_spec(args.model)
    rows = []
    for cfg in args.configs.split(","):
        backend_name, precision, batch_text, *flags = cfg.split(":")
        batch = int(batch_text)
        options = BackendOptions(device=args.device, precision=precision, batch=batch, dynamic_batch=batch > 1, cuda_graphs="graph" in flags)  # type: ignore[arg-type]
        weights = WeightsChoice.parse(args.weights)
        source = open_source(str(clip), SourceOptions())
        out = tmp / f"out-{cfg.replace(':', '_')}.mp4"
        sink = NullSink() if args.null_sink else VideoFileSink(out, overwrite=True)
        t0 = time.perf_counter()
        recipe = lambda n=backend_name, o=options: create_backend(n, spec, weights, o)  # noqa: E731
        summary = Pipeline(source, sink, recipe, PipelineConfig(batch=batch, queue_size=max(8, 2 * batch))).run()
        wall = time.perf_counter() - t0
        steady = summary.pipeline_fps or 0.0
        row = {
            "config": cfg,
            "frames": summary.frames_out,
            "wall_fps": summary.frames_out / wall,
            "steady_fps": steady,
            "first_frame_s": summary.first_frame_s,
            "vs_min_decode_encode": steady / min(dec, enc),
            "stages_ms": {k: round(v["mean_ms"], 3) for k, v in summary.stages.items()},
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    result = {"decode_fps": dec, "encode_fps": enc, "frames": n, "rows": rows}
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
