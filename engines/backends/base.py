"""The backend interface every inference engine implements.

Modelled on Polygraphy's runners: public ``load`` / ``infer`` / ``close`` over
small ``_load_impl`` / ``_infer_impl`` / ``_close_impl`` hooks, usable as a
context manager, with an ``is_loaded`` guard.  A backend is handed a recipe
(model spec, weights choice, options) and builds everything, CUDA context and
engine included, inside ``load`` - which the pipeline calls on the inference
worker's own thread.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol, Sequence

import numpy as np

from engines.errors import BackendError, ConfigError, StreamerError
from engines.models import ModelSpec, WeightsChoice
from engines.preprocess import PinnedStaging, preprocess

if TYPE_CHECKING:
    import torch

    from engines.cache import CacheResult, Kind

Precision = Literal["fp32", "fp16", "int8"]
PRECISIONS: tuple[str, ...] = ("fp32", "fp16", "int8")


@dataclass(frozen=True)
class BackendOptions:
    """Options shared by all backends; each backend rejects what it cannot do."""

    device: str = "auto"
    """``auto``, ``cpu``, ``cuda`` or ``cuda:N``."""
    precision: Precision = "fp32"
    batch: int = 1
    """Largest batch ``infer`` will be given."""
    dynamic_batch: bool = False
    """Engines accept any batch from 1 to ``batch`` (an optimisation profile) instead of exactly ``batch``
    (smaller batches are then padded).  :meth:`for_batch` sets it by the rule every command uses."""
    cache_dir: Path | None = None
    workspace_mb: int | None = None
    """Builder workspace limit for TensorRT (small devices such as a Jetson Nano)."""
    calib_dir: Path | None = None
    """Folder of images for int8 entropy calibration."""
    cuda_graphs: bool = False
    channels_last: bool = False
    compile: bool = False
    fused: bool = False
    """torch on CUDA, AlexNet: the hand-fused network (engines/backends/fused_alexnet.py), one CUDA graph."""
    threads: int | None = None
    """CPU threads for CPU backends (None: library default)."""

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if not isinstance(self.batch, int) or self.batch < 1 or self.batch > 1024:
            raise ConfigError(f"batch must be an integer from 1 to 1024, got {self.batch!r}")
        if self.workspace_mb is not None and self.workspace_mb < 16:
            raise ConfigError(f"workspace must be at least 16 MiB, got {self.workspace_mb}")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"threads must be positive, got {self.threads}")
        resolve_device_name(self.device)  # validates the spelling

    @classmethod
    def for_batch(cls, batch: int, *, dynamic: bool = False, **fields: Any) -> "BackendOptions":
        """Options for a largest batch of ``batch``, by the one rule ``run``, ``build`` and the bench share:
        the batch is dynamic whenever ``batch > 1`` (or when ``dynamic`` asks for it at batch 1), so a
        live source's single frames and a file's last partial batch run unpadded, and ``streamer build
        --batch N`` builds the very engine that ``streamer run --batch N`` looks up."""
        return cls(batch=batch, dynamic_batch=dynamic or batch > 1, **fields)


def resolve_device_name(device: str) -> str:
    """Turn ``auto`` into ``cuda:0`` or ``cpu``; validate ``cuda[:N]``."""
    text = device.strip().lower()
    if text == "auto":
        import torch

        return "cuda:0" if torch.cuda.is_available() else "cpu"
    if text == "cpu":
        return "cpu"
    if text == "cuda":
        return "cuda:0"
    if text.startswith("cuda:") and text[5:].isdigit():
        return text
    raise ConfigError(f"device must be auto, cpu, cuda or cuda:N, got {device!r}")


_DEFAULT_TORCH_THREADS: int | None = None


def _remember_torch_threads() -> None:
    global _DEFAULT_TORCH_THREADS
    if _DEFAULT_TORCH_THREADS is None:
        import torch

        _DEFAULT_TORCH_THREADS = torch.get_num_threads()


def restore_torch_threads(threads: int | None = None) -> None:
    """Give torch ``threads`` CPU threads, or the default it started with."""
    import torch

    if threads is not None:
        torch.set_num_threads(threads)
    elif _DEFAULT_TORCH_THREADS is not None:
        torch.set_num_threads(_DEFAULT_TORCH_THREADS)


class LoadProgress(Protocol):
    """Called during :meth:`Backend.load` as an engine is built: (phase name, steps done, steps in phase).

    TensorRT calls it from its builder threads; it must be quick and must not raise.
    """

    def __call__(self, phase: str, done: int, total: int) -> None: ...


@dataclass(frozen=True)
class Artifact:
    """The file a backend's network was loaded from or built into, as the store keeps it."""

    kind: "Kind"
    """The store's kind: ``tensorrt engine``, ``torch2trt module`` or ``onnx export``."""
    path: Path
    size_bytes: int
    sha256: str
    built: bool
    """True when this load built (or exported) it, False when it came from the cache."""
    build_seconds: float | None
    """Builder time when built, else None."""
    device_memory_bytes: int | None = None
    """Device memory one execution context needs, as the runtime reports it (TensorRT), else None."""

    @classmethod
    def from_cache(cls, result: "CacheResult[Any]", device_memory_bytes: int | None = None) -> "Artifact":
        return cls(
            kind=result.kind,
            path=result.paths.payload,
            size_bytes=result.size_bytes,
            sha256=result.sha256,
            built=result.built,
            build_seconds=result.build_seconds,
            device_memory_bytes=device_memory_bytes,
        )


class Backend(ABC):
    """Runs one model on one device at one precision.

    After :meth:`load`, :attr:`artifact` describes the cached file the network came
    from (None for a backend that has none, such as eager PyTorch); it is kept
    after :meth:`close`, as a record of the last load.
    """

    name: ClassVar[str] = "base"

    @classmethod
    def unsupported(cls, options: BackendOptions) -> str | None:
        """Why this backend cannot run ``options`` at all (one line), found without importing or loading
        anything; None when it may.  :meth:`load` raises it as a :class:`ConfigError`; the bench skips
        such a case before starting it."""
        return None

    def __init__(self, spec: ModelSpec, weights: WeightsChoice, options: BackendOptions | None = None) -> None:
        self.spec = spec
        self.weights = weights
        self.options = options or BackendOptions()
        self.device = resolve_device_name(self.options.device)
        self.load_seconds: float | None = None
        self.ready_seconds: float | None = None
        self.artifact: Artifact | None = None
        self._progress: LoadProgress | None = None
        self._loaded = False
        self._staging: PinnedStaging | None = None

    # -- public lifecycle -------------------------------------------------
    @property
    def is_loaded(self) -> bool:
        return self._loaded

    @property
    def precision(self) -> str:
        return self.options.precision

    @property
    def description(self) -> str:
        return f"{self.spec.name} | {self.name} {self.precision} {self.device}"

    @property
    def batch_bounds(self) -> tuple[int, int]:
        """(smallest, largest) batch :meth:`infer` takes: 1 to ``options.batch`` (a static engine pads)."""
        return 1, self.options.batch

    def load(self, warmup: bool = True, progress: LoadProgress | None = None) -> "Backend":
        """Build or load the engine, then warm it up. Idempotent.

        ``load_seconds`` covers building/loading only (the lab's "load time");
        ``ready_seconds`` adds the first warm-up inference.  ``progress`` receives
        build phases where the backend reports them (TensorRT); by default they
        are logged.
        """
        if self._loaded:
            return self
        reason = self.unsupported(self.options)
        if reason is not None:
            raise ConfigError(reason)
        if self.device.startswith("cuda"):
            import torch

            if not torch.cuda.is_available():
                from engines.errors import BackendUnavailable

                raise BackendUnavailable(f"{self.name}: device {self.device} requested but CUDA is not available")
            index = int(self.device.split(":")[1])
            if index >= torch.cuda.device_count():
                from engines.errors import BackendUnavailable

                raise BackendUnavailable(
                    f"{self.name}: device {self.device} does not exist ({torch.cuda.device_count()} GPU(s) visible)"
                )
        if self.device == "cpu" and not self.computes_with_torch:
            import torch

            # Torch only preprocesses here: on few cores its OpenMP pool would spin
            # against the backend's own threads and the decoder (measured: a 224x224
            # normalisation went from 0.3 ms to 15 ms on 2 busy cores). A torch
            # backend loaded later restores the default (see restore_torch_threads).
            _remember_torch_threads()
            torch.set_num_threads(1)
        start = time.perf_counter()
        self.artifact = None  # set again by a load that succeeds
        self._progress = progress
        try:
            self._load_impl()
            self._loaded = True
            self.load_seconds = time.perf_counter() - start
            if warmup:
                self._warmup()
        except StreamerError:
            self._loaded = False
            raise
        except Exception as exc:
            self._loaded = False
            raise BackendError(f"{self.name}: load failed: {type(exc).__name__}: {exc}") from exc
        finally:
            self._progress = None
        self._synchronize()
        self.ready_seconds = time.perf_counter() - start
        return self

    def warmup_batches(self) -> tuple[int, ...]:
        """Batch sizes ``load`` warms up: the loaded batch, and 1 when a smaller batch can come
        (a live source's single frames, a file's last partial batch on engines that take any batch)."""
        batch = self.options.batch
        return (batch, 1) if batch > 1 and self.options.dynamic_batch else (batch,)

    def _warmup(self) -> None:
        """A frame's whole path (preprocess, network, top-k) on dummy batches of each size in
        :meth:`warmup_batches`, so lazy initialisation (oneDNN, cuDNN heuristics per shape, GPU
        kernels loaded on first use, engine context) is paid at load time instead of on the first
        real frames (a first fp16 batch of 8 took about 2 s on an H200 when only batch 1 was warmed)."""
        crop = self.spec.preprocess.crop
        frame = np.zeros((2 * crop, 3 * crop, 3), dtype=np.uint8)
        for n in self.warmup_batches():
            logits = self._infer_impl(self.preprocess([frame] * n))
            postprocess(logits, self.spec.labels, 1)

    def preprocess(self, frames: "Sequence[np.ndarray | torch.Tensor]") -> "torch.Tensor":
        """BGR uint8 frames (host ndarrays, or (H, W, 3) tensors already on a device: a GPU decoder's)
        -> normalised batch, on this backend's input device."""
        import torch

        dtype = torch.float16 if self.input_dtype_name == "fp16" else torch.float32
        if self._staging is None and self.input_device.startswith("cuda"):
            self._staging = PinnedStaging()
        return preprocess(frames, self.spec.preprocess, self.input_device, dtype, staging=self._staging)

    def classify(self, frames: "Sequence[np.ndarray | torch.Tensor]", k: int = 1) -> "BatchRun":
        """Preprocess, network and top-k for one batch of frames, with the seconds of each stage (what
        the inference worker runs per batch).  A backend may run the three as one (TorchBackend with
        CUDA graphs); this is the three calls, each waited for."""
        t0 = time.perf_counter()
        tensor = self.preprocess(frames)
        self.synchronize()
        t1 = time.perf_counter()
        logits = self.infer(tensor)
        self.synchronize()
        t2 = time.perf_counter()
        predictions = postprocess(logits, self.spec.labels, k)
        return BatchRun(predictions, t1 - t0, t2 - t1, time.perf_counter() - t2)

    def infer(self, batch: "torch.Tensor") -> "torch.Tensor":
        """Run the network on a preprocessed (N, 3, H, W) batch; returns (N, classes) float32 logits."""
        if not self._loaded:
            raise BackendError(f"{self.name}: infer() called before load()")
        expected = self.spec.preprocess.input_shape
        if batch.ndim != 4 or tuple(batch.shape[1:]) != expected:
            raise BackendError(f"{self.name}: expected input (N, {', '.join(map(str, expected))}), got {tuple(batch.shape)}")
        n = int(batch.shape[0])
        low, high = self.batch_bounds
        if n > high:
            raise BackendError(f"{self.name}: batch of {n} exceeds the loaded maximum {high}")
        if n < low:
            raise BackendError(f"{self.name}: batch of {n} is below the loaded minimum {low}")
        return self._infer_impl(batch)

    def close(self) -> None:
        """Release the engine, buffers and device memory. Safe to call twice."""
        if self._loaded:
            self._loaded = False
            self._staging = None
            self._close_impl()

    def __enter__(self) -> "Backend":
        return self.load()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- hooks ------------------------------------------------------------
    computes_with_torch: ClassVar[bool] = False
    """True when the network itself runs in PyTorch (and needs torch's CPU threads)."""

    @property
    def input_device(self) -> str:
        """Where ``preprocess`` leaves its tensor (the backend's device by default)."""
        return self.device

    @property
    def input_dtype_name(self) -> str:
        return "fp32"

    def synchronize(self) -> None:
        """Wait for queued device work (for honest timing)."""
        self._synchronize()

    def _synchronize(self) -> None:
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.synchronize(self.device)

    @abstractmethod
    def _load_impl(self) -> None: ...

    @abstractmethod
    def _infer_impl(self, batch: "torch.Tensor") -> "torch.Tensor": ...

    @abstractmethod
    def _close_impl(self) -> None: ...


@dataclass(frozen=True)
class Prediction:
    """Top-k classes for one frame."""

    indices: tuple[int, ...]
    scores: tuple[float, ...]
    labels: tuple[str, ...]

    @property
    def top1(self) -> int:
        return self.indices[0]

    def as_json(self) -> list[dict[str, object]]:
        return [
            {"index": i, "label": label, "score": round(float(s), 6)}
            for i, s, label in zip(self.indices, self.scores, self.labels)
        ]


@dataclass(frozen=True)
class BatchRun:
    """One batch's predictions and the seconds of its stages (:meth:`Backend.classify`)."""

    predictions: list[Prediction]
    preprocess_s: float
    inference_s: float
    postprocess_s: float


def postprocess(logits: "torch.Tensor", labels: Sequence[str], k: int = 1) -> list[Prediction]:
    """Softmax + top-k on the logits' device, then one copy to the host.

    One copy, not one per result: each copy from a GPU waits for it, and the thread that waits must
    take Python's GIL back afterwards, which with dozens of stream threads beside it is the cost.
    The indices travel as float32 (exact below 2**24 classes) beside the scores and a finite flag.
    """
    k = max(1, min(k, int(logits.shape[1])))
    return predictions_from_rows(topk_rows(logits.float(), k).cpu().tolist(), labels, k)


def topk_rows(logits: "torch.Tensor", k: int) -> "torch.Tensor":
    """(N, classes) float logits -> (N, 2k + 1) float32 on their device: the top-k softmax scores, their
    class indices (as float32: exact below 2**24 classes) and 1.0 where every logit is finite."""
    import torch

    probs = torch.softmax(logits, dim=1)
    scores, indices = probs.topk(k, dim=1)
    finite = torch.isfinite(logits).all(dim=1, keepdim=True)
    return torch.cat([scores, indices.float(), finite.float()], dim=1)


def predictions_from_rows(rows: "list[list[float]]", labels: Sequence[str], k: int) -> list[Prediction]:
    """:func:`topk_rows`' rows, on the host, as predictions; :class:`NonFiniteOutput` for a frame whose
    logits were not all finite."""
    from engines.errors import NonFiniteOutput

    bad = [i for i, row in enumerate(rows) if row[-1] != 1.0]
    if bad:
        raise NonFiniteOutput(
            f"the network produced NaN or infinite scores for frame {bad[0] + 1} of a batch of "
            f"{len(rows)} (broken or overflowing weights; at fp16, try --precision fp32)"
        )
    out = []
    for row in rows:
        indices = tuple(int(i) for i in row[k : 2 * k])
        out.append(Prediction(indices, tuple(row[:k]), tuple(labels[i] for i in indices)))
    return out
