"""One bench job in a fresh process: ``python -m streamer.bench.worker JOB.json RESULT.json``.

Running every case in its own process keeps each case's numbers its own: the
cold load is the first in the process, and peak memory (``ru_maxrss``, the
GPU memory the driver attributes to the process) is not inherited from the
cases before it.  Progress goes to stdout as ``@@bench {json}`` lines; logs go
to stderr; the result is written to RESULT.json, also when the job fails.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable

PROGRESS_PREFIX = "@@bench "

log = logging.getLogger("streamer.bench")


def emit(phase: str, done: int = 0, total: int = 0) -> None:
    if done == 0:
        log.info("phase: %s", phase)
    sys.stdout.write(PROGRESS_PREFIX + json.dumps({"phase": phase, "done": done, "total": total}) + "\n")
    sys.stdout.flush()


def classify(exc: BaseException) -> tuple[str, str]:
    """("skipped" | "failed", one-line reason).

    Skips: a configuration the backend refuses, a missing optional dependency or
    device.  An import error inside this project's own code is a failure.
    """
    from engines.errors import BackendUnavailable, ConfigError

    chain: list[BaseException] = []
    cur: BaseException | None = exc
    while cur is not None and len(chain) < 5:
        chain.append(cur)
        cur = cur.__cause__
    for e in chain:
        if isinstance(e, (BackendUnavailable, ConfigError)):
            return "skipped", _one_line(e)
        if isinstance(e, ModuleNotFoundError) and not (e.name or "").split(".")[0] in ("engines", "streamer"):
            return "skipped", f"missing package: {_one_line(e)}"
    return "failed", f"{type(exc).__name__}: {_one_line(exc)}"


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _section(errors: dict[str, str], name: str, fn: Callable[[], Any]) -> Any:
    """Run one measurement; a failure is recorded for that section and the case goes on."""
    try:
        return fn()
    except Exception as exc:  # noqa: BLE001 - reported in the row, with the traceback in the log
        traceback.print_exc(file=sys.stderr)
        errors[name] = f"{type(exc).__name__}: {_one_line(exc)}"
        return None


def run_case(job: dict[str, Any]) -> dict[str, Any]:
    import numpy as np
    import torch

    from engines.backends import create_backend
    from engines.backends.base import Backend, BackendOptions, resolve_device_name
    from engines.models import WeightsChoice, get_spec
    from streamer.bench import diff as diffmod
    from streamer.bench.environment import CpuUsage
    from streamer.bench.latency import run_pipeline, source_batches, summarize_pipeline, time_network
    from streamer.bench.load import init_cuda_context, measure_loads
    from streamer.bench.memory import MB, GpuProbe, MemorySampler, dir_size_bytes, host_peak_rss_mb, host_rss_mb, is_jetson
    from streamer.bench.realtime import replay_summary

    device = resolve_device_name(job["device"])
    cuda = device.startswith("cuda")
    errors: dict[str, str] = {}
    row: dict[str, Any] = {"status": "ok", "reason": None, "errors": errors}
    load: dict[str, Any] = {"cuda_context_s": None}
    if cuda:
        if not torch.cuda.is_available():
            return {"status": "skipped", "reason": f"device {device} requested but CUDA is not available"}
        load["cuda_context_s"] = init_cuda_context(device)
    usage = CpuUsage()
    host_baseline = host_rss_mb()
    probe = GpuProbe.create(device) if cuda else None
    sampler = MemorySampler(probe, torch_device=device if cuda else None).start()
    cache_dir = Path(job["cache_dir"]) if job.get("cache_dir") else None
    cache_was_empty = cache_dir is None or not cache_dir.exists() or not any(cache_dir.iterdir())
    options = BackendOptions.for_batch(
        job["batch"],
        device=device,
        precision=job["precision"],
        cache_dir=cache_dir,
        workspace_mb=job.get("workspace_mb"),
        calib_dir=Path(job["calib_dir"]) if job.get("calib_dir") else None,
        cuda_graphs=bool(job.get("cuda_graphs")),
        channels_last=bool(job.get("channels_last")),
        threads=job.get("threads"),
    )
    spec = get_spec(job["model"])
    weights = WeightsChoice.parse(job["weights"])
    warning = "RANDOM WEIGHTS - for timing only, labels are meaningless" if weights.kind == "random" else None
    try:
        emit("load (cold, then warm)")
        figures, inference = measure_loads(
            lambda: create_backend(job["backend"], spec, weights, options),
            sampler,
            progress=lambda phase, done, total: emit(f"build: {phase}", done, total),
        )
    except Exception as exc:  # noqa: BLE001 - classified below
        status, reason = classify(exc)
        if status == "failed":
            traceback.print_exc(file=sys.stderr)
        sampler.stop()
        return {"status": status, "reason": reason}
    load.update(figures)
    load["cache_dir_fresh"] = cache_was_empty
    row["load"] = load
    row["backend_description"] = inference.loaded.description if inference.loaded else ""
    from streamer.telemetry.jetson import JetsonSampler

    jetson = JetsonSampler.create()  # None off a Jetson; samples the measured phases below
    if jetson is not None:
        jetson.start()
    try:
        sampler.phase("network")
        emit("network alone: preprocessing the source", 0, job["repeats"])

        def network(backend: Backend) -> dict[str, Any]:
            batches = source_batches(backend, job["source"], job["batch"], job.get("max_frames"))
            try:
                return time_network(backend, batches, job["repeats"], job["warmup"], step=emit)
            finally:
                del batches
                if cuda:
                    torch.cuda.empty_cache()

        # On the worker's thread: the one that loaded the backend and runs the pipelines below.
        row["network"] = _section(errors, "network", lambda: inference.call(network).result())

        def output_change(backend: Backend) -> dict[str, Any] | None:
            ref_dir = job.get("reference_dir")
            if not ref_dir:
                return None
            inputs = np.load(Path(ref_dir) / "inputs.npy")
            reference = np.load(Path(ref_dir) / "reference.npy")
            names = json.loads((Path(ref_dir) / "names.json").read_text(encoding="utf-8"))
            dtype = torch.float16 if backend.input_dtype_name == "fp16" else torch.float32
            outs = []
            for i in range(0, len(inputs), job["batch"]):
                x = torch.from_numpy(inputs[i : i + job["batch"]]).to(backend.input_device, dtype=dtype)
                outs.append(backend.infer(x).float().cpu().numpy())
            logits = np.concatenate(outs)
            np.save(Path(job["work_dir"]) / f"{job['key']}-diff.npy", (logits - reference).astype(np.float32))
            metrics = diffmod.compare(logits, reference)
            labelled = diffmod.labelled_top1(logits, names, job.get("labels") or {})
            return {"metrics": metrics, "labelled_top1": labelled}

        sampler.phase("diff")
        emit("output change")
        row["diff"] = _section(errors, "diff", lambda: inference.call(output_change).result())

        common: dict[str, Any] = dict(
            sink_kind=job["sink"],
            out_dir=Path(job["work_dir"]),
            fps=job.get("source_fps") or 30.0,
            batch=job["batch"],
            warning=warning,
        )

        def pipeline() -> dict[str, Any]:
            if job["warmup"] > 0:
                run_pipeline(job["source"], inference, max_frames=job["warmup"], **common)
            runs = []
            for r in range(job["repeats"]):
                emit("pipeline", r, job["repeats"])
                runs.append(run_pipeline(job["source"], inference, max_frames=job.get("max_frames"), **common))
            emit("pipeline", job["repeats"], job["repeats"])
            out = summarize_pipeline(runs, job["sink"])
            out["frame_interval_samples_ms"] = [(b - a) * 1000.0 for r in runs for a, b in zip(r.recorder.times, r.recorder.times[1:])]
            return out

        sampler.phase("pipeline")
        row["pipeline"] = _section(errors, "pipeline", pipeline)

        def replay() -> dict[str, Any] | None:
            if not job.get("realtime") or job["batch"] != 1:
                return None
            emit("live replay")
            target = job.get("target_fps") or job["source_fps"]
            run = run_pipeline(job["source"], inference, max_frames=job.get("max_frames"), realtime=True, target_fps=target, **common)
            return replay_summary(run, target)

        sampler.phase("realtime")
        row["realtime"] = _section(errors, "realtime", replay)
    finally:
        sampler.stop()
        if jetson is not None:
            jetson.stop()
            row["jetson"] = jetson.summary()
        row["machine_load"] = usage.result()
        engine_dir_bytes = dir_size_bytes(cache_dir) if cache_was_empty else None
        app_host = sampler.peak_of(sampler.host_peaks)
        memory: dict[str, Any] = {
            "host_peak_mb": host_peak_rss_mb(),
            "host_app_peak_mb": app_host,
            "host_baseline_mb": host_baseline,
            "host_peak_by_phase_mb": dict(sampler.host_peaks),
            "gpu_process_mb": sampler.peak_of(sampler.gpu_peaks),
            "gpu_process_by_phase_mb": dict(sampler.gpu_peaks) or None,
            "gpu_method": probe.method if probe else None,
            "gpu_note": probe.note if probe else None,
            "torch_max_allocated_mb": sampler.peak_of(sampler.torch_peaks) if cuda else None,
            "torch_max_allocated_by_phase_mb": dict(sampler.torch_peaks) or None,
            "torch_max_reserved_mb": (torch.cuda.max_memory_reserved(device) / MB) if cuda else None,
            "unified_memory_mb": app_host if is_jetson() else None,
            "engine_file_mb": (load["engine_file_bytes"] / MB) if load.get("engine_file_bytes") else None,
            "trt_device_memory_mb": (load["trt_device_memory_bytes"] / MB) if load.get("trt_device_memory_bytes") else None,
            "cache_dir_mb": (engine_dir_bytes / MB) if engine_dir_bytes else None,
        }
        row["memory"] = memory
        inference.close()
    if errors:
        row["status"] = "partial"
        row["reason"] = "; ".join(f"{k}: {v}" for k, v in errors.items())
    return row


def run_job(job: dict[str, Any]) -> dict[str, Any]:
    kind = job["kind"]
    if kind == "case":
        return run_case(job)
    if kind == "reference":
        from streamer.bench.reference import compute_reference

        emit("reference (torch fp32 cpu)")
        return {"status": "ok", **compute_reference(job["model"], job["weights"], [Path(p) for p in job["images"]], Path(job["out_dir"]))}
    if kind == "lab":
        from streamer.bench.reference import lab_method, pipeline_folder

        images = [Path(p) for p in job["images"]]
        errors: dict[str, str] = {}
        out: dict[str, Any] = {"status": "ok", "errors": errors}
        out["lab"] = _section(
            errors,
            "lab",
            lambda: lab_method(job["model"], job["weights"], job["device"], images, job["repeats"], job["warmup"], Path(job["work_dir"]) / "lab", job.get("threads"), emit),
        )
        out["pipeline"] = _section(
            errors,
            "pipeline",
            lambda: pipeline_folder(job["model"], job["weights"], job["device"], Path(job["images_dir"]), job["repeats"], Path(job["work_dir"]), job.get("threads"), emit, job.get("pipeline_config")),
        )
        if errors:
            out["status"] = "partial"
        return out
    if kind == "codec":
        from streamer.bench.codec import decode_encode

        return {"status": "ok", **decode_encode(Path(job["source"]), job["repeats"], Path(job["work_dir"]), job.get("max_frames"), emit)}
    raise ValueError(f"unknown job kind {kind!r}")


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m streamer.bench.worker JOB.json RESULT.json", file=sys.stderr)
        return 2
    os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    for name in ("streamer", "engines"):
        logging.getLogger(name).setLevel(logging.INFO)
    job = json.loads(Path(args[0]).read_text(encoding="utf-8"))
    start = time.perf_counter()
    try:
        result = run_job(job)
    except Exception as exc:  # noqa: BLE001 - every failure becomes a result the report can show
        status, reason = classify(exc)
        if status == "failed":
            traceback.print_exc(file=sys.stderr)
        result = {"status": status, "reason": reason}
    result["job_seconds"] = time.perf_counter() - start
    tmp = Path(args[1]).with_suffix(".tmp")
    tmp.write_text(json.dumps(result, default=_json_default), encoding="utf-8")
    os.replace(tmp, args[1])
    return 0


def _json_default(value: Any) -> Any:
    import numpy as np

    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


if __name__ == "__main__":
    sys.exit(main())
