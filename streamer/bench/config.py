"""What one ``streamer bench`` run measures: the validated settings and the list of cases.

A *case* is one row of the report: model x backend x precision x variant x
device x batch.  Each case runs in its own fresh Python process (see
:mod:`streamer.bench.runner`), so its load time is a first load in a process
and its peak memory is its own, not the running maximum of every case before it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engines.errors import ConfigError

VARIANTS: dict[str, dict[str, bool]] = {
    "eager": {},
    "cuda_graphs": {"cuda_graphs": True},
    "channels_last": {"channels_last": True},
    "cuda_graphs+channels_last": {"cuda_graphs": True, "channels_last": True},
    "fused": {"fused": True},
}
"""Torch-only variants added by ``--variants`` (BackendOptions fields they switch on); ``fused`` is AlexNet only."""
DEFAULT_VARIANTS = ("cuda_graphs", "channels_last")
SINKS = ("video", "null")
WEIGHTS_AUTO = "auto"
RANDOM_NOTE = "random weights: timing only"


def split_list(text: str, what: str) -> list[str]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise ConfigError(f"{what}: empty list")
    seen: list[str] = []
    for item in items:
        if item not in seen:
            seen.append(item)
    return seen


def parse_int_list(text: str, what: str) -> list[int]:
    out = []
    for item in split_list(text, what):
        try:
            value = int(item)
        except ValueError:
            raise ConfigError(f"{what}: expected integers, got {item!r}") from None
        if not 1 <= value <= 1024:
            raise ConfigError(f"{what}: must be between 1 and 1024, got {value}")
        out.append(value)
    return out


@dataclass(frozen=True)
class ModelChoice:
    """A model and the weights it is benchmarked with."""

    name: str
    weights: str
    """``imagenet``, ``random`` or a file path (what :class:`engines.models.WeightsChoice` parses)."""
    note: str | None = None
    """Why the weights differ from what was asked (``--weights auto`` fell back to random)."""

    @property
    def random(self) -> bool:
        return self.weights == "random"


@dataclass(frozen=True)
class Case:
    """One report row."""

    model: ModelChoice
    backend: str
    precision: str
    variant: str
    device: str
    batch: int

    @property
    def key(self) -> str:
        return f"{self.model.name}-{self.backend}-{self.precision}-{self.variant}-{self.device.replace(':', '')}-b{self.batch}"

    @property
    def label(self) -> str:
        variant = "" if self.variant == "eager" else f" +{self.variant}"
        return f"{self.model.name} {self.backend}{variant} {self.precision} {self.device} b{self.batch}"

    def option_fields(self) -> dict[str, bool]:
        return dict(VARIANTS[self.variant])


@dataclass(frozen=True)
class BenchConfig:
    source: Path
    images: Path
    report_dir: Path
    models: tuple[ModelChoice, ...]
    backends: tuple[str, ...]
    precisions: tuple[str, ...]
    devices: tuple[str, ...]
    batches: tuple[int, ...]
    repeats: int = 5
    warmup: int = 10
    variants: tuple[str, ...] = ()
    target_fps: float | None = None
    max_frames: int | None = None
    sink: str = "video"
    realtime: bool = True
    lab_reference: bool = True
    codec_baseline: bool = False
    cache_dir: Path | None = None
    workspace_mb: int | None = None
    calib_dir: Path | None = None
    threads: int | None = None
    base_cuda_graphs: bool = False
    base_channels_last: bool = False
    case_timeout_s: float = 1800.0
    retry_busy: int = 0
    """Measure a case again (up to this many times) when other processes used the CPU during it; keep the quietest."""
    overwrite: bool = False
    command: str = ""
    notes: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        if self.repeats < 1:
            raise ConfigError(f"--repeats must be >= 1, got {self.repeats}")
        if self.warmup < 0:
            raise ConfigError(f"--warmup must be >= 0, got {self.warmup}")
        if self.sink not in SINKS:
            raise ConfigError(f"--sink must be one of {', '.join(SINKS)}, got {self.sink!r}")
        for v in self.variants:
            if v not in VARIANTS or v == "eager":
                raise ConfigError(f"unknown variant {v!r}; choose from {', '.join(k for k in VARIANTS if k != 'eager')}")
        if self.retry_busy < 0:
            raise ConfigError(f"--retry-busy must be >= 0, got {self.retry_busy}")
        if self.target_fps is not None and not self.target_fps > 0:
            raise ConfigError("--target-fps must be positive")

    @property
    def base_variant(self) -> str:
        if self.base_cuda_graphs and self.base_channels_last:
            return "cuda_graphs+channels_last"
        if self.base_cuda_graphs:
            return "cuda_graphs"
        if self.base_channels_last:
            return "channels_last"
        return "eager"

    def cases(self) -> list[Case]:
        """Every row, in report order: model, device, backend, variant, precision, batch."""
        out: list[Case] = []
        for model in self.models:
            for device in self.devices:
                for backend in self.backends:
                    variants = [self.base_variant]
                    if backend == "torch":
                        variants += [v for v in self.variants if v != self.base_variant]
                    for variant in variants:
                        for precision in self.precisions:
                            for batch in self.batches:
                                out.append(Case(model, backend, precision, variant, device, batch))
        return out

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Path):
                value = str(value)
            elif f.name == "models":
                value = [dataclasses.asdict(m) for m in value]
            elif isinstance(value, tuple):
                value = list(value)
            out[f.name] = value
        return out
