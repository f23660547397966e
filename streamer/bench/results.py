"""Typed bench jobs and results: what the runner hands a worker and what the worker hands back.

A job is a :class:`CaseSpec` (one model/backend/precision/device/batch case)
or one of the side jobs (:class:`ReferenceSpec`, :class:`LabSpec`,
:class:`CodecSpec`); the worker reads it from JOB.json and writes a
:class:`CaseResult` (or a :class:`JobResult` for side jobs) to RESULT.json.
Every type has ``to_json`` / ``from_json``; a figure that was not measured is
None.  Statistics (mean, std, percentiles) stay the plain mapping that
:func:`streamer.stats.summarize` returns, typed :data:`Stats`.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, TypeVar, Union

from typing_extensions import Self

from streamer.bench.config import Case
from streamer.stats import Stats

T = TypeVar("T", bound="JsonRecord")
Status = Literal["ok", "partial", "skipped", "failed"]


def _dataclass_in(hint: Any) -> type | None:
    """The dataclass in ``hint`` (``X``, ``X | None``), else None."""
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return hint
    origin = typing.get_origin(hint)
    if origin is Union or origin is types.UnionType:
        for arg in typing.get_args(hint):
            found = _dataclass_in(arg)
            if found is not None:
                return found
    return None


def to_json(value: Any) -> Any:
    """``value`` with every dataclass turned into a dict (recursively), ready for :func:`json.dumps`."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_json(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    return value


def from_json(cls: type[T], data: dict[str, Any]) -> T:
    """Build ``cls`` from its JSON dict: nested dataclasses are rebuilt, unknown keys ignored, missing ones defaulted."""
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if f.name not in data:
            continue
        value = data[f.name]
        inner = _dataclass_in(hints[f.name])
        kwargs[f.name] = from_json(inner, value) if inner is not None and isinstance(value, dict) else value
    return cls(**kwargs)


class JsonRecord:
    """``to_json`` / ``from_json`` for a dataclass."""

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = to_json(self)
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Self:
        return from_json(cls, data)


# ----- jobs -----


@dataclass
class CaseSpec(JsonRecord):
    """One case for a worker: what to load, where its inputs are, what to measure."""

    kind: ClassVar[str] = "case"
    key: str
    label: str
    model: str
    weights: str
    backend: str
    precision: str
    device: str
    batch: int
    source: str
    work_dir: str
    repeats: int
    warmup: int
    sink: str
    cuda_graphs: bool = False
    channels_last: bool = False
    cache_dir: str | None = None
    workspace_mb: int | None = None
    calib_dir: str | None = None
    threads: int | None = None
    source_fps: float | None = None
    source_frames: int | None = None
    frame_size: list[int] | None = None
    max_frames: int | None = None
    target_fps: float | None = None
    realtime: bool = False
    reference_dir: str | None = None
    labels: dict[str, list[str]] = field(default_factory=dict)


@dataclass
class ReferenceSpec(JsonRecord):
    """PyTorch fp32 on the CPU over the image folder: the logits every case is compared with."""

    kind: ClassVar[str] = "reference"
    model: str
    weights: str
    images: list[str]
    out_dir: str


@dataclass
class LabSpec(JsonRecord):
    """The reference script (one image at a time) against the pipeline over the same images."""

    kind: ClassVar[str] = "lab"
    model: str
    weights: str
    device: str
    images: list[str]
    images_dir: str
    repeats: int
    warmup: int
    work_dir: str
    threads: int | None = None
    pipeline_config: dict[str, Any] = field(default_factory=dict)


@dataclass
class CodecSpec(JsonRecord):
    """Decode-only and encode-only rates of the source."""

    kind: ClassVar[str] = "codec"
    source: str
    repeats: int
    work_dir: str
    max_frames: int | None = None


JobSpec = CaseSpec | ReferenceSpec | LabSpec | CodecSpec


@dataclass
class Job:
    """One planned job: what the progress shows, what the worker gets, and the case it measures (None: a side job)."""

    label: str
    spec: JobSpec
    case: Case | None = None

JOB_KINDS: dict[str, type[JsonRecord]] = {c.kind: c for c in (CaseSpec, ReferenceSpec, LabSpec, CodecSpec)}


def job_to_json(spec: JobSpec) -> dict[str, Any]:
    return {"kind": spec.kind, **spec.to_json()}


def job_from_json(data: dict[str, Any]) -> JobSpec:
    cls = JOB_KINDS.get(str(data.get("kind")))
    if cls is None:
        raise ValueError(f"unknown job kind {data.get('kind')!r}")
    spec: JobSpec = cls.from_json(data)  # type: ignore[assignment]
    return spec


# ----- results -----


@dataclass
class LoadFigures(JsonRecord):
    """Cold and warm load (see :mod:`streamer.bench.load`)."""

    cold_s: float | None = None
    warm_s: float | None = None
    cold_ready_s: float | None = None
    warm_ready_s: float | None = None
    cuda_context_s: float | None = None
    engine_build_s: float | None = None
    cold_cache_hit: bool | None = None
    warm_cache_hit: bool | None = None
    cache_dir_fresh: bool | None = None
    engine_file: str | None = None
    engine_file_bytes: int | None = None
    trt_device_memory_bytes: int | None = None


@dataclass
class NetworkFigures(JsonRecord):
    """The network alone: ``infer()`` on preprocessed batches (see :func:`streamer.bench.latency.time_network`)."""

    timer: str
    per_call: str
    latency_ms: Stats
    latency_wall_ms: Stats
    per_image_ms: float | None
    throughput_fps: float | None
    throughput_fps_std: float | None
    first_infer_ms: float
    first_infer_wall_ms: float
    calls_per_repeat: int
    samples: list[float] = field(default_factory=list)
    """Every timed call (ms): kept in samples.json, not report.json."""


@dataclass
class PipelineFigures(JsonRecord):
    """The whole pipeline over the source, stage by stage (see :func:`streamer.bench.latency.summarize_pipeline`)."""

    sink: str
    runs: int
    frames_per_run: int
    fps: Stats
    fps_of: str
    render_fps: Stats
    frame_interval_ms: Stats
    stages_ms: dict[str, Stats]
    serial_ms_per_frame: float | None
    slowest_stage: str | None
    slowest_stage_ms: float | None
    thread_ms_per_frame: dict[str, float]
    busiest_thread: str | None
    busiest_thread_ms: float | None
    wall_s: Stats
    start_to_first_frame_ms: Stats
    capture_to_render_ms: Stats
    frame_interval_samples_ms: list[float] = field(default_factory=list)
    """Every frame interval (ms): kept in samples.json, not report.json."""


@dataclass
class MemoryFigures(JsonRecord):
    """Memory as the OS and the GPU driver see it (see :mod:`streamer.bench.memory`)."""

    host_peak_mb: float | None = None
    host_app_peak_mb: float | None = None
    host_baseline_mb: float | None = None
    host_peak_by_phase_mb: dict[str, float] = field(default_factory=dict)
    gpu_process_mb: float | None = None
    gpu_process_by_phase_mb: dict[str, float] | None = None
    gpu_method: str | None = None
    gpu_note: str | None = None
    torch_max_allocated_mb: float | None = None
    torch_max_allocated_by_phase_mb: dict[str, float] | None = None
    torch_max_reserved_mb: float | None = None
    unified_memory_mb: float | None = None
    engine_file_mb: float | None = None
    trt_device_memory_mb: float | None = None
    cache_dir_mb: float | None = None


@dataclass
class Parity(JsonRecord):
    """The change in the outputs against PyTorch fp32 on the CPU (see :mod:`streamer.bench.diff`)."""

    metrics: dict[str, float]
    labelled_top1: dict[str, Any] | None = None


@dataclass
class Replay(JsonRecord):
    """What the live replay measured (``report.json``: ``results[].realtime`` minus the verdict fields)."""

    target_fps: float
    frames_offered: int
    frames_processed: int
    dropped: int
    dropped_fraction: float | None
    sustained_fps: float | None
    latency_p50_ms: float | None
    latency_p99_ms: float | None
    latency_max_ms: float | None


@dataclass
class Verdict(JsonRecord):
    frame_budget_ms: float
    headroom_p99: float | None
    capable: bool | None
    """True: real-time; False: not; None: no live replay, so no verdict."""
    failed: list[str]
    """What failed: "replay" and/or "headroom" (empty when real-time or not judged)."""
    busiest_thread: str | None
    busiest_thread_ms: float | None
    slowest_stage: str | None
    slowest_stage_ms: float | None
    verdict: str


@dataclass
class CaseResult(JsonRecord):
    """What a worker measured for one case; every section is None when it was not measured."""

    status: Status = "ok"
    reason: str | None = None
    errors: dict[str, str] = field(default_factory=dict)
    backend_description: str | None = None
    load: LoadFigures | None = None
    network: NetworkFigures | None = None
    parity: Parity | None = None
    pipeline: PipelineFigures | None = None
    replay: Replay | None = None
    memory: MemoryFigures | None = None
    jetson: dict[str, Any] | None = None
    """:meth:`streamer.telemetry.jetson.JetsonSampler.summary` (None off a Jetson)."""
    machine_load: dict[str, float | None] | None = None
    attempts: int | None = None
    job_seconds: float | None = None

    @property
    def measured(self) -> bool:
        return self.status in ("ok", "partial")

    @property
    def other_processes(self) -> float:
        """Share of all cores other processes used during the case (0 when unknown or not measured)."""
        if not self.measured or not self.machine_load:
            return 0.0
        return float(self.machine_load.get("other_processes") or 0.0)


@dataclass
class JobResult(JsonRecord):
    """What a side job (reference, reference script, codec baseline) produced: its figures as written."""

    status: Status = "ok"
    reason: str | None = None
    errors: dict[str, str] = field(default_factory=dict)
    figures: dict[str, Any] = field(default_factory=dict)
    job_seconds: float | None = None


__all__ = [
    "CaseResult", "CaseSpec", "CodecSpec", "Job", "JobResult", "JobSpec", "LabSpec", "LoadFigures", "MemoryFigures",
    "NetworkFigures", "Parity", "PipelineFigures", "ReferenceSpec", "Replay", "Verdict", "job_from_json", "job_to_json",
]  # fmt: skip
