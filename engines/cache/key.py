"""The store's keys: canonical JSON, hashed with SHA-256, naming each entry's files.

Every key is a frozen dataclass; :meth:`StoreKey.to_json` is what the manifest
keeps and the hash covers, and :attr:`StoreKey.stem` is the readable part of
the file name followed by the first 16 hex digits of that hash.
"""

from __future__ import annotations

import hashlib
import json
import platform
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Mapping

from engines.errors import CacheError

CACHE_FORMAT_VERSION = 2
"""Bump when a key, the manifest or a payload format changes: old entries then miss."""

Kind = Literal["tensorrt engine", "torch2trt module", "onnx export", "ort-tensorrt folder"]
KIND_ENGINE: Kind = "tensorrt engine"
KIND_TRTMODULE: Kind = "torch2trt module"
KIND_ONNX: Kind = "onnx export"
KIND_ORT: Kind = "ort-tensorrt folder"
KINDS: tuple[Kind, ...] = (KIND_ENGINE, KIND_TRTMODULE, KIND_ONNX, KIND_ORT)

PAYLOAD_SUFFIXES: dict[str, str] = {"tensorrt": ".engine", "torch2trt": ".trtmodule"}
"""Engine payload file suffix by producer."""
ONNX_FOLDER = "onnx"
ORT_FOLDER = "ort-tensorrt"

JSONValue = Any


# -- small helpers -------------------------------------------------------------
def canonical_json(value: JSONValue) -> str:
    """JSON with sorted keys and no whitespace: the bytes a key hash is taken over."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def host_platform() -> tuple[str, str]:
    """(operating system, CPU architecture), lower case: ``("linux", "x86_64")``."""
    return platform.system().lower() or "unknown", platform.machine().lower() or "unknown"


def safe_token(text: str) -> str:
    """File-name-safe form of a model name or version (no '-', which separates fields)."""
    return re.sub(r"[^A-Za-z0-9_.+]", "_", text) or "_"


def _batch_tag(batch: int, dynamic: bool) -> str:
    return f"dyn{batch}" if dynamic else f"b{batch}"


# -- keys ------------------------------------------------------------------------
@dataclass(frozen=True)
class TensorSpec:
    """One I/O tensor: name, shape (-1 for a dynamic dimension) and dtype name."""

    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"

    def to_json(self) -> dict[str, JSONValue]:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}

    @classmethod
    def from_json(cls, value: Mapping[str, JSONValue]) -> "TensorSpec":
        return cls(str(value["name"]), tuple(int(d) for d in value["shape"]), str(value.get("dtype", "float32")))

    def __str__(self) -> str:
        dims = "x".join("N" if d < 0 else str(d) for d in self.shape)
        return f"{self.name}[{dims}] {self.dtype}"


@dataclass(frozen=True)
class ShapeProfile:
    """An optimisation profile for one input: the min / opt / max shapes."""

    input: str
    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]

    def to_json(self) -> dict[str, JSONValue]:
        return {"input": self.input, "min": list(self.min), "opt": list(self.opt), "max": list(self.max)}


class StoreKey(ABC):
    """What names one entry: canonical JSON (hashed), a readable file stem, the folder and suffix."""

    folder: ClassVar[str] = ""
    """Sub-folder of the cache the entry lives in (``""``: the cache folder itself)."""
    model: str
    precision: str

    @property
    @abstractmethod
    def kind(self) -> Kind: ...

    @property
    @abstractmethod
    def suffix(self) -> str:
        """The payload's file suffix (``""`` for a folder entry)."""

    @abstractmethod
    def _fields(self) -> dict[str, JSONValue]: ...

    @abstractmethod
    def _readable_stem(self) -> str:
        """The stem before the key hash: model and the fields a person tells entries apart by."""

    def to_json(self) -> dict[str, JSONValue]:
        """The key fields as plain JSON values (what the manifest stores and the hash covers)."""
        return json.loads(canonical_json({"format_version": CACHE_FORMAT_VERSION, **self._fields()}))

    @property
    def digest(self) -> str:
        return sha256_bytes(canonical_json(self.to_json()).encode("ascii"))

    @property
    def stem(self) -> str:
        return f"{self._readable_stem()}-{self.digest[:16]}"


@dataclass(frozen=True)
class EngineKey(StoreKey):
    """Everything a TensorRT engine (or torch2trt module) depends on.  Two equal keys may share one file."""

    producer: str
    """``tensorrt`` or ``torch2trt``: who builds the payload (and its file suffix)."""
    model: str
    precision: str
    source_sha256: str
    """SHA-256 of the network as given to the builder, weights included (ONNX bytes for tensorrt)."""
    source_format: str
    """``onnx``, ``torch-state-dict`` or ``torch-weights-id`` (torch2trt: SHA-256 of the weights id): what
    ``source_sha256`` was taken over."""
    calib_sha256: str | None
    inputs: tuple[TensorSpec, ...]
    profile: tuple[ShapeProfile, ...]
    """Empty for a static-shape engine."""
    workspace_mb: int | None
    trt_version: str
    cuda_version: str | None
    gpu_name: str
    compute_capability: str
    """``"8.6"``."""
    os: str
    arch: str
    extra: tuple[tuple[str, str], ...] = ()
    """Producer-specific build settings that change the payload, as sorted (name, value) pairs."""
    gpu_sm_count: int | None = None
    """Streaming multiprocessors (Jetson Orin modules share a name and compute capability)."""
    gpu_memory_mb: int | None = None
    """Total device memory, MiB."""

    def __post_init__(self) -> None:
        if self.producer not in PAYLOAD_SUFFIXES:
            raise CacheError(f"unknown engine producer {self.producer!r}")
        if not re.fullmatch(r"[0-9]+\.[0-9]+", self.compute_capability):
            raise CacheError(f"compute capability must look like '8.6', got {self.compute_capability!r}")

    @property
    def kind(self) -> Kind:
        return KIND_TRTMODULE if self.producer == "torch2trt" else KIND_ENGINE

    @property
    def suffix(self) -> str:
        return PAYLOAD_SUFFIXES[self.producer]

    def _fields(self) -> dict[str, JSONValue]:
        return {
            "producer": self.producer,
            "model": self.model,
            "precision": self.precision,
            "source_sha256": self.source_sha256,
            "source_format": self.source_format,
            "calib_sha256": self.calib_sha256,
            "inputs": [t.to_json() for t in self.inputs],
            "profile": [p.to_json() for p in self.profile],
            "workspace_mb": self.workspace_mb,
            "trt_version": self.trt_version,
            "cuda_version": self.cuda_version,
            "gpu_name": self.gpu_name,
            "compute_capability": self.compute_capability,
            "gpu_sm_count": self.gpu_sm_count,
            "gpu_memory_mb": self.gpu_memory_mb,
            "os": self.os,
            "arch": self.arch,
            "extra": {k: v for k, v in self.extra},
        }

    def _readable_stem(self) -> str:
        cc = self.compute_capability.replace(".", "")
        return f"{safe_token(self.model)}-{self.precision}-sm{cc}-trt{safe_token(self.trt_version)}"


@dataclass(frozen=True)
class OnnxKey(StoreKey):
    """Everything an ONNX export depends on.  A dynamic-batch graph does not depend on the largest batch."""

    folder: ClassVar[str] = ONNX_FOLDER
    model: str
    input_shape: tuple[int, ...]
    num_classes: int
    weights: str
    """``sha256:<hex>`` of the weights file, or ``random-seed<N>``."""
    batch: int | None
    """The fixed batch of the graph; None for a dynamic batch axis."""
    opset: int
    exporter: str
    libraries: tuple[tuple[str, str], ...]
    """(package, version) of the exporting libraries: torch, torchvision."""
    precision: str = "fp32"

    @property
    def kind(self) -> Kind:
        return KIND_ONNX

    @property
    def suffix(self) -> str:
        return ".onnx"

    def _fields(self) -> dict[str, JSONValue]:
        return {
            "kind": "onnx",
            "model": self.model,
            "input_shape": list(self.input_shape),
            "num_classes": self.num_classes,
            "weights": self.weights,
            "batch": "dynamic" if self.batch is None else self.batch,
            "opset": self.opset,
            "exporter": self.exporter,
            "precision": self.precision,
            "libraries": {k: v for k, v in self.libraries},
        }

    def _readable_stem(self) -> str:
        batch = "dyn" if self.batch is None else f"b{self.batch}"
        return f"{safe_token(self.model)}-{batch}-opset{self.opset}"


@dataclass(frozen=True)
class OrtFolderKey(StoreKey):
    """One folder of onnxruntime's TensorRT provider: it names engines after the graph, not the weights
    or the build settings, so one folder per ONNX file, precision, batch range and workspace."""

    folder: ClassVar[str] = ORT_FOLDER
    model: str
    onnx_sha256: str
    precision: str
    batch: int
    dynamic: bool
    workspace_mb: int | None = None

    @property
    def kind(self) -> Kind:
        return KIND_ORT

    @property
    def suffix(self) -> str:
        return ""

    def _fields(self) -> dict[str, JSONValue]:
        return {
            "kind": "ort-tensorrt",
            "model": self.model,
            "onnx_sha256": self.onnx_sha256,
            "precision": self.precision,
            "batch": self.batch,
            "dynamic": self.dynamic,
            "workspace_mb": self.workspace_mb,
        }

    def _readable_stem(self) -> str:
        return f"{safe_token(self.model)}-{self.precision}-{_batch_tag(self.batch, self.dynamic)}"
