"""``streamer build`` / ``streamer cache list|clear`` through argparse, on a temporary cache."""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import pytest

from engines.cache import Built, EngineCache, EngineKey, Loaded, TensorSpec
from streamer.cmd_engines import add_engine_commands


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="streamer")
    sub = parser.add_subparsers(dest="command")
    add_engine_commands(sub)
    return parser.parse_args(list(argv))


def _add_entry(folder: Path, model: str, precision: str, size: int, producer: str = "tensorrt") -> Path:
    """A real cache entry made through EngineCache with a stand-in builder (no TensorRT)."""
    io_in = (TensorSpec("input", (1, 3, 224, 224)),)
    io_out = (TensorSpec("logits", (1, 1000)),)
    key = EngineKey(
        producer=producer, model=model, precision=precision, source_sha256="0" * 64, source_format="onnx",
        calib_sha256=None, inputs=io_in, profile=(), workspace_mb=None, trt_version="10.13.0.35",
        cuda_version="12.4", gpu_name="Fake GPU", compute_capability="8.6", os="linux", arch="x86_64",
    )  # fmt: skip
    result = EngineCache(folder).get_or_build(
        key,
        build=lambda: Built(b"x" * size, io_in, io_out),
        load=lambda data: Loaded(data, io_in, io_out),
        expected_inputs=io_in,
        expected_outputs=io_out,
    )
    assert result.built
    return result.paths.payload


def test_cache_list_shows_entries(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = _add_entry(tmp_path, "resnet18", "fp16", 3000)
    b = _add_entry(tmp_path, "alexnet", "int8", 5000, producer="torch2trt")
    args = parse("cache", "list", "--cache-dir", str(tmp_path))
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert a.name in out and b.name in out
    assert "resnet18" in out and "alexnet" in out and "fp16" in out and "int8" in out
    from streamer.cmd_engines import _human_size

    for payload in (a, b):  # size = payload + manifest
        assert _human_size(payload.stat().st_size + payload.with_suffix(".json").stat().st_size) in out
    assert "2 engine(s)" in out
    for header in ("file", "model", "precision", "size", "created"):
        assert header in out


def test_cache_list_empty(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = parse("cache", "list", "--cache-dir", str(tmp_path / "empty"))
    assert args.func(args) == 0
    assert "no engines in" in capsys.readouterr().out


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
    assert EngineCache(tmp_path).list_entries() == []


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


@pytest.mark.skipif(
    importlib.util.find_spec("engines.onnx_export") is None or importlib.util.find_spec("onnx") is None,
    reason="engines/onnx_export.py or onnx is not available",
)
def test_build_onnxruntime_exports_into_the_cache(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ("build", "--model", "efficientnet_lite0", "--backend", "onnxruntime", "--batch", "2", "--cache-dir", str(tmp_path))
    args = parse(*argv)
    assert args.func(args) == 0
    out = capsys.readouterr().out
    line = next(l for l in out.splitlines() if l.startswith("onnx: "))
    path = Path(line[len("onnx: ") :])
    assert path.is_file() and path.suffix == ".onnx" and tmp_path in path.parents
    assert "efficientnet_lite0 batch 1..2" in out and "sha256" in out  # batch > 1: dynamic, as in run
    args = parse(*argv)  # the second build finds it
    assert args.func(args) == 0
    assert str(path) in capsys.readouterr().out


def test_build_onnxruntime_rejects_fp16(tmp_path: Path) -> None:
    from engines.errors import ConfigError

    args = parse("build", "--model", "efficientnet_lite0", "--backend", "onnxruntime", "--precision", "fp16")
    with pytest.raises(ConfigError, match="fp32"):
        args.func(args)
