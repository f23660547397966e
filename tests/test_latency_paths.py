"""The latency and cold-start paths, checked on the CPU: the fused AlexNet rewrite against
torchvision's own module, its Triton kernels in Triton's interpreter, the native fp16 depthwise
route, weights files built without random initialisation, and the cold-start tool's parsing.
No timing is asserted; the timings are in docs/benchmarks/h200-latency/."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from engines.backends.base import BackendOptions
from engines.backends.fused_alexnet import FusedAlexNet, FusedKnobs, conv1_space_to_depth_weight, is_torchvision_alexnet
from engines.backends.torch_backend import TorchBackend
from engines.backends.torch_tuning import DEPTHWISE_ENV, fp16_depthwise_choice, is_depthwise, use_native_depthwise
from engines.errors import ConfigError
from engines.models import WeightsChoice, build_model, get_spec
from engines.preprocess import preprocess
from helpers import REPO, SAMPLE_IMAGES, SAMPLE_VIDEO, assert_clean_failure, run_cli

TORCH_KNOBS = "pool=torch,act=torch,fc=cublas"


@pytest.fixture(scope="module")
def alexnet() -> torch.nn.Module:
    return build_model(get_spec("alexnet"), WeightsChoice("random")).module


@pytest.fixture(scope="module")
def photos() -> torch.Tensor:
    import cv2

    images = [cv2.imread(str(p)) for p in sorted(SAMPLE_IMAGES.glob("*.jpg"))[:3]]
    return preprocess(images, get_spec("alexnet").preprocess, "cpu", torch.float32)


@pytest.mark.parametrize("conv1", ["s2d", "direct"])
def test_fused_alexnet_computes_torchvisions_function(alexnet: torch.nn.Module, photos: torch.Tensor, conv1: str) -> None:
    knobs = FusedKnobs.parse(f"conv1={conv1},{TORCH_KNOBS}")
    fused = FusedAlexNet(alexnet, "cpu", torch.float32, batch=3, knobs=knobs, graph=False)
    with torch.inference_mode():
        ref = alexnet(photos)
    out = fused.infer(photos)
    assert out.dtype == torch.float32 and out.shape == (3, 1000)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-6)
    assert torch.equal(out.argmax(1), ref.argmax(1))
    part = fused.infer(photos[:1])  # a batch smaller than the one it was built for
    torch.testing.assert_close(part, ref[:1], rtol=1e-4, atol=1e-6)


def test_space_to_depth_conv1_is_the_stride_4_convolution() -> None:
    torch.manual_seed(0)
    w = torch.randn(64, 3, 11, 11)
    x = torch.randn(2, 3, 224, 224)
    blocks = x.view(2, 3, 56, 4, 56, 4).permute(0, 1, 3, 5, 2, 4).reshape(2, 48, 56, 56)
    torch.testing.assert_close(
        F.conv2d(blocks, conv1_space_to_depth_weight(w), None, 1, 1), F.conv2d(x, w, None, 4, 2), rtol=1e-4, atol=1e-4
    )


def test_fused_refuses_other_networks_and_bad_knobs(alexnet: torch.nn.Module) -> None:
    lite0 = build_model(get_spec("efficientnet_lite0"), WeightsChoice("random")).module
    assert is_torchvision_alexnet(alexnet) and not is_torchvision_alexnet(lite0)
    with pytest.raises(ConfigError, match="AlexNet only"):
        FusedAlexNet(lite0, "cpu", torch.float32, 1, FusedKnobs.parse(TORCH_KNOBS), graph=False)
    with pytest.raises(ConfigError, match="CUDA"):
        FusedAlexNet(alexnet, "cpu", torch.float32, 1, FusedKnobs(), graph=False)
    with pytest.raises(ConfigError, match="fc=zzz"):
        FusedKnobs.parse("fc=zzz")
    assert FusedKnobs.parse("cudnn_benchmark=0") == FusedKnobs(cudnn_benchmark=False)


def test_fused_option_needs_cuda() -> None:
    options = BackendOptions(device="cpu", fused=True)
    assert "CUDA" in (TorchBackend.unsupported(options) or "")
    cuda = BackendOptions(device="cuda", fused=True, channels_last=True)
    assert "drop --channels-last" in (TorchBackend.unsupported(cuda) or "")


def test_run_fused_on_the_cpu_is_one_clean_error(tmp_path: Path) -> None:
    result = run_cli(
        ["run", SAMPLE_VIDEO, "--headless", "--max-frames", "2", "--model", "alexnet", "--weights", "random", "--backend", "torch", "--device", "cpu", "--fused"],
        cwd=tmp_path,
    )
    assert "--fused needs a CUDA device" in assert_clean_failure(result)


def test_bench_skips_the_fused_variant_where_it_cannot_run() -> None:
    from streamer.bench.config import Case, ModelChoice
    from streamer.bench.runner import precheck

    cpu = precheck(Case(ModelChoice("alexnet", "random"), "torch", "fp32", "fused", "cpu", 1))
    assert cpu is not None and cpu[0] == "skipped" and "CUDA" in cpu[1]


_KERNEL_CHECK = r"""
import torch, torch.nn.functional as F
from engines.backends.fused_alexnet import triton_kernels
k = triton_kernels()
torch.manual_seed(0)
for n, c, h in [(1, 64, 55), (2, 192, 27), (1, 256, 13)]:
    x = torch.randn(n, c, h, h).contiguous(memory_format=torch.channels_last).half()
    b = torch.randn(c).half()
    ref = F.max_pool2d(F.relu(x.float() + b.float().view(1, -1, 1, 1)), 3, 2)
    y = k.pool(x, b)
    assert y.shape == ref.shape and y.permute(0, 2, 3, 1).is_contiguous()
    torch.testing.assert_close(y.float(), ref, rtol=2e-3, atol=2e-3)
x = torch.randn(1, 384, 13, 13).contiguous(memory_format=torch.channels_last).half()
b = torch.randn(384).half()
ref = F.relu(x.float() + b.float().view(1, -1, 1, 1))
torch.testing.assert_close(k.bias_relu(x, b).float(), ref, rtol=2e-3, atol=2e-3)
for relu in (True, False):
    w = (torch.randn(40, 1024) * 0.05).half(); v = torch.randn(1, 1024).half(); b = torch.randn(40).half()
    ref = v.float() @ w.float().t() + b.float()
    ref = ref.clamp_min(0) if relu else ref
    torch.testing.assert_close(k.linear(v, w, b, relu, config=(8, 512)).float(), ref, rtol=1e-2, atol=1e-2)
print("ok")
"""


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")
def test_triton_kernels_in_the_interpreter() -> None:
    env = {"TRITON_INTERPRET": "1", "PYTHONPATH": str(REPO)}
    import os

    result = subprocess.run(
        [sys.executable, "-c", _KERNEL_CHECK], env={**os.environ, **env}, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]


def test_native_depthwise_route_keeps_the_outputs(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[int, ...]] = []

    def cpu_depthwise(x, weight, kernel_size, bias, stride, padding, dilation):  # type: ignore[no-untyped-def]
        calls.append(tuple(x.shape))
        return F.conv2d(x, weight, bias, stride, padding, dilation, groups=weight.shape[0])

    monkeypatch.setattr(torch._C._nn, "_conv_depthwise2d", cpu_depthwise)
    spec = get_spec("efficientnet_lite0")
    model = build_model(spec, WeightsChoice("imagenet")).module
    x = torch.randn(1, 3, 224, 224)
    with torch.inference_mode():
        ref = model(x)
    count = use_native_depthwise(model)
    assert count == sum(1 for m in model.modules() if is_depthwise(m)) == 16
    with torch.inference_mode():
        out = model(x)
    assert len(calls) == count
    torch.testing.assert_close(out, ref)


def test_depthwise_switch_is_validated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(DEPTHWISE_ENV, raising=False)
    assert fp16_depthwise_choice() == "native"
    monkeypatch.setenv(DEPTHWISE_ENV, "cudnn")
    assert fp16_depthwise_choice() == "cudnn"
    monkeypatch.setenv(DEPTHWISE_ENV, "fast")
    with pytest.raises(ConfigError, match=DEPTHWISE_ENV):
        fp16_depthwise_choice()


def test_weights_file_loads_without_random_init_and_gives_the_same_module(tmp_path: Path, alexnet: torch.nn.Module) -> None:
    path = tmp_path / "alexnet.pt"
    torch.save(alexnet.state_dict(), path)
    loaded = build_model(get_spec("alexnet"), WeightsChoice.parse(str(path))).module
    assert not any(t.is_meta for t in loaded.state_dict().values())
    for (name, a), b in zip(alexnet.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), name
    assert all(p.requires_grad for p in loaded.parameters()) and not loaded.training
    half = tmp_path / "alexnet-fp16.pt"  # another dtype: converted as load_state_dict always did
    torch.save({k: v.half() for k, v in alexnet.state_dict().items()}, half)
    loaded16 = build_model(get_spec("alexnet"), WeightsChoice.parse(str(half))).module
    assert next(loaded16.parameters()).dtype == torch.float32


def test_cold_start_tool_parses_cases_and_reports_missing_backends(tmp_path: Path) -> None:
    sys.path.insert(0, str(REPO / "tools"))
    try:
        import cold_start
    finally:
        sys.path.pop(0)
    case = cold_start.Case.parse("efficientnet_lite0/torch/fp16/cuda_graphs/b8/STREAMER_TORCH_DEPTHWISE=native")
    assert (case.batch, case.env) == (8, {"STREAMER_TORCH_DEPTHWISE": "native"})
    cmd = case.command("clip.mp4", 8, "random")
    assert "--cuda-graphs" in cmd and cmd[cmd.index("--batch") + 1] == "8" and "--weights" not in cmd
    with pytest.raises(SystemExit):
        cold_start.Case.parse("alexnet/torch/fp16/turbo")
    out = tmp_path / "cold.json"
    result = subprocess.run(
        [sys.executable, str(REPO / "tools" / "cold_start.py"), "--source", str(SAMPLE_VIDEO), "--case", "alexnet/tensorrt/fp16/eager", "--out", str(out)],
        env={**__import__("os").environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    if importlib.util.find_spec("tensorrt") is None:
        assert "not installed" in out.with_suffix(".md").read_text()
