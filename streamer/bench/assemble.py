"""Turns the workers' results into the report dictionary (``report.json``'s content).

Every case gets a row of the same shape; a figure that does not apply or was
not measured is None, never a made-up number.  Skipped and failed cases keep
their row, with the reason.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from streamer.bench import environment
from streamer.bench.config import RANDOM_NOTE, BenchConfig, Case
from streamer.bench.realtime import verdict

if TYPE_CHECKING:
    from streamer.bench.runner import Job

SCHEMA_VERSION = 1
LAB_IMAGES = 11
LAB_MAX_MEMORY_BYTES = 606208

BUSY_THRESHOLD = 0.10
"""Share of all cores used by other processes above which a case's timings are flagged as disturbed."""

LATENCY_KEYS = ("mean", "std", "p50", "p95", "p99", "min", "max", "n", "repeats")


def _pick(d: dict[str, Any] | None, keys: tuple[str, ...]) -> dict[str, Any]:
    d = d or {}
    return {k: d.get(k) for k in keys}


def base_row(case: Case, status: str, reason: str | None) -> dict[str, Any]:
    return {
        "key": case.key,
        "model": case.model.name,
        "weights": case.model.weights,
        "weights_note": RANDOM_NOTE if case.model.random else case.model.note,
        "backend": case.backend,
        "precision": case.precision,
        "variant": case.variant,
        "device": case.device,
        "batch": case.batch,
        "status": status,
        "reason": reason,
        "backend_description": None,
        "load": {k: None for k in ("cold_s", "warm_s", "cold_ready_s", "warm_ready_s", "cuda_context_s", "engine_build_s", "cold_cache_hit", "warm_cache_hit", "cache_dir_fresh")},
        "first_frame": {"first_infer_ms": None, "cold_start_to_first_result_s": None, "source_open_to_first_frame_ms": None},
        "timer": None,
        "latency_ms": _pick(None, LATENCY_KEYS),
        "latency_wall_ms": _pick(None, LATENCY_KEYS),
        "per_image_ms": None,
        "throughput_fps": None,
        "pipeline": None,
        "memory": {
            "host_peak_mb": None,
            "host_baseline_mb": None,
            "gpu_process_mb": None,
            "gpu_method": None,
            "torch_max_allocated_mb": None,
            "unified_memory_mb": None,
            "engine_file_mb": None,
            "trt_device_memory_mb": None,
        },
        "diff_vs_reference": None,
        "diff_note": RANDOM_NOTE if case.model.random else None,
        "labelled_top1": None,
        "realtime": None,
        "machine_load": None,
        "attempts": None,
        "errors": {},
    }


def case_row(case: Case, result: dict[str, Any], target_fps: float | None) -> dict[str, Any]:
    row = base_row(case, str(result.get("status", "failed")), result.get("reason"))
    if row["status"] in ("skipped", "failed") and "load" not in result:
        return row
    row["backend_description"] = result.get("backend_description")
    row["errors"] = result.get("errors") or {}
    row["machine_load"] = result.get("machine_load")
    row["jetson"] = result.get("jetson")  # streamer.telemetry.jetson sampler summary; None off a Jetson
    row["attempts"] = result.get("attempts")
    load = result.get("load") or {}
    row["load"].update({k: load.get(k) for k in row["load"]})
    net = result.get("network") or {}
    if net:
        row["timer"] = net.get("timer")
        row["latency_ms"] = _pick(net.get("latency_ms"), LATENCY_KEYS)
        row["latency_wall_ms"] = _pick(net.get("latency_wall_ms"), LATENCY_KEYS)
        row["per_image_ms"] = net.get("per_image_ms")
        row["throughput_fps"] = net.get("throughput_fps")
        row["throughput_fps_std"] = net.get("throughput_fps_std")
    pipe = result.get("pipeline")
    if pipe:
        row["pipeline"] = {k: v for k, v in pipe.items() if not k.endswith("_samples_ms")}
    row["first_frame"] = {
        "first_infer_ms": net.get("first_infer_ms"),
        "cold_start_to_first_result_s": load.get("cold_ready_s"),
        "source_open_to_first_frame_ms": ((pipe or {}).get("start_to_first_frame_ms") or {}).get("mean"),
    }
    memory = result.get("memory") or {}
    row["memory"].update(memory)
    diff = result.get("diff")
    if diff:
        row["diff_vs_reference"] = diff.get("metrics")
        row["labelled_top1"] = diff.get("labelled_top1")
    elif not case.model.random:
        row["diff_note"] = "not measured" + (f" ({row['errors'].get('diff')})" if row["errors"].get("diff") else "")
    replay = result.get("realtime")
    if case.batch == 1 and target_fps is not None and (pipe or replay):
        rt = dict(replay) if replay else {"target_fps": target_fps, "sustained_fps": None, "dropped": None, "latency_p50_ms": None, "latency_p99_ms": None}
        rt.update(verdict(case.label, target_fps, replay, pipe))
        row["realtime"] = rt
    return row


def _add_diff_histograms(samples: dict[str, Any], diffs: dict[str, Any], bins: int = 80) -> None:
    """Histogram of each case's logit differences on shared bins, kept in samples.json so plots can be redrawn."""
    if not diffs:
        return
    lim = max(float(np.abs(d).max()) for d in diffs.values()) or 1e-12
    edges = np.linspace(-lim, lim, bins + 1)
    for key, d in diffs.items():
        counts, _ = np.histogram(d, bins=edges)
        samples.setdefault(key, {})["diff_histogram"] = {
            "edges": edges.tolist(),
            "counts": counts.astype(int).tolist(),
            "max_abs": float(np.abs(d).max()),
        }


def _row_samples(result: dict[str, Any]) -> dict[str, list[float]]:
    net = result.get("network") or {}
    pipe = result.get("pipeline") or {}
    return {"network_ms": list(net.get("samples") or []), "frame_interval_ms": list(pipe.get("frame_interval_samples_ms") or [])}


def assemble(
    config: BenchConfig,
    env: dict[str, Any],
    source: dict[str, Any],
    images: list[Path],
    labels: dict[str, Any],
    results: "list[tuple[Job, dict[str, Any]]]",
    skipped: list[tuple[Case, tuple[str, str]]],
    work: Path,
) -> dict[str, Any]:
    target = config.target_fps or source.get("fps")
    rows: list[dict[str, Any]] = []
    samples: dict[str, Any] = {}
    diffs: dict[str, Any] = {}
    references: dict[str, Any] = {}
    lab: list[dict[str, Any]] = []
    codec: dict[str, Any] | None = None
    by_case: dict[Case, dict[str, Any]] = {}
    for job, result in results:
        kind = job.spec["kind"]
        if kind == "case" and job.case is not None:
            by_case[job.case] = result
        elif kind == "reference":
            references[job.spec["model"]] = result
        elif kind == "lab":
            lab.append(_lab_entry(job, result))
        elif kind == "codec":
            codec = result
    skip_reasons = dict(skipped)
    for case in config.cases():
        if case in skip_reasons:
            status, reason = skip_reasons[case]
            rows.append(base_row(case, status, reason))
            continue
        result = by_case.get(case, {"status": "failed", "reason": "not run"})
        row = case_row(case, result, target)
        rows.append(row)
        samples[case.key] = _row_samples(result)
        diff_path = work / f"{case.key}-diff.npy"
        if diff_path.is_file():
            diffs[case.key] = np.load(diff_path).ravel()
    _add_diff_histograms(samples, diffs)
    if codec is not None and codec.get("status") == "ok":
        comparison = []
        for row in rows:
            fps = ((row.get("pipeline") or {}).get("fps") or {}).get("mean")
            if fps is None or config.sink != "video":
                continue
            comparison.append({"key": row["key"], "pipeline_fps": fps, "ratio_to_bound": fps / codec["bound_fps"] if codec.get("bound_fps") else None})
        codec["comparison"] = comparison
    verdicts = [r["realtime"]["verdict"] for r in rows if r.get("realtime") and r["realtime"].get("verdict")]
    notes = _notes(config, rows, images, env)
    busy = [r for r in rows if ((r.get("machine_load") or {}).get("other_processes") or 0.0) > BUSY_THRESHOLD]
    if busy:
        worst = max((r["machine_load"]["other_processes"] for r in busy))
        notes.insert(
            0,
            f"WARNING: other processes were using the CPU during {len(busy)} of the measured cases (up to {worst * 100:.0f} % "
            "of all cores; column 'others' CPU'): those timings are disturbed and slower than this machine can do.",
        )
    return {
        "schema_version": SCHEMA_VERSION,
        "title": f"streamer bench: {', '.join(m.name for m in config.models)}",
        "device_line": environment.device_line(env, list(config.devices)),
        "command": config.command,
        "environment": env,
        "config": config.to_json(),
        "source": {**source, "path": display_path(Path(source["path"])), "target_fps": target},
        "images": {
            "dir": display_path(config.images),
            "count": len(images),
            "names": [p.name for p in images],
            "labelled": len([p for p in images if isinstance(labels.get(p.name), list)]),
            "note": f"{len(images)} real photographs from {display_path(config.images)} (the lab's set had {LAB_IMAGES} images)",
        },
        "results": rows,
        "verdicts": verdicts,
        "reference": references,
        "lab_method": lab,
        "codec_baseline": codec,
        "notes": notes,
        "samples": samples,
    }


def display_path(path: Path) -> str:
    """``path`` relative to the working folder when it is inside it (reports get committed)."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _lab_entry(job: "Job", result: dict[str, Any]) -> dict[str, Any]:
    lab = result.get("lab") or None
    pipe = result.get("pipeline") or None
    entry: dict[str, Any] = {
        "model": job.spec["model"],
        "weights": job.spec["weights"],
        "weights_note": RANDOM_NOTE if job.spec["weights"] == "random" else None,
        "device": job.spec["device"],
        "status": result.get("status"),
        "reason": result.get("reason") or "; ".join(f"{k}: {v}" for k, v in (result.get("errors") or {}).items()) or None,
        "lab": lab,
        "pipeline": pipe,
        "speedup_total": None,
        "top1_agreement": None,
    }
    if lab and pipe:
        lab_total = (lab.get("total_s") or {}).get("mean")
        pipe_total = (pipe.get("total_s") or {}).get("mean")
        if lab_total and pipe_total:
            entry["speedup_total"] = lab_total / pipe_total
        a, b = lab.get("top1") or [], pipe.get("top1") or []
        if a and len(a) == len(b):
            entry["top1_agreement"] = sum(x == y for x, y in zip(a, b)) / len(a) * 100.0
    return entry


def _notes(config: BenchConfig, rows: list[dict[str, Any]], images: list[Path], env: dict[str, Any]) -> list[str]:
    notes = list(config.notes)
    for m in config.models:
        if m.random:
            notes.append(
                f"{m.name}: {RANDOM_NOTE} (ImageNet weights not used{': ' + m.note if m.note else ''}); its output-change "
                "figures are not computed, and its cold load includes random initialisation of the weights instead of "
                "reading a weights file."
            )
    if len(images) != LAB_IMAGES:
        notes.append(f"Image set: {len(images)} real photographs; the lab's set had {LAB_IMAGES}.")
    if config.retry_busy:
        retried = [r for r in rows if (r.get("attempts") or 1) > 1]
        notes.append(
            f"--retry-busy {config.retry_busy}: a case during which other processes used more than "
            f"{BUSY_THRESHOLD * 100:.0f} % of the CPU was measured again, up to {config.retry_busy} more times, and the "
            f"least disturbed attempt kept ({len(retried)} case(s) were measured more than once)."
        )
    if config.max_frames is not None:
        notes.append(f"Only the first {config.max_frames} frames of the source were used (--max-frames).")
    cuda_rows = [r for r in rows if str(r["device"]).startswith("cuda") and r["status"] in ("ok", "partial")]
    if cuda_rows and env.get("tf32_conv"):
        notes.append(
            "PyTorch fp32 on CUDA uses TF32 for convolutions by default (environment: tf32_conv), so 'fp32' GPU rows "
            "differ from the CPU reference by more than float32 rounding alone."
        )
    if config.cache_dir is not None:
        notes.append(f"--cache-dir {config.cache_dir} was given: a 'cold' load may be a cache hit when that folder already held the engine (see load.cache_dir_fresh).")
    return notes
