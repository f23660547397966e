"""The engine cache: serialized engines on disk, keyed by everything that makes them valid.

A TensorRT engine is only valid for the exact network, weights, precision,
calibration data, shapes, TensorRT version, CUDA version, GPU and platform it
was built for.  :class:`EngineKey` holds all of those; its SHA-256 over
canonical JSON names the files::

    <model>-<precision>-sm<CC>-trt<version>-<key16>.engine   the payload
    <model>-<precision>-sm<CC>-trt<version>-<key16>.json     its manifest

(torch2trt stores its ``TRTModule`` state dict under the same scheme with the
suffix ``.trtmodule``; an int8 build keeps its calibration table as ``.calib``.)

The manifest is written last and repeats every key field, the payload's SHA-256
and size, and the I/O tensors, so a load can check the entry before trusting
it.  Anything that does not check out - a missing or unparseable manifest, a
key that differs, a payload whose hash or size differs, a payload the runtime
cannot deserialize, I/O tensors that are not the expected ones - is logged as a
warning and rebuilt.

The cache knows nothing about TensorRT: :meth:`EngineCache.get_or_build` is
given a *builder* (makes the payload bytes) and a *loader* (turns bytes into a
live object and reports its I/O tensors), so it is tested with a fake.

Writes take a per-key file lock, write to a temporary file in the same folder,
``fsync`` it and ``os.replace`` it into place.  Two processes that want the
same engine: one builds while the other waits on the lock and then loads.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import re
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Generic, Iterable, Mapping, Sequence, TypeVar

from engines.errors import CacheError, EngineError
from engines.paths import cache_dir, fsync_dir

log = logging.getLogger(__name__)

CACHE_FORMAT_VERSION = 1
"""Bump when the key, the manifest or a payload format changes: old entries then miss."""

DEFAULT_LOCK_TIMEOUT_S = 1800.0
"""How long to wait for another process's build of the same engine (large int8 builds take minutes)."""

PAYLOAD_SUFFIXES: dict[str, str] = {"tensorrt": ".engine", "torch2trt": ".trtmodule"}
"""Payload file suffix by producer."""
MANIFEST_SUFFIX = ".json"
LOCK_SUFFIX = ".lock"
CALIB_SUFFIX = ".calib"
_OUR_SUFFIXES = (*PAYLOAD_SUFFIXES.values(), MANIFEST_SUFFIX, LOCK_SUFFIX, CALIB_SUFFIX)

_NAME_RE = re.compile(
    r"^(?P<stem>(?P<model>[A-Za-z0-9_.]+)-(?P<precision>fp32|fp16|int8)-sm(?P<cc>[0-9]+)"
    r"-trt(?P<trt>[A-Za-z0-9_.+]+)-(?P<key>[0-9a-f]{16}))"
    r"(?P<suffix>\.engine|\.trtmodule|\.json|\.lock|\.calib)$"
)
_TMP_RE = re.compile(r"^\.(?P<name>.+)\.[^.]+\.tmp$")

CALIBRATION_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")

JSONValue = Any
T = TypeVar("T")


# -- small helpers -------------------------------------------------------------
def canonical_json(value: JSONValue) -> str:
    """JSON with sorted keys and no whitespace: the bytes the key hash is taken over."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def host_platform() -> tuple[str, str]:
    """(operating system, CPU architecture), lower case: ``("linux", "x86_64")``."""
    return platform.system().lower() or "unknown", platform.machine().lower() or "unknown"


def calibration_images(folder: Path) -> list[Path]:
    """The images an int8 calibration reads from ``folder`` (recursive, sorted by relative path)."""
    folder = folder.expanduser()
    if not folder.is_dir():
        raise EngineError(f"calibration folder {folder} does not exist or is not a folder")
    images = [
        p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in CALIBRATION_IMAGE_SUFFIXES
    ]
    images.sort(key=lambda p: p.relative_to(folder).as_posix())
    if not images:
        raise EngineError(
            f"calibration folder {folder} holds no images ({', '.join(CALIBRATION_IMAGE_SUFFIXES)})"
        )
    return images


def calibration_set_sha256(folder: Path | None) -> str | None:
    """SHA-256 over the sorted relative names and bytes of the calibration images (None: no folder)."""
    if folder is None:
        return None
    folder = folder.expanduser()
    digest = hashlib.sha256()
    for path in calibration_images(folder):
        name = path.relative_to(folder).as_posix().encode("utf-8")
        data = path.read_bytes()
        digest.update(len(name).to_bytes(8, "big") + name)
        digest.update(len(data).to_bytes(8, "big") + data)
    return digest.hexdigest()


def _safe_token(text: str) -> str:
    """File-name-safe form of a model name or version (no '-', which separates fields)."""
    return re.sub(r"[^A-Za-z0-9_.+]", "_", text) or "_"


# -- key -------------------------------------------------------------------------
@dataclass(frozen=True)
class TensorSpec:
    """One engine I/O tensor: name, shape (-1 for a dynamic dimension) and dtype name."""

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


@dataclass(frozen=True)
class EngineKey:
    """Everything an engine depends on.  Two equal keys may share one engine file."""

    producer: str
    """``tensorrt`` or ``torch2trt``: who builds the payload (and its file suffix)."""
    model: str
    precision: str
    source_sha256: str
    """SHA-256 of the network as given to the builder, weights included (ONNX bytes for tensorrt)."""
    source_format: str
    """``onnx`` or ``torch-state-dict``: what ``source_sha256`` was taken over."""
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
    format_version: int = CACHE_FORMAT_VERSION

    def __post_init__(self) -> None:
        if self.producer not in PAYLOAD_SUFFIXES:
            raise CacheError(f"unknown engine producer {self.producer!r}")
        if not re.fullmatch(r"[0-9]+\.[0-9]+", self.compute_capability):
            raise CacheError(f"compute capability must look like '8.6', got {self.compute_capability!r}")

    def to_json(self) -> dict[str, JSONValue]:
        """The key fields as plain JSON values (what the manifest stores and the hash covers)."""
        value: dict[str, JSONValue] = {
            "format_version": self.format_version,
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
            "os": self.os,
            "arch": self.arch,
            "extra": {k: v for k, v in self.extra},
        }
        return json.loads(canonical_json(value))  # normalise (tuples -> lists) for comparisons

    @property
    def digest(self) -> str:
        return sha256_bytes(canonical_json(self.to_json()).encode("ascii"))

    @property
    def stem(self) -> str:
        cc = self.compute_capability.replace(".", "")
        return (
            f"{_safe_token(self.model)}-{self.precision}-sm{cc}-trt{_safe_token(self.trt_version)}-{self.digest[:16]}"
        )

    @property
    def payload_suffix(self) -> str:
        return PAYLOAD_SUFFIXES[self.producer]


# -- entries ---------------------------------------------------------------------
@dataclass(frozen=True)
class EntryPaths:
    payload: Path
    manifest: Path
    lock: Path
    calib: Path


@dataclass(frozen=True)
class Built:
    """What a builder returns: the serialized payload and the I/O tensors it has."""

    data: bytes
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]


@dataclass(frozen=True)
class Loaded(Generic[T]):
    """What a loader returns: the live object and the I/O tensors it reports."""

    value: T
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]


class InvalidEntry(Exception):
    """Raised by a loader (or the cache) when an entry must not be used; the message says why."""


@dataclass(frozen=True)
class CacheResult(Generic[T]):
    value: T
    paths: EntryPaths
    manifest: dict[str, JSONValue]
    built: bool
    """True if this call built the payload, False if it was loaded from the cache."""
    build_seconds: float | None
    """Builder time when built (None when loaded)."""
    seconds: float
    """Wall time of the whole get_or_build call, lock wait included."""


@dataclass(frozen=True)
class CacheEntry:
    """One cached engine as :meth:`EngineCache.list_entries` sees it."""

    stem: str
    model: str
    precision: str
    producer: str | None
    payload: Path | None
    manifest: Path | None
    size_bytes: int
    """Bytes on disk of all files of the entry (payload, manifest, calibration table)."""
    created: datetime | None
    problem: str | None = None
    """Why the entry is not loadable as listed (missing manifest, ...), or None."""
    files: tuple[Path, ...] = field(default=())


# -- the cache -------------------------------------------------------------------
class EngineCache:
    """A folder of engines (private, 0700) with locked, atomic writes and checked loads."""

    def __init__(self, folder: Path | None = None, lock_timeout_s: float = DEFAULT_LOCK_TIMEOUT_S) -> None:
        self.folder = cache_dir(folder)
        self.lock_timeout_s = lock_timeout_s

    def paths(self, key: EngineKey) -> EntryPaths:
        stem = self.folder / key.stem
        return EntryPaths(
            payload=stem.with_name(stem.name + key.payload_suffix),
            manifest=stem.with_name(stem.name + MANIFEST_SUFFIX),
            lock=stem.with_name(stem.name + LOCK_SUFFIX),
            calib=stem.with_name(stem.name + CALIB_SUFFIX),
        )

    # -- get or build --------------------------------------------------------------
    def get_or_build(
        self,
        key: EngineKey,
        build: Callable[[], Built],
        load: Callable[[bytes], Loaded[T]],
        expected_inputs: Sequence[TensorSpec],
        expected_outputs: Sequence[TensorSpec],
    ) -> CacheResult[T]:
        """Load the engine for ``key`` if a valid one is cached, else build, store and load it.

        ``load`` turns payload bytes into a live object; it raises :class:`InvalidEntry`
        (or returns I/O tensors that differ from the expected ones) for a payload that
        must not be used.  Runs under the key's file lock.
        """
        start = time.perf_counter()
        paths = self.paths(key)
        with self._locked(paths):
            loaded = self._try_load(key, paths, load, expected_inputs, expected_outputs)
            if loaded is not None:
                value, manifest = loaded
                return CacheResult(value, paths, manifest, False, None, time.perf_counter() - start)
            log.info("building %s", paths.payload.name)
            build_start = time.perf_counter()
            built = build()
            build_seconds = time.perf_counter() - build_start
            if not built.data:
                raise EngineError(f"the builder returned an empty engine for {paths.payload.name}")
            try:
                fresh = load(built.data)
                _check_io("freshly built engine", fresh.inputs, fresh.outputs, expected_inputs, expected_outputs)
            except InvalidEntry as exc:
                raise EngineError(f"the engine just built for {key.model} is not usable: {exc}") from exc
            manifest = self._manifest(key, paths, built, build_seconds)
            atomic_write(paths.payload, built.data)
            atomic_write(paths.manifest, (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode("utf-8"))
            log.info("stored %s (%d bytes) in %.1f s", paths.payload.name, len(built.data), build_seconds)
            return CacheResult(fresh.value, paths, manifest, True, build_seconds, time.perf_counter() - start)

    def lookup(self, key: EngineKey) -> dict[str, JSONValue] | None:
        """The manifest of ``key``'s entry if its files check out (no deserialization), else None."""
        paths = self.paths(key)
        try:
            manifest = self._read_manifest(paths)
            if manifest is None:
                return None
            self._check_manifest(key, manifest)
            self._read_payload(paths, manifest)
        except InvalidEntry:
            return None
        return manifest

    # -- internals -----------------------------------------------------------------
    def _locked(self, paths: EntryPaths) -> "_KeyLock":
        return _KeyLock(paths.lock, self.lock_timeout_s)

    def _try_load(
        self,
        key: EngineKey,
        paths: EntryPaths,
        load: Callable[[bytes], Loaded[T]],
        expected_inputs: Sequence[TensorSpec],
        expected_outputs: Sequence[TensorSpec],
    ) -> tuple[T, dict[str, JSONValue]] | None:
        if not paths.payload.exists() and not paths.manifest.exists():
            log.info("engine cache miss: %s", paths.payload.name)
            return None
        try:
            manifest = self._read_manifest(paths)
            if manifest is None:
                raise InvalidEntry("its manifest is missing")
            self._check_manifest(key, manifest)
            data = self._read_payload(paths, manifest)
            _check_io(
                "manifest",
                tuple(TensorSpec.from_json(t) for t in manifest["inputs"]),
                tuple(TensorSpec.from_json(t) for t in manifest["outputs"]),
                expected_inputs,
                expected_outputs,
            )
            loaded = load(data)
            _check_io("engine", loaded.inputs, loaded.outputs, expected_inputs, expected_outputs)
        except InvalidEntry as exc:
            log.warning("engine cache: ignoring %s and rebuilding: %s", paths.payload.name, exc)
            return None
        except (KeyError, TypeError, ValueError) as exc:
            log.warning(
                "engine cache: ignoring %s and rebuilding: malformed manifest (%s: %s)",
                paths.payload.name,
                type(exc).__name__,
                exc,
            )
            return None
        log.info("engine cache hit: %s", paths.payload.name)
        return loaded.value, manifest

    @staticmethod
    def _read_manifest(paths: EntryPaths) -> dict[str, JSONValue] | None:
        try:
            text = paths.manifest.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise InvalidEntry(f"its manifest cannot be read ({exc.strerror or exc})") from exc
        try:
            manifest = json.loads(text)
        except ValueError as exc:
            raise InvalidEntry(f"its manifest is not valid JSON ({exc})") from exc
        if not isinstance(manifest, dict):
            raise InvalidEntry("its manifest is not a JSON object")
        return manifest

    @staticmethod
    def _check_manifest(key: EngineKey, manifest: Mapping[str, JSONValue]) -> None:
        if manifest.get("format_version") != CACHE_FORMAT_VERSION:
            raise InvalidEntry(
                f"cache format {manifest.get('format_version')!r} is not the current {CACHE_FORMAT_VERSION}"
            )
        stored = manifest.get("key")
        expected = key.to_json()
        if stored != expected:
            if not isinstance(stored, dict):
                raise InvalidEntry("its manifest has no key")
            differ = sorted(k for k in set(stored) | set(expected) if stored.get(k) != expected.get(k))
            raise InvalidEntry(f"its manifest's key differs in {', '.join(differ)}")
        if manifest.get("key_sha256") != key.digest:
            raise InvalidEntry("its manifest's key hash differs")

    @staticmethod
    def _read_payload(paths: EntryPaths, manifest: Mapping[str, JSONValue]) -> bytes:
        try:
            data = paths.payload.read_bytes()
        except FileNotFoundError:
            raise InvalidEntry("its engine file is missing") from None
        except OSError as exc:
            raise InvalidEntry(f"its engine file cannot be read ({exc.strerror or exc})") from exc
        if len(data) != manifest.get("engine_size"):
            raise InvalidEntry(
                f"its engine file has {len(data)} bytes, the manifest says {manifest.get('engine_size')!r} (truncated?)"
            )
        if sha256_bytes(data) != manifest.get("engine_sha256"):
            raise InvalidEntry("its engine file's SHA-256 differs from the manifest's (corrupt or replaced)")
        return data

    @staticmethod
    def _manifest(key: EngineKey, paths: EntryPaths, built: Built, build_seconds: float) -> dict[str, JSONValue]:
        now = datetime.now(timezone.utc)
        return {
            "format_version": CACHE_FORMAT_VERSION,
            "file": paths.payload.name,
            "producer": key.producer,
            "model": key.model,
            "precision": key.precision,
            "key": key.to_json(),
            "key_sha256": key.digest,
            "created": now.isoformat(timespec="seconds"),
            "engine_sha256": sha256_bytes(built.data),
            "engine_size": len(built.data),
            "inputs": [t.to_json() for t in built.inputs],
            "outputs": [t.to_json() for t in built.outputs],
            "build_seconds": round(build_seconds, 3),
        }

    # -- listing and clearing ------------------------------------------------------
    def list_entries(self) -> list[CacheEntry]:
        """Every entry in the folder (ours by file name), with its size and creation time."""
        groups: dict[str, list[Path]] = {}
        for path in self._our_files():
            match = _NAME_RE.match(path.name)
            if match is not None:
                groups.setdefault(match["stem"], []).append(path)
        entries = []
        for stem, files in sorted(groups.items()):
            match = _NAME_RE.match(files[0].name)
            assert match is not None
            by_suffix = {p.suffix: p for p in files}
            payload = by_suffix.get(".engine") or by_suffix.get(".trtmodule")
            manifest_path = by_suffix.get(MANIFEST_SUFFIX)
            producer: str | None = None
            created: datetime | None = None
            problem: str | None = None
            if manifest_path is not None:
                try:
                    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
                    producer = str(manifest.get("producer")) if manifest.get("producer") else None
                    created = datetime.fromisoformat(str(manifest["created"]))
                except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
                    problem = f"unreadable manifest ({type(exc).__name__})"
            if payload is None:
                if manifest_path is None:
                    continue  # only a lock or a calibration table
                problem = problem or "engine file missing"
            elif manifest_path is None:
                problem = "manifest missing"
            if created is None and payload is not None:
                created = datetime.fromtimestamp(payload.stat().st_mtime, timezone.utc)
            kept = tuple(sorted(p for p in files if p.suffix != LOCK_SUFFIX))
            entries.append(
                CacheEntry(
                    stem=stem,
                    model=match["model"],
                    precision=match["precision"],
                    producer=producer,
                    payload=payload,
                    manifest=manifest_path,
                    size_bytes=sum(_size(p) for p in kept),
                    created=created,
                    problem=problem,
                    files=kept,
                )
            )
        return entries

    def total_size(self) -> int:
        """Bytes on disk of every file of ours in the folder."""
        return sum(_size(p) for p in self._our_files())

    def clear(self, model: str | None = None) -> list[Path]:
        """Delete our files (engines, manifests, calibration tables, idle locks, stale temp files).

        Files in the folder that do not follow our naming are left alone.  A lock
        that another process holds (a build in progress) is left in place.
        """
        wanted = None if model is None else _safe_token(model)
        removed: list[Path] = []
        for path in sorted(self._our_files()):
            match = _NAME_RE.match(path.name) or _NAME_RE.match(_tmp_target(path.name) or "")
            if match is None or (wanted is not None and match["model"] != wanted):
                continue
            if path.name.endswith(LOCK_SUFFIX):
                if not _remove_idle_lock(path):
                    log.warning("engine cache: %s is held by a running build; left in place", path.name)
                    continue
            else:
                try:
                    path.unlink()
                except FileNotFoundError:
                    continue
                except OSError as exc:
                    raise CacheError(f"cannot remove {path}: {exc.strerror or exc}") from exc
            removed.append(path)
        return removed

    def _our_files(self) -> Iterable[Path]:
        try:
            children = list(self.folder.iterdir())
        except OSError as exc:
            raise CacheError(f"cannot list the cache folder {self.folder}: {exc.strerror or exc}") from exc
        for path in children:
            if not path.is_file():
                continue
            if _NAME_RE.match(path.name) or _NAME_RE.match(_tmp_target(path.name) or ""):
                yield path


# -- locking and atomic writes ---------------------------------------------------
class _KeyLock:
    """A per-key inter-process lock (filelock) whose timeout raises :class:`CacheError`."""

    def __init__(self, path: Path, timeout_s: float) -> None:
        import filelock

        self.path = path
        self.timeout_s = timeout_s
        self._lock = filelock.FileLock(str(path), timeout=timeout_s, mode=0o600)

    def __enter__(self) -> "_KeyLock":
        import filelock

        try:
            self._lock.acquire()
        except filelock.Timeout as exc:
            raise CacheError(
                f"timed out after {self.timeout_s:.0f} s waiting for the engine cache lock {self.path}: "
                "another process is building this engine. Wait for it to finish and retry; if no build "
                "is running, delete the lock file"
            ) from exc
        except OSError as exc:
            raise CacheError(f"cannot lock {self.path}: {exc.strerror or exc}") from exc
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._lock.release()


def _remove_idle_lock(path: Path) -> bool:
    """Delete a lock file nobody holds; False if a process holds it."""
    import filelock

    lock = filelock.FileLock(str(path), timeout=0)
    try:
        lock.acquire()
    except filelock.Timeout:
        return False
    try:
        path.unlink(missing_ok=True)
    finally:
        lock.release()
    return True


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path``, fsync it, then rename it over ``path``."""
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise CacheError(f"cannot write {path}: {exc.strerror or exc}") from exc
        raise
    try:
        fsync_dir(path.parent)
    except OSError as exc:
        raise CacheError(f"cannot write {path}: {exc.strerror or exc}") from exc


def _tmp_target(name: str) -> str | None:
    match = _TMP_RE.match(name)
    return match["name"] if match else None


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _check_io(
    what: str,
    inputs: Sequence[TensorSpec],
    outputs: Sequence[TensorSpec],
    expected_inputs: Sequence[TensorSpec],
    expected_outputs: Sequence[TensorSpec],
) -> None:
    if tuple(inputs) != tuple(expected_inputs) or tuple(outputs) != tuple(expected_outputs):
        have = ", ".join(map(str, (*inputs, *outputs)))
        want = ", ".join(map(str, (*expected_inputs, *expected_outputs)))
        raise InvalidEntry(f"{what} I/O tensors are [{have}], expected [{want}]")
