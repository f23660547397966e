"""Runs a bench: plans the jobs, runs each in a fresh worker process, assembles the report.

Order: the PyTorch fp32 CPU reference logits for each model with real
weights (every case compares against them), the cases, the lab's method and
the pipeline over the image folder, and the decode/encode baseline.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from engines.errors import ConfigError, SinkError
from streamer.bench.assemble import BUSY_THRESHOLD, Report
from streamer.bench.config import BenchConfig, Case
from streamer.bench.progress import BenchProgress
from streamer.bench.results import (
    CaseResult,
    CaseSpec,
    CodecSpec,
    Job,
    JobResult,
    LabSpec,
    ReferenceSpec,
    job_to_json,
)
from streamer.bench.worker import PROGRESS_PREFIX

REPORT_FILES = ("report.md", "report.json", "report.csv")
AnyResult = CaseResult | JobResult


def prepare_report_dir(path: Path, overwrite: bool) -> None:
    """Check that DIR can take a report; nothing in it is touched until the new report is complete."""
    if path.exists() and not path.is_dir():
        raise SinkError(f"{path}: exists and is not a folder")
    if path.is_dir() and any((path / name).exists() for name in REPORT_FILES) and not overwrite:
        raise SinkError(f"{path} already holds a report; pass --overwrite to replace it")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SinkError(f"{path}: cannot create the report folder ({exc.strerror})") from exc
    if not os.access(path, os.W_OK | os.X_OK):
        raise SinkError(f"{path}: report folder is not writable")


def lock_report_dir(path: Path) -> Any:
    """Hold DIR for this run, so two benches never write one report folder at once."""
    import filelock

    lock = filelock.FileLock(str(path / ".bench.lock"))
    try:
        lock.acquire(timeout=0)
    except filelock.Timeout:
        raise SinkError(f"{path}: another streamer bench is writing a report there") from None
    return lock


def publish(report: Report, work: Path, report_dir: Path, overwrite: bool) -> None:
    """Write the finished report into DIR: plots, report.md/json/csv, samples.json and the workers' log."""
    from streamer.bench.plots import write_plots
    from streamer.bench.report import write_reports

    if overwrite:
        for old in report_dir.glob("*.png"):
            old.unlink()
    write_plots(report, work, report_dir)
    write_reports(report, report_dir)
    shutil.copyfile(work / "bench.log", report_dir / "bench.log")


def precheck(case: Case, calib_dir: Path | None = None) -> tuple[str, str] | None:
    """("skipped" | "failed", reason) when this case cannot run, found without starting it (None: try it).

    A backend whose packages are installed but whose module does not import is
    a failure (our code is broken), not a skip.  What the backend refuses for the
    case's options is its own :meth:`~engines.backends.base.Backend.unsupported`.
    """
    from engines.backends import backend_class, backend_installed
    from engines.errors import BackendUnavailable

    skip = "skipped"
    if not backend_installed(case.backend):
        try:
            backend_class(case.backend)
        except BackendUnavailable as exc:
            return skip, str(exc)
        return skip, f"backend {case.backend!r} is not installed"
    try:
        backend_class(case.backend)
    except ImportError as exc:
        return "failed", f"backend {case.backend!r}: its module does not import ({type(exc).__name__}: {exc})"
    if case.device != "cpu":
        import torch

        if not torch.cuda.is_available():
            return skip, f"device {case.device} requested but CUDA is not available"
    from engines.backends.base import BackendOptions

    options = BackendOptions.for_batch(
        case.batch, device=case.device, precision=case.precision, calib_dir=calib_dir, **case.option_fields()
    )
    reason = backend_class(case.backend).unsupported(options)
    if reason is not None:
        return skip, reason
    if options.fused and case.model.name != "alexnet":
        return skip, f"the fused variant rewrites alexnet only, not {case.model.name}"
    return None


def source_info(source: Path) -> dict[str, Any]:
    from streamer.sources import SourceOptions, VideoFileSource, open_source

    src = open_source(str(source), SourceOptions())
    try:
        return {
            "path": str(source),
            "kind": src.kind,
            "video": isinstance(src, VideoFileSource),
            "fps": src.fps if isinstance(src, VideoFileSource) else None,
            "fps_trusted": src.fps_trusted,
            "frames": src.total_hint,
            "frame_size": list(src.frame_size) if src.frame_size else None,
        }
    finally:
        src.close()


def _failed(job: Job, reason: str) -> AnyResult:
    return CaseResult(status="failed", reason=reason) if job.case is not None else JobResult(status="failed", reason=reason)


def _spawn(job: Job, index: int, work: Path, log_path: Path, ui: BenchProgress, timeout_s: float) -> AnyResult:
    job_path = work / f"job-{index:03d}.json"
    result_path = work / f"result-{index:03d}.json"
    err_path = work / f"job-{index:03d}.log"
    job_path.write_text(json.dumps(job_to_json(job.spec)), encoding="utf-8")
    # The worker is this interpreter running the installed package (no PYTHONPATH of a source checkout added).
    env = os.environ.copy()
    env["PYTHONUNBUFFERED"] = "1"
    cmd = [sys.executable, "-m", "streamer.bench.worker", str(job_path), str(result_path)]
    timed_out = threading.Event()
    with open(err_path, "w", encoding="utf-8") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True, env=env)

        def kill() -> None:
            timed_out.set()
            proc.kill()

        timer = threading.Timer(timeout_s, kill)
        timer.start()
        other: list[str] = []
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                if line.startswith(PROGRESS_PREFIX):
                    try:
                        msg = json.loads(line[len(PROGRESS_PREFIX) :])
                        ui.step(str(msg.get("phase", "")), int(msg.get("done", 0)), int(msg.get("total", 0)))
                    except (ValueError, TypeError):
                        pass
                else:
                    other.append(line)
            rc = proc.wait()
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        finally:
            timer.cancel()
    log_text = err_path.read_text(encoding="utf-8", errors="replace")
    with open(log_path, "a", encoding="utf-8") as fh:
        fh.write(f"\n===== {job.label} (exit {rc}) =====\n")
        if other:
            fh.write("".join(other))
        fh.write(log_text)
    if result_path.is_file():
        data = json.loads(result_path.read_text(encoding="utf-8"))
        return CaseResult.from_json(data) if job.case is not None else JobResult.from_json(data)
    if timed_out.is_set():
        return _failed(job, f"timed out after {timeout_s:.0f} s (--case-timeout)")
    tail = [ln for ln in log_text.strip().splitlines() if ln.strip()][-1:] or ["no output"]
    return _failed(job, f"worker exited with status {rc}: {tail[0][:300]}")


def _others(result: AnyResult) -> float:
    """Share of all cores other processes used during a measured case (0 when unknown or not measured)."""
    return result.other_processes if isinstance(result, CaseResult) else 0.0


LOAD_COST_S = {"torch": 8.0, "onnxruntime": 15.0, "tensorrt": 150.0, "torch2trt": 120.0}
"""Rough cost of one case's cold + warm load and process start, in seconds (a TensorRT build dominates)."""
FPS_GUESS = {"cpu": 15.0, "cuda": 150.0}
"""Rough frames per second of one pipeline pass, for the estimate only."""


def estimate_seconds(config: BenchConfig, jobs: list[Job], source: dict[str, Any], images: int) -> float:
    """A rough run time: per case, the loads plus (warm-up + repeats + network passes + live replay) passes over the frames."""
    frames = source.get("frames") or 300
    if config.max_frames is not None:
        frames = min(frames, config.max_frames)
    total = 0.0
    for job in jobs:
        spec = job.spec
        if isinstance(spec, CaseSpec):
            fps = FPS_GUESS["cpu" if spec.device == "cpu" else "cuda"]
            passes = 2 * spec.repeats + (1 if spec.realtime and spec.batch == 1 else 0)
            replay_s = frames / (spec.target_fps or spec.source_fps or 30.0) if spec.realtime and spec.batch == 1 else 0.0
            total += LOAD_COST_S.get(spec.backend, 15.0) + (spec.warmup + (passes - 1) * frames) / fps + replay_s
        elif isinstance(spec, LabSpec):
            total += 20.0 + 4 * spec.repeats * images / FPS_GUESS["cpu" if spec.device == "cpu" else "cuda"]
        elif isinstance(spec, CodecSpec):
            total += 2 * spec.repeats * frames / 200.0
        else:
            total += 20.0 + images
    return total


def describe_estimate(seconds: float, jobs: list[Job]) -> str:
    cases = sum(1 for j in jobs if isinstance(j.spec, CaseSpec))
    when = f"{seconds / 60:.0f} min" if seconds >= 90 else f"{seconds:.0f} s"
    return f"streamer: {len(jobs)} jobs ({cases} cases); estimated run time about {when} (a rough guess from the number of cases, repeats and frames)"


def plan(
    config: BenchConfig, work: Path, source: dict[str, Any], images: list[Path], labels: dict[str, list[str]]
) -> tuple[list[Job], list[tuple[Case, tuple[str, str]]]]:
    from engines.backends.base import resolve_device_name
    from streamer.bench.reference import fastest_folder_config

    jobs: list[Job] = []
    skipped: list[tuple[Case, tuple[str, str]]] = []
    ref_dirs: dict[str, str] = {}
    for model in config.models:
        if model.random:
            continue
        out_dir = work / f"reference-{model.name}"
        ref_dirs[model.name] = str(out_dir)
        jobs.append(
            Job(
                f"{model.name} reference (torch fp32 cpu, {len(images)} images)",
                ReferenceSpec(model=model.name, weights=model.weights, images=[str(p) for p in images], out_dir=str(out_dir)),
            )
        )
    cache_root = config.cache_dir if config.cache_dir is not None else work / "cache"
    for case in config.cases():
        reason = precheck(case, config.calib_dir)
        if reason is not None:
            skipped.append((case, reason))
            continue
        case_cache = cache_root if config.cache_dir is not None else cache_root / case.key
        spec = CaseSpec(
            key=case.key,
            label=case.label,
            model=case.model.name,
            weights=case.model.weights,
            backend=case.backend,
            precision=case.precision,
            device=case.device,
            batch=case.batch,
            **case.option_fields(),
            cache_dir=str(case_cache),
            workspace_mb=config.workspace_mb,
            calib_dir=str(config.calib_dir) if config.calib_dir else None,
            threads=config.threads,
            source=str(config.source),
            source_fps=source.get("fps"),
            source_frames=source.get("frames"),
            frame_size=source.get("frame_size"),
            max_frames=config.max_frames,
            repeats=config.repeats,
            warmup=config.warmup,
            sink=config.sink,
            target_fps=config.target_fps,
            realtime=config.realtime and bool(source.get("video")) and (config.target_fps or source.get("fps")) is not None,
            reference_dir=ref_dirs.get(case.model.name),
            labels=labels,
            work_dir=str(work),
        )
        jobs.append(Job(case.label, spec, case))
    if config.lab_reference:
        for model in config.models:
            for device in config.devices:
                dev = resolve_device_name(device)
                jobs.append(
                    Job(
                        f"{model.name} reference script vs pipeline on {len(images)} images ({dev})",
                        LabSpec(
                            model=model.name,
                            weights=model.weights,
                            device=dev,
                            images=[str(p) for p in images],
                            images_dir=str(config.images),
                            repeats=config.repeats,
                            warmup=min(config.warmup, 3),
                            threads=config.threads,
                            pipeline_config=fastest_folder_config(dev),
                            work_dir=str(work / f"lab-{model.name}-{dev.replace(':', '')}"),
                        ),
                    )
                )
    if config.codec_baseline and source.get("video"):
        jobs.append(
            Job(
                "decode-only / encode-only baseline",
                CodecSpec(source=str(config.source), repeats=config.repeats, max_frames=config.max_frames, work_dir=str(work / "codec")),
            )
        )
    return jobs, skipped


def run_bench(config: BenchConfig, progress: bool = True) -> Report:
    """Run everything ``config`` asks for and write the report; returns the report dict."""
    from streamer.bench import environment
    from streamer.bench.assemble import assemble
    from streamer.sources import _image_paths_in

    prepare_report_dir(config.report_dir, config.overwrite)
    lock = lock_report_dir(config.report_dir)
    work = Path(tempfile.mkdtemp(prefix="streamer-bench-"))
    try:
        started = datetime.now(timezone.utc)
        t0 = time.perf_counter()
        source = source_info(config.source)
        if not config.images.is_dir():
            raise ConfigError(f"{config.images}: image folder not found (--images)")
        images = _image_paths_in(config.images)
        if not images:
            raise ConfigError(f"{config.images}: no images (--images)")
        from streamer.bench.reference import find_labels

        labels = {k: v for k, v in find_labels(config.images).items() if not k.startswith("_") and isinstance(v, list)}
        env = environment.collect(config.devices[0])
        checkout = environment.checkout_root()
        env["git"] = environment.git_state(checkout) if checkout is not None else None
        log_path = work / "bench.log"
        log_path.write_text(f"streamer bench log, {started.isoformat()}\n{config.command}\n", encoding="utf-8")
        jobs, skipped = plan(config, work, source, images, labels)
        if progress:
            print(describe_estimate(estimate_seconds(config, jobs, source, len(images)), jobs), file=sys.stderr, flush=True)
        results: list[tuple[Job, AnyResult]] = []
        known_skips: dict[str, str] = {}
        with BenchProgress(len(jobs), enabled=progress) as ui:
            for i, job in enumerate(jobs):
                ui.start_job(i, job.label)
                # A configuration the backend refused at one batch size is refused at every batch size.
                skip_key = job.case.key.rsplit("-b", 1)[0] if job.case is not None else None
                result: AnyResult
                if skip_key is not None and skip_key in known_skips:
                    result = CaseResult(status="skipped", reason=known_skips[skip_key])
                else:
                    result = _spawn(job, i, work, log_path, ui, config.case_timeout_s)
                    attempts = 1
                    while job.case is not None and attempts <= config.retry_busy and _others(result) > BUSY_THRESHOLD:
                        ui.note(f"{job.label}: other processes used {_others(result) * 100:.0f} % of the CPU; measuring again")
                        again = _spawn(job, i, work, log_path, ui, config.case_timeout_s)
                        attempts += 1
                        if isinstance(again, CaseResult) and again.measured and _others(again) < _others(result):
                            result = again
                    if isinstance(result, CaseResult):
                        result.attempts = attempts
                if skip_key is not None and result.status == "skipped":
                    known_skips[skip_key] = str(result.reason)
                ui.end_job(result.status, result.reason)
                results.append((job, result))
        report = assemble(config, env, source, images, labels, results, skipped, work)
        report["started"] = started.isoformat(timespec="seconds")
        report["duration_s"] = time.perf_counter() - t0
        publish(report, work, config.report_dir, config.overwrite)
        return report
    finally:
        shutil.rmtree(work, ignore_errors=True)
        lock.release()
        try:
            (config.report_dir / ".bench.lock").unlink()
        except OSError:
            pass


__all__ = ["estimate_seconds", "run_bench"]
