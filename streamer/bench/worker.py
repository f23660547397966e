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
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from streamer.bench.results import (
    CaseResult,
    CaseSpec,
    JobResult,
    JobSpec,
    LabSpec,
    MemoryFigures,
    NetworkFigures,
    Parity,
    PipelineFigures,
    ReferenceSpec,
    Replay,
    Status,
    job_from_json,
)

PROGRESS_PREFIX = "@@bench "
T = TypeVar("T")

log = logging.getLogger("streamer.bench")


def emit(phase: str, done: int = 0, total: int = 0) -> None:
    if done == 0:
        log.info("phase: %s", phase)
    sys.stdout.write(PROGRESS_PREFIX + json.dumps({"phase": phase, "done": done, "total": total}) + "\n")
    sys.stdout.flush()


def classify(exc: BaseException) -> tuple[Status, str]:
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


def _section(errors: dict[str, str], name: str, fn: Callable[[], T]) -> T | None:
    """Run one measurement; a failure is recorded for that section and the case goes on."""
    try:
        return fn()
    except Exception as exc:  # noqa: BLE001 - reported in the row, with the traceback in the log
        traceback.print_exc(file=sys.stderr)
        errors[name] = f"{type(exc).__name__}: {_one_line(exc)}"
        return None


def run_case(job: CaseSpec) -> CaseResult:
    import numpy as np
    import torch

    from engines.backends import create_backend
    from engines.backends.base import Backend, BackendOptions, resolve_device_name
    from engines.models import WeightsChoice, get_spec
    from streamer.bench import diff as diffmod
    from streamer.bench.environment import CpuUsage
    from streamer.bench.latency import (
        run_pipeline,
        source_batches,
        summarize_pipeline,
        time_network,
    )
    from streamer.bench.load import init_cuda_context, measure_loads
    from streamer.bench.memory import (
        MB,
        GpuProbe,
        MemorySampler,
        dir_size_bytes,
        host_peak_rss_mb,
        host_rss_mb,
        is_jetson,
    )
    from streamer.bench.realtime import replay_summary
    from streamer.telemetry.jetson import JetsonSampler

    device = resolve_device_name(job.device)
    cuda = device.startswith("cuda")
    result = CaseResult()
    errors = result.errors
    cuda_context_s = None
    if cuda:
        if not torch.cuda.is_available():
            return CaseResult(status="skipped", reason=f"device {device} requested but CUDA is not available")
        cuda_context_s = init_cuda_context(device)
    usage = CpuUsage()
    host_baseline = host_rss_mb()
    probe = GpuProbe.create(device) if cuda else None
    sampler = MemorySampler(probe, torch_device=device if cuda else None).start()
    cache_dir = Path(job.cache_dir) if job.cache_dir else None
    cache_was_empty = cache_dir is None or not cache_dir.exists() or not any(cache_dir.iterdir())
    options = BackendOptions.for_batch(
        job.batch,
        device=device,
        precision=job.precision,
        cache_dir=cache_dir,
        workspace_mb=job.workspace_mb,
        calib_dir=Path(job.calib_dir) if job.calib_dir else None,
        cuda_graphs=job.cuda_graphs,
        channels_last=job.channels_last,
        threads=job.threads,
    )
    spec = get_spec(job.model)
    weights = WeightsChoice.parse(job.weights)
    warning = "RANDOM WEIGHTS - for timing only, labels are meaningless" if weights.kind == "random" else None
    try:
        emit("load (cold, then warm)")
        load, inference = measure_loads(
            lambda: create_backend(job.backend, spec, weights, options),
            sampler,
            progress=lambda phase, done, total: emit(f"build: {phase}", done, total),
        )
    except Exception as exc:  # noqa: BLE001 - classified below
        status, reason = classify(exc)
        if status == "failed":
            traceback.print_exc(file=sys.stderr)
        sampler.stop()
        return CaseResult(status=status, reason=reason)
    load.cuda_context_s = cuda_context_s
    load.cache_dir_fresh = cache_was_empty
    result.load = load
    result.backend_description = inference.loaded.description if inference.loaded else ""
    jetson = JetsonSampler.create()  # None off a Jetson; samples the measured phases below
    if jetson is not None:
        jetson.start()
    try:
        sampler.phase("network")
        emit("network alone: preprocessing the source", 0, job.repeats)

        def network(backend: Backend) -> NetworkFigures:
            batches = source_batches(backend, job.source, job.batch, job.max_frames)
            try:
                return time_network(backend, batches, job.repeats, job.warmup, step=emit)
            finally:
                del batches
                if cuda:
                    torch.cuda.empty_cache()

        # On the worker's thread: the one that loaded the backend and runs the pipelines below.
        result.network = _section(errors, "network", lambda: inference.call(network).result())

        def output_change(backend: Backend) -> Parity | None:
            if not job.reference_dir:
                return None
            ref_dir = Path(job.reference_dir)
            inputs = np.load(ref_dir / "inputs.npy")
            reference = np.load(ref_dir / "reference.npy")
            names = json.loads((ref_dir / "names.json").read_text(encoding="utf-8"))
            dtype = torch.float16 if backend.input_dtype_name == "fp16" else torch.float32
            outs = []
            for i in range(0, len(inputs), job.batch):
                x = torch.from_numpy(inputs[i : i + job.batch]).to(backend.input_device, dtype=dtype)
                outs.append(backend.infer(x).float().cpu().numpy())
            logits = np.concatenate(outs)
            np.save(Path(job.work_dir) / f"{job.key}-diff.npy", (logits - reference).astype(np.float32))
            return Parity(metrics=diffmod.compare(logits, reference), labelled_top1=diffmod.labelled_top1(logits, names, job.labels))

        sampler.phase("diff")
        emit("output change")
        result.parity = _section(errors, "diff", lambda: inference.call(output_change).result())

        common: dict[str, Any] = dict(sink_kind=job.sink, out_dir=Path(job.work_dir), fps=job.source_fps or 30.0, batch=job.batch, warning=warning)

        def pipeline() -> PipelineFigures:
            if job.warmup > 0:
                run_pipeline(job.source, inference, max_frames=job.warmup, **common)
            runs = []
            for r in range(job.repeats):
                emit("pipeline", r, job.repeats)
                runs.append(run_pipeline(job.source, inference, max_frames=job.max_frames, **common))
            emit("pipeline", job.repeats, job.repeats)
            return summarize_pipeline(runs, job.sink)

        sampler.phase("pipeline")
        result.pipeline = _section(errors, "pipeline", pipeline)

        def replay() -> Replay | None:
            target = job.target_fps or job.source_fps
            if not job.realtime or job.batch != 1 or target is None:
                return None
            emit("live replay")
            run = run_pipeline(job.source, inference, max_frames=job.max_frames, realtime=True, target_fps=target, **common)
            return replay_summary(run, target)

        sampler.phase("realtime")
        result.replay = _section(errors, "realtime", replay)
    finally:
        sampler.stop()
        if jetson is not None:
            jetson.stop()
            result.jetson = jetson.summary()
        result.machine_load = usage.result()
        engine_dir_bytes = dir_size_bytes(cache_dir) if cache_was_empty else None
        app_host = sampler.peak_of(sampler.host_peaks)
        result.memory = MemoryFigures(
            host_peak_mb=host_peak_rss_mb(),
            host_app_peak_mb=app_host,
            host_baseline_mb=host_baseline,
            host_peak_by_phase_mb=dict(sampler.host_peaks),
            gpu_process_mb=sampler.peak_of(sampler.gpu_peaks),
            gpu_process_by_phase_mb=dict(sampler.gpu_peaks) or None,
            gpu_method=probe.method if probe else None,
            gpu_note=probe.note if probe else None,
            torch_max_allocated_mb=sampler.peak_of(sampler.torch_peaks) if cuda else None,
            torch_max_allocated_by_phase_mb=dict(sampler.torch_peaks) or None,
            torch_max_reserved_mb=(torch.cuda.max_memory_reserved(device) / MB) if cuda else None,
            unified_memory_mb=app_host if is_jetson() else None,
            engine_file_mb=(load.engine_file_bytes / MB) if load.engine_file_bytes else None,
            trt_device_memory_mb=(load.trt_device_memory_bytes / MB) if load.trt_device_memory_bytes else None,
            cache_dir_mb=(engine_dir_bytes / MB) if engine_dir_bytes else None,
        )
        inference.close()
    if errors:
        result.status = "partial"
        result.reason = "; ".join(f"{k}: {v}" for k, v in errors.items())
    return result


def run_job(job: JobSpec) -> CaseResult | JobResult:
    if isinstance(job, CaseSpec):
        return run_case(job)
    if isinstance(job, ReferenceSpec):
        from streamer.bench.reference import compute_reference

        emit("reference (torch fp32 cpu)")
        return JobResult(figures=compute_reference(job.model, job.weights, [Path(p) for p in job.images], Path(job.out_dir)))
    if isinstance(job, LabSpec):
        from streamer.bench.reference import lab_method, pipeline_folder

        lab = job
        images = [Path(p) for p in lab.images]
        out = JobResult()
        out.figures["lab"] = _section(
            out.errors,
            "lab",
            lambda: lab_method(lab.model, lab.weights, lab.device, images, lab.repeats, lab.warmup, Path(lab.work_dir) / "lab", lab.threads, emit),
        )
        out.figures["pipeline"] = _section(
            out.errors,
            "pipeline",
            lambda: pipeline_folder(lab.model, lab.weights, lab.device, Path(lab.images_dir), lab.repeats, Path(lab.work_dir), lab.threads, emit, lab.pipeline_config),
        )
        if out.errors:
            out.status = "partial"
        return out
    from streamer.bench.codec import decode_encode

    return JobResult(figures=decode_encode(Path(job.source), job.repeats, Path(job.work_dir), job.max_frames, emit))


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
    job = job_from_json(json.loads(Path(args[0]).read_text(encoding="utf-8")))
    start = time.perf_counter()
    result: CaseResult | JobResult
    try:
        result = run_job(job)
    except Exception as exc:  # noqa: BLE001 - every failure becomes a result the report can show
        status, reason = classify(exc)
        if status == "failed":
            traceback.print_exc(file=sys.stderr)
        result = CaseResult(status=status, reason=reason) if isinstance(job, CaseSpec) else JobResult(status=status, reason=reason)
    result.job_seconds = time.perf_counter() - start
    tmp = Path(args[1]).with_suffix(".tmp")
    tmp.write_text(json.dumps(result.to_json(), default=_json_default), encoding="utf-8")
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
