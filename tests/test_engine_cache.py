"""The store (engine entries) and TensorRT build/load orchestration, run against FakeTensorRT (a test double).

No TensorRT runs here: ``tests/fakes/fake_tensorrt.py`` stands in for the
``tensorrt`` module, so these tests cover the cache (keys, files, manifests,
checks, locking) and the backend's orchestration around TensorRT's API, not
TensorRT itself.
"""

from __future__ import annotations

import errno
import json
import logging
import multiprocessing
import os
import stat
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import engines.cache.key as cache_key
import engines.cache.store as cache_store
import engines.paths as engine_paths
from engines.backends.base import BackendOptions
from engines.backends.tensorrt.calibrator import calibration_set_sha256
from engines.cache import (
    EngineKey,
    ShapeProfile,
    Store,
    TensorSpec,
    canonical_json,
)
from engines.errors import CacheError, EngineError
from engines.models import get_spec

try:  # tests/ on sys.path (pytest's default rootdir-relative import)
    from fakes import fake_tensorrt
except ImportError:  # pragma: no cover - tests imported as a package
    from tests.fakes import fake_tensorrt  # type: ignore[no-redef]

SPEC = get_spec("efficientnet_lite0")
DEVICE_ARGS = ("Fake GPU 9000", (8, 6), "12.4", "cpu")


# -- fixtures ---------------------------------------------------------------------------
def make_onnx(path: Path, batch: int | None, classes: int = 1000) -> Path:
    """A tiny classifier: input (N,3,224,224) -> GlobalAveragePool -> Flatten -> Gemm -> logits (N,classes)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    n: int | str = batch if batch is not None else "batch"
    weight = numpy_helper.from_array(np.linspace(-1, 1, classes * 3, dtype=np.float32).reshape(classes, 3), "W")
    bias = numpy_helper.from_array(np.zeros(classes, dtype=np.float32), "B")
    graph = helper.make_graph(
        [
            helper.make_node("GlobalAveragePool", ["input"], ["pooled"]),
            helper.make_node("Flatten", ["pooled"], ["flat"]),
            helper.make_node("Gemm", ["flat", "W", "B"], ["logits"], transB=1),
        ],
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [n, 3, 224, 224])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [n, classes])],
        [weight, bias],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def _sha(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture()
def fake_trt(monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt)
    monkeypatch.setattr(fake_tensorrt, "__version__", "10.13.0.35")
    fake_tensorrt.FakeBuildCounter.builds = 0
    return fake_tensorrt


@pytest.fixture()
def cache_folder(tmp_path: Path) -> Path:
    return tmp_path / "cache"


def _options(cache_folder: Path, **kw: Any) -> BackendOptions:
    base = dict(device="cpu", precision="fp16", batch=4, cache_dir=cache_folder)
    base.update(kw)
    return BackendOptions(**base)  # type: ignore[arg-type]


def _get(cache_folder: Path, onnx_path: Path, **kw: Any) -> Any:
    from engines.backends.tensorrt import DeviceInfo, get_engine

    options = _options(cache_folder, **kw)
    return get_engine(
        SPEC, options, onnx_path, _sha(onnx_path), DeviceInfo(*DEVICE_ARGS), cache=Store(cache_folder)
    )


def _key(**changes: Any) -> EngineKey:
    base = EngineKey(
        producer="tensorrt",
        model="resnet18",
        precision="fp16",
        source_sha256="a" * 64,
        source_format="onnx",
        calib_sha256=None,
        inputs=(TensorSpec("input", (4, 3, 224, 224)),),
        profile=(),
        workspace_mb=None,
        trt_version="10.13.0.35",
        cuda_version="12.4",
        gpu_name="NVIDIA H100 80GB HBM3",
        compute_capability="9.0",
        os="linux",
        arch="x86_64",
    )
    return replace(base, **changes)


# -- keys and names ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "change",
    [
        {"producer": "torch2trt"},
        {"model": "alexnet"},
        {"precision": "int8"},
        {"source_sha256": "b" * 64},
        {"source_format": "torch-state-dict"},
        {"calib_sha256": "c" * 64},
        {"inputs": (TensorSpec("input", (8, 3, 224, 224)),)},
        {"inputs": (TensorSpec("input", (4, 3, 224, 224), "float16"),)},
        {"profile": (ShapeProfile("input", (1, 3, 224, 224), (4, 3, 224, 224), (4, 3, 224, 224)),)},
        {"profile": (ShapeProfile("input", (1, 3, 224, 224), (2, 3, 224, 224), (4, 3, 224, 224)),)},
        {"workspace_mb": 256},
        {"trt_version": "10.13.0.36"},
        {"cuda_version": "12.6"},
        {"cuda_version": None},
        {"gpu_name": "NVIDIA H200"},
        {"compute_capability": "8.9"},
        {"os": "windows"},
        {"arch": "aarch64"},
        {"extra": (("strongly_typed", "True"),)},
    ],
    ids=lambda c: "-".join(f"{k}" for k in c),
)
def test_key_changes_with_each_field(change: dict[str, Any]) -> None:
    assert _key(**change).digest != _key().digest


def test_key_changes_with_the_cache_format(monkeypatch: pytest.MonkeyPatch) -> None:
    before = _key().digest
    monkeypatch.setattr(cache_key, "CACHE_FORMAT_VERSION", cache_key.CACHE_FORMAT_VERSION + 1)
    assert _key().digest != before


def test_key_covers_every_field_and_is_canonical() -> None:
    key = _key()
    fields = key.to_json()
    assert set(fields) == {
        "format_version", "producer", "model", "precision", "source_sha256", "source_format", "calib_sha256",
        "inputs", "profile", "workspace_mb", "trt_version", "cuda_version", "gpu_name", "compute_capability", "gpu_sm_count", "gpu_memory_mb",
        "os", "arch", "extra",
    }  # fmt: skip
    text = canonical_json(fields)
    assert " " not in text.replace("NVIDIA H100 80GB HBM3", "") and text == json.dumps(
        fields, sort_keys=True, separators=(",", ":")
    )
    import hashlib

    assert key.digest == hashlib.sha256(text.encode()).hexdigest()
    assert _key().digest == key.digest  # deterministic


def test_file_naming(tmp_path: Path) -> None:
    key = _key()
    assert key.stem == f"resnet18-fp16-sm90-trt10.13.0.35-{key.digest[:16]}"
    paths = Store(tmp_path / "c").paths(key)
    assert paths.payload.name == key.stem + ".engine"
    assert paths.manifest.name == key.stem + ".json"
    t2t = _key(producer="torch2trt")
    assert Store(tmp_path / "c").paths(t2t).payload.name == t2t.stem + ".trtmodule"


def test_calibration_hash(tmp_path: Path) -> None:
    folder = tmp_path / "calib"
    folder.mkdir()
    (folder / "a.png").write_bytes(b"one")
    (folder / "b.jpg").write_bytes(b"two")
    (folder / "notes.txt").write_text("ignored: not an image")
    first = calibration_set_sha256(folder)
    assert first is not None and calibration_set_sha256(None) is None
    (folder / "notes.txt").write_text("changed")
    assert calibration_set_sha256(folder) == first
    (folder / "b.jpg").write_bytes(b"TWO")
    assert calibration_set_sha256(folder) != first
    (folder / "b.jpg").rename(folder / "c.jpg")
    assert calibration_set_sha256(folder) not in (first, None)


# -- build, manifest, reuse ---------------------------------------------------------------------
def test_build_then_load_from_cache(fake_trt: Any, tmp_path: Path, cache_folder: Path) -> None:
    onnx_path = make_onnx(tmp_path / "tiny.onnx", batch=4)
    first = _get(cache_folder, onnx_path)
    assert first.built and fake_trt.FakeBuildCounter.builds == 1
    assert first.build_seconds is not None and first.build_seconds >= 0
    second = _get(cache_folder, onnx_path)
    assert not second.built and fake_trt.FakeBuildCounter.builds == 1
    assert second.paths.payload == first.paths.payload
    assert second.value.inputs == (TensorSpec("input", (4, 3, 224, 224)),)
    assert second.value.outputs == (TensorSpec("logits", (4, 1000)),)
    header = fake_trt.header_of(first.paths.payload)
    assert header["builder_flags"] == ["FP16"] and header["network_flags"] == 0  # TensorRT 10: no EXPLICIT_BATCH
    assert header["onnx_sha256"] == _sha(onnx_path)


def test_manifest_content(fake_trt: Any, tmp_path: Path, cache_folder: Path) -> None:
    onnx_path = make_onnx(tmp_path / "tiny.onnx", batch=None)
    result = _get(cache_folder, onnx_path, dynamic_batch=True, workspace_mb=64)
    manifest = json.loads(result.paths.manifest.read_text())
    data = result.paths.payload.read_bytes()
    import hashlib

    assert manifest["sha256"] == hashlib.sha256(data).hexdigest()
    assert manifest["size"] == len(data) and manifest["kind"] == "tensorrt engine"
    assert manifest["file"] == result.paths.payload.name
    assert manifest["model"] == "efficientnet_lite0" and manifest["precision"] == "fp16"
    assert manifest["created"].endswith("+00:00")
    assert manifest["inputs"] == [{"name": "input", "shape": [-1, 3, 224, 224], "dtype": "float32"}]
    assert manifest["outputs"] == [{"name": "logits", "shape": [-1, 1000], "dtype": "float32"}]
    key = manifest["key"]
    assert key["source_sha256"] == _sha(onnx_path) and key["source_format"] == "onnx"
    assert key["profile"] == [  # opt 1 for live single frames, opt = batch for file batches
        {"input": "input", "min": [1, 3, 224, 224], "opt": [1, 3, 224, 224], "max": [1, 3, 224, 224]},
        {"input": "input", "min": [1, 3, 224, 224], "opt": [4, 3, 224, 224], "max": [4, 3, 224, 224]},
    ]
    assert key["workspace_mb"] == 64 and key["gpu_name"] == "Fake GPU 9000"
    assert key["compute_capability"] == "8.6" and key["cuda_version"] == "12.4"
    assert key["trt_version"] == "10.13.0.35" and key["extra"]["module"] == "tensorrt"
    assert result.paths.payload.name.startswith("efficientnet_lite0-fp16-sm86-trt10.13.0.35-")
    header = fake_trt.header_of(result.paths.payload)
    assert header["workspace"] == 64 << 20
    assert header["profiles"] == [
        {"input": [[1, 3, 224, 224], [1, 3, 224, 224], [1, 3, 224, 224]]},
        {"input": [[1, 3, 224, 224], [4, 3, 224, 224], [4, 3, 224, 224]]},
    ]


def test_trt8_uses_explicit_batch_flag(fake_trt: Any, tmp_path: Path, cache_folder: Path, monkeypatch: Any) -> None:
    monkeypatch.setattr(fake_trt, "__version__", "8.6.1")
    result = _get(cache_folder, make_onnx(tmp_path / "tiny.onnx", batch=4), precision="fp32")
    header = fake_trt.header_of(result.paths.payload)
    assert header["network_flags"] == 1 << int(fake_trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    assert header["builder_flags"] == []
    assert "-fp32-sm86-trt8.6.1-" in result.paths.payload.name


def test_strongly_typed_fp16_converts_the_onnx(
    fake_trt: Any, tmp_path: Path, cache_folder: Path, monkeypatch: Any
) -> None:
    from engines.backends import tensorrt
    from engines.backends.tensorrt import loader

    monkeypatch.setattr(fake_trt, "__version__", "11.0.0")
    onnx_path = make_onnx(tmp_path / "tiny.onnx", batch=4)
    monkeypatch.setattr(tensorrt, "fp16_converter_name", lambda: None)
    monkeypatch.setattr(loader, "fp16_converter_name", lambda: None)
    with pytest.raises(EngineError, match="onnxconverter-common"):
        _get(cache_folder, onnx_path)
    assert fake_trt.FakeBuildCounter.builds == 0

    def to_fp16(path: Path) -> bytes:  # stands in for the real converter: fp16 weights, fp32 I/O
        import onnx
        from onnx import numpy_helper

        model = onnx.load(str(path))
        for i, init in enumerate(model.graph.initializer):
            arr = numpy_helper.to_array(init).astype(np.float16)
            model.graph.initializer[i].CopyFrom(numpy_helper.from_array(arr, init.name))
        return bytes(model.SerializeToString())

    monkeypatch.setattr(tensorrt, "fp16_converter_name", lambda: "test-converter")
    monkeypatch.setattr(loader, "convert_onnx_to_fp16", to_fp16)
    result = _get(cache_folder, onnx_path)
    header = fake_trt.header_of(result.paths.payload)
    assert header["builder_flags"] == []  # no FP16 flag on a strongly typed network
    assert header["network_flags"] == 1 << int(fake_trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    assert header["fp16_weights"] is True
    assert result.manifest["key"]["extra"]["fp16_converter"] == "test-converter"


def test_int8_calibration_and_table(fake_trt: Any, tmp_path: Path, cache_folder: Path) -> None:
    import cv2

    calib = tmp_path / "calib"
    calib.mkdir()
    for i in range(5):
        cv2.imwrite(str(calib / f"img{i}.png"), np.full((40, 60, 3), 40 * i, dtype=np.uint8))
    onnx_path = make_onnx(tmp_path / "tiny.onnx", batch=2)
    result = _get(cache_folder, onnx_path, precision="int8", batch=2, calib_dir=calib)
    header = fake_trt.header_of(result.paths.payload)
    assert header["builder_flags"] == ["FP16", "INT8"]
    assert header["calibration_batches"] == 2  # 5 images, batches of 2, the odd one skipped
    assert result.paths.calib.read_bytes() == b"FAKE-CALIBRATION batches=2"
    assert result.manifest["key"]["calib_sha256"] == calibration_set_sha256(calib)
    result.paths.payload.unlink()  # force a rebuild: the calibration table is reused
    again = _get(cache_folder, onnx_path, precision="int8", batch=2, calib_dir=calib)
    assert again.built and fake_trt.header_of(again.paths.payload)["calibration_batches"] == 0


def test_int8_refused_where_only_explicit_quantization_exists(
    fake_trt: Any, tmp_path: Path, cache_folder: Path, monkeypatch: Any
) -> None:
    monkeypatch.setattr(fake_trt, "__version__", "11.2.0")
    calib = tmp_path / "calib"
    calib.mkdir()
    with pytest.raises(EngineError, match="int8 calibration is not available"):
        _get(cache_folder, make_onnx(tmp_path / "t.onnx", batch=1), precision="int8", batch=1, calib_dir=calib)


def test_parser_errors_are_reported(fake_trt: Any, tmp_path: Path, cache_folder: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"this is not an onnx model")
    with pytest.raises(EngineError, match="ONNX parser rejected bad.onnx"):
        _get(cache_folder, bad)


def test_progress_monitor_reports(fake_trt: Any, tmp_path: Path, cache_folder: Path) -> None:
    from engines.backends.tensorrt import DeviceInfo, get_engine

    seen: list[tuple[str, int, int]] = []
    onnx_path = make_onnx(tmp_path / "tiny.onnx", batch=4)
    get_engine(
        SPEC,
        _options(cache_folder),
        onnx_path,
        _sha(onnx_path),
        DeviceInfo(*DEVICE_ARGS),
        cache=Store(cache_folder),
        progress=lambda *a: seen.append(a),
    )
    assert seen[0] == ("Building engine", 0, 3) and seen[-1] == ("Building engine", 3, 3)


# -- damaged entries: warning + rebuild ------------------------------------------------------------
def _damage_payload(paths: Any) -> None:
    data = bytearray(paths.payload.read_bytes())
    data[len(data) // 2] ^= 0xFF
    paths.payload.write_bytes(bytes(data))


def _truncate(paths: Any) -> None:
    data = paths.payload.read_bytes()
    paths.payload.write_bytes(data[: len(data) // 3])


def _edit_manifest(paths: Any) -> None:
    manifest = json.loads(paths.manifest.read_text())
    manifest["key"]["precision"] = "fp32"
    paths.manifest.write_text(json.dumps(manifest))


def _garble_manifest(paths: Any) -> None:
    paths.manifest.write_text("{not json")


def _drop_manifest(paths: Any) -> None:
    paths.manifest.unlink()


def _rehash(paths: Any, data: bytes) -> None:
    import hashlib

    paths.payload.write_bytes(data)
    manifest = json.loads(paths.manifest.read_text())
    manifest["sha256"] = hashlib.sha256(data).hexdigest()
    manifest["size"] = len(data)
    paths.manifest.write_text(json.dumps(manifest))


def _undeserializable(paths: Any) -> None:  # hash and size agree, but the runtime refuses the bytes
    _rehash(paths, b"NOT A PLAN" * 10)


def _wrong_io_shape(paths: Any) -> None:  # a valid plan whose output is not (4, 1000)
    header = fake_tensorrt.parse_blob(paths.payload.read_bytes())
    assert header is not None
    header["outputs"][0]["shape"] = [4, 999]
    _rehash(paths, fake_tensorrt.serialize_header(header))


def _wrong_manifest_io(paths: Any) -> None:
    manifest = json.loads(paths.manifest.read_text())
    manifest["inputs"][0]["shape"] = [8, 3, 224, 224]
    paths.manifest.write_text(json.dumps(manifest))


@pytest.mark.parametrize(
    "damage, reason",
    [
        (_damage_payload, "SHA-256 differs"),
        (_truncate, "truncated"),
        (_edit_manifest, "key differs in precision"),
        (_garble_manifest, "not valid JSON"),
        (_drop_manifest, "manifest is missing"),
        (_undeserializable, "could not deserialize"),
        (_wrong_io_shape, "engine I/O tensors are"),
        (_wrong_manifest_io, "manifest I/O tensors are"),
    ],
    ids=lambda v: getattr(v, "__name__", None) or str(v)[:20],
)
def test_damaged_entry_warns_and_rebuilds(
    fake_trt: Any, tmp_path: Path, cache_folder: Path, caplog: pytest.LogCaptureFixture, damage: Any, reason: str
) -> None:
    onnx_path = make_onnx(tmp_path / "tiny.onnx", batch=4)
    first = _get(cache_folder, onnx_path)
    damage(first.paths)
    with caplog.at_level(logging.WARNING, logger="engines.cache"):
        again = _get(cache_folder, onnx_path)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(reason in w and "rebuilding" in w for w in warnings), warnings
    assert again.built and fake_trt.FakeBuildCounter.builds == 2
    assert again.value.outputs == (TensorSpec("logits", (4, 1000)),)
    third = _get(cache_folder, onnx_path)  # the rebuilt entry is sound
    assert not third.built and fake_trt.FakeBuildCounter.builds == 2


def test_freshly_built_engine_with_wrong_io_is_not_stored(fake_trt: Any, tmp_path: Path, cache_folder: Path) -> None:
    onnx_path = make_onnx(tmp_path / "tiny.onnx", batch=4, classes=10)  # SPEC wants 1000 classes
    with pytest.raises(EngineError, match="not usable"):
        _get(cache_folder, onnx_path)
    assert not list(cache_folder.glob("*.engine"))


# -- locking ---------------------------------------------------------------------------------------
def _build_in_child(cache_folder: str, onnx_path: str, build_log: str) -> tuple[bool, list[Any]]:
    """Runs in a spawned process: FakeTensorRT as `tensorrt`, a slow build, the shared cache."""
    sys.modules["tensorrt"] = fake_tensorrt
    os.environ["FAKE_TRT_BUILD_LOG"] = build_log
    os.environ["FAKE_TRT_BUILD_DELAY"] = "1.5"
    result = _get(Path(cache_folder), Path(onnx_path))
    return result.built, [str(t) for t in (*result.value.inputs, *result.value.outputs)]


def test_two_processes_one_build(tmp_path: Path, cache_folder: Path) -> None:
    onnx_path = make_onnx(tmp_path / "tiny.onnx", batch=4)
    build_log = tmp_path / "builds.log"
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=2, mp_context=ctx) as pool:
        futures = [pool.submit(_build_in_child, str(cache_folder), str(onnx_path), str(build_log)) for _ in range(2)]
        results = [f.result(timeout=120) for f in futures]
    assert sorted(built for built, _ in results) == [False, True]
    assert len(build_log.read_text().splitlines()) == 1
    assert results[0][1] == results[1][1] == ["input[4x3x224x224] float32", "logits[4x1000] float32"]


def test_lock_timeout_raises_cache_error(tmp_path: Path) -> None:
    import filelock

    cache = Store(tmp_path / "c", lock_timeout_s=0.2)
    key = _key()
    held = filelock.FileLock(str(cache.paths(key).lock))
    with held:
        with pytest.raises(CacheError, match="another process is building this engine"):
            cache.get_or_build(key, build=lambda: pytest.fail("must not build"), load=lambda d: pytest.fail("no"),
                               expected_inputs=(), expected_outputs=())  # fmt: skip


# -- the backend's public engine facts ----------------------------------------------------------------
@pytest.mark.parametrize(
    "version, expected",
    [("10.13.0.35", fake_tensorrt.FAKE_DEVICE_MEMORY_SIZE_V2), ("8.6.1", fake_tensorrt.FAKE_DEVICE_MEMORY_SIZE)],
)
def test_backend_artifact(
    fake_trt: Any, tmp_path: Path, cache_folder: Path, monkeypatch: pytest.MonkeyPatch, version: str, expected: int
) -> None:
    """``artifact`` is None before load and describes the loaded engine after: its plan file, size, hash,
    built-or-loaded and device memory (``device_memory_size_v2`` on TensorRT 10+, ``device_memory_size``
    on 8.x); bench's engine_info reads it."""
    import hashlib
    import types

    import torch

    from engines.backends import tensorrt
    from engines.backends.base import Artifact
    from engines.backends.tensorrt import DeviceInfo, TensorRTBackend
    from engines.models import WeightsChoice
    from streamer.bench.memory import engine_info

    monkeypatch.setattr(fake_trt, "__version__", version)
    onnx_path = make_onnx(tmp_path / "tiny.onnx", batch=None)
    # No GPU and no real export here: the ONNX, the device and the CUDA buffers are stand-ins.
    export = types.SimpleNamespace(value=onnx_path, sha256=_sha(onnx_path))
    monkeypatch.setattr("engines.onnx_export.cached_onnx", lambda *a, **k: export)
    monkeypatch.setattr(tensorrt, "cuda_device_info", lambda device: DeviceInfo(*DEVICE_ARGS[:3], device))
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: None)
    monkeypatch.setattr(TensorRTBackend, "_allocate_buffers", lambda self, out_dtype: None)
    options = _options(cache_folder, device="cuda:0", dynamic_batch=True)
    backend = TensorRTBackend(SPEC, WeightsChoice("random"), options)
    assert backend.artifact is None
    assert engine_info(backend)["trt_device_memory_bytes"] is None

    backend._load_impl()  # load() also checks for CUDA and warms up, which the fake cannot run
    artifact = backend.artifact
    assert isinstance(artifact, Artifact) and artifact.kind == "tensorrt engine"
    assert artifact.path.is_file() and artifact.path.suffix == ".engine" and artifact.path.parent == cache_folder
    assert artifact.size_bytes == artifact.path.stat().st_size
    assert artifact.sha256 == hashlib.sha256(artifact.path.read_bytes()).hexdigest()
    assert artifact.built and artifact.build_seconds is not None
    assert artifact.device_memory_bytes == expected
    info = engine_info(backend)
    assert info["trt_device_memory_bytes"] == expected and info["engine_file"] == artifact.path.name
    assert info["cache_hit"] is False and info["engine_file_bytes"] == artifact.size_bytes
    backend._close_impl()

    again = TensorRTBackend(SPEC, WeightsChoice("random"), options)
    again._load_impl()
    assert again.artifact is not None and not again.artifact.built and again.artifact.build_seconds is None
    assert again.artifact.path == artifact.path and engine_info(again)["cache_hit"] is True


# -- listing, clearing, permissions -------------------------------------------------------------------
def test_list_and_clear(fake_trt: Any, tmp_path: Path, cache_folder: Path) -> None:
    onnx_path = make_onnx(tmp_path / "tiny.onnx", batch=4)
    a = _get(cache_folder, onnx_path)
    b = _get(cache_folder, onnx_path, precision="fp32")
    stranger = cache_folder / "notes.txt"
    stranger.write_text("not ours")
    other = cache_folder / "onnx"
    other.mkdir(exist_ok=True)
    (cache_folder / "resnet18-fp16-sm86-trt10.0-0123456789abcdef.engine").write_bytes(b"orphan")
    cache = Store(cache_folder)
    entries = {e.stem: e for e in cache.entries()}
    assert set(entries) == {a.paths.payload.stem, b.paths.payload.stem, "resnet18-fp16-sm86-trt10.0-0123456789abcdef"}
    ea = entries[a.paths.payload.stem]
    assert ea.model == "efficientnet_lite0" and ea.precision == "fp16" and ea.producer == "tensorrt"
    assert ea.kind == "tensorrt engine" and ea.path == a.paths.payload
    assert ea.size_bytes == a.paths.payload.stat().st_size + a.paths.manifest.stat().st_size
    assert ea.created is not None and ea.problem is None
    assert entries["resnet18-fp16-sm86-trt10.0-0123456789abcdef"].problem == "manifest missing"
    assert cache.total_size() >= ea.size_bytes

    cleared = cache.clear(model="resnet18")
    assert [p.name for p in cleared.removed] == ["resnet18-fp16-sm86-trt10.0-0123456789abcdef.engine"]
    assert cleared.freed_bytes == len(b"orphan") and not cleared.kept and not cleared.removed_folders
    names = {p.name for p in cache.clear().removed}
    assert a.paths.payload.name in names and b.paths.manifest.name in names
    assert cache.entries() == []
    assert stranger.exists() and other.is_dir()  # not ours: left alone


def test_cache_folder_is_private(tmp_path: Path) -> None:
    folder = tmp_path / "deep" / "cache"
    Store(folder)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700  # created here: made private
    readable = tmp_path / "readable"
    readable.mkdir()
    os.chmod(readable, 0o755)
    Store(readable)
    assert stat.S_IMODE(readable.stat().st_mode) == 0o755  # the user's own folder: its mode is left alone
    for mode in (0o775, 0o2775, 0o757):
        writable = tmp_path / f"writable-{mode:o}"
        writable.mkdir()
        os.chmod(writable, mode)
        with pytest.raises(CacheError, match="writable by other users"):
            Store(writable)
        assert stat.S_IMODE(writable.stat().st_mode) == mode


def test_written_files_are_private(fake_trt: Any, tmp_path: Path, cache_folder: Path) -> None:
    result = _get(cache_folder, make_onnx(tmp_path / "tiny.onnx", batch=4))
    for path in (result.paths.payload, result.paths.manifest):
        assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0
    assert not list(cache_folder.glob(".*.tmp"))


# -- torch2trt payloads: weights_only loading (no torch2trt needed) ---------------------------------
class _Evil:
    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (os.system, ("echo pwned",))


def _saved(obj: Any) -> bytes:
    import io

    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def test_trtmodule_state_loads_with_weights_only() -> None:
    from engines.backends.torch2trt_backend import read_trtmodule_state

    state = {
        "engine": bytearray(b"\x00plan"),
        "input_names": ["input"],
        "output_names": ["logits"],
        "input_flattener": {"schema": [0], "size": 1},
        "output_flattener": {"schema": 0, "size": 1},
    }
    assert read_trtmodule_state(_saved(state))["engine"] == bytearray(b"\x00plan")


@pytest.mark.parametrize(
    "payload, reason",
    [
        ({"engine": bytearray(b"x"), "input_names": ["input"], "output_names": ["logits"], "x": _Evil()}, "weights_only"),
        ([1, 2, 3], "expected, found list"),
        ({"input_names": ["input"], "output_names": ["logits"]}, "no serialized engine"),
        ({"engine": bytearray(b"x"), "input_names": ["x"], "output_names": ["logits"]}, "tensors are"),
    ],
    ids=["pickled-object", "not-a-dict", "no-engine", "wrong-names"],
)
def test_trtmodule_state_refused(payload: Any, reason: str) -> None:
    from engines.backends.torch2trt_backend import read_trtmodule_state
    from engines.cache import InvalidEntry

    with pytest.raises(InvalidEntry, match=reason):
        read_trtmodule_state(_saved(payload))


def test_state_dict_hash_follows_weights() -> None:
    import torch

    from engines.backends.torch2trt_backend import state_dict_sha256

    torch.manual_seed(0)
    a = torch.nn.Linear(3, 2)
    b = torch.nn.Linear(3, 2)
    b.load_state_dict(a.state_dict())
    assert state_dict_sha256(a) == state_dict_sha256(b)
    with torch.no_grad():
        b.bias[0] += 1e-3
    assert state_dict_sha256(a) != state_dict_sha256(b)


# -- durable writes: engines.paths.fsync_dir, shared by the engine cache and the ONNX export cache ---------
needs_dir_fds = pytest.mark.skipif(not hasattr(os, "O_DIRECTORY"), reason="no folder file descriptors on this platform")


def _fsync_failing(code: int) -> Any:
    def fsync(fd: int) -> None:
        raise OSError(code, os.strerror(code))

    return fsync


@needs_dir_fds
@pytest.mark.parametrize("code", [errno.EIO, errno.ENOSPC, errno.EDQUOT], ids=["EIO", "ENOSPC", "EDQUOT"])
def test_fsync_dir_raises_when_the_folder_entries_were_lost(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int) -> None:
    monkeypatch.setattr(engine_paths.os, "fsync", _fsync_failing(code))
    with pytest.raises(OSError) as info:
        engine_paths.fsync_dir(tmp_path)
    assert info.value.errno == code


@needs_dir_fds
@pytest.mark.parametrize("code", [errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP], ids=["EINVAL", "ENOTSUP", "EOPNOTSUPP"])
def test_fsync_dir_ignores_a_file_system_that_cannot_sync_folders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int) -> None:
    monkeypatch.setattr(engine_paths.os, "fsync", _fsync_failing(code))
    engine_paths.fsync_dir(tmp_path)


@needs_dir_fds
def test_fsync_dir_syncs_a_real_folder_and_refuses_a_missing_one(tmp_path: Path) -> None:
    engine_paths.fsync_dir(tmp_path)
    with pytest.raises(FileNotFoundError):
        engine_paths.fsync_dir(tmp_path / "gone")


def test_atomic_write_reports_a_failed_folder_sync_as_a_cache_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def lost(folder: Path) -> None:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(cache_store, "fsync_dir", lost)
    with pytest.raises(CacheError, match="cannot write .*entry.bin"):
        cache_store.atomic_write(tmp_path / "entry.bin", b"data")


def test_one_store_one_atomic_write() -> None:
    """The ONNX export cache's own hashing, atomic write, key, metadata, listing and clearing are gone:
    exports are store entries."""
    import engines.onnx_export as onnx_export

    assert cache_store.fsync_dir is engine_paths.fsync_dir and onnx_export.fsync_dir is engine_paths.fsync_dir
    for gone in ("file_sha256", "_atomic_write_bytes", "onnx_cache_key", "onnx_cache_path", "_cached_hash",
                 "_write_meta", "read_onnx_meta", "onnx_cache_files", "clear_onnx_cache", "invalidate_cached_onnx"):
        assert not hasattr(onnx_export, gone), gone
    assert not hasattr(cache_store.Store, "lookup")


# -- tools/trt_rtx_parse_check.py, driven with FakeTensorRT standing in for tensorrt_rtx ---------------
def _script() -> Any:
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "tools" / "trt_rtx_parse_check.py"
    spec = importlib.util.spec_from_file_location("trt_rtx_parse_check", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_rtx_parse_check_reports(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    script = _script()
    args = script.argparse.Namespace(compute_capability=[], max_batch=4, workspace_mb=None)
    good = script.check_file(fake_tensorrt, make_onnx(tmp_path / "dyn.onnx", batch=None), args)
    assert good["parsed"] and good["built"] and good["deserialized"] is True
    assert good["serialized_bytes"] > 0 and good["build_seconds"] >= 0 and good["profile_max_batch"] == 4
    assert good["inputs"] == [{"name": "input", "shape": [-1, 3, 224, 224]}]

    bad_path = tmp_path / "bad.onnx"
    bad_path.write_bytes(b"garbage")
    bad = script.check_file(fake_tensorrt, bad_path, args)
    assert not bad["parsed"] and bad["parse_errors"] and "desc" in bad["parse_errors"][0]

    monkeypatch.setattr(fake_tensorrt.Runtime, "deserialize_cuda_engine", lambda self, data: None)
    refused = script.check_file(fake_tensorrt, make_onnx(tmp_path / "static.onnx", batch=1), args)
    assert refused["built"] and refused["deserialized"] is False
    assert refused["deserialize_error"] == "deserialize_cuda_engine returned None"
