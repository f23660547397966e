"""Writes ``report.md``, ``report.json``, ``report.csv`` (and ``samples.json``) from the report dict."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import typing
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from engines.cache.store import atomic_write
from streamer.bench.assemble import LAB_MAX_MEMORY_BYTES
from streamer.bench.config import RANDOM_NOTE
from streamer.bench.realtime import RULE_TEXT
from streamer.bench.reference import describe_folder_config
from streamer.bench.results import LoadFigures, MemoryFigures, Replay, Verdict
from streamer.stats import STAGES

DASH = "—"
RANDOM_MARK = "†"

LOAD_TEXT = {
    "torch": ("cold: build model, load weights, move to device", "warm: second load from local weights"),
    "tensorrt": ("cold: ONNX export + engine build", "warm: engine from the cache"),
    "torch2trt": ("cold: torch2trt conversion", "warm: converted module from the cache"),
    "onnxruntime": ("cold: ONNX export + session", "warm: second load (cached ONNX where the backend keeps one)"),
}


def _f(value: Any, digits: int = 2, unit: str = "") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return DASH
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, float)):
        return f"{value:.{digits}f}{unit}"
    return str(value)


def _pm(stats: dict[str, Any] | None, digits: int = 2, unit: str = "") -> str:
    stats = stats or {}
    mean, std = stats.get("mean"), stats.get("std")
    if mean is None:
        return DASH
    return f"{mean:.{digits}f} ± {std:.{digits}f}{unit}" if std is not None else f"{mean:.{digits}f}{unit}"


def row_label(row: dict[str, Any]) -> str:
    """The case's name in tables and plots (the same everywhere; † marks random weights)."""
    variant = "" if row["variant"] == "eager" else f" +{row['variant']}"
    dagger = RANDOM_MARK if row.get("weights") == "random" else ""
    text = f"{row['model']}{dagger} {row['backend']}{variant} {row['precision']} {row['device']}"
    return text + (f" b{row['batch']}" if row["batch"] != 1 else "")


def _table(header: list[str], rows: Iterable[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for r in rows:
        out.append("| " + " | ".join(c.replace("|", "\\|") for c in r) + " |")
    return out


def _ok(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in rows if r["status"] in ("ok", "partial")]


def _gpu(rows: list[dict[str, Any]]) -> bool:
    return any(str(r["device"]).startswith("cuda") for r in rows)


def _max_memory(row: dict[str, Any], cold: bool) -> str:
    """Cold rows: the peak during the cold load; warm rows: the peak of the loaded engine running the pipeline."""
    m = row["memory"]
    if str(row["device"]).startswith("cuda") and m.get("gpu_method") != "jetson-unified-rss":
        value = (m.get("gpu_process_by_phase_mb") or {}).get("cold_load") if cold else m.get("gpu_process_mb")
        method = "GPU, driver" if m.get("gpu_method") in ("nvidia-smi", "pynvml") else f"GPU, {m.get('gpu_method')}"
        return f"{_f(value, 0)} MB ({method})"
    value = (m.get("host_peak_by_phase_mb") or {}).get("cold_load") if cold else m.get("host_app_peak_mb")
    what = "unified, RSS" if m.get("gpu_method") == "jetson-unified-rss" else "host RSS"
    return f"{_f(value, 0)} MB ({what})"


def lab_table(rows: list[dict[str, Any]]) -> list[str]:
    out = []
    for r in _ok(rows):
        if r["batch"] != 1:
            continue
        cold_text, warm_text = LOAD_TEXT.get(r["backend"], ("cold load", "warm load"))
        name = row_label(r) + (f" ({RANDOM_NOTE})" if r["weights"] == "random" else "")
        per_image = _pm(r.get("latency_ms"), 2, " ms")
        for text, key, cold in ((cold_text, "cold_s", True), (warm_text, "warm_s", False)):
            out.append([f"{name}, {text}", _f(r["load"].get(key), 2, " s"), per_image, _max_memory(r, cold)])
    return _table(["backend", "load time", "processing time per image", "max memory"], out)


def _section_header(report: dict[str, Any]) -> list[str]:
    rows: list[dict[str, Any]] = report["results"]
    env = report["environment"]
    src = report["source"]
    lines: list[str] = [f"# {report['title']}", "", f"**Measured on: {report['device_line']}**", ""]
    git = env.get("git") or {}
    lines += [
        f"- Command: `{report['command']}`",
        f"- Date: {report.get('started', DASH)} (UTC), run took {_f(report.get('duration_s'), 0, ' s')}; "
        f"git {str(git.get('commit') or DASH)[:12]}{' (with uncommitted changes)' if git.get('dirty') else ''}",
        f"- Source: `{src['path']}` ({src.get('frames') or '?'} frames, {src.get('frame_size') and 'x'.join(map(str, src['frame_size']))}, "
        f"{_f(src.get('fps'), 2)} FPS); real-time target {_f(src.get('target_fps'), 2)} FPS",
        f"- Images: {report['images']['note']}",
        f"- Repeats {report['config']['repeats']}, warm-up {report['config']['warmup']} frames; every case ran in its own fresh process.",
        "",
    ]
    for note in report.get("notes") or []:
        lines.append(f"> {note}")
    if any(r.get("weights") == "random" for r in rows):
        lines.append(f"> {RANDOM_MARK} = {RANDOM_NOTE}: the model runs with random weights, so its rows time the engine "
                     "but say nothing about its labels or output change.")
    if report.get("notes") or any(r.get("weights") == "random" for r in rows):
        lines.append("")
    return lines


def _section_summary(report: dict[str, Any]) -> list[str]:
    rows: list[dict[str, Any]] = report["results"]
    lines: list[str] = []
    lines += ["## Summary (batch 1), in the columns of the lab's published table", ""]
    lines += lab_table(rows)
    gpu = _gpu(rows)
    lines += [
        "",
        "Batch 1. *Processing time per image* is the network alone (`infer()` on an already preprocessed frame, "
        "synchronised before the timer is read), mean ± standard deviation across repeats; the whole pipeline is "
        "below. *Load time* is `Backend.load()` in a fresh process (cold) and again in the same process (warm); "
        "CUDA context creation is timed apart. *Max memory*: "
        + (
            "on GPU rows, the GPU memory of the process as the driver reports it; "
            if gpu
            else ""
        )
        + "on CPU rows, the resident set of the case's process, which includes Python, PyTorch and OpenCV themselves "
        "(the memory section gives the baseline before the model loaded). Both are peaks of samples taken every "
        "50 ms (GPU: 250 ms): the cold row during the cold load (a TensorRT row then includes the builder's "
        "workspace), the warm row while the loaded engine runs the pipeline.",
        "",
        "Cited comparison: the lab's published rows (its hardware was not recorded): no TensorRT 2.67 s; TensorRT build "
        "70.32 s; TensorRT from saved state 4.45 s.",
        "",
        f"About the lab's \"max memory\" of {LAB_MAX_MEMORY_BYTES} bytes for a saved TensorRT engine: that figure is "
        "`torch.cuda.max_memory_allocated()`, which counts only tensors made by PyTorch's caching allocator. TensorRT "
        "allocates its weights and activations itself, so the only PyTorch tensors were the input (1x3x224x224 fp32 = "
        "602112 B) and the output (1000 fp32 = 4000 B, rounded up to PyTorch's 512-byte block = 4096 B): "
        "602112 + 4096 = 606208. It says nothing about the engine's memory. This report gives the driver's per-process "
        "figure (nvidia-smi) beside `torch.cuda.max_memory_allocated` so the difference is visible.",
        "",
    ]
    return lines


def _section_verdict(report: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    lines += ["## Real-time verdict", ""]
    if report.get("verdicts"):
        lines += [f"- {v}" for v in report["verdicts"]]
        lines += [
            "",
            RULE_TEXT,
        ]
    else:
        lines.append("No verdict: no batch-1 case ran, or the source is not a video and no --target-fps was given.")
    lines.append("")
    return lines


def _section_network(report: dict[str, Any]) -> list[str]:
    ok = _ok(report["results"])
    gpu = _gpu(report["results"])
    lines: list[str] = []
    lines += ["## Network alone", ""]
    lines += _table(
        ["case", "timer", "ms per call (mean ± std)", "p50", "p95", "p99", "ms per image", "images/s", "first call ms", "others' CPU"],
        [
            [
                row_label(r),
                str(r.get("timer") or DASH),
                _pm(r.get("latency_ms"), 2),
                _f(r["latency_ms"].get("p50")),
                _f(r["latency_ms"].get("p95")),
                _f(r["latency_ms"].get("p99")),
                _f(r.get("per_image_ms")),
                _f(r.get("throughput_fps"), 1),
                _f(r["first_frame"].get("first_infer_ms")),
                _f(((r.get("machine_load") or {}).get("other_processes") or 0.0) * 100.0, 0, " %") if r.get("machine_load") else DASH,
            ]
            for r in ok
        ],
    )
    lines += [
        "",
        "One call = `infer()` on a batch of the case's size, from frames of the source preprocessed once by the backend. "
        "Std is of the repeats' means (how much a whole pass moves between repeats); percentiles are over single calls. "
        "Images/s is images / summed call time, synchronised after every call (no overlap between calls). "
        "*First call* is the first `infer()` after load (load itself already ran one warm-up inference). "
        "*Others' CPU* is the share of all cores that other processes used while the case ran (a quiet machine shows ~0 %); "
        + ("on a GPU the timer is a pair of CUDA events, with wall time beside it in report.json." if gpu else "on the CPU the timer is `perf_counter` around `infer()` + `synchronize()`."),
        "",
    ]
    return lines


def _section_pipeline(report: dict[str, Any]) -> list[str]:
    ok = _ok(report["results"])
    lines: list[str] = []
    piped = [r for r in ok if r.get("pipeline")]
    if piped:
        sink = piped[0]["pipeline"].get("sink")
        lines += ["## Pipeline, stage by stage", "", f"Sink: {sink}. Milliseconds per frame, mean ± std across runs.", ""]
        header = ["case", *STAGES, "sum", "frame interval p50 / p99", "pipeline FPS", "busiest thread", "slowest stage"]
        body = []
        for r in piped:
            p = r["pipeline"]
            stages = [_pm(p["stages_ms"].get(s), 2) for s in STAGES]
            fi = p.get("frame_interval_ms") or {}
            body.append(
                [row_label(r), *stages, _f(p.get("serial_ms_per_frame")), f"{_f(fi.get('p50'))} / {_f(fi.get('p99'))}", _pm(p.get("fps"), 1), str(p.get("busiest_thread") or p.get("slowest_thread") or DASH), str(p.get("slowest_stage") or DASH)]
            )
        lines += _table(header, body)
        lines += [
            "",
            "The pipeline runs capture (decode), inference (preprocess, inference, postprocess), render (render) and, "
            "behind a file sink, the writer (write = encoding) on four threads (three with the null sink), so its time per frame is set by the busiest thread, not the "
            "sum; on a machine with few cores the threads also compete for them. Pipeline FPS = frames / wall time from "
            "the source opening to the output file finalised (the file throughput); the frame interval is the time "
            "between frames leaving the render stage. Every run of a case shares one inference worker, whose thread "
            "loaded the backend (PyTorch keeps cuDNN plans per thread; `streamer run` pays them once, inside load, "
            "as here), so no run pays a thread warm-up. *First frame* = source opened to "
            "the first annotated frame handed to the sink, model loaded and warm; *cold start to first result* = the "
            "cold `load()` plus its first inference:",
            "",
        ]
        lines += _table(
            ["case", "first frame ms", "cold start to first result s", "run wall s (N frames)", "render-stage FPS"],
            [
                [
                    row_label(r),
                    _f(r["first_frame"].get("source_open_to_first_frame_ms"), 1),
                    _f(r["first_frame"].get("cold_start_to_first_result_s")),
                    _pm(r["pipeline"].get("wall_s"), 2),
                    _pm(r["pipeline"].get("render_fps"), 1),
                ]
                for r in piped
            ],
        )
        lines.append("")
    return lines


def _section_replay(report: dict[str, Any]) -> list[str]:
    ok = _ok(report["results"])
    lines: list[str] = []
    live = [r for r in ok if r.get("realtime")]
    if live:
        lines += ["## Live replay at the target rate", ""]
        lines += _table(
            ["case", "target FPS", "sustained FPS", "dropped", "capture→render p50 ms", "p99 ms", "headroom (p99)", "real-time"],
            [
                [
                    row_label(r),
                    _f(r["realtime"].get("target_fps"), 1),
                    _f(r["realtime"].get("sustained_fps"), 1),
                    f"{r['realtime'].get('dropped')}/{r['realtime'].get('frames_offered')}"
                    if r["realtime"].get("dropped") is not None
                    else DASH,
                    _f(r["realtime"].get("latency_p50_ms"), 1),
                    _f(r["realtime"].get("latency_p99_ms"), 1),
                    _f(r["realtime"].get("headroom_p99"), 2, "x"),
                    _f(r["realtime"].get("capable")),
                ]
                for r in live
            ],
        )
        lines.append("")
    return lines


def _section_parity(report: dict[str, Any]) -> list[str]:
    ok = _ok(report["results"])
    lines: list[str] = []
    lines += ["## Output change against PyTorch fp32 on the CPU", ""]
    diffed = [r for r in ok if r.get("diff_vs_reference")]
    if diffed:
        lines += _table(
            ["case", "max abs", "mean abs", "max rel", "cosine", "top-1 agree %", "top-5 overlap %", "labelled top-1"],
            [
                [
                    row_label(r),
                    _f(r["diff_vs_reference"]["max_abs"], 2 if r["diff_vs_reference"]["max_abs"] >= 0.01 else 6 if r["diff_vs_reference"]["max_abs"] else 0),
                    _sci(r["diff_vs_reference"]["mean_abs"]),
                    _sci(r["diff_vs_reference"]["max_rel"]),
                    _f(r["diff_vs_reference"]["cosine"], 6),
                    _f(r["diff_vs_reference"]["top1_agreement"], 1),
                    _f(r["diff_vs_reference"]["top5_overlap"], 1),
                    (f"{r['labelled_top1']['correct']}/{r['labelled_top1']['labelled']}" if r.get("labelled_top1") else DASH),
                ]
                for r in diffed
            ],
        )
        n = diffed[0]["diff_vs_reference"].get("images")
        lines += [
            "",
            f"On {n} photographs preprocessed once on the CPU (`engines.preprocess.preprocess`) and fed identically to every "
            "backend (cast to its input precision). Max rel = max |a - r| / max(|r|, 1e-3 max|r|). Cosine is the mean over "
            "images of the logits' cosine similarity. Top-5 overlap = shared classes among the two top-5 lists. "
            "Labelled top-1 = correct on the photographs that samples/labels.json labels.",
        ]
    skipped_diff = sorted({f"{r['model']}: {r['diff_note']}" for r in ok if not r.get("diff_vs_reference") and r.get("diff_note")})
    if skipped_diff:
        lines += [""] + [f"- Not computed for {t}" for t in skipped_diff]
    refs = report.get("reference") or {}
    for model, ref in refs.items():
        if ref.get("status") == "ok" and ref.get("top1"):
            lines += ["", f"Reference top-1 ({model}, torch fp32 cpu): " + ", ".join(f"{k}: {v}" for k, v in ref["top1"].items())]
        elif ref.get("status") != "ok":
            lines += ["", f"Reference for {model} failed: {ref.get('reason')}"]
    lines.append("")
    return lines


def _section_memory(report: dict[str, Any]) -> list[str]:
    ok = _ok(report["results"])
    lines: list[str] = []
    lines += ["## Memory", ""]
    lines += _table(
        ["case", "host peak RSS MB", "running pipeline MB", "host baseline MB", "GPU (driver) MB", "method", "torch max allocated MB", "engine file MB", "TRT device memory MB"],
        [
            [
                row_label(r),
                _f(r["memory"].get("host_peak_mb"), 0),
                _f(r["memory"].get("host_app_peak_mb"), 0),
                _f(r["memory"].get("host_baseline_mb"), 0),
                _f(r["memory"].get("gpu_process_mb"), 0),
                str(r["memory"].get("gpu_method") or DASH),
                _f(r["memory"].get("torch_max_allocated_mb"), 1),
                _f(r["memory"].get("engine_file_mb"), 1),
                _f(r["memory"].get("trt_device_memory_mb"), 1),
            ]
            for r in ok
        ],
    )
    lines += [
        "",
        "Host peak RSS is `ru_maxrss` of the case's own process over the whole case (each case runs in a fresh process, "
        "so it is not the running maximum of earlier cases; it includes the cold load and the inputs the bench holds for "
        "the network-alone timing); *running pipeline* is the sampled peak RSS during the warm load and the pipeline runs; "
        "the baseline is the RSS after imports (and CUDA context) before the model loaded. GPU (driver) is `nvidia-smi --query-compute-apps` for this pid (else NVML, else a labelled "
        "`torch.cuda.mem_get_info` delta), the maximum of samples taken during the warm load, the pipeline runs and the "
        "live replay: it sees "
        "PyTorch, cuDNN/cuBLAS workspaces, TensorRT and the CUDA context. `torch.cuda.max_memory_allocated` sees "
        "PyTorch's own tensors only. On a Jetson the figure is the process RSS (unified memory), labelled.",
        "",
    ]
    return lines


def _section_load(report: dict[str, Any]) -> list[str]:
    ok = _ok(report["results"])
    lines: list[str] = []
    lines += ["## Load time details", ""]
    lines += _table(
        ["case", "cold s", "warm s", "cold + first inference s", "warm + first inference s", "CUDA context s", "engine build s", "cache hit cold / warm"],
        [
            [
                row_label(r),
                _f(r["load"].get("cold_s")),
                _f(r["load"].get("warm_s")),
                _f(r["load"].get("cold_ready_s")),
                _f(r["load"].get("warm_ready_s")),
                _f(r["load"].get("cuda_context_s")),
                _f(r["load"].get("engine_build_s")),
                f"{_f(r['load'].get('cold_cache_hit'))} / {_f(r['load'].get('warm_cache_hit'))}",
            ]
            for r in ok
        ],
    )
    lines.append("")
    return lines


def _section_reference_script(report: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    labs = report.get("lab_method") or []
    if labs:
        lines += ["## Reference script (one image at a time, as a naive script does) against the pipeline, same images, same device", ""]
        body = []
        for e in labs:
            lab, pipe = e.get("lab") or {}, e.get("pipeline") or {}
            n = lab.get("images") or pipe.get("images")
            name = f"{e['model']}" + (f" ({RANDOM_NOTE})" if e.get("weights_note") else "")
            body.append(
                [
                    name,
                    e["device"],
                    describe_folder_config(pipe["config"]) if pipe.get("config") else "torch fp32, batch 1",
                    _pm(lab.get("per_image_ms"), 1),
                    _f((lab.get("per_image_ms") or {}).get("p99"), 1),
                    _pm(lab.get("total_s"), 3),
                    _pm(pipe.get("total_s"), 3),
                    _pm(pipe.get("per_image_ms"), 1),
                    _f(e.get("speedup_total"), 2, "x"),
                    _f(e.get("top1_agreement"), 0, " %"),
                    str(n or DASH),
                ]
            )
            if e.get("status") != "ok":
                lines.append(f"> {e['model']} on {e['device']}: {e.get('status')}: {e.get('reason')}")
        lines += _table(
            ["model", "device", "pipeline configuration", "reference ms/image", "reference p99", "reference total s", "pipeline total s", "pipeline ms/image", "pipeline speed-up", "same top-1", "images"],
            body,
        )
        lines += [
            "",
            "Reference script (one image at a time, as a naive script does, and as the lab's published method did): for each image, `PIL.Image.open` + torchvision `Resize/CenterCrop/ToTensor/Normalize`, the model on "
            "the device, `argmax().item()` (a device-to-host sync per image), the label drawn with `ImageDraw` and the image "
            "saved, one image at a time, timed per image. Pipeline: `streamer.pipeline.Pipeline` over the same folder "
            "into a folder of annotated JPEGs, in the configuration named (the fastest this code offers on the device), "
            "model already loaded; total = wall time from opening "
            "the folder to the last file written. Both after a warm-up pass. Same top-1 = the two methods' predictions "
            "agree (their resizing differs slightly: PIL vs antialiased OpenCV interpolation; fp16 against the reference's fp32).",
            "",
        ]
        staged: list[tuple[dict[str, Any], dict[str, Any]]] = [(e, st) for e in labs if (st := (e.get("pipeline") or {}).get("stages_ms"))]
        if staged:
            names = sorted({k for _, st in staged for k in st})
            lines += _table(
                ["model", "device", *[f"{k} ms" for k in names]],
                [[e["model"], e["device"], *[_f(st.get(k), 2) for k in names]] for e, st in staged],
            )
            lines += ["", "The pipeline's stages on those images, mean milliseconds per image (last run); they overlap on separate threads.", ""]
    return lines


def _section_codec(report: dict[str, Any]) -> list[str]:
    rows: list[dict[str, Any]] = report["results"]
    lines: list[str] = []
    codec = report.get("codec_baseline")
    if codec:
        lines += ["## Decode-only and encode-only baseline", ""]
        if codec.get("status") == "ok":
            lines += [
                f"- Decode only (OpenCV/FFmpeg, {codec['frames']} frames {codec['frame_size'][0]}x{codec['frame_size'][1]}): {_pm(codec['decode_fps'], 1)} FPS",
                f"- Encode only ({codec['codec']}, {codec.get('encoder_threads', '?')} encoder threads): {_pm(codec['encode_fps'], 1)} FPS"
                + (f"; with one encoder thread: {_pm(codec['encode_fps_1thread'], 1)} FPS (for the record)" if codec.get("encode_fps_1thread") else ""),
                f"- Ceiling for a file-to-file pipeline: {_f(codec['bound_fps'], 1)} FPS (the slower, {codec['bound_by']}, "
                f"{codec.get('bound_statistic', 'mean of the passes')}); "
                f"decode then encode on one thread: {_f(codec['serial_fps'], 1)} FPS",
                "",
            ]
            comp = codec.get("comparison") or []
            by_key = {r["key"]: r for r in rows}
            if comp:
                lines += _table(
                    ["case", "pipeline FPS", "share of the codec ceiling"],
                    [[row_label(by_key[c["key"]]), _f(c["pipeline_fps"], 1), _f((c["ratio_to_bound"] or 0) * 100, 0, " %")] for c in comp],
                )
                lines.append("")
        else:
            lines += [f"- failed: {codec.get('reason')}", ""]
    return lines


def _section_skipped(report: dict[str, Any]) -> list[str]:
    rows: list[dict[str, Any]] = report["results"]
    lines: list[str] = []
    bad = [r for r in rows if r["status"] in ("skipped", "failed")]
    partial = [r for r in rows if r["status"] == "partial"]
    if bad or partial:
        lines += ["## Skipped and failed", ""]
        lines += _table(["case", "status", "reason"], [[row_label(r), r["status"], str(r.get("reason") or DASH)] for r in bad + partial])
        lines += ["", "No figure is given for these: nothing was measured.", ""]
    return lines


def _section_jetson(report: dict[str, Any]) -> list[str]:
    rows: list[dict[str, Any]] = report["results"]
    env = report["environment"]
    lines: list[str] = []
    from streamer.telemetry.jetson import markdown_block

    lines += markdown_block(env, rows, row_label)  # [] off a Jetson
    return lines


def _section_environment(report: dict[str, Any]) -> list[str]:
    env = report["environment"]
    lines: list[str] = []
    lines += ["## Environment", ""]
    keys = [
        "cpu_model", "cpu_cores_physical", "cpu_cores_logical", "cpu_cores_usable", "torch_threads", "host_memory_gb",
        "gpu_name", "gpu_capability", "driver", "cuda", "cudnn", "tf32_conv", "tf32_matmul", "torch", "torchvision",
        "tensorrt", "torch2trt", "onnxruntime", "onnxruntime_providers", "onnx", "opencv", "numpy", "os", "python",
        "jetson", "jetson_model", "jetson_l4t", "jetson_jetpack", "jetson_power_mode", "jetson_clocks",
    ]
    lines += _table(["", "value"], [[k, _env(env.get(k))] for k in keys])
    gpus = env.get("gpus") or []
    for g in gpus:
        lines.append("")
        lines.append(f"GPU {g.get('index')}: {g.get('name')}, {g.get('memory_total_mb')} MiB, pstate {g.get('pstate')}, SM clock {g.get('sm_clock_mhz')}/{g.get('sm_clock_max_mhz')} MHz, power limit {g.get('power_limit_w')} W, persistence {g.get('persistence_mode')}")
    lines.append("")
    return lines


def _section_plots(report: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    plots = report.get("plots") or []
    if plots:
        lines += ["## Plots", ""]
        titles = {
            "latency.png": "Latency distribution per case",
            "stages.png": "Pipeline time per frame, by stage",
            "diff_hist.png": "Output change: histogram of logit differences",
            "throughput.png": "Throughput by batch size",
        }
        for name in plots:
            lines += [f"![{titles.get(name, name)}]({name})", ""]
    lines += [
        "## Files",
        "",
        "`report.json` (every figure, null where one does not apply), `report.csv` (one line per case), "
        "`samples.json` (raw per-call and per-frame times behind the percentiles), `bench.log` (the workers' logs).",
        "",
    ]
    return lines


SECTIONS: tuple[Callable[[dict[str, Any]], list[str]], ...] = (
    _section_header,
    _section_summary,
    _section_verdict,
    _section_network,
    _section_pipeline,
    _section_replay,
    _section_parity,
    _section_memory,
    _section_load,
    _section_reference_script,
    _section_codec,
    _section_skipped,
    _section_jetson,
    _section_environment,
    _section_plots,
)
"""report.md, in order: each section renders itself from the report dict ([] when it has nothing to show)."""


def render_markdown(report: dict[str, Any]) -> str:
    lines: list[str] = []
    for section in SECTIONS:
        lines += section(report)
    return "\n".join(lines)


def _sci(value: Any) -> str:
    if value is None:
        return DASH
    return "0" if value == 0 else f"{value:.2e}"


def _env(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, list):
        return ", ".join(map(str, value))
    text = str(value)
    return text.replace("\n", "; ")[:300]


def _scalar_fields(cls: type, prefix: str, skip: tuple[str, ...] = ()) -> list[str]:
    """``prefix.field`` for each field of dataclass ``cls`` that holds one value (not a mapping or a list)."""
    hints = typing.get_type_hints(cls)
    return [
        f"{prefix}.{f.name}"
        for f in dataclasses.fields(cls)
        if f.name not in skip and not any(kind in str(hints[f.name]) for kind in ("dict[", "list["))
    ]


CSV_COLUMNS = [
    "model", "weights", "backend", "precision", "variant", "device", "batch", "status", "reason",
    *_scalar_fields(LoadFigures, "load"),
    "first_frame.first_infer_ms", "first_frame.source_open_to_first_frame_ms",
    "timer", "latency_ms.mean", "latency_ms.std", "latency_ms.p50", "latency_ms.p95", "latency_ms.p99", "per_image_ms", "throughput_fps",
    *(f"pipeline.stages_ms.{s}.mean" for s in STAGES),
    "pipeline.serial_ms_per_frame", "pipeline.frame_interval_ms.p50", "pipeline.frame_interval_ms.p99", "pipeline.fps.mean", "pipeline.fps.std",
    "pipeline.busiest_thread", "pipeline.busiest_thread_ms", "pipeline.slowest_stage", "pipeline.slowest_stage_ms",
    *_scalar_fields(MemoryFigures, "memory", skip=("gpu_note",)),
    "diff_vs_reference.max_abs", "diff_vs_reference.mean_abs", "diff_vs_reference.max_rel", "diff_vs_reference.cosine",
    "diff_vs_reference.top1_agreement", "diff_vs_reference.top5_overlap",
    *_scalar_fields(Replay, "realtime"),
    *_scalar_fields(Verdict, "realtime", skip=("busiest_thread", "busiest_thread_ms", "slowest_stage", "slowest_stage_ms")),
    "realtime.failed",
    "machine_load.other_processes", "attempts",
]  # fmt: skip
"""report.csv's columns: the case, then the typed figures' scalar fields (:mod:`.results`) and chosen statistics."""


def _get(row: dict[str, Any], dotted: str) -> Any:
    value: Any = row
    for part in dotted.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def write_csv(report: dict[str, Any], path: Path) -> None:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(CSV_COLUMNS)
        for row in report["results"]:
            values = []
            for col in CSV_COLUMNS:
                v = _get(row, col)
                if isinstance(v, list):
                    v = "+".join(map(str, v))
                values.append("" if v is None else (f"{v:.6g}" if isinstance(v, float) else v))
            writer.writerow(values)


def atomic_write_text(path: Path, text: str) -> None:
    """The store's atomic write (temporary file, fsync, rename), for text."""
    atomic_write(path, text.encode("utf-8"))


def clean(value: Any) -> Any:
    """JSON-safe copy: NaN and infinities become None (JSON has no such numbers)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v) for v in value]
    return value


def write_reports(report: dict[str, Any], out_dir: Path) -> None:
    """report.json (without raw samples), samples.json, report.csv, report.md."""
    samples = clean(report.pop("samples", {}))
    cleaned = clean(report)
    report.clear()
    report.update(cleaned)
    atomic_write_text(out_dir / "samples.json", json.dumps(samples, indent=None, allow_nan=False))
    atomic_write_text(out_dir / "report.json", json.dumps(report, indent=2, allow_nan=False, default=str))
    write_csv(report, out_dir / "report.csv")
    atomic_write_text(out_dir / "report.md", render_markdown(report))
