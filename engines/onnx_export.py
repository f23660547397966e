"""Export a registered model to a single, self-contained ONNX file, and cache it.

The graph always has one input named ``input`` (N, 3, H, W float32, normalised
as the model's :class:`~engines.preprocess.PreprocessSpec` says) and one output
named ``logits`` (N, classes).  The batch axis is either fixed or dynamic,
with the symbolic name ``batch``.  Weights are embedded (no external data).

Two PyTorch exporters exist and both are tried, in an order that depends on
the opset asked for:

* the ``torch.export``-based exporter (``dynamo=True``, the default since
  PyTorch 2.9) writes the cleaner graph: TensorFlow-style SAME padding in
  EfficientNet-Lite ends up inside the ``Conv`` nodes' ``pads``, and ONNX
  Runtime runs that graph about a third faster on the CPU.  Its lowest opset
  is 18, which is why :data:`DEFAULT_OPSET` is 18;
* the TorchScript exporter (``dynamo=False``, deprecated) honours any opset,
  so it is tried first when an opset below 18 is asked for.  It leaves each
  SAME pad as a ``Pad`` node whose sizes are constants (the padding depends on
  H and W only, never on the batch).

Every file is checked after export (names, shapes, embedded weights) before it
is moved into place, so a broken export never reaches the cache.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Literal

from engines.cache import Built, CacheResult, InvalidEntry, Loaded, OnnxKey, Store, TensorSpec, sha256_file
from engines.errors import ConfigError, EngineError
from engines.models import ModelSpec, WeightsChoice, build_model, resolve_weights_file
from engines.paths import fsync_dir, fsync_file

if TYPE_CHECKING:
    from engines.models import LoadedModel

log = logging.getLogger(__name__)

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
BATCH_DIM = "batch"
DEFAULT_OPSET = 18
DYNAMO_MIN_OPSET = 18
"""Lowest opset the torch.export-based exporter writes natively (torch 2.9 to 2.14)."""
LOCK_TIMEOUT_S = 600.0
_DYNAMIC_EXAMPLE_BATCH = 2
"""Example batch for dynamic exports: torch.export specialises dimensions of size 1."""

ExporterName = Literal["auto", "dynamo", "torchscript"]
EXPORTERS: tuple[str, ...] = ("auto", "dynamo", "torchscript")

# Messages the exporters emit on every export of our models, all harmless:
_QUIET_WARNINGS: tuple[tuple[str, type[Warning]], ...] = (
    (r".*legacy TorchScript-based ONNX export", DeprecationWarning),
    (r"The feature will be removed", DeprecationWarning),
    (r"Constant folding - Only steps=1", UserWarning),
    (r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning),  # torch 2.11's own pytree use
)
_QUIET_LOGGERS: tuple[str, ...] = ("torch.onnx", "torch.export", "torch._export", "onnxscript", "onnx_ir")


@dataclass(frozen=True)
class OnnxInfo:
    """What a written ONNX file declares."""

    opset: int
    input_shape: tuple[int | str, ...]
    output_shape: tuple[int | str, ...]
    size_bytes: int


# -- quiet exporting ---------------------------------------------------------
@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Silence the exporters' known warnings and INFO/WARNING chatter, for this block only.

    ``warnings.catch_warnings`` restores the previous filters on exit; loggers
    get their previous level back.  A logger someone set to INFO or DEBUG on
    purpose is left alone.  (Python's warning filters are process-wide, so a
    warning raised by another thread during an export is filtered too.)
    """
    import torch

    loggers = [logging.getLogger(name) for name in _QUIET_LOGGERS]
    saved = [(logger, logger.level) for logger in loggers]
    with warnings.catch_warnings():
        tracer_warning = getattr(torch.jit, "TracerWarning", None)
        if isinstance(tracer_warning, type) and issubclass(tracer_warning, Warning):
            warnings.filterwarnings("ignore", category=tracer_warning)
        for message, category in _QUIET_WARNINGS:
            warnings.filterwarnings("ignore", message=message, category=category)
        try:
            for logger in loggers:
                if logging.WARNING <= logger.getEffectiveLevel() < logging.ERROR:
                    logger.setLevel(logging.ERROR)
            yield
        finally:
            for logger, level in saved:
                logger.setLevel(level)


# -- the two exporters -----------------------------------------------------------
def _supported_kwargs(func: object, kwargs: dict[str, object]) -> dict[str, object]:
    """Drop keyword arguments this torch's ``torch.onnx.export`` does not know."""
    import inspect

    try:
        params = inspect.signature(func).parameters  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return kwargs
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return kwargs
    return {k: v for k, v in kwargs.items() if k in params}


def _export_dynamo(module: "object", example: "object", path: Path, dynamic: bool, opset: int) -> None:
    import torch

    dynamic_shapes = ({0: torch.export.Dim(BATCH_DIM, min=1)},) if dynamic else None
    kwargs = _supported_kwargs(
        torch.onnx.export,
        {
            "dynamo": True,
            "external_data": False,
            "input_names": [INPUT_NAME],
            "output_names": [OUTPUT_NAME],
            "opset_version": opset,
            "dynamic_shapes": dynamic_shapes,
            "optimize": True,
            "verbose": False,
            "report": False,
        },
    )
    torch.onnx.export(module, (example,), str(path), **kwargs)  # type: ignore[arg-type]


def _export_torchscript(module: "object", example: "object", path: Path, dynamic: bool, opset: int) -> None:
    import torch

    dynamic_axes = {INPUT_NAME: {0: BATCH_DIM}, OUTPUT_NAME: {0: BATCH_DIM}} if dynamic else None
    kwargs = _supported_kwargs(
        torch.onnx.export,
        {
            "dynamo": False,
            "input_names": [INPUT_NAME],
            "output_names": [OUTPUT_NAME],
            "opset_version": opset,
            "dynamic_axes": dynamic_axes,
            "do_constant_folding": True,
            "export_params": True,
        },
    )
    torch.onnx.export(module, (example,), str(path), **kwargs)  # type: ignore[arg-type]


_EXPORTER_FUNCS = {"dynamo": _export_dynamo, "torchscript": _export_torchscript}


def exporter_order(exporter: ExporterName, opset: int) -> list[str]:
    """The exporters ``export_onnx`` tries, first choice first."""
    if exporter not in EXPORTERS:
        raise ConfigError(f"exporter must be one of {', '.join(EXPORTERS)}, got {exporter!r}")
    if exporter != "auto":
        return [exporter]
    if opset >= DYNAMO_MIN_OPSET:
        return ["dynamo", "torchscript"]
    return ["torchscript", "dynamo"]


# -- checking a written file -------------------------------------------------------
def _dims(value_info: "object") -> tuple[int | str, ...]:
    shape = value_info.type.tensor_type.shape  # type: ignore[attr-defined]
    out: list[int | str] = []
    for dim in shape.dim:
        if dim.HasField("dim_value"):
            out.append(int(dim.dim_value))
        else:
            out.append(str(dim.dim_param) or "?")
    return tuple(out)


def inspect_onnx(path: Path) -> OnnxInfo:
    """Read the opset and the input/output shapes of an ONNX file (weights not resolved)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return _info(model, path)


def _info(model: "object", path: Path) -> OnnxInfo:
    graph = model.graph  # type: ignore[attr-defined]
    opset = max((int(o.version) for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)  # type: ignore[attr-defined]
    initializers = {init.name for init in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initializers]
    if len(inputs) != 1 or len(graph.output) != 1:
        raise EngineError(f"{path.name}: expected one input and one output, found {len(inputs)} and {len(graph.output)}")
    return OnnxInfo(opset, _dims(inputs[0]), _dims(graph.output[0]), path.stat().st_size)


def _check_and_fix(path: Path, spec: ModelSpec, batch: int, dynamic: bool) -> OnnxInfo:
    """Validate a fresh export; rename the batch axis to ``batch`` if the exporter named it otherwise."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    graph = model.graph
    external = [init.name for init in graph.initializer if init.data_location == onnx.TensorProto.EXTERNAL]
    if external:
        raise EngineError(f"{path.name}: {len(external)} weights were written as external data; expected them embedded")
    initializers = {init.name for init in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initializers]
    names = ([i.name for i in inputs], [o.name for o in graph.output])
    if names != ([INPUT_NAME], [OUTPUT_NAME]):
        raise EngineError(f"{path.name}: inputs/outputs are {names}, expected ([{INPUT_NAME!r}], [{OUTPUT_NAME!r}])")
    if inputs[0].type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
        raise EngineError(f"{path.name}: input is not float32")
    in_shape, out_shape = _dims(inputs[0]), _dims(graph.output[0])
    expected_rest = tuple(spec.preprocess.input_shape)
    if len(in_shape) != 4 or in_shape[1:] != expected_rest:
        raise EngineError(f"{path.name}: input shape {in_shape}, expected (N, {', '.join(map(str, expected_rest))})")
    if len(out_shape) != 2 or out_shape[1] != spec.num_classes:
        raise EngineError(f"{path.name}: output shape {out_shape}, expected (N, {spec.num_classes})")
    if dynamic:
        if not isinstance(in_shape[0], str) or not isinstance(out_shape[0], str):
            raise EngineError(f"{path.name}: batch axis is not dynamic (input {in_shape}, output {out_shape})")
        if in_shape[0] != BATCH_DIM or out_shape[0] != BATCH_DIM:
            _rename_dim_params(model, {str(in_shape[0]): BATCH_DIM, str(out_shape[0]): BATCH_DIM})
            onnx.save(model, str(path))
    else:
        if in_shape[0] != batch or (isinstance(out_shape[0], int) and out_shape[0] != batch):
            raise EngineError(f"{path.name}: batch axis is {in_shape[0]}/{out_shape[0]}, expected fixed {batch}")
        if isinstance(out_shape[0], str):
            # The TorchScript exporter's shape inference gives up behind the Pad-size
            # subgraphs and leaves the output batch symbolic; the input fixes it.
            graph.output[0].type.tensor_type.shape.dim[0].dim_value = batch
            onnx.save(model, str(path))
    onnx.checker.check_model(model)
    return _info(model, path)


def _rename_dim_params(model: "object", mapping: dict[str, str]) -> None:
    graph = model.graph  # type: ignore[attr-defined]
    for value_info in (*graph.input, *graph.output, *graph.value_info):
        if not value_info.type.HasField("tensor_type"):
            continue
        for dim in value_info.type.tensor_type.shape.dim:
            if dim.HasField("dim_param") and dim.dim_param in mapping:
                dim.dim_param = mapping[dim.dim_param]


# -- export ------------------------------------------------------------------
def export_onnx(
    model: "LoadedModel",
    path: Path,
    batch: int = 1,
    dynamic_batch: bool = False,
    opset: int = DEFAULT_OPSET,
    exporter: ExporterName = "auto",
) -> Path:
    """Export ``model`` to ``path`` (written atomically); returns ``path``.

    ``batch`` is the fixed batch of the graph, or only informative when
    ``dynamic_batch`` is true (the axis is then named ``batch``).  Tries the
    exporters of :func:`exporter_order` in turn and raises
    :class:`~engines.errors.EngineError`, naming each failure, if none works.
    """
    _export(model, Path(path), batch, dynamic_batch, opset, exporter)
    return Path(path)


def _export(
    model: "LoadedModel", path: Path, batch: int, dynamic_batch: bool, opset: int, exporter: ExporterName
) -> tuple[str, OnnxInfo]:
    """:func:`export_onnx`, returning which exporter wrote the file and what it declares."""
    import torch

    if not isinstance(batch, int) or batch < 1:
        raise ConfigError(f"batch must be a positive integer, got {batch!r}")
    order = exporter_order(exporter, opset)
    module = model.module
    first = next(iter(module.parameters()), None)
    if first is not None and (first.device.type != "cpu" or first.dtype != torch.float32):
        raise ConfigError(f"export_onnx needs the float32 model on the CPU, got {first.dtype} on {first.device}")
    if module.training:
        raise ConfigError("export_onnx needs the model in eval mode")
    path.parent.mkdir(parents=True, exist_ok=True)
    example_batch = _DYNAMIC_EXAMPLE_BATCH if dynamic_batch else batch
    example = torch.zeros((example_batch, *model.spec.preprocess.input_shape), dtype=torch.float32)
    failures: list[str] = []
    for name in order:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".onnx.tmp", dir=path.parent)
        os.close(fd)
        tmp = Path(tmp_name)
        start = time.perf_counter()
        try:
            with _quiet_exporter():
                _EXPORTER_FUNCS[name](module, example, tmp, dynamic_batch, opset)
            info = _check_and_fix(tmp, model.spec, batch, dynamic_batch)
            fsync_file(tmp)
            os.replace(tmp, path)
        except Exception as exc:  # exporters raise many types; each means "this one failed"
            with contextlib.suppress(OSError):
                tmp.unlink()
            first_line = (str(exc).strip().splitlines() or [""])[0][:300]
            failures.append(f"{name}: {type(exc).__name__}: {first_line}")
            log.debug("ONNX export of %s with the %s exporter failed", model.spec.name, name, exc_info=True)
            continue
        try:
            fsync_dir(path.parent)
        except OSError as exc:
            raise EngineError(f"cannot write {path}: {exc.strerror or exc}") from exc
        if info.opset != opset:
            log.info("%s: the %s exporter wrote opset %d (asked for %d)", model.spec.name, name, info.opset, opset)
        log.info(
            "exported %s to ONNX with the %s exporter in %.1f s (%.1f MB, opset %d, batch %s)",
            model.spec.name,
            name,
            time.perf_counter() - start,
            info.size_bytes / 1e6,
            info.opset,
            info.input_shape[0],
        )
        return name, info
    raise EngineError(f"ONNX export of {model.spec.name} failed with every exporter: " + "; ".join(failures))


# -- cache ------------------------------------------------------------------
_WEIGHTS_HASHES: dict[tuple[str, int, int], str] = {}


def weights_id(spec: ModelSpec, weights: WeightsChoice, seed: int = 0) -> str:
    """``sha256:<hex>`` of the weights file's bytes, or ``random-seed<N>``."""
    if weights.kind == "random":
        return f"random-seed{seed}"
    path = resolve_weights_file(spec, weights)
    assert path is not None
    st = path.stat()
    memo_key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if memo_key not in _WEIGHTS_HASHES:
        _WEIGHTS_HASHES[memo_key] = sha256_file(path)
    return "sha256:" + _WEIGHTS_HASHES[memo_key]


def _library_versions() -> tuple[tuple[str, str], ...]:
    import torch

    versions = {"torch": str(torch.__version__)}
    try:
        import torchvision

        versions["torchvision"] = str(torchvision.__version__)
    except ImportError:  # pragma: no cover - torchvision is a core dependency
        pass
    return tuple(sorted(versions.items()))


def onnx_key(
    spec: ModelSpec,
    weights: WeightsChoice,
    batch: int,
    dynamic_batch: bool,
    opset: int = DEFAULT_OPSET,
    seed: int = 0,
    exporter: ExporterName = "auto",
) -> OnnxKey:
    """Everything the exported file depends on (a dynamic graph does not depend on ``batch``)."""
    return OnnxKey(
        model=spec.name,
        input_shape=tuple(spec.preprocess.input_shape),
        num_classes=spec.num_classes,
        weights=weights_id(spec, weights, seed),
        batch=None if dynamic_batch else batch,
        opset=opset,
        exporter=exporter,
        libraries=_library_versions(),
    )


def onnx_io(spec: ModelSpec, batch: int | None) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    """The I/O tensors an export for ``spec`` declares (-1: the dynamic batch axis)."""
    n = -1 if batch is None else batch
    return (
        (TensorSpec(INPUT_NAME, (n, *spec.preprocess.input_shape)),),
        (TensorSpec(OUTPUT_NAME, (n, spec.num_classes)),),
    )


def _declared_io(info: OnnxInfo) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    def shape(dims: tuple[int | str, ...]) -> tuple[int, ...]:
        return tuple(d if isinstance(d, int) else -1 for d in dims)

    return (TensorSpec(INPUT_NAME, shape(info.input_shape)),), (TensorSpec(OUTPUT_NAME, shape(info.output_shape)),)


def _load_export(path: Path) -> Loaded[Path]:
    """A verified export's path, with the I/O it declares (graph read without weights)."""
    try:
        info = inspect_onnx(path)
    except Exception as exc:  # protobuf's DecodeError, OSError, our EngineError: all mean "unreadable"
        raise InvalidEntry(f"it does not parse as ONNX ({type(exc).__name__}: {exc})") from exc
    inputs, outputs = _declared_io(info)
    return Loaded(path, inputs, outputs)


def cached_onnx(
    spec: ModelSpec,
    weights: WeightsChoice,
    batch: int = 1,
    dynamic_batch: bool = False,
    cache_dir: Path | None = None,
    *,
    opset: int = DEFAULT_OPSET,
    seed: int = 0,
    exporter: ExporterName = "auto",
    lock_timeout: float = LOCK_TIMEOUT_S,
) -> CacheResult[Path]:
    """The stored ONNX export of ``spec`` with ``weights`` (``.value`` is its path, ``.sha256`` its hash).

    Exports on a miss, and again (with one warning) when the stored file does not
    match its manifest.  A per-entry lock keeps two processes from exporting the
    same entry at once; the loser waits and reuses the winner's file.  Raises
    :class:`~engines.errors.CacheError` if the lock cannot be taken within
    ``lock_timeout`` seconds.
    """
    if not isinstance(batch, int) or batch < 1:
        raise ConfigError(f"batch must be a positive integer, got {batch!r}")
    key = onnx_key(spec, weights, batch, dynamic_batch, opset, seed, exporter)
    store = Store(cache_dir, lock_timeout_s=lock_timeout)

    def build() -> Built:
        model = build_model(spec, weights, seed=seed)
        with tempfile.TemporaryDirectory(prefix=".export-", dir=store.paths(key).payload.parent) as tmp:
            path = Path(tmp) / f"{spec.name}.onnx"
            used, info = _export(model, path, batch, dynamic_batch, opset, exporter)
            del model
            inputs, outputs = _declared_io(info)
            return Built(path.read_bytes(), inputs, outputs, {"exporter": used, "opset_written": info.opset})

    inputs, outputs = onnx_io(spec, key.batch)
    return store.get_or_build(key, build, _load_export, inputs, outputs)
