"""``streamer build`` / ``streamer cache list|clear`` through argparse, on a temporary cache."""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from engines.cache import Built, EngineKey, Loaded, Store, TensorSpec
from streamer.cmd_engines import add_engine_commands


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="streamer")
    sub = parser.add_subparsers(dest="command")
    add_engine_commands(sub)
    return parser.parse_args(list(argv))


def _add_entry(folder: Path, model: str, precision: str, size: int, producer: str = "tensorrt") -> Path:
    """A real store entry made through Store.get_or_build with a stand-in builder (no TensorRT)."""
    io_in = (TensorSpec("input", (1, 3, 224, 224)),)
    io_out = (TensorSpec("logits", (1, 1000)),)
    key = EngineKey(
        producer=producer, model=model, precision=precision, source_sha256="0" * 64, source_format="onnx",
        calib_sha256=None, inputs=io_in, profile=(), workspace_mb=None, trt_version="10.13.0.35",
        cuda_version="12.4", gpu_name="Fake GPU", compute_capability="8.6", os="linux", arch="x86_64",
    )  # fmt: skip
    result = Store(folder).get_or_build(
        key,
        build=lambda: Built(b"x" * size, io_in, io_out),
        load=lambda path: Loaded(path, io_in, io_out),
        expected_inputs=io_in,
        expected_outputs=io_out,
    )
    assert result.built
    return result.paths.payload


needs_onnx_export = pytest.mark.skipif(importlib.util.find_spec("onnx") is None, reason="onnx is not installed")
BUILD_ONNX_ARGV = ("build", "--model", "efficientnet_lite0", "--backend", "onnxruntime", "--batch", "2")


@dataclass(frozen=True)
class Export:
    """One real ONNX export, made once for this module by ``streamer build --backend onnxruntime``."""

    cache: Path
    path: Path
    output: str


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Export:
    cache = tmp_path_factory.mktemp("export-cache")
    args = parse(*BUILD_ONNX_ARGV, "--cache-dir", str(cache))
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert args.func(args) == 0
    line = next(l for l in out.getvalue().splitlines() if l.startswith("onnx: "))
    return Export(cache, Path(line[len("onnx: ") :]), out.getvalue())


def _with_export(cache: Path, export: Export) -> Path:
    """Copy the module's export (with its metadata) into ``cache``; returns the copied ``.onnx``."""
    shutil.copytree(export.cache / "onnx", cache / "onnx", dirs_exist_ok=True)
    return cache / "onnx" / export.path.name


def _add_ort_folder(cache: Path, model: str, precision: str = "fp16", batch: int = 4, size: int = 700) -> Path:
    """The engine folder onnxruntime's TensorRT provider would fill, named by the backend itself, with a stand-in engine."""
    from engines.backends.base import BackendOptions
    from engines.backends.onnxruntime_backend import OnnxRuntimeBackend
    from engines.models import WeightsChoice, get_spec

    options = BackendOptions.for_batch(batch, device="cuda:0", precision=precision, cache_dir=cache)
    backend = OnnxRuntimeBackend(get_spec(model), WeightsChoice("random"), options)
    folder = Path(backend._tensorrt_options(0, "cd" * 32)["trt_engine_cache_path"])
    (folder / "TensorrtExecutionProvider_TRTKernel_graph_main_0_0_sm86.engine").write_bytes(b"e" * size)
    (folder / "TensorrtExecutionProvider_cache_sm86.timing").write_bytes(b"t" * 100)
    return folder


def _rows(out: str) -> dict[str, str]:
    """Table rows of ``cache list`` by the name in their file column."""
    rows = {}
    for line in out.splitlines():
        cells = [c.strip() for c in line.split("│")]
        if len(cells) > 3 and cells[2] and cells[2] != "file":
            rows[cells[2]] = line
    return rows


def test_cache_list_shows_entries(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = _add_entry(tmp_path, "resnet18", "fp16", 3000)
    b = _add_entry(tmp_path, "alexnet", "int8", 5000, producer="torch2trt")
    args = parse("cache", "list", "--cache-dir", str(tmp_path))
    assert args.func(args) == 0
    out = capsys.readouterr().out
    rows = _rows(out)
    assert "tensorrt engine" in rows[a.name] and "resnet18" in rows[a.name] and "fp16" in rows[a.name]
    assert "torch2trt module" in rows[b.name] and "alexnet" in rows[b.name] and "int8" in rows[b.name]
    from streamer.cmd_engines import _human_size

    for payload in (a, b):  # size = payload + manifest
        assert _human_size(payload.stat().st_size + payload.with_suffix(".json").stat().st_size) in rows[payload.name]
    assert "2 item(s)" in out and "1 tensorrt engine(s)" in out and "1 torch2trt module(s)" in out
    for header in ("kind", "file", "model", "precision", "size", "created"):
        assert header in out


@needs_onnx_export
def test_cache_list_shows_every_kind(tmp_path: Path, exported: Export, capsys: pytest.CaptureFixture[str]) -> None:
    from streamer.cmd_engines import _human_size

    engine = _add_entry(tmp_path, "resnet18", "fp16", 3000)
    onnx = _with_export(tmp_path, exported)
    ort = _add_ort_folder(tmp_path, "efficientnet_lite0", "fp16", batch=4, size=700)
    args = parse("cache", "list", "--cache-dir", str(tmp_path))
    assert args.func(args) == 0
    out = capsys.readouterr().out
    rows = _rows(out)
    assert set(rows) == {engine.name, f"onnx/{onnx.name}", f"ort-tensorrt/{ort.name}/"}
    engine_size = engine.stat().st_size + engine.with_suffix(".json").stat().st_size
    onnx_size = onnx.stat().st_size + onnx.with_suffix(".json").stat().st_size
    onnx_row, ort_row = rows[f"onnx/{onnx.name}"], rows[f"ort-tensorrt/{ort.name}/"]
    assert "tensorrt engine" in rows[engine.name] and _human_size(engine_size) in rows[engine.name]
    assert "onnx export" in onnx_row and "efficientnet_lite0" in onnx_row and "fp32" in onnx_row
    assert _human_size(onnx_size) in onnx_row and "dynamic batch" in onnx_row and "opset 18" in onnx_row
    assert "ort-tensorrt folder" in ort_row and "efficientnet_lite0" in ort_row and "fp16" in ort_row
    assert _human_size(800) in ort_row and "2 file(s)" in ort_row and "batch 1..4" in ort_row
    total = _human_size(engine_size + onnx_size + 800)
    assert f"3 item(s), {total}" in out
    assert "1 tensorrt engine(s)" in out and "1 onnx export(s)" in out and "1 ort-tensorrt folder(s)" in out


def test_cache_list_empty(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = parse("cache", "list", "--cache-dir", str(tmp_path / "empty"))
    assert args.func(args) == 0
    assert "nothing cached in" in capsys.readouterr().out


def test_cache_clear_with_and_without_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = _add_entry(tmp_path, "resnet18", "fp16", 100)
    b = _add_entry(tmp_path, "alexnet", "fp32", 100)
    keep = tmp_path / "README.txt"
    keep.write_text("not an engine")

    args = parse("cache", "clear", "--model", "resnet18", "--cache-dir", str(tmp_path))
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert f"removed {a.name}" in out and f"removed {a.with_suffix('.json').name}" in out
    assert b.name not in out and not a.exists() and b.exists()

    args = parse("cache", "clear", "--cache-dir", str(tmp_path))
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert f"removed {b.name}" in out and "removed from" in out
    assert not b.exists() and keep.exists()
    assert Store(tmp_path).entries() == []


@needs_onnx_export
def test_cache_clear_removes_every_kind_by_model(tmp_path: Path, exported: Export, capsys: pytest.CaptureFixture[str]) -> None:
    engine = _add_entry(tmp_path, "resnet18", "fp16", 100)
    onnx = _with_export(tmp_path, exported)
    ort_lite = _add_ort_folder(tmp_path, "efficientnet_lite0")
    ort_resnet = _add_ort_folder(tmp_path, "resnet18", "fp32", batch=1)
    keep = tmp_path / "ort-tensorrt" / "notes.txt"
    keep.write_text("not a folder of engines")

    args = parse("cache", "clear", "--model", "efficientnet_lite0", "--cache-dir", str(tmp_path))
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert f"removed onnx/{onnx.name}" in out and f"removed onnx/{onnx.with_suffix('.json').name}" in out
    assert f"removed ort-tensorrt/{ort_lite.name}/" in out
    assert not onnx.exists() and not onnx.with_suffix(".json").exists() and not ort_lite.exists()
    assert engine.exists() and ort_resnet.is_dir() and "resnet18" not in out
    assert "1 ort-tensorrt folder(s) for efficientnet_lite0 removed from" in out

    args = parse("cache", "clear", "--cache-dir", str(tmp_path))
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert f"removed {engine.name}" in out and f"removed ort-tensorrt/{ort_resnet.name}/" in out
    assert not engine.exists() and not ort_resnet.exists() and keep.exists()
    args = parse("cache", "list", "--cache-dir", str(tmp_path))
    assert args.func(args) == 0
    assert "nothing cached in" in capsys.readouterr().out


@needs_onnx_export
def test_cache_clear_keeps_an_export_in_progress(tmp_path: Path, exported: Export, capsys: pytest.CaptureFixture[str]) -> None:
    import filelock

    onnx = _with_export(tmp_path, exported)
    with filelock.FileLock(str(onnx.with_suffix(".lock"))):  # another exporter holds it
        args = parse("cache", "clear", "--cache-dir", str(tmp_path))
        assert args.func(args) == 0
    out = capsys.readouterr().out
    assert onnx.exists() and onnx.with_suffix(".json").exists()
    assert f"kept onnx/{onnx.name} (another process is building or exporting it)" in out and "removed onnx/" not in out
    args = parse("cache", "clear", "--cache-dir", str(tmp_path))  # released: now it goes
    assert args.func(args) == 0
    assert f"removed onnx/{onnx.name}" in capsys.readouterr().out and not onnx.exists()


def test_cache_needs_an_action() -> None:
    with pytest.raises(SystemExit):
        parse("cache")


def test_build_int8_needs_calib(tmp_path: Path) -> None:
    from engines.errors import ConfigError

    args = parse("build", "--model", "resnet18", "--precision", "int8", "--cache-dir", str(tmp_path))
    with pytest.raises(ConfigError, match="--calib"):
        args.func(args)


def test_build_tensorrt_without_tensorrt_is_a_clear_error(tmp_path: Path) -> None:
    from engines.backends import tensorrt_module_present
    from engines.errors import BackendUnavailable

    if tensorrt_module_present():
        pytest.skip("TensorRT is importable here")
    args = parse("build", "--model", "efficientnet_lite0", "--precision", "fp16", "--cache-dir", str(tmp_path))
    with pytest.raises(BackendUnavailable, match="tensorrt"):
        args.func(args)


@needs_onnx_export
def test_build_onnxruntime_exports_into_the_cache(tmp_path: Path, exported: Export, capsys: pytest.CaptureFixture[str]) -> None:
    path = exported.path  # the module's export, made by this same command
    assert path.is_file() and path.suffix == ".onnx" and exported.cache in path.parents
    assert "efficientnet_lite0 batch 1..2" in exported.output and "sha256" in exported.output  # batch > 1: dynamic, as in run
    copied = _with_export(tmp_path, exported)
    args = parse(*BUILD_ONNX_ARGV, "--cache-dir", str(tmp_path))  # a second build finds it
    assert args.func(args) == 0
    assert f"onnx: {copied}" in capsys.readouterr().out


def test_build_onnxruntime_rejects_fp16(tmp_path: Path) -> None:
    from engines.errors import ConfigError

    args = parse("build", "--model", "efficientnet_lite0", "--backend", "onnxruntime", "--precision", "fp16")
    with pytest.raises(ConfigError, match="fp32"):
        args.func(args)
