"""Network-only latency of one model under several execution variants (GPU).

Times each variant with CUDA events around single forward passes (batch 1 by
default), after warm-up, two ways: back to back (``p50_ms``: the GPU's own time,
the CPU runs ahead) and synchronised after every call (``synced_p50_ms``: what
``streamer bench`` measures, launch latency included).  Checks each variant's
top-1 and cosine similarity against eager fp32 on real photographs (and frames
of ``--frames`` videos).  ``--backend-timing`` also times the real
:class:`TorchBackend` the way the bench does (``streamer.bench.latency.time_network``
over a video's preprocessed frames).  Writes JSON to --out.

Variants: ``eager-fp32``, ``eager-fp16``, ``graph-fp32``, ``graph-fp16``, ``graph-fp16-cl``,
``compile[cd]-fp16[-cl]-graph`` (torch.compile max-autotune), ``compiledefault-fp16-cl-graph``
(torch.compile default mode), and for AlexNet ``fused-fp16`` / ``fused-fp32`` with optional
knobs after a colon, joined by ``+`` (engines/backends/fused_alexnet.py FusedKnobs), e.g.
``fused-fp16:fc=cublas+act=cudnn``.

    python tools/perf_network.py --model alexnet --weights random --variants graph-fp16,fused-fp16 \\
        --profile graph-fp16,fused-fp16 --backend-timing cuda_graphs,fused --out net.json
"""

from __future__ import annotations

import argparse
import copy
import glob
import json
import statistics
import time
from pathlib import Path
from typing import Any, Callable

import cv2
import numpy as np
import torch

from engines.models import WeightsChoice, build_model, get_spec
from engines.preprocess import preprocess

DEVICE = "cuda"
"""``--device``: cuda, or cpu for a dry run of the script (eager and fused-with-PyTorch-knobs variants, wall-clock timing)."""
HBM_BYTES_PER_S = 4.8e12
"""The H200's HBM3e bandwidth (NVIDIA's figure), for the weight-traffic floor."""


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(round(q / 100.0 * (len(ordered) - 1)))))]


def time_fn(fn: Callable[[], object], runs: int, warmup: int) -> list[float]:
    """Back to back: the CPU queues every call, so this is the GPU's time per call."""
    for _ in range(warmup):
        fn()
    if DEVICE == "cpu":
        return time_synced(fn, runs)
    torch.cuda.synchronize()
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(runs)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(runs)]
    for i in range(runs):
        starts[i].record()
        fn()
        ends[i].record()
    torch.cuda.synchronize()
    return [s.elapsed_time(e) for s, e in zip(starts, ends)]


def time_synced(fn: Callable[[], object], runs: int) -> list[float]:
    """One call at a time, synchronised before and after (as streamer.bench.latency.CallTimer does)."""
    out = []
    if DEVICE == "cpu":
        for _ in range(runs):
            t0 = time.perf_counter()
            fn()
            out.append((time.perf_counter() - t0) * 1000.0)
        return out
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    for _ in range(runs):
        torch.cuda.synchronize()
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        out.append(float(start.elapsed_time(end)))
    return out


def kernel_profile(fn: Callable[[], object], runs: int = 50) -> list[dict[str, object]]:
    """GPU kernels of ``fn`` (one forward pass) with their mean time per pass, slowest first."""
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(runs):
            fn()
        torch.cuda.synchronize()
    rows = []
    for evt in prof.key_averages():
        total = float(getattr(evt, "device_time_total", None) or getattr(evt, "cuda_time_total", 0) or 0)
        if total <= 0 or evt.key.startswith(("cudaGraphLaunch", "cudaLaunch", "Memset")):
            continue
        rows.append({"name": evt.key, "us_per_call": total / runs, "calls_per_run": max(1, round(evt.count / runs))})
    rows.sort(key=lambda r: -float(r["us_per_call"]))
    return rows


def graphed(module: torch.nn.Module, example: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    static_in = example.clone()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream), torch.inference_mode():
        for _ in range(3):
            module(static_in)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph), torch.inference_mode():
        static_out = module(static_in)

    def run(x: torch.Tensor) -> torch.Tensor:
        static_in.copy_(x)
        graph.replay()
        return static_out

    return run


def real_images(pattern: str, frames: list[str]) -> list[np.ndarray]:
    """The photographs of ``pattern``, then up to N evenly spaced frames of each ``VIDEO:N``."""
    images = [image for p in sorted(glob.glob(pattern)) if (image := cv2.imread(p)) is not None]
    for item in frames:
        path, _, count_text = item.rpartition(":")
        count = int(count_text)
        cap = cv2.VideoCapture(path)
        total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) or count
        wanted = {int(i * total / count) for i in range(count)}
        index = 0
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            if index in wanted:
                images.append(frame)
            index += 1
        cap.release()
    return images


def build_variant(variant: str, base: torch.nn.Module, x32: torch.Tensor, args: argparse.Namespace) -> tuple[Callable[[torch.Tensor], torch.Tensor], bool, torch.dtype]:
    """(run, channels_last, dtype) for one variant; run takes an input of the variant's dtype."""
    name, _, knob_text = variant.partition(":")
    fp16 = "fp16" in name
    dtype = torch.float16 if fp16 else torch.float32
    cl = "-cl" in name
    if name.startswith("fused"):
        from engines.backends.fused_alexnet import FusedAlexNet, FusedKnobs

        knobs = FusedKnobs.parse(knob_text.replace("+", ","))
        fused = FusedAlexNet(base, DEVICE, dtype, args.batch, knobs, graph=DEVICE != "cpu")
        return fused.infer, False, dtype
    module = copy.deepcopy(base).to(DEVICE).eval()
    if fp16:
        module = module.half()
    if cl:
        module = module.to(memory_format=torch.channels_last)
    if name.startswith("compile"):
        import torch._inductor.config as inductor_config

        inductor_config.coordinate_descent_tuning = name.startswith("compilecd")
        mode = "default" if name.startswith("compiledefault") else "max-autotune-no-cudagraphs"
        module = torch.compile(module, mode=mode, fullgraph=True)  # type: ignore[assignment]
    x = x32.to(dtype)
    if cl:
        x = x.contiguous(memory_format=torch.channels_last)
    if name.startswith(("graph", "compile")):
        with torch.inference_mode():
            for _ in range(3):
                module(x)
        return graphed(module, x), cl, dtype

    def run(inp: torch.Tensor, m: torch.nn.Module = module) -> torch.Tensor:
        with torch.inference_mode():
            out: torch.Tensor = m(inp)
        return out

    return run, cl, dtype


def backend_timing(args: argparse.Namespace, variant: str) -> dict[str, Any]:
    """The real TorchBackend, timed as `streamer bench` times it (one synchronised infer() per call)."""
    from engines.backends.base import BackendOptions
    from engines.backends.torch_backend import TorchBackend
    from streamer.bench.latency import source_batches, time_network

    fields = {"cuda_graphs": {"cuda_graphs": True}, "fused": {"fused": True}, "eager": {}}[variant]
    precision = "fp32" if DEVICE == "cpu" else "fp16"
    options = BackendOptions.for_batch(args.batch, device=DEVICE, precision=precision, **fields)
    backend = TorchBackend(get_spec(args.model), WeightsChoice.parse(args.weights), options)
    t0 = time.perf_counter()
    backend.load()
    load_s = time.perf_counter() - t0
    try:
        batches = source_batches(backend, args.source, args.batch, max_frames=args.source_frames)
        figures = time_network(backend, batches, repeats=args.source_repeats, warmup=10)
    finally:
        backend.close()
    samples = figures.samples
    return {
        "variant": variant,
        "precision": precision,
        "source": args.source,
        "calls": len(samples),
        "load_s": load_s,
        "p50_ms": statistics.median(samples),
        "p99_ms": percentile(samples, 99),
        "wall_p50_ms": figures.latency_wall_ms.get("p50"),
        "timer": figures.timer,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="alexnet")
    ap.add_argument("--weights", default="random")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--variants", default="eager-fp32,eager-fp16,graph-fp32,graph-fp16,graph-fp16-cl,fused-fp16")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--cudnn-benchmark", action="store_true", help="torch.backends.cudnn.benchmark = True (autotune each conv shape)")
    ap.add_argument("--profile", default="", help="comma-separated variants whose kernels are listed (torch.profiler, 50 replays)")
    ap.add_argument("--images", default="samples/images/*.jpg", help="photographs for the accuracy check (glob)")
    ap.add_argument("--frames", action="append", default=[], metavar="VIDEO:N", help="add N evenly spaced frames of VIDEO to the accuracy check")
    ap.add_argument("--backend-timing", default="", help="comma-separated: eager, cuda_graphs, fused: time TorchBackend fp16 as the bench does")
    ap.add_argument("--source", default="samples/video/bigbuckbunny.mp4", help="video for --backend-timing")
    ap.add_argument("--source-frames", type=int, default=100)
    ap.add_argument("--source-repeats", type=int, default=5)
    ap.add_argument("--device", default="cuda", choices=("cuda", "cpu"), help="cpu: a dry run of this script")
    args = ap.parse_args()
    global DEVICE
    DEVICE = args.device
    torch.backends.cudnn.benchmark = args.cudnn_benchmark

    spec = get_spec(args.model)
    t0 = time.perf_counter()
    loaded = build_model(spec, WeightsChoice.parse(args.weights))
    build_s = time.perf_counter() - t0
    base = loaded.module.eval()
    weight_bytes_fp16 = 2 * sum(p.numel() for p in base.parameters())
    images = real_images(args.images, args.frames)
    real = preprocess(images, spec.preprocess, DEVICE, torch.float32)
    x32 = torch.randn(args.batch, *spec.preprocess.input_shape, device=DEVICE)
    ref_model = copy.deepcopy(base).to(DEVICE).eval()
    with torch.inference_mode():
        ref = torch.cat([ref_model(real[i : i + 16]) for i in range(0, real.shape[0], 16)]).float()
    ref_top1 = ref.argmax(1)
    del ref_model
    results: list[dict[str, Any]] = []
    backend_rows: list[dict[str, Any]] = []
    meta: dict[str, Any] = {
        "gpu": torch.cuda.get_device_name(0) if DEVICE != "cpu" else "cpu (dry run)",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if DEVICE != "cpu" else None,
        "model": args.model,
        "weights": args.weights,
        "model_build_s": build_s,
        "batch": args.batch,
        "runs": args.runs,
        "cudnn_benchmark": args.cudnn_benchmark,
        "weight_bytes_fp16": weight_bytes_fp16,
        "memory_floor_ms_fp16": weight_bytes_fp16 / HBM_BYTES_PER_S * 1000.0,
        "accuracy_images": {"photos": args.images, "frames": args.frames, "count": int(real.shape[0])},
        "results": results,
        "backend_timing": backend_rows,
    }

    def save() -> None:  # after every variant: a run cut short keeps what it measured
        if args.out:
            args.out.write_text(json.dumps(meta, indent=2))

    for variant in [v for v in args.variants.split(",") if v]:
        t0 = time.perf_counter()
        try:
            run, cl, dtype = build_variant(variant, base, x32, args)
            x = x32.to(dtype)
            if cl:
                x = x.contiguous(memory_format=torch.channels_last)
            setup_s = time.perf_counter() - t0
            times = time_fn(lambda: run(x), args.runs, args.warmup)
            synced = time_synced(lambda: run(x), args.runs)
        except Exception as exc:  # noqa: BLE001 - one failing variant must not lose the others
            print(f"{variant}: FAILED {type(exc).__name__}: {str(exc)[:300]}", flush=True)
            results.append({"variant": variant, "error": f"{type(exc).__name__}: {str(exc)[:1000]}"})
            save()
            continue
        # accuracy: top-1 and cosine vs eager fp32 on the real images, one batch-sized slice at a time
        agree, cosines = 0, []
        for i in range(real.shape[0]):
            xi = real[i : i + 1].to(dtype).repeat(args.batch, 1, 1, 1)
            if cl:
                xi = xi.contiguous(memory_format=torch.channels_last)
            with torch.inference_mode():
                out = run(xi)[0].float()
            agree += int(out.argmax().item() == ref_top1[i].item())
            cosines.append(float(torch.nn.functional.cosine_similarity(out, ref[i], dim=0).item()))
        row: dict[str, Any] = {
            "variant": variant,
            "p50_ms": statistics.median(times),
            "p95_ms": percentile(times, 95),
            "p99_ms": percentile(times, 99),
            "mean_ms": statistics.fmean(times),
            "synced_p50_ms": statistics.median(synced),
            "synced_p99_ms": percentile(synced, 99),
            "setup_s": setup_s,
            "top1_agreement": agree / real.shape[0],
            "images": int(real.shape[0]),
            "cosine_min": min(cosines),
            "cosine_mean": statistics.fmean(cosines),
        }
        if variant in args.profile.split(",") and DEVICE != "cpu":
            row["kernels"] = kernel_profile(lambda: run(x))
            row["kernel_us_sum"] = sum(float(k["us_per_call"]) for k in row["kernels"])
            for k in row["kernels"][:25]:
                print(f"    {k['us_per_call']:8.2f} us x{k['calls_per_run']:<3d} {str(k['name'])[:110]}", flush=True)
        results.append(row)
        save()
        print(
            f"{args.model:12s} b{args.batch} {variant:36s} p50 {row['p50_ms']:.4f} ms  p99 {row['p99_ms']:.4f}  "
            f"synced p50 {row['synced_p50_ms']:.4f} p99 {row['synced_p99_ms']:.4f}  top1 {agree}/{real.shape[0]}  "
            f"cos min {row['cosine_min']:.5f}  setup {setup_s:.1f}s",
            flush=True,
        )
        del run
        if DEVICE != "cpu":
            torch.cuda.empty_cache()
    for variant in [v for v in args.backend_timing.split(",") if v]:
        try:
            brow = backend_timing(args, variant)
        except Exception as exc:  # noqa: BLE001
            brow = {"variant": variant, "error": f"{type(exc).__name__}: {str(exc)[:1000]}"}
        print(f"backend {variant}: {brow}", flush=True)
        backend_rows.append(brow)
        save()
    save()


if __name__ == "__main__":
    main()
