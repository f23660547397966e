"""Turns the workers' typed results (:mod:`.results`) into the report dictionary (``report.json``'s content).

Every case gets a row of the same shape; a figure that does not apply or was
not measured is None, never a made-up number.  Skipped and failed cases keep
their row, with the reason.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from streamer.bench import environment
from streamer.bench.config import RANDOM_NOTE, BenchConfig, Case
from streamer.bench.paths import display_path
from streamer.bench.realtime import verdict
from streamer.bench.results import (
    CaseResult,
    CodecSpec,
    Job,
    JobResult,
    LabSpec,
    LoadFigures,
    MemoryFigures,
    ReferenceSpec,
)
from streamer.stats import Stats

SCHEMA_VERSION = 1
LAB_IMAGES = 11
LAB_MAX_MEMORY_BYTES = 606208

BUSY_THRESHOLD = 0.10
"""Share of all cores used by other processes above which a case's timings are flagged as disturbed."""

Report = dict[str, Any]
"""``report.json``'s content: the rows are :func:`case_row` of each case's :class:`CaseResult`."""


def _empty_stats() -> Stats:
    """The statistics of a figure that was not measured: every field None (not n = 0: nothing was counted)."""
    return dict.fromkeys(("mean", "std", "p50", "p95", "p99", "min", "max", "n", "repeats"))


def case_row(case: Case, result: CaseResult, target_fps: float | None) -> dict[str, Any]:
    """One report row: the case, then what its worker measured (None where nothing was)."""
    load = result.load or LoadFigures()
    net, pipe, memory, parity = result.network, result.pipeline, result.memory or MemoryFigures(), result.parity
    row: dict[str, Any] = {
        "key": case.key,
        "label": case.label,
        "model": case.model.name,
        "weights": case.model.weights,
        "weights_note": RANDOM_NOTE if case.model.random else case.model.note,
        "backend": case.backend,
        "precision": case.precision,
        "variant": case.variant,
        "device": case.device,
        "batch": case.batch,
        "status": result.status,
        "reason": result.reason,
        "backend_description": result.backend_description,
        "load": load.to_json(),
        "first_frame": {
            "first_infer_ms": net.first_infer_ms if net else None,
            "cold_start_to_first_result_s": load.cold_ready_s,
            "source_open_to_first_frame_ms": pipe.start_to_first_frame_ms.get("mean") if pipe else None,
        },
        "timer": net.timer if net else None,
        "latency_ms": net.latency_ms if net else _empty_stats(),
        "latency_wall_ms": net.latency_wall_ms if net else _empty_stats(),
        "per_image_ms": net.per_image_ms if net else None,
        "throughput_fps": net.throughput_fps if net else None,
        "throughput_fps_std": net.throughput_fps_std if net else None,
        "pipeline": {k: v for k, v in pipe.to_json().items() if not k.endswith("_samples_ms")} if pipe else None,
        "memory": memory.to_json(),
        "diff_vs_reference": parity.metrics if parity else None,
        "diff_note": RANDOM_NOTE if case.model.random else None,
        "labelled_top1": parity.labelled_top1 if parity else None,
        "realtime": None,
        "machine_load": result.machine_load,
        "jetson": result.jetson,
        "attempts": result.attempts,
        "errors": result.errors,
    }
    if result.measured and not parity and not case.model.random:
        row["diff_note"] = "not measured" + (f" ({result.errors['diff']})" if result.errors.get("diff") else "")
    if result.measured and case.batch == 1 and target_fps is not None and (pipe or result.replay):
        judged = verdict(
            case.label,
            target_fps,
            result.replay,
            _float(pipe.frame_interval_ms.get("p99")) if pipe else None,
            (pipe.busiest_thread, pipe.busiest_thread_ms) if pipe and pipe.busiest_thread and pipe.busiest_thread_ms is not None else None,
            (pipe.slowest_stage, pipe.slowest_stage_ms) if pipe and pipe.slowest_stage and pipe.slowest_stage_ms is not None else None,
        )
        replay = result.replay.to_json() if result.replay else {"target_fps": target_fps, "sustained_fps": None, "dropped": None, "latency_p50_ms": None, "latency_p99_ms": None}
        row["realtime"] = {**replay, **judged.to_json()}
    return row


def _float(value: object) -> float | None:
    return float(value) if isinstance(value, (int, float)) else None


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


def _row_samples(result: CaseResult) -> dict[str, list[float]]:
    return {
        "network_ms": list(result.network.samples) if result.network else [],
        "frame_interval_ms": list(result.pipeline.frame_interval_samples_ms) if result.pipeline else [],
    }


def assemble(
    config: BenchConfig,
    env: dict[str, Any],
    source: dict[str, Any],
    images: list[Path],
    labels: dict[str, Any],
    results: list[tuple[Job, CaseResult | JobResult]],
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
    by_case: dict[Case, CaseResult] = {}
    for job, result in results:
        spec = job.spec
        if isinstance(result, CaseResult):
            if job.case is not None:
                by_case[job.case] = result
        elif isinstance(spec, ReferenceSpec):
            references[spec.model] = {"status": result.status, "reason": result.reason, **result.figures}
        elif isinstance(spec, LabSpec):
            lab.append(_lab_entry(spec, result))
        elif isinstance(spec, CodecSpec):
            codec = {"status": result.status, "reason": result.reason, **result.figures}
    skip_reasons = dict(skipped)
    for case in config.cases():
        if case in skip_reasons:
            status, reason = skip_reasons[case]
            rows.append(case_row(case, CaseResult(status=status, reason=reason), target))  # type: ignore[arg-type]
            continue
        result = by_case.get(case, CaseResult(status="failed", reason="not run"))
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
        worst = max(r["machine_load"]["other_processes"] for r in busy)
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
            "note": f"{len(images)} real photographs from {display_path(config.images)} (the lab's published set had {LAB_IMAGES} images)",
        },
        "results": rows,
        "verdicts": verdicts,
        "reference": references,
        "lab_method": lab,
        "codec_baseline": codec,
        "notes": notes,
        "samples": samples,
    }


def _lab_entry(spec: LabSpec, result: JobResult) -> dict[str, Any]:
    lab = result.figures.get("lab") or None
    pipe = result.figures.get("pipeline") or None
    entry: dict[str, Any] = {
        "model": spec.model,
        "weights": spec.weights,
        "weights_note": RANDOM_NOTE if spec.weights == "random" else None,
        "device": spec.device,
        "status": result.status,
        "reason": result.reason or "; ".join(f"{k}: {v}" for k, v in result.errors.items()) or None,
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
        notes.append(f"Image set: {len(images)} real photographs; the lab's published comparison used {LAB_IMAGES}.")
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
