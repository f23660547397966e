"""torch2trt on TensorRT 10: our converters, the refusal up front, whole-batch int8 calibration, keys, streams.

torch2trt is not installed here: ``FakeTorch2TRT`` stands in for its module with
the converter table of its TensorRT-10 commit (``tests/data/...``, taken from
torch2trt's ``native_converters.py``) and its ``tensorrt_converter`` /
``DatasetCalibrator`` names; the converters are run against a small network
double that computes with numpy, and compared with PyTorch.
"""

from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from engines.backends.base import BackendOptions
from engines.errors import EngineError
from engines.models import WeightsChoice, build_model, get_spec, model_names

try:
    from fakes import fake_tensorrt
except ImportError:  # pragma: no cover
    from tests.fakes import fake_tensorrt  # type: ignore[no-redef]

DATA = Path(__file__).parent / "data" / "torch2trt_trt10_functional_converters.txt"


def _torch2trt_at_trt10() -> Any:
    """A torch2trt module double: its TensorRT-10 converter table; pad is there but calls the removed
    ``add_padding``, so it counts as not converting (``is_real`` False) until ours replaces it."""
    names = [line.strip() for line in DATA.read_text().splitlines() if line.strip() and not line.startswith("#")]
    import importlib.machinery

    module = types.ModuleType("torch2trt")
    module.__spec__ = importlib.machinery.ModuleSpec("torch2trt", None)
    module.CONVERTERS = {n: {"converter": None, "is_real": n != "torch.nn.functional.pad"} for n in names}

    def tensorrt_converter(method: str, is_real: bool = True, **_: Any) -> Any:
        def register(fn: Any) -> Any:
            module.CONVERTERS[method] = {"converter": fn, "is_real": is_real}
            return fn

        return register

    module.tensorrt_converter = tensorrt_converter
    return module


@pytest.fixture()
def trt10(monkeypatch: pytest.MonkeyPatch) -> Any:
    module = fake_tensorrt.variant("10.3")
    monkeypatch.delitem(sys.modules, "tensorrt_rtx", raising=False)
    monkeypatch.setitem(sys.modules, "tensorrt", module)
    return module


# -- 1: every registered model converts, or is refused up front naming the layer ------------------
def test_registered_models_are_refused_without_our_converters_and_convert_with_them() -> None:
    from engines.backends.torch2trt_converters import register_converters, unconvertible

    t2t = _torch2trt_at_trt10()
    refused = {}
    for name in model_names():
        spec = get_spec(name)
        refused[name] = unconvertible(t2t, build_model(spec, WeightsChoice("random")).module, spec.preprocess.input_shape)
    assert refused["alexnet"] is None and refused["resnet18"] is None
    assert refused["mobilenet_v3_large"] is not None and refused["mobilenet_v3_large"].startswith("F.hardswish (in layer features.")
    assert refused["efficientnet_lite0"] is not None and refused["efficientnet_lite0"].startswith("F.pad (in layer ")
    register_converters(t2t)
    for name in model_names():
        spec = get_spec(name)
        assert unconvertible(t2t, build_model(spec, WeightsChoice("random")).module, spec.preprocess.input_shape) is None


def test_backend_refuses_with_one_line_before_converting(trt10: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from engines.backends.torch2trt_backend import Torch2TRTBackend

    t2t = _torch2trt_at_trt10()

    def must_not_run(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("torch2trt() was called")

    t2t.torch2trt = must_not_run
    spec = get_spec("mobilenet_v3_large")
    backend = Torch2TRTBackend(spec, WeightsChoice("random"), BackendOptions(device="cpu"))
    backend._trt_version = "10.3.0.26"
    model = build_model(spec, WeightsChoice("random")).module
    with pytest.raises(EngineError) as info:
        backend._convert(t2t, model, backend.options, dynamic=False)
    text = str(info.value)
    assert "\n" not in text and "no converter for F.hardswish (in layer features." in text


class _Net:
    """A network double for converters: tensors are numpy arrays, layers compute at once."""

    class _Layer:
        def __init__(self, value: Any) -> None:
            self.value = value
            self.alpha = 0.0
            self.beta = 0.0

        def get_output(self, index: int) -> Any:
            return self

    def __init__(self) -> None:
        self.calls: list[str] = []

    def add_padding_nd(self, x: Any, pre: Any, post: Any) -> Any:
        self.calls.append("add_padding_nd")
        (t, l), (b, r) = tuple(pre), tuple(post)
        return self._Layer(np.pad(x.value, [(0, 0), (0, 0), (t, b), (l, r)]))

    def add_activation(self, x: Any, kind: Any) -> Any:
        self.calls.append(f"activation:{kind.name}")
        layer = self._Layer(None)
        layer.value = x.value
        layer.kind = kind  # type: ignore[attr-defined]
        return _Lazy(layer)

    def add_elementwise(self, a: Any, b: Any, op: Any) -> Any:
        self.calls.append(f"elementwise:{op.name}")
        assert op.name == "PROD"
        return self._Layer(a.value * _value(b))


class _Lazy:
    """HARD_SIGMOID's alpha/beta are set after add_activation returns: compute on read."""

    def __init__(self, layer: Any) -> None:
        self.__dict__["layer"] = layer

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self.layer, name, value)

    def get_output(self, index: int) -> Any:
        return self

    @property
    def value(self) -> Any:
        layer = self.layer
        return np.clip(layer.alpha * layer.value + layer.beta, 0.0, 1.0)


def _value(t: Any) -> Any:
    return t.value


def test_our_converters_compute_what_pytorch_does(trt10: Any) -> None:
    from engines.backends.torch2trt_converters import convert_hardsigmoid, convert_hardswish, convert_pad

    x = torch.linspace(-5, 5, 2 * 3 * 5 * 6).reshape(2, 3, 5, 6)
    cases = [
        (convert_pad, F.pad(x, [0, 1, 1, 0]), ([x, [0, 1, 1, 0]], {})),
        (convert_hardswish, F.hardswish(x), ([x], {})),
        (convert_hardsigmoid, F.hardsigmoid(x), ([x], {})),
    ]
    for converter, expected, (args, kwargs) in cases:
        inp = types.SimpleNamespace(_trt=_Net._Layer(x.numpy()))
        out = types.SimpleNamespace()
        ctx = types.SimpleNamespace(network=_Net(), method_args=[inp, *args[1:]], method_kwargs=kwargs, method_return=out)
        converter(ctx)
        np.testing.assert_allclose(out._trt.value, expected.numpy(), rtol=1e-6, atol=1e-6)
        assert "add_padding" not in ctx.network.calls  # removed in TensorRT 10
    reflect = types.SimpleNamespace(network=_Net(), method_args=[types.SimpleNamespace(_trt=None), [1, 1]],
                                    method_kwargs={"mode": "reflect"}, method_return=None)  # fmt: skip
    with pytest.raises(EngineError, match="reflect"):
        convert_pad(reflect)


# -- 2: int8 through torch2trt: whole batches, our calibrator, no int8_calib_batch_size ---------------
def _calib(folder: Path, count: int) -> Path:
    import cv2

    folder.mkdir()
    for i in range(count):
        cv2.imwrite(str(folder / f"img{i}.png"), np.full((40, 60, 3), 25 * i, dtype=np.uint8))
    return folder


def test_int8_kwargs_and_whole_batch_calibrator(trt10: Any, tmp_path: Path) -> None:
    from engines.backends.tensorrt.util import CallbackErrors
    from engines.backends.torch2trt_backend import Torch2TRTBackend
    from engines.backends.torch2trt_converters import calibrator_class, our_calibrator

    spec = get_spec("resnet18")
    options = BackendOptions(device="cpu", precision="int8", batch=3, dynamic_batch=True, workspace_mb=256,
                             calib_dir=_calib(tmp_path / "calib", 7))  # fmt: skip
    backend = Torch2TRTBackend(spec, WeightsChoice("random"), options)
    kwargs = backend.conversion_kwargs(_torch2trt_at_trt10(), options, dynamic=True)
    assert "int8_calib_batch_size" not in kwargs and "max_workspace_size" not in kwargs  # TensorRT 10
    assert kwargs["int8_calib_algorithm"] == trt10.CalibrationAlgoType.ENTROPY_CALIBRATION_2
    assert kwargs["opt_shapes"] == [(3, 3, 224, 224)]
    dataset = kwargs["int8_calib_dataset"]
    assert len(dataset) == 2 and tuple(dataset[0][0].shape) == (3, 3, 224, 224)

    errors = CallbackErrors()
    cls = calibrator_class(trt10, (3, 3, 224, 224), errors)

    def fake_torch2trt(module: Any, inputs: Any, **kw: Any) -> Any:  # what torch2trt does with its calibrator
        calibrator = DatasetCalibrator(kw["int8_calib_dataset"], algorithm=kw["int8_calib_algorithm"])  # noqa: F821
        assert calibrator.get_batch_size() == 3
        pointers = []
        while batch := calibrator.get_batch(["input"]):
            data = fake_tensorrt.tensor_at(batch[0], (3, 3, 224, 224), "FLOAT", cuda=False)
            pointers.append(float(data.mean()))
        return pointers

    fake_torch2trt.__globals__["DatasetCalibrator"] = "torch2trt's own"
    try:
        with our_calibrator(fake_torch2trt, cls):
            means = fake_torch2trt(None, None, **kwargs)
        assert fake_torch2trt.__globals__["DatasetCalibrator"] == "torch2trt's own"
    finally:
        fake_torch2trt.__globals__.pop("DatasetCalibrator", None)
    assert len(means) == 2 and not errors.failed

    kwargs_86 = None
    monkey = pytest.MonkeyPatch()
    monkey.setitem(sys.modules, "tensorrt", fake_tensorrt.variant("8.6"))
    try:
        kwargs_86 = backend.conversion_kwargs(_torch2trt_at_trt10(), options, dynamic=True)
    finally:
        monkey.undo()
    assert kwargs_86["max_workspace_size"] == 256 << 20


def test_calibrator_keeps_an_unreadable_image_for_after_the_build(trt10: Any, tmp_path: Path) -> None:
    from engines.backends.tensorrt.calibrator import CalibrationImages, calibration_images
    from engines.backends.tensorrt.util import CallbackErrors
    from engines.backends.torch2trt_converters import CalibrationBatches, calibrator_class

    calib = _calib(tmp_path / "calib", 4)
    (calib / "img1.png").write_bytes(b"broken")
    spec = get_spec("resnet18")
    batches = CalibrationBatches(CalibrationImages(calibration_images(calib), spec.preprocess, "cpu"), 2)
    errors = CallbackErrors()
    calibrator = calibrator_class(trt10, (2, 3, 224, 224), errors)(batches)
    assert calibrator.get_batch(["input"]) == []  # what TensorRT sees: the end of the data
    with pytest.raises(EngineError, match="cannot read image .*img1.png"):
        errors.reraise()


# -- 5: keys ------------------------------------------------------------------------------------
def test_torch2trt_code_and_model_code_ids(tmp_path: Path) -> None:
    from engines.backends import torch2trt_backend as backend

    root = tmp_path / "torch2trt"
    (root / "converters").mkdir(parents=True)
    (root / "torch2trt.py").write_text("x = 1\n")
    (root / "converters" / "native_converters.py").write_text("pad uses add_padding\n")
    module = types.SimpleNamespace(__file__=str(root / "__init__.py"))
    first = backend.torch2trt_code_id(module)
    backend._code_memo.clear()
    (root / "converters" / "native_converters.py").write_text("pad uses add_padding_nd\n")
    assert backend.torch2trt_code_id(module) != first  # same "0.5.0", other code
    a = backend.model_code_sha256(build_model(get_spec("resnet18"), WeightsChoice("random")).module)
    b = backend.model_code_sha256(build_model(get_spec("efficientnet_lite0"), WeightsChoice("random")).module)
    assert a != b and len(a) == 64


# -- 6: TRTModule runs on the backend's own stream ---------------------------------------------
@pytest.mark.gpu
def test_trtmodule_runs_on_the_backends_stream() -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    from engines.backends.torch2trt_backend import Torch2TRTBackend

    spec = get_spec("resnet18")
    backend = Torch2TRTBackend(spec, WeightsChoice("random"), BackendOptions(device="cuda:0", batch=2))
    seen = []

    def module(x: torch.Tensor) -> torch.Tensor:  # TRTModule calls execute_async_v3 on torch's current stream
        seen.append(torch.cuda.current_stream().cuda_stream)
        return x.mean(dim=(2, 3)).repeat(1, 334)[:, :1000]

    backend._module = module
    backend._stream = torch.cuda.Stream()
    backend._loaded = True
    x = backend.preprocess([np.zeros((64, 64, 3), dtype=np.uint8)])
    out = backend.infer(x)
    assert tuple(out.shape) == (1, 1000) and seen == [backend._stream.cuda_stream]
    assert seen[0] != torch.cuda.default_stream().cuda_stream
    backend.close()


def test_torch2trt_key_covers_torch_model_code_and_torch2trt_not_the_workspace_on_10(
    trt10: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from engines.backends import torch2trt_backend
    from engines.backends.tensorrt import DeviceInfo
    from engines.backends.torch2trt_backend import Torch2TRTBackend
    from engines.cache import Store

    t2t = _torch2trt_at_trt10()

    def torch2trt(module: Any, inputs: Any, min_shapes: Any = None, **kw: Any) -> Any:
        raise AssertionError("not reached")

    t2t.torch2trt = torch2trt
    t2t.__file__ = str(tmp_path / "torch2trt" / "__init__.py")
    monkeypatch.setitem(sys.modules, "torch2trt", t2t)
    monkeypatch.setattr(torch2trt_backend, "cuda_device_info", lambda d: DeviceInfo("Orin", (8, 7), "12.6", d, 16, 7620))
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: None)
    keys = []

    class Stop(Exception):
        pass

    def capture(self: Any, key: Any, *args: Any) -> Any:
        keys.append(key)
        raise Stop

    monkeypatch.setattr(Store, "get_or_build", capture)
    for workspace in (64, 128):
        options = BackendOptions(device="cpu", precision="fp16", batch=1, workspace_mb=workspace, cache_dir=tmp_path)
        with pytest.raises(Stop):
            Torch2TRTBackend(get_spec("resnet18"), WeightsChoice("random"), options)._load_impl()
    extra = dict(keys[0].extra)
    assert extra["torch"] == torch.__version__ and len(extra["model_code"]) == 64
    assert extra["torch2trt_code"].startswith("sources=")
    assert keys[0].workspace_mb is None and keys[0].digest == keys[1].digest  # torch2trt ignores it on 10
    assert keys[0].gpu_sm_count == 16 and keys[0].gpu_memory_mb == 7620
