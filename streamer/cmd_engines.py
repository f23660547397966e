"""``streamer build`` and ``streamer cache list|clear``: engines ahead of time, and the store they live in.

``streamer build --model resnet18 --precision fp16 --batch 4`` builds (or finds)
the TensorRT engine that ``streamer run`` would otherwise build on its first
start, and says where it went and how long it took.  ``--backend torch2trt``
does the same for a torch2trt module; ``--backend onnxruntime`` exports the
ONNX model (the input of every engine build) into the cache.

``streamer cache list`` and ``streamer cache clear [--model M]`` are views of
the store (:class:`engines.cache.Store`): one row per entry with its kind
(TensorRT engine, torch2trt module, ONNX export, onnxruntime TensorRT folder),
then the totals; ``clear`` removes all of those (only ``M``'s with ``--model``,
which must be a registered model), but never an entry whose lock another
process holds (a build or export in progress).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

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
    precision: Precision = args.precision or ("fp32" if args.backend == "onnxruntime" else "fp16")
    options = BackendOptions.for_batch(
        args.batch,
        dynamic=args.dynamic_batch,
        device=args.device,
        precision=precision,
        cache_dir=args.cache_dir,
        workspace_mb=args.workspace,
        calib_dir=args.calib,
    )
    batch = f"{'batch 1..' if options.dynamic_batch else 'batch '}{args.batch}"
    if args.backend == "onnxruntime":
        if precision != "fp32":
            raise ConfigError("build --backend onnxruntime exports an fp32 ONNX model; --precision applies to tensorrt and torch2trt")
        from engines.onnx_export import cached_onnx

        start = time.perf_counter()
        export = cached_onnx(spec, weights, args.batch, options.dynamic_batch, cache_dir=args.cache_dir)
        seconds = time.perf_counter() - start
        print(f"onnx: {export.value}")
        print(f"{spec.name} {batch}, {_human_size(export.size_bytes)}, sha256 {export.sha256[:16]}, {seconds:.1f} s")
        return 0
    if precision == "int8" and args.calib is None:
        raise ConfigError("--precision int8 needs --calib DIR (a folder of calibration images)")
    backend = backend_class(args.backend)(spec, weights, options)
    start = time.perf_counter()
    try:
        backend.load(progress=_progress_printer())
    except KeyboardInterrupt:
        # TensorRT's callbacks keep Ctrl-C and the build re-raises it once the builder returns:
        # nothing was stored (no engine, manifest or calibration table).
        print("streamer build: interrupted; nothing was cached", file=sys.stderr)
        raise
    seconds = time.perf_counter() - start
    try:
        artifact = backend.artifact
        print(f"engine: {artifact.path if artifact is not None else '(not cached)'}")
        if artifact is not None:
            how = f"built in {artifact.build_seconds:.1f} s" if artifact.built else "found in the cache"
            print(f"{backend.description}: {how}, {_human_size(artifact.size_bytes)}, {seconds:.1f} s in all")
        else:
            print(f"{backend.description}: {seconds:.1f} s")
    finally:
        backend.close()
    return 0


# -- cache ------------------------------------------------------------------------------------
def _console() -> Any:
    from rich.console import Console

    console = Console()
    if not console.is_terminal:
        console = Console(width=max(console.width, 200))
    return console


def cmd_cache_list(args: argparse.Namespace) -> int:
    from rich.table import Table

    from engines.cache import KIND_ORT, KINDS, Store

    store = Store(args.cache_dir)
    entries = store.entries()
    console = _console()
    if not entries:
        console.print(f"nothing cached in {store.folder} (no engines, ONNX exports or ort-tensorrt folders)")
        return 0
    table = Table(title=f"cache: {store.folder}", title_justify="left")
    for column in ("kind", "file", "model", "precision"):
        table.add_column(column, no_wrap=column in ("kind", "file"))
    table.add_column("size", justify="right")
    table.add_column("created")
    table.add_column("note")
    for entry in entries:
        name = entry.path.relative_to(store.folder).as_posix() + ("/" if entry.kind == KIND_ORT else "")
        created = entry.created.astimezone().strftime("%Y-%m-%d %H:%M") if entry.created else "?"
        table.add_row(
            entry.kind, name, entry.model, entry.precision or "?", _human_size(entry.size_bytes), created, entry.note
        )
    console.print(table)
    by_kind = [
        f"{sum(1 for e in entries if e.kind == kind)} {kind}(s) "
        f"({_human_size(sum(e.size_bytes for e in entries if e.kind == kind))})"
        for kind in KINDS
        if any(e.kind == kind for e in entries)
    ]
    total = _human_size(sum(e.size_bytes for e in entries))
    console.print(f"{len(entries)} item(s), {total}: {', '.join(by_kind)}")
    return 0


def cmd_cache_clear(args: argparse.Namespace) -> int:
    from engines.cache import Store
    from engines.errors import ConfigError
    from engines.models import model_names

    if args.model is not None and args.model not in model_names():
        raise ConfigError(f"cache clear --model: unknown model {args.model!r}; choose one of {', '.join(model_names())}")
    store = Store(args.cache_dir)
    cleared = store.clear(args.model)
    for path in cleared.removed:
        print(f"removed {path.relative_to(store.folder).as_posix()}")
    for path in cleared.removed_folders:
        print(f"removed {path.relative_to(store.folder).as_posix()}/")
    for path in cleared.kept:
        print(f"kept {path.relative_to(store.folder).as_posix()} (another process is building or exporting it)")
    which = f" for {args.model}" if args.model else ""
    print(
        f"{len(cleared.removed)} file(s) and {len(cleared.removed_folders)} ort-tensorrt folder(s){which} removed "
        f"from {store.folder}, {_human_size(cleared.freed_bytes)} freed"
    )
    return 0
