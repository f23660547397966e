"""Network-only latency of one model under several execution variants (GPU).

Times each variant with CUDA events around single forward passes (batch 1 by
default), after warm-up, and reports p50/p95 over --runs; checks each variant's
top-1 against eager fp32 on the bundled photographs. Writes JSON to --out.

    python tools/perf_network.py --model alexnet --weights random --out net.json
"""

from __future__ import annotations

import argparse
import glob
import json
import statistics
import time
from pathlib import Path
from typing import Callable

import cv2
import torch

from engines.models import WeightsChoice, build_model, get_spec
from engines.preprocess import preprocess


def time_fn(fn: Callable[[], object], runs: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(runs)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(runs)]
    for i in range(runs):
        starts[i].record()
        fn()
        ends[i].record()
    torch.cuda.synchronize()
    return [s.elapsed_time(e) for s, e in zip(starts, ends)]


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
        if total <= 0 or evt.key.startswith(("cudaGraphLaunch", "cudaLaunch", "Memcpy", "Memset")):
            continue
        rows.append({"name": evt.key, "us_per_call": total / runs, "calls_per_run": max(1, round(evt.count / runs))})
    rows.sort(key=lambda r: -float(r["us_per_call"]))
    return rows


def graphed(module: torch.nn.Module, example: torch.Tensor) -> tuple[Callable[[torch.Tensor], torch.Tensor], torch.Tensor]:
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

    return run, static_in


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="alexnet")
    ap.add_argument("--weights", default="random")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--variants", default="eager-fp32,eager-fp16,graph-fp32,graph-fp16,graph-fp16-cl,compile-fp16-graph")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--cudnn-benchmark", action="store_true", help="torch.backends.cudnn.benchmark = True (autotune each conv shape)")
    ap.add_argument("--profile", default="", help="comma-separated variants whose kernels are listed (torch.profiler, 50 replays)")
    args = ap.parse_args()
    torch.backends.cudnn.benchmark = args.cudnn_benchmark

    spec = get_spec(args.model)
    loaded = build_model(spec, WeightsChoice.parse(args.weights))
    images = [image for p in sorted(glob.glob("samples/images/*.jpg")) if (image := cv2.imread(p)) is not None]
    real = preprocess(images, spec.preprocess, "cuda", torch.float32)
    x32 = torch.randn(args.batch, *spec.preprocess.input_shape, device="cuda")
    base = loaded.module.to("cuda").eval()
    with torch.inference_mode():
        ref_top1 = base(real).argmax(1)
    results = []
    for variant in args.variants.split(","):
        t0 = time.perf_counter()
        fp16 = "fp16" in variant
        dtype = torch.float16 if fp16 else torch.float32
        module = build_model(spec, WeightsChoice.parse(args.weights)).module.to("cuda").eval()
        if fp16:
            module = module.half()
        if "-cl" in variant:
            module = module.to(memory_format=torch.channels_last)
        if variant.startswith("compile"):
            import torch._inductor.config as inductor_config

            inductor_config.coordinate_descent_tuning = variant.startswith("compilecd")
            module = torch.compile(module, mode="max-autotune-no-cudagraphs", fullgraph=True)  # type: ignore[assignment]
        cl = "-cl" in variant
        x = x32.to(dtype)
        if cl:
            x = x.contiguous(memory_format=torch.channels_last)
        if variant.startswith(("graph", "compile")):
            with torch.inference_mode():
                for _ in range(3):
                    module(x)
            run, _ = graphed(module, x)
        else:
            def run(inp: torch.Tensor, m: torch.nn.Module = module) -> torch.Tensor:
                with torch.inference_mode():
                    return m(inp)
        setup_s = time.perf_counter() - t0
        times = time_fn(lambda: run(x), args.runs, args.warmup)
        # accuracy: top-1 vs eager fp32 on the real photographs, one at a time (batch-1 graphs)
        agree = 0
        for i in range(real.shape[0]):
            xi = real[i : i + 1].to(dtype).repeat(args.batch, 1, 1, 1)
            if cl:
                xi = xi.contiguous(memory_format=torch.channels_last)
            with torch.inference_mode():
                out = run(xi)
            agree += int(out[0].float().argmax().item() == ref_top1[i].item())
        row = {
            "variant": variant,
            "p50_ms": statistics.median(times),
            "p95_ms": sorted(times)[int(0.95 * len(times)) - 1],
            "mean_ms": statistics.fmean(times),
            "setup_s": setup_s,
            "top1_agreement": agree / real.shape[0],
        }
        if variant in args.profile.split(","):
            row["kernels"] = kernel_profile(lambda: run(x))
            for k in row["kernels"][:25]:
                print(f"    {k['us_per_call']:8.2f} us x{k['calls_per_run']:<3d} {k['name'][:110]}", flush=True)
        results.append(row)
        print(f"{args.model:20s} b{args.batch} {variant:22s} p50 {row['p50_ms']:.4f} ms  p95 {row['p95_ms']:.4f} ms  top1-agree {agree}/{real.shape[0]}  setup {setup_s:.1f}s", flush=True)
        del module, run
        torch.cuda.empty_cache()
    meta = {
        "gpu": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "model": args.model,
        "weights": args.weights,
        "batch": args.batch,
        "runs": args.runs,
        "cudnn_benchmark": args.cudnn_benchmark,
        "results": results,
    }
    if args.out:
        args.out.write_text(json.dumps(meta, indent=2))


if __name__ == "__main__":
    main()
