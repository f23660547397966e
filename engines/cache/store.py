"""The store itself: get-or-build under a per-key lock, checked loads, listing and clearing.

See :mod:`engines.cache` for the layout and the rules.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import stat
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Generic, Iterator, Mapping, Sequence, TypeVar

from engines.cache.key import (
    CACHE_FORMAT_VERSION,
    KIND_ENGINE,
    KIND_ONNX,
    KIND_ORT,
    KIND_TRTMODULE,
    ONNX_FOLDER,
    ORT_FOLDER,
    JSONValue,
    Kind,
    OrtFolderKey,
    StoreKey,
    TensorSpec,
    safe_token,
    sha256_bytes,
)
from engines.errors import CacheError, EngineError
from engines.paths import cache_dir, ensure_private_dir, fsync_dir, sha256_file

log = logging.getLogger("engines.cache")

DEFAULT_LOCK_TIMEOUT_S = 1800.0
"""How long to wait for another process's build of the same entry (large int8 builds take minutes)."""

MANIFEST_SUFFIX = ".json"
LOCK_SUFFIX = ".lock"
CALIB_SUFFIX = ".calib"

_MODEL = r"(?P<model>[A-Za-z0-9_][A-Za-z0-9_.]*)"
_ENGINE_RE = re.compile(
    rf"^(?P<stem>{_MODEL}-(?P<precision>fp32|fp16|int8)-sm(?P<cc>[0-9]+)"
    r"-trt(?P<trt>[A-Za-z0-9_.+]+)-(?P<key>[0-9a-f]{16}))"
    r"(?P<suffix>\.engine|\.trtmodule|\.json|\.lock|\.calib|\.rtcache)$"
)
_ONNX_RE = re.compile(
    rf"^(?P<stem>{_MODEL}-(?P<batch>dyn|b[0-9]+)-opset(?P<opset>[0-9]+)-(?P<key>[0-9a-f]{{16}}))"
    r"(?P<suffix>\.onnx|\.json|\.lock)$"
)
_ORT_RE = re.compile(rf"^{_MODEL}-(?P<precision>fp32|fp16|int8)-(?P<batch>(dyn|b)[0-9]+)-(?P<key>[0-9a-f]{{16}})$")
_TMP_RE = re.compile(r"^\.(?P<name>.+)\.[^.]+\.tmp$")
_MODEL_NAME_RE = re.compile(_MODEL + "$")
T = TypeVar("T")


# -- entries ---------------------------------------------------------------------
@dataclass(frozen=True)
class EntryPaths:
    payload: Path
    manifest: Path
    lock: Path
    calib: Path


@dataclass(frozen=True)
class Built:
    """What a builder returns: the payload bytes, the I/O tensors it has, and facts for the manifest."""

    data: bytes
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    info: Mapping[str, JSONValue] = field(default_factory=dict)
    """Builder facts kept in the manifest's ``info`` (the ONNX exporter that was used, ...)."""


@dataclass(frozen=True)
class Loaded(Generic[T]):
    """What a loader returns: the live object and the I/O tensors it reports."""

    value: T
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]


class InvalidEntry(Exception):
    """Raised by a loader (or the store) when an entry must not be used; the message says why."""


@dataclass(frozen=True)
class CacheResult(Generic[T]):
    value: T
    key: StoreKey
    paths: EntryPaths
    manifest: dict[str, JSONValue]
    built: bool
    """True if this call built the payload, False if it was loaded from the cache."""
    build_seconds: float | None
    """Builder time when built (None when loaded)."""
    seconds: float
    """Wall time of the whole get_or_build call, lock wait included."""

    @property
    def kind(self) -> Kind:
        return self.key.kind

    @property
    def sha256(self) -> str:
        return str(self.manifest["sha256"])

    @property
    def size_bytes(self) -> int:
        return int(self.manifest["size"])


@dataclass(frozen=True)
class CacheEntry:
    """One entry as :meth:`Store.entries` sees it."""

    kind: Kind
    stem: str
    model: str
    precision: str | None
    path: Path
    """The payload file, the folder (ort-tensorrt), or the manifest when the payload is missing."""
    payload: Path | None
    manifest: Path | None
    size_bytes: int
    """Bytes on disk of all files of the entry (payload, manifest, calibration table; a folder's files)."""
    created: datetime | None
    note: str = ""
    """What tells entries of one model apart (batch, opset, exporter; a folder's file count)."""
    problem: str | None = None
    """Why the entry is not loadable as listed (missing manifest, ...), or None."""
    producer: str | None = None
    files: tuple[Path, ...] = field(default=())


@dataclass(frozen=True)
class Cleared:
    """What :meth:`Store.clear` did."""

    removed: list[Path]
    """Files deleted (payloads, manifests, calibration tables, locks, temporary files)."""
    removed_folders: list[Path]
    """ort-tensorrt folders deleted, with everything in them."""
    kept: list[Path]
    """Payloads left in place because another process holds their lock (a build in progress)."""
    freed_bytes: int


# -- the store -------------------------------------------------------------------
class Store:
    """The cache folder: locked, atomic writes; loads checked against their manifests."""

    def __init__(self, folder: Path | None = None, lock_timeout_s: float = DEFAULT_LOCK_TIMEOUT_S) -> None:
        self.folder = cache_dir(folder)
        self.lock_timeout_s = lock_timeout_s

    def paths(self, key: StoreKey) -> EntryPaths:
        stem = self.folder / key.folder / key.stem if key.folder else self.folder / key.stem
        return EntryPaths(
            payload=stem.with_name(stem.name + key.suffix),
            manifest=stem.with_name(stem.name + MANIFEST_SUFFIX),
            lock=stem.with_name(stem.name + LOCK_SUFFIX),
            calib=stem.with_name(stem.name + CALIB_SUFFIX),
        )

    def folder_for(self, key: OrtFolderKey) -> Path:
        """The folder entry of ``key``, created private if needed."""
        ensure_private_dir(self.folder / key.folder)
        return ensure_private_dir(self.folder / key.folder / key.stem)

    # -- get or build --------------------------------------------------------------
    def get_or_build(
        self,
        key: StoreKey,
        build: Callable[[], Built],
        load: Callable[[Path], Loaded[T]],
        expected_inputs: Sequence[TensorSpec],
        expected_outputs: Sequence[TensorSpec],
    ) -> CacheResult[T]:
        """Load the entry for ``key`` if a valid one is stored, else build, store and load it.

        ``load`` turns a payload file whose size and SHA-256 match the manifest into
        a live object; it raises :class:`InvalidEntry` (or returns I/O tensors that
        differ from the expected ones) for a payload that must not be used.  Runs
        under the key's file lock.
        """
        if not key.suffix:
            raise CacheError(f"{key.kind} entries are folders: use Store.folder_for")
        start = time.perf_counter()
        if key.folder:
            ensure_private_dir(self.folder / key.folder)
        paths = self.paths(key)
        with _KeyLock(paths.lock, self.lock_timeout_s, key.kind):
            loaded = self._try_load(key, paths, load, expected_inputs, expected_outputs)
            if loaded is not None:
                value, manifest = loaded
                return CacheResult(value, key, paths, manifest, False, None, time.perf_counter() - start)
            log.info("building %s", paths.payload.name)
            build_start = time.perf_counter()
            built = build()
            build_seconds = time.perf_counter() - build_start
            if not built.data:
                raise EngineError(f"the builder returned an empty payload for {paths.payload.name}")
            paths.manifest.unlink(missing_ok=True)  # the old manifest must not describe the new payload
            atomic_write(paths.payload, built.data)
            try:
                fresh = load(paths.payload)
                _check_io(f"freshly built {key.kind}", fresh.inputs, fresh.outputs, expected_inputs, expected_outputs)
            except InvalidEntry as exc:
                paths.payload.unlink(missing_ok=True)
                raise EngineError(f"the {key.kind} just built for {key.model} is not usable: {exc}") from exc
            manifest = _manifest(key, paths, built, build_seconds)
            atomic_write(paths.manifest, (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode("utf-8"))
            log.info("stored %s (%d bytes) in %.1f s", paths.payload.name, len(built.data), build_seconds)
            return CacheResult(fresh.value, key, paths, manifest, True, build_seconds, time.perf_counter() - start)

    def _try_load(
        self,
        key: StoreKey,
        paths: EntryPaths,
        load: Callable[[Path], Loaded[T]],
        expected_inputs: Sequence[TensorSpec],
        expected_outputs: Sequence[TensorSpec],
    ) -> tuple[T, dict[str, JSONValue]] | None:
        if not paths.payload.exists() and not paths.manifest.exists():
            log.info("cache miss: %s", paths.payload.name)
            return None
        try:
            manifest = _read_manifest(paths.manifest)
            if manifest is None:
                raise InvalidEntry("its manifest is missing")
            _check_manifest(key, manifest)
            _check_payload(paths.payload, manifest)
            _check_io(
                "manifest",
                tuple(TensorSpec.from_json(t) for t in manifest["inputs"]),
                tuple(TensorSpec.from_json(t) for t in manifest["outputs"]),
                expected_inputs,
                expected_outputs,
            )
            loaded = load(paths.payload)
            _check_io(key.kind.split()[-1], loaded.inputs, loaded.outputs, expected_inputs, expected_outputs)
        except InvalidEntry as exc:
            log.warning("cache: ignoring %s and rebuilding: %s", _shown(self.folder, paths.payload), exc)
            return None
        except (KeyError, TypeError, ValueError) as exc:
            log.warning(
                "cache: ignoring %s and rebuilding: malformed manifest (%s: %s)",
                _shown(self.folder, paths.payload),
                type(exc).__name__,
                exc,
            )
            return None
        log.info("cache hit: %s", paths.payload.name)
        return loaded.value, manifest

    # -- listing and clearing ------------------------------------------------------
    def entries(self) -> list[CacheEntry]:
        """Every entry of every kind, ours by name: engines and modules, ONNX exports, ort-tensorrt folders."""
        out = [self._file_entry(stem, files) for stem, files in _groups(self.folder, _ENGINE_RE)]
        out += [self._file_entry(stem, files) for stem, files in _groups(self.folder / ONNX_FOLDER, _ONNX_RE)]
        out += [self._folder_entry(folder) for folder in self._ort_folders()]
        return [e for e in out if e is not None]

    def total_size(self) -> int:
        """Bytes on disk of every entry."""
        return sum(e.size_bytes for e in self.entries())

    def clear(self, model: str | None = None) -> Cleared:
        """Delete entries (all, or ``model``'s): payloads, manifests, calibration tables, idle locks,
        temporary files, ort-tensorrt folders.

        Only names the store gives are touched, inside the cache folder: other files
        are left alone.  An entry whose lock another process holds (a build in
        progress) is left whole.  ``model`` is compared with the model field of
        those names, never joined to a path.
        """
        if model is not None and not _MODEL_NAME_RE.match(model):
            raise CacheError(f"not a model name: {model!r}")
        wanted = None if model is None else safe_token(model)
        removed: list[Path] = []
        removed_folders: list[Path] = []
        kept: list[Path] = []
        freed = 0
        for folder, pattern in ((self.folder, _ENGINE_RE), (self.folder / ONNX_FOLDER, _ONNX_RE)):
            for stem, files in _groups(folder, pattern, with_tmp=True):
                match = pattern.match(files[0].name) or pattern.match(_tmp_target(files[0].name) or "")
                assert match is not None
                if wanted is not None and match["model"] != wanted:
                    continue
                done, size = _remove_entry(folder / stem, files)
                if done is None:
                    log.warning("cache: %s is held by a running build; left in place", stem)
                    kept.extend(p for p in files if not p.name.endswith((LOCK_SUFFIX, ".tmp", MANIFEST_SUFFIX)))
                    continue
                removed.extend(done)
                freed += size
        for folder in self._ort_folders():
            match = _ORT_RE.match(folder.name)
            assert match is not None
            if wanted is not None and match["model"] != wanted:
                continue
            size = _tree_size(folder)[0]
            try:
                shutil.rmtree(folder)
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise CacheError(f"cannot remove {folder}: {exc.strerror or exc}") from exc
            removed_folders.append(folder)
            freed += size
        return Cleared(removed, removed_folders, kept, freed)

    def _ort_folders(self) -> list[Path]:
        root = self.folder / ORT_FOLDER
        if not root.is_dir() or root.is_symlink():
            return []
        ensure_private_dir(root)
        return sorted(p for p in _children(root) if _ORT_RE.match(p.name) and p.is_dir() and not p.is_symlink())

    def _file_entry(self, stem: str, files: list[Path]) -> CacheEntry | None:
        by_suffix = {p.suffix: p for p in files}
        payload = by_suffix.get(".engine") or by_suffix.get(".trtmodule") or by_suffix.get(".onnx")
        manifest_path = by_suffix.get(MANIFEST_SUFFIX)
        if payload is None and manifest_path is None:
            return None  # only a lock or a calibration table
        manifest: dict[str, JSONValue] = {}
        problem: str | None = None
        if manifest_path is not None:
            try:
                manifest = _read_manifest(manifest_path) or {}
            except InvalidEntry as exc:
                problem = f"unreadable manifest ({exc})"
        if payload is None:
            problem = problem or "payload missing"
        elif manifest_path is None:
            problem = "manifest missing"
        created: datetime | None = None
        try:
            created = datetime.fromisoformat(str(manifest["created"]))
        except (KeyError, ValueError):
            created = _mtime(payload) if payload is not None else None
        kept = tuple(sorted(p for p in files if p.suffix != LOCK_SUFFIX))
        path = payload or manifest_path
        assert path is not None
        onnx = path.parent.name == ONNX_FOLDER and _ONNX_RE.match(path.name) is not None
        producer = manifest.get("key", {}).get("producer") if isinstance(manifest.get("key"), dict) else None
        if onnx:
            kind: Kind = KIND_ONNX
            match = _ONNX_RE.match(path.name)
            assert match is not None
            precision: str | None = "fp32"
            batch = match["batch"]
            parts = ["dynamic batch" if batch == "dyn" else f"batch {batch[1:]}", f"opset {match['opset']}"]
            info = manifest.get("info")
            if isinstance(info, dict) and info.get("exporter"):
                parts.append(str(info["exporter"]))
            note = ", ".join(parts)
        else:
            match = _ENGINE_RE.match(path.name)
            assert match is not None
            kind = KIND_TRTMODULE if path.suffix == ".trtmodule" or producer == "torch2trt" else KIND_ENGINE
            precision, note = match["precision"], ""
        return CacheEntry(
            kind=kind,
            stem=stem,
            model=match["model"],
            precision=precision,
            path=path,
            payload=payload,
            manifest=manifest_path,
            size_bytes=sum(_size(p) for p in kept),
            created=created,
            note=problem or note,
            problem=problem,
            producer=str(producer) if producer else None,
            files=kept,
        )

    @staticmethod
    def _folder_entry(folder: Path) -> CacheEntry:
        match = _ORT_RE.match(folder.name)
        assert match is not None
        size, files = _tree_size(folder)
        batch = match["batch"]
        note = (f"{files} file(s)" if files else "empty") + ", "
        note += f"batch 1..{batch[3:]}" if batch.startswith("dyn") else f"batch {batch[1:]}"
        return CacheEntry(
            kind=KIND_ORT,
            stem=folder.name,
            model=match["model"],
            precision=match["precision"],
            path=folder,
            payload=None,
            manifest=None,
            size_bytes=size,
            created=_mtime(folder),
            note=note,
        )


# -- manifests -------------------------------------------------------------------
def _manifest(key: StoreKey, paths: EntryPaths, built: Built, build_seconds: float) -> dict[str, JSONValue]:
    return {
        "format_version": CACHE_FORMAT_VERSION,
        "kind": key.kind,
        "file": paths.payload.name,
        "model": key.model,
        "precision": key.precision,
        "key": key.to_json(),
        "key_sha256": key.digest,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "sha256": sha256_bytes(built.data),
        "size": len(built.data),
        "inputs": [t.to_json() for t in built.inputs],
        "outputs": [t.to_json() for t in built.outputs],
        "build_seconds": round(build_seconds, 3),
        "info": dict(built.info),
    }


def _read_manifest(path: Path) -> dict[str, JSONValue] | None:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidEntry(f"its manifest cannot be read ({getattr(exc, 'strerror', None) or exc})") from exc
    try:
        manifest = json.loads(text)
    except ValueError as exc:
        raise InvalidEntry(f"its manifest is not valid JSON ({exc})") from exc
    if not isinstance(manifest, dict):
        raise InvalidEntry("its manifest is not a JSON object")
    return manifest


def _check_manifest(key: StoreKey, manifest: Mapping[str, JSONValue]) -> None:
    if manifest.get("format_version") != CACHE_FORMAT_VERSION:
        raise InvalidEntry(f"cache format {manifest.get('format_version')!r} is not the current {CACHE_FORMAT_VERSION}")
    stored = manifest.get("key")
    expected = key.to_json()
    if stored != expected:
        if not isinstance(stored, dict):
            raise InvalidEntry("its manifest has no key")
        differ = sorted(k for k in set(stored) | set(expected) if stored.get(k) != expected.get(k))
        raise InvalidEntry(f"its manifest's key differs in {', '.join(differ)}")
    if manifest.get("key_sha256") != key.digest:
        raise InvalidEntry("its manifest's key hash differs")


def _check_payload(path: Path, manifest: Mapping[str, JSONValue]) -> None:
    """The payload's size and SHA-256 against the manifest's (streamed: exports reach hundreds of MB)."""
    try:
        size = path.stat().st_size
        if size != manifest.get("size"):
            raise InvalidEntry(f"its payload has {size} bytes, the manifest says {manifest.get('size')!r} (truncated?)")
        digest = sha256_file(path)
    except FileNotFoundError:
        raise InvalidEntry("its payload file is missing") from None
    except OSError as exc:
        raise InvalidEntry(f"its payload cannot be read ({exc.strerror or exc})") from exc
    if digest != manifest.get("sha256"):
        raise InvalidEntry("its payload's SHA-256 differs from the manifest's (corrupt or replaced)")


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


# -- locking and atomic writes ---------------------------------------------------
class _KeyLock:
    """A per-key inter-process lock (filelock) whose timeout raises :class:`CacheError`."""

    def __init__(self, path: Path, timeout_s: float, what: str) -> None:
        import filelock

        self.path = path
        self.timeout_s = timeout_s
        self.what = what
        self._lock = filelock.FileLock(str(path), timeout=timeout_s, mode=0o600)

    def __enter__(self) -> "_KeyLock":
        import filelock

        try:
            self._lock.acquire()
        except filelock.Timeout as exc:
            verb = "exporting this model" if self.what == KIND_ONNX else "building this engine"
            raise CacheError(
                f"timed out after {self.timeout_s:.0f} s waiting for the cache lock {self.path}: "
                f"another process is {verb}. Wait for it to finish and retry; if none is running, "
                "delete the lock file"
            ) from exc
        except OSError as exc:
            raise CacheError(f"cannot lock {self.path}: {exc.strerror or exc}") from exc
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._lock.release()


def _remove_entry(stem: Path, files: list[Path]) -> tuple[list[Path] | None, int]:
    """Delete one entry's files under its lock: (removed, bytes), or (None, 0) when another process holds it."""
    import filelock

    lock_path = stem.with_name(stem.name + LOCK_SUFFIX)
    lock = filelock.FileLock(str(lock_path), timeout=0)
    try:
        lock.acquire()
    except filelock.Timeout:
        return None, 0
    except OSError as exc:
        raise CacheError(f"cannot lock {lock_path}: {exc.strerror or exc}") from exc
    removed: list[Path] = []
    size = 0
    try:
        for path in sorted(files):
            if path == lock_path:
                continue
            size += _size(path)
            try:
                path.unlink()
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise CacheError(f"cannot remove {path}: {exc.strerror or exc}") from exc
            removed.append(path)
        lock_path.unlink(missing_ok=True)
    finally:
        lock.release()
    if lock_path in files:
        removed.append(lock_path)
    return removed, size


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path``, fsync it, then rename it over ``path``."""
    try:
        fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise CacheError(f"cannot write {path}: {exc.strerror or exc}") from exc
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


# -- files -----------------------------------------------------------------------
def _children(folder: Path) -> list[Path]:
    try:
        return list(folder.iterdir())
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise CacheError(f"cannot list the cache folder {folder}: {exc.strerror or exc}") from exc


def _groups(folder: Path, pattern: re.Pattern[str], with_tmp: bool = False) -> Iterator[tuple[str, list[Path]]]:
    """Our regular files in ``folder`` (no links) grouped by entry stem, sorted by stem."""
    groups: dict[str, list[Path]] = {}
    for path in _children(folder):
        try:
            if not stat.S_ISREG(path.lstat().st_mode):
                continue
        except OSError:
            continue
        match = pattern.match(path.name)
        if match is None and with_tmp:
            match = pattern.match(_tmp_target(path.name) or "")
        if match is not None:
            groups.setdefault(match["stem"], []).append(path)
    yield from sorted(groups.items())


def _tmp_target(name: str) -> str | None:
    match = _TMP_RE.match(name)
    return match["name"] if match else None


def _size(path: Path) -> int:
    try:
        return path.lstat().st_size
    except OSError:
        return 0


def _mtime(path: Path) -> datetime | None:
    try:
        return datetime.fromtimestamp(path.stat().st_mtime, timezone.utc)
    except OSError:
        return None


def _tree_size(folder: Path) -> tuple[int, int]:
    """(bytes, files) of the regular files under ``folder``; links are not followed."""
    size = files = 0
    for path in folder.rglob("*"):
        try:
            st = path.lstat()
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode):
            size += st.st_size
            files += 1
    return size, files


def _shown(root: Path, path: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)
