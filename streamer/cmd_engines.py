"""``streamer build`` and ``streamer cache list|clear``: engines ahead of time, and the cache they live in.

``streamer build --model resnet18 --precision fp16 --batch 4`` builds (or finds)
the TensorRT engine that ``streamer run`` would otherwise build on its first
start, and says where it went and how long it took.  ``--backend torch2trt``
does the same for a torch2trt module; ``--backend onnxruntime`` exports the
ONNX model (the input of every engine build) into the cache.

``streamer cache list`` shows everything the cache holds, one row per item with
its kind: TensorRT engines and torch2trt modules (the engine cache,
:class:`engines.cache.EngineCache`), ONNX exports (``<cache>/onnx``) and the
engine folders of onnxruntime's TensorRT execution provider
(``<cache>/ort-tensorrt/<model>-...``), then the totals.  ``streamer cache
clear [--model M]`` removes all of those (only ``M``'s with ``--model``), but
never an engine or export whose lock another process holds (a build or export
in progress).  ONNX Runtime keeps no lock on its folders.
"""

from __future__ import annotations

import argparse
import re
import shutil
import stat
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from engines.cache import EngineCache

BUILD_BACKENDS = ("tensorrt", "torch2trt", "onnxruntime")


def add_engine_commands(subparsers: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Add ``build`` and ``cache`` (``list``, ``clear``) to the main CLI's subcommands."""
    from streamer.cli import _positive_int
    from engines.models import model_names

    build = subparsers.add_parser(
        "build",
        help="build an engine ahead of time (into the engine cache)",
        description="Build the engine for a model, precision and batch ahead of time, or find it in the cache, "
        "and print where it is and how long it took.",
    )
    build.add_argument("--model", "-m", required=True, choices=model_names(), help="classifier to build")
    build.add_argument("--weights", default="imagenet", help="imagenet | random | PATH to a state dict (default: imagenet)")
    build.add_argument("--backend", "-b", default="tensorrt", choices=BUILD_BACKENDS, help="what to build (default: tensorrt)")
    build.add_argument(
        "--precision", "-p", default=None, choices=("fp32", "fp16", "int8"),
        help="engine precision (default: fp16 for tensorrt and torch2trt; onnxruntime exports fp32)",
    )  # fmt: skip
    build.add_argument("--batch", type=_positive_int, default=1, help="largest batch the engine takes (default: 1)")
    build.add_argument(
        "--dynamic-batch", action="store_true",
        help="accept any batch from 1 to --batch (an optimisation profile); always on when --batch > 1, "
        "as in streamer run, so that run finds the engine built here",
    )  # fmt: skip
    build.add_argument("--workspace", type=_positive_int, default=None, metavar="MB", help="TensorRT builder workspace limit")
    build.add_argument("--calib", type=Path, default=None, metavar="DIR", help="folder of images for int8 calibration")
    build.add_argument("--cache-dir", type=Path, default=None, metavar="DIR", help="engine cache folder (default: $STREAMER_CACHE_DIR or the user cache)")
    build.add_argument("--device", "-d", default="cuda", help="cuda | cuda:N (default: cuda)")
    build.set_defaults(func=cmd_build)

    cache = subparsers.add_parser(
        "cache", help="list or clear the cache (engines, ONNX exports, ort-tensorrt folders)",
        description="Inspect or empty the cache: TensorRT engines, torch2trt modules, ONNX exports and "
        "onnxruntime's TensorRT engine folders.",
    )  # fmt: skip
    cache_sub = cache.add_subparsers(dest="cache_command", metavar="ACTION")
    cache_sub.required = True
    listing = cache_sub.add_parser("list", help="everything cached: kind, file, model, precision, size, created; totals")
    listing.add_argument("--cache-dir", type=Path, default=None, metavar="DIR", help="engine cache folder")
    listing.set_defaults(func=cmd_cache_list)
    clear = cache_sub.add_parser("clear", help="delete cached engines, ONNX exports and ort-tensorrt folders (asks nothing)")
    clear.add_argument("--model", "-m", default=None, help="only this model's engines, exports and folders")
    clear.add_argument("--cache-dir", type=Path, default=None, metavar="DIR", help="engine cache folder")
    clear.set_defaults(func=cmd_cache_clear)


# -- build ------------------------------------------------------------------------------------
def _progress_printer() -> Any:
    last: dict[str, int] = {}

    def report(phase: str, done: int, total: int) -> None:
        step = max(1, total // 10)
        if done in (0, total) or done // step != last.get(phase, -1) // step:
            last[phase] = done
            print(f"  {phase}: {done}/{total}", file=sys.stderr, flush=True)

    return report


def _human_size(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"


def cmd_build(args: argparse.Namespace) -> int:
    from engines.backends import backend_class
    from engines.backends.base import BackendOptions, Precision
    from engines.errors import ConfigError
    from engines.models import WeightsChoice, get_spec

    spec = get_spec(args.model)
    weights = WeightsChoice.parse(args.weights)
    dynamic = bool(args.dynamic_batch or args.batch > 1)  # the rule streamer run uses for its options
    precision: Precision = args.precision or ("fp32" if args.backend == "onnxruntime" else "fp16")
    if args.backend == "onnxruntime":
        if precision != "fp32":
            raise ConfigError("build --backend onnxruntime exports an fp32 ONNX model; --precision applies to tensorrt and torch2trt")
        from engines.onnx_export import cached_onnx

        start = time.perf_counter()
        path, sha = cached_onnx(spec, weights, args.batch, dynamic, cache_dir=args.cache_dir)
        seconds = time.perf_counter() - start
        print(f"onnx: {path}")
        print(f"{spec.name} {'batch 1..' if dynamic else 'batch '}{args.batch}, {_human_size(path.stat().st_size)}, sha256 {sha[:16]}, {seconds:.1f} s")
        return 0
    if precision == "int8" and args.calib is None:
        raise ConfigError("--precision int8 needs --calib DIR (a folder of calibration images)")
    options = BackendOptions(
        device=args.device,
        precision=precision,
        batch=args.batch,
        dynamic_batch=dynamic,
        cache_dir=args.cache_dir,
        workspace_mb=args.workspace,
        calib_dir=args.calib,
    )
    backend: Any = backend_class(args.backend)(spec, weights, options)
    if hasattr(backend, "progress"):
        backend.progress = _progress_printer()
    start = time.perf_counter()
    backend.load()
    seconds = time.perf_counter() - start
    try:
        result = getattr(backend, "cache_result", None)
        print(f"engine: {result.paths.payload if result is not None else '(not cached)'}")
        if result is not None:
            how = f"built in {result.build_seconds:.1f} s" if result.built else "found in the cache"
            size = _human_size(result.paths.payload.stat().st_size)
            print(f"{backend.description}: {how}, {size}, {seconds:.1f} s in all")
        else:
            print(f"{backend.description}: {seconds:.1f} s")
    finally:
        backend.close()
    return 0


# -- cache ------------------------------------------------------------------------------------
CacheKind = Literal["tensorrt engine", "torch2trt module", "onnx export", "ort-tensorrt folder"]
KIND_ENGINE: CacheKind = "tensorrt engine"
KIND_TRTMODULE: CacheKind = "torch2trt module"
KIND_ONNX: CacheKind = "onnx export"
KIND_ORT: CacheKind = "ort-tensorrt folder"
KINDS: tuple[CacheKind, ...] = (KIND_ENGINE, KIND_TRTMODULE, KIND_ONNX, KIND_ORT)
ORT_TENSORRT_FOLDER = "ort-tensorrt"
"""Where onnxruntime's TensorRT execution provider keeps its engines (OnnxRuntimeBackend._tensorrt_options)."""
_ORT_NAME_RE = re.compile(r"^(?P<model>[A-Za-z0-9_.]+)-(?P<sha>[0-9a-f]{16})-(?P<precision>fp32|fp16|int8)-(?P<batch>(dyn|b)[0-9]+)$")


@dataclass(frozen=True)
class CachedItem:
    """One thing ``cache list`` shows: an engine cache entry, an ONNX export or an ort-tensorrt folder."""

    kind: CacheKind
    path: Path
    """The payload file (engine entries), the ``.onnx`` file, or the folder."""
    model: str
    precision: str | None
    size_bytes: int
    """Bytes on disk of everything the item consists of (manifest and metadata included)."""
    created: datetime | None
    note: str = ""


def _console() -> Any:
    from rich.console import Console

    console = Console()
    if not console.is_terminal:
        console = Console(width=max(console.width, 200))
    return console


def _file_size(path: Path) -> int:
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


def engine_items(cache: "EngineCache") -> list[CachedItem]:
    """The engine cache's entries (TensorRT engines and torch2trt modules)."""
    items = []
    for entry in cache.list_entries():
        path = entry.payload if entry.payload is not None else (entry.manifest or cache.folder / entry.stem)
        kind = KIND_TRTMODULE if path.suffix == ".trtmodule" or entry.producer == "torch2trt" else KIND_ENGINE
        note = entry.problem or ""
        items.append(CachedItem(kind, path, entry.model, entry.precision, entry.size_bytes, entry.created, note))
    return items


def onnx_items(cache_folder: Path) -> list[CachedItem]:
    """The ONNX exports under ``<cache>/onnx`` (always fp32)."""
    from engines.onnx_export import onnx_cache_files, read_onnx_meta

    items = []
    for path in onnx_cache_files(cache_folder):
        meta = read_onnx_meta(path)
        key = meta.get("key") if meta is not None else None
        key = key if isinstance(key, dict) else {}
        model = str(key.get("model") or path.name.split("-", 1)[0])
        if meta is None:
            note = "metadata missing"
        else:
            batch = key.get("batch")
            parts = ["dynamic batch" if batch == "dynamic" else f"batch {batch}", f"opset {key.get('opset', '?')}"]
            if meta.get("exporter"):
                parts.append(str(meta["exporter"]))
            note = ", ".join(parts)
        size = _file_size(path) + _file_size(path.with_suffix(".json"))
        items.append(CachedItem(KIND_ONNX, path, model, "fp32", size, _mtime(path), note))
    return items


def _ort_root(cache_folder: Path) -> Path | None:
    """``<cache>/ort-tensorrt`` when it exists (checked private, as every cache folder), else None."""
    from engines.paths import ensure_private_dir

    root = cache_folder / ORT_TENSORRT_FOLDER
    if not root.exists() and not root.is_symlink():
        return None
    return ensure_private_dir(root)


def ort_folders(cache_folder: Path, model: str | None = None) -> list[Path]:
    """The engine folders of onnxruntime's TensorRT execution provider (``model``: only that model's)."""
    root = _ort_root(cache_folder)
    if root is None:
        return []
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.is_symlink())
    if model is not None:
        folders = [p for p in folders if p.name.startswith(f"{model}-")]
    return folders


def ort_items(cache_folder: Path) -> list[CachedItem]:
    """One item per ``<cache>/ort-tensorrt/<model>-<onnx sha16>-<precision>-<batch>`` folder."""
    items = []
    for folder in ort_folders(cache_folder):
        match = _ORT_NAME_RE.match(folder.name)
        size, files = _tree_size(folder)
        note = f"{files} file(s)" if files else "empty"
        if match is not None:
            batch = match["batch"]
            note += ", " + (f"batch 1..{batch[3:]}" if batch.startswith("dyn") else f"batch {batch[1:]}")
            model, precision = match["model"], match["precision"]
        else:
            model, precision = folder.name.split("-", 1)[0], None
        items.append(CachedItem(KIND_ORT, folder, model, precision, size, _mtime(folder), note))
    return items


def cmd_cache_list(args: argparse.Namespace) -> int:
    from rich.table import Table

    from engines.cache import EngineCache

    cache = EngineCache(args.cache_dir)
    items = engine_items(cache) + onnx_items(cache.folder) + ort_items(cache.folder)
    console = _console()
    if not items:
        console.print(f"nothing cached in {cache.folder} (no engines, ONNX exports or ort-tensorrt folders)")
        return 0
    table = Table(title=f"cache: {cache.folder}", title_justify="left")
    table.add_column("kind", no_wrap=True)
    table.add_column("file", no_wrap=True)
    table.add_column("model")
    table.add_column("precision")
    table.add_column("size", justify="right")
    table.add_column("created")
    table.add_column("note")
    for item in items:
        name = item.path.relative_to(cache.folder).as_posix() + ("/" if item.kind == KIND_ORT else "")
        created = item.created.astimezone().strftime("%Y-%m-%d %H:%M") if item.created else "?"
        size = _human_size(item.size_bytes)
        table.add_row(item.kind, name, item.model, item.precision or "?", size, created, item.note)
    console.print(table)
    by_kind = [
        f"{sum(1 for i in items if i.kind == kind)} {kind}(s) ({_human_size(sum(i.size_bytes for i in items if i.kind == kind))})"
        for kind in KINDS
        if any(i.kind == kind for i in items)
    ]
    console.print(f"{len(items)} item(s), {_human_size(sum(i.size_bytes for i in items))}: {', '.join(by_kind)}")
    return 0


def _remove_ort_folder(folder: Path) -> None:
    from engines.errors import CacheError

    try:
        shutil.rmtree(folder)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise CacheError(f"cannot remove {folder}: {exc.strerror or exc}") from exc


def cmd_cache_clear(args: argparse.Namespace) -> int:
    from engines.cache import EngineCache
    from engines.onnx_export import clear_onnx_cache, onnx_cache_files, onnx_cache_folder

    cache = EngineCache(args.cache_dir)
    onnx_folder = onnx_cache_folder(cache.folder)
    sizes = {p: _file_size(p) for folder in (cache.folder, onnx_folder) for p in folder.iterdir() if p.is_file()}
    removed = cache.clear(model=args.model) + clear_onnx_cache(cache.folder, args.model)
    freed = sum(sizes.get(p, 0) for p in removed)
    for path in removed:
        print(f"removed {path.relative_to(cache.folder).as_posix()}")
    folders = ort_folders(cache.folder, args.model)
    for folder in folders:
        freed += _tree_size(folder)[0]
        _remove_ort_folder(folder)
        print(f"removed {folder.relative_to(cache.folder).as_posix()}/")
    for path in onnx_cache_files(cache.folder, args.model):  # clear_onnx_cache skips an export in progress
        print(f"kept {path.relative_to(cache.folder).as_posix()} (another process is exporting it)")
    which = f" for {args.model}" if args.model else ""
    print(
        f"{len(removed)} file(s) and {len(folders)} {KIND_ORT}(s){which} removed from {cache.folder}, "
        f"{_human_size(freed)} freed"
    )
    return 0
