"""The tensorrt backend against the honest test double (``tests/fakes/fake_tensorrt.py``).

The double swallows exceptions in callbacks as TensorRT's pybind trampolines
do, offers the API surface of one TensorRT version at a time (8.6, 10.3, 11,
TensorRT-RTX), checks calibration buffers against the calibration profile,
and its ``execute_async_v3`` computes a fixed function of the input at the
address it is given - so ``TensorRTBackend._infer_impl`` (shapes, addresses,
padding, profiles, streams) runs here on CPU tensors, and with CUDA tensors
on a GPU machine (``-m gpu``).
"""

from __future__ import annotations

import sys
import weakref
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from engines.backends.base import BackendOptions
from engines.cache import Store
from engines.errors import EngineError
from engines.models import WeightsChoice, get_spec

try:
    from fakes import fake_tensorrt
    from test_engine_cache import DEVICE_ARGS, make_onnx
except ImportError:  # pragma: no cover - tests imported as a package
    from tests.fakes import fake_tensorrt  # type: ignore[no-redef]
    from tests.test_engine_cache import DEVICE_ARGS, make_onnx  # type: ignore[no-redef]

SPEC = get_spec("efficientnet_lite0")


def _sha(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()

def _pretend_a_gpu_with_an_export(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """`streamer build` on a machine without CUDA: a cached dynamic-batch export and one pretend GPU."""
    import types

    import torch

    from engines.backends import tensorrt

    onnx_path = make_onnx(tmp_path / "m.onnx", batch=None)
    export = types.SimpleNamespace(value=onnx_path, sha256=_sha(onnx_path))
    monkeypatch.setattr("engines.onnx_export.cached_onnx", lambda *a, **k: export)
    monkeypatch.setattr(tensorrt, "cuda_device_info", lambda device: _device(device=device))
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)



def _install(monkeypatch: pytest.MonkeyPatch, name: str) -> Any:
    """Make ``variant(name)`` the TensorRT module this process finds."""
    module = fake_tensorrt.variant(name)
    if module.FAKE_SURFACE.rtx:
        monkeypatch.setitem(sys.modules, "tensorrt", None)  # `import tensorrt` fails: TensorRT-RTX only
        monkeypatch.setitem(sys.modules, "tensorrt_rtx", module)
    else:
        monkeypatch.delitem(sys.modules, "tensorrt_rtx", raising=False)
        monkeypatch.setitem(sys.modules, "tensorrt", module)
    fake_tensorrt.FakeBuildCounter.builds = 0
    fake_tensorrt.FakeBuildCounter.swallowed = []
    return module


@pytest.fixture(params=["8.6", "10.3"])
def trt_version(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Any:
    return _install(monkeypatch, request.param)


@pytest.fixture()
def trt10(monkeypatch: pytest.MonkeyPatch) -> Any:
    return _install(monkeypatch, "10.3")


def _device(**changes: Any) -> Any:
    from engines.backends.tensorrt import DeviceInfo

    return replace(DeviceInfo(*DEVICE_ARGS, sm_count=16, memory_mb=7620), **changes)


def _get(cache: Path, onnx_path: Path, *, device: Any = None, progress: Any = None, **kw: Any) -> Any:
    from engines.backends.tensorrt import get_engine

    fields: dict[str, Any] = dict(device="cpu", precision="fp16", batch=4, cache_dir=cache)
    fields.update(kw)
    options = BackendOptions(**fields)
    return get_engine(
        SPEC, options, onnx_path, _sha(onnx_path), device or _device(), cache=Store(cache), progress=progress
    )


def _calib(folder: Path, count: int = 4) -> Path:
    import cv2

    folder.mkdir()
    for i in range(count):
        cv2.imwrite(str(folder / f"img{i}.png"), np.full((40, 60, 3), 30 * i, dtype=np.uint8))
    return folder


def _files(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.rglob("*") if p.is_file() and not p.name.endswith(".lock"))


# -- 3: exceptions inside callbacks -------------------------------------------------------
def test_unreadable_calibration_image_ends_the_build_and_caches_nothing(trt10: Any, tmp_path: Path) -> None:
    """Old code: get_batch raised, the trampoline swallowed it, calibration ended early and the engine
    and table were cached as if the whole set had been used."""
    calib = _calib(tmp_path / "calib")
    (calib / "img2.png").write_bytes(b"not a png")
    cache = tmp_path / "cache"
    onnx_path = make_onnx(tmp_path / "m.onnx", batch=2)
    with pytest.raises(EngineError, match=r"int8 calibration: cannot read image .*img2\.png"):
        _get(cache, onnx_path, precision="int8", batch=2, calib_dir=calib)
    assert not [f for f in _files(cache) if f.endswith((".engine", ".calib", ".json"))]


def test_ctrl_c_in_a_progress_callback_ends_the_build(trt10: Any, tmp_path: Path) -> None:
    """Old code: KeyboardInterrupt died in step_complete's trampoline (-> "TensorRT failed to build")."""
    calls = []

    def report(phase: str, done: int, total: int) -> None:
        calls.append(done)
        if done == 2:
            raise KeyboardInterrupt

    cache = tmp_path / "cache"
    with pytest.raises(KeyboardInterrupt):
        _get(cache, make_onnx(tmp_path / "m.onnx", batch=4), progress=report)
    assert fake_tensorrt.FakeBuildCounter.builds == 0 and 3 not in calls  # cancelled at the next step
    assert not [f for f in _files(cache) if f.endswith((".engine", ".json"))]


def test_ctrl_c_inside_the_logger_is_raised_after_the_call(trt10: Any, tmp_path: Path) -> None:
    import logging

    from engines.backends.tensorrt.util import make_logger

    trt_log = logging.getLogger("engines.backends.tensorrt.trt")

    class Interrupting(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            raise KeyboardInterrupt

    handler = Interrupting(level=logging.DEBUG)
    trt_log.addHandler(handler)
    level = trt_log.level
    trt_log.setLevel(logging.DEBUG)
    try:
        make_logger()
        with pytest.raises(KeyboardInterrupt):
            _get(tmp_path / "cache", make_onnx(tmp_path / "m.onnx", batch=4))
    finally:
        trt_log.removeHandler(handler)
        trt_log.setLevel(level)
    assert not [f for f in _files(tmp_path / "cache") if f.endswith((".engine", ".json"))]


def test_streamer_build_ctrl_c_exits_130_and_caches_nothing(
    trt10: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from streamer import cli, cmd_engines

    _pretend_a_gpu_with_an_export(monkeypatch, tmp_path)

    def interrupting_printer() -> Any:
        def report(phase: str, done: int, total: int) -> None:
            if done == 1:
                raise KeyboardInterrupt  # what Ctrl-C does inside the callback

        return report

    monkeypatch.setattr(cmd_engines, "_progress_printer", interrupting_printer)
    cache = tmp_path / "cache"
    code = cli.main(["build", "-m", SPEC.name, "--weights", "random", "--batch", "4", "--cache-dir", str(cache)])
    assert code == 130
    assert "interrupted" in capsys.readouterr().err
    assert not [f for f in _files(cache) if f.endswith((".engine", ".json"))]


# -- deserialisation: the runtime's own reason ---------------------------------------------------
def test_rtx_refusal_reports_the_runtimes_reason(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _install(monkeypatch, "rtx")
    monkeypatch.setattr(fake_tensorrt, "FAKE_CURRENT_CC", "9.0")  # an H200: not an RTX part
    with pytest.raises(EngineError) as info:
        _get(tmp_path / "cache", make_onnx(tmp_path / "m.onnx", batch=1), precision="fp32", batch=1)
    text = str(info.value)
    assert "Supported compute capabilities: 8.0 8.6 8.9 12.0 12.1" in text
    assert "corrupt" not in text and "\n" not in text


# -- 4: TensorRT-RTX compute capability and runtime cache -------------------------------------
def test_rtx_builds_for_the_current_gpu_and_keeps_a_runtime_cache(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from engines.backends.tensorrt import RUNTIME_CACHE_SUFFIX, TensorRTBackend
    from engines.backends.tensorrt.util import tensorrt_info

    rtx = _install(monkeypatch, "rtx")
    monkeypatch.setattr(fake_tensorrt, "FAKE_CURRENT_CC", "8.9")
    monkeypatch.setattr(fake_tensorrt, "EXECUTE_DEVICE", "cpu")
    fake_tensorrt.FakeBuildCounter.jit_compilations = 0
    result = _get(tmp_path / "cache", make_onnx(tmp_path / "m.onnx", batch=1), precision="fp32", batch=1)
    assert fake_tensorrt.header_of(result.paths.payload)["compute_capabilities"] == ["8.9"]
    assert rtx.FAKE_SURFACE.rtx and tensorrt_info().module == "tensorrt_rtx"
    rtcache = result.paths.payload.with_suffix(RUNTIME_CACHE_SUFFIX)
    for start in range(2):
        backend = TensorRTBackend(SPEC, WeightsChoice("random"), BackendOptions(device="cpu", batch=1))
        backend._bind(result.value, tensorrt_info(), rtcache)
        backend._loaded = True
        backend._warmup()
        backend.close()
        assert rtcache.is_file()
    assert fake_tensorrt.FakeBuildCounter.jit_compilations == 1  # the second start skipped the JIT
    assert rtcache.name in {e.name for e in Store(tmp_path / "cache").entries()[0].files}


# -- 8: timing cache, profiles, calibration hash, one logger --------------------------------------
def test_timing_cache_is_kept_in_the_store(trt10: Any, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    first = _get(cache, make_onnx(tmp_path / "m.onnx", batch=4), precision="fp16")
    second = _get(cache, make_onnx(tmp_path / "m.onnx", batch=4), precision="fp32")
    assert fake_tensorrt.header_of(first.paths.payload)["timing_cache_builds"] == 1
    assert fake_tensorrt.header_of(second.paths.payload)["timing_cache_builds"] == 2  # reused
    timing = list((cache / "timing").iterdir())
    assert len(timing) == 1 and timing[0].name.startswith("tensorrt-10.3.0.26-Fake_GPU_9000-sm86-16sm")


def test_calibration_hash_reads_no_image_and_is_memoised(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    from engines.backends.tensorrt import calibrator

    calib = _calib(tmp_path / "calib")
    original = Path.read_bytes

    def no_image_reads(self: Path) -> bytes:
        assert self.suffix != ".png", f"read {self}"
        return original(self)

    monkeypatch.setattr(Path, "read_bytes", no_image_reads)
    first = calibrator.calibration_set_sha256(calib)
    assert calibrator.calibration_set_sha256(calib) == first
    stat = (calib / "img1.png").stat()
    os.utime(calib / "img1.png", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert calibrator.calibration_set_sha256(calib) not in (first, None)


def test_one_logger_per_process(trt10: Any) -> None:
    from engines.backends.tensorrt.util import make_logger

    assert make_logger() is make_logger()


def test_int8_calibrates_whole_batches_of_the_profile_shape(trt10: Any, tmp_path: Path) -> None:
    calib = _calib(tmp_path / "calib", count=5)
    result = _get(tmp_path / "cache", make_onnx(tmp_path / "m.onnx", batch=None), precision="int8", batch=2, calib_dir=calib,
                  dynamic_batch=True)  # fmt: skip
    header = fake_tensorrt.header_of(result.paths.payload)
    assert header["calibration_batches"] == 2 and len(header["calibration_means"]) == 2
    assert result.paths.calib.is_file()


# -- 5: keys ----------------------------------------------------------------------------------
def test_key_has_sm_count_memory_and_int8_preprocessing(trt10: Any, tmp_path: Path) -> None:
    from engines.backends.tensorrt.key import engine_key

    options = BackendOptions(device="cpu", precision="int8", batch=1, calib_dir=tmp_path)

    def key(spec: Any = SPEC, **device: Any) -> Any:
        return engine_key(
            spec, options, producer="tensorrt", source_sha256="a" * 64, source_format="onnx",
            device=_device(**device), trt_version="10.3", calib_sha256="b" * 64,
        )  # fmt: skip

    base = key()
    assert key(sm_count=8).digest != base.digest  # an Orin Nano is not an AGX Orin
    assert key(memory_mb=30000).digest != base.digest
    other = replace(SPEC, preprocess=replace(SPEC.preprocess, mean=(0.5, 0.5, 0.5)))
    assert key(other).digest != base.digest


# -- 9: opset by module -------------------------------------------------------------------------
def test_rtx_gets_the_opset_of_tensorrt_10(monkeypatch: pytest.MonkeyPatch) -> None:
    from engines.backends.tensorrt import onnx_opset
    from engines.backends.tensorrt.util import tensorrt_info

    _install(monkeypatch, "rtx")
    assert tensorrt_info().version.startswith("1.") and onnx_opset(tensorrt_info()) == 18
    _install(monkeypatch, "8.6")
    assert onnx_opset(tensorrt_info()) == 17


# -- per-version surfaces ---------------------------------------------------------------------
def test_each_version_builds_with_its_own_api(trt_version: Any, tmp_path: Path) -> None:
    result = _get(tmp_path / "cache", make_onnx(tmp_path / "m.onnx", batch=None), precision="fp16", batch=2,
                  dynamic_batch=True)  # fmt: skip
    header = fake_tensorrt.header_of(result.paths.payload)
    assert header["builder_flags"] == ["FP16"]
    explicit = 1 << int(trt_version.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    assert (header["network_flags"] == explicit) == trt_version.FAKE_SURFACE.explicit_batch_required


def test_strongly_typed_versions_refuse_int8(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("11", "rtx"):
        _install(monkeypatch, name)
        with pytest.raises(EngineError, match="int8 calibration is not available"):
            _get(tmp_path / "cache", make_onnx(tmp_path / "m.onnx", batch=1), precision="int8", batch=1,
                 calib_dir=tmp_path)  # fmt: skip


# -- 6, 7: inference through the double: shapes, addresses, padding, profiles, streams, close --------
def _backend(device: str, batch: int, dynamic: bool, tmp_path: Path) -> Any:
    from engines.backends.tensorrt import TensorRTBackend
    from engines.backends.tensorrt.util import tensorrt_info

    onnx_path = make_onnx(tmp_path / f"m{batch}{dynamic}.onnx", batch=None if dynamic else batch)
    result = _get(tmp_path / "cache", onnx_path, precision="fp32", batch=batch, dynamic_batch=dynamic)
    options = BackendOptions(device=device, batch=batch, dynamic_batch=dynamic)
    backend = TensorRTBackend(SPEC, WeightsChoice("random"), options)
    backend._bind(result.value, tensorrt_info())
    backend._loaded = True
    return backend


def _check_inference(device: str, tmp_path: Path) -> None:
    import torch

    frames = [np.full((120, 160, 3), 20 * i, dtype=np.uint8) for i in range(4)]
    for batch, dynamic in ((4, False), (4, True), (1, False)):
        backend = _backend(device, batch, dynamic, tmp_path)
        context = backend._context
        for n in sorted({1, 3, batch} & set(range(1, batch + 1))):
            x = backend.preprocess(frames[:n])
            logits = backend.infer(x)
            assert tuple(logits.shape) == (n, 1000) and logits.dtype == torch.float32
            expected = fake_tensorrt.fake_logits(x.float(), 1000)
            torch.testing.assert_close(logits.to(expected.device), expected, rtol=1e-4, atol=1e-4)
            if dynamic:
                assert context.active_optimization_profile == (0 if n == 1 else 1)
        if device.startswith("cuda"):
            assert backend.stream is not None and set(context.streams) == {backend.stream.cuda_stream}
            assert backend.stream.cuda_stream != torch.cuda.default_stream().cuda_stream
        backend.close()
        assert backend._context is None and backend._engine is None and backend.stream is None


def test_infer_through_the_double_on_cpu(trt10: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fake_tensorrt, "EXECUTE_DEVICE", "cpu")
    _check_inference("cpu", tmp_path)


@pytest.mark.gpu
def test_infer_through_the_double_on_cuda(trt10: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    monkeypatch.setattr(fake_tensorrt, "EXECUTE_DEVICE", "cuda")
    _check_inference("cuda:0", tmp_path)


def test_close_releases_the_engine(trt10: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import gc

    from engines.backends.tensorrt import TensorRTBackend
    from engines.backends.tensorrt.loader import deserialize_engine
    from engines.backends.tensorrt.util import tensorrt_info

    monkeypatch.setattr(fake_tensorrt, "EXECUTE_DEVICE", "cpu")
    result = _get(tmp_path / "cache", make_onnx(tmp_path / "m.onnx", batch=1), precision="fp32", batch=1)
    loaded = deserialize_engine(result.paths.payload)
    del result
    backend = TensorRTBackend(SPEC, WeightsChoice("random"), BackendOptions(device="cpu", batch=1))
    backend._bind(loaded.value, tensorrt_info())
    backend._loaded = True
    engine = weakref.ref(loaded.value.engine)
    del loaded
    gc.collect()
    assert engine() is not None
    backend.close()
    gc.collect()
    assert engine() is None


# -- tools/trt_rtx_check.py: the real `streamer build` path, against the RTX double ------------------
def test_trt_rtx_check_records_the_runtimes_reason(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import importlib.util
    import json

    _install(monkeypatch, "rtx")
    monkeypatch.setattr(fake_tensorrt, "FAKE_CURRENT_CC", "9.0")
    _pretend_a_gpu_with_an_export(monkeypatch, tmp_path)
    path = Path(__file__).resolve().parents[1] / "tools" / "trt_rtx_check.py"
    spec = importlib.util.spec_from_file_location("trt_rtx_check", path)
    assert spec is not None and spec.loader is not None
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    case = tool.run_case(SPEC.name, "fp32", 4, tmp_path / "out", tmp_path)
    assert case["parsed"] is True and case["built"] is True, case and case["plan_bytes"] > 0
    assert case["deserialized"] is False and case["exit_status"] != 0
    assert case["reason"].endswith("Supported compute capabilities: 8.0 8.6 8.9 12.0 12.1")
    int8 = tool.run_case(SPEC.name, "int8", 4, tmp_path / "out", tmp_path)
    assert int8["built"] is False and "int8 calibration is not available" in int8["reason"]
    json.dumps([case, int8])
