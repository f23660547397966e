"""``streamer doctor`` on this machine (no GPU, no TensorRT, ONNX Runtime with its CPU provider) and its failure paths."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from streamer import doctor
from faults.fixtures import InProcessCli, cli, restore_logging  # noqa: F401 - fixtures

ROOT = Path(__file__).resolve().parents[1]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "streamer", "doctor", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def _this_machine_is_the_ci_shape() -> bool:
    import torch

    return (
        not torch.cuda.is_available()
        and not doctor.nvidia_gpu_present()
        and importlib.util.find_spec("tensorrt") is None
        and importlib.util.find_spec("onnxruntime") is not None
    )


@pytest.mark.skipif(not _this_machine_is_the_ci_shape(), reason="expects a machine without GPU or TensorRT, with onnxruntime")
def test_doctor_prints_this_machine() -> None:
    import cv2
    import onnxruntime  # type: ignore[import-untyped]
    import torch

    result = _run()
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    lines = result.stdout.splitlines()
    assert lines[0] == "streamer doctor: what this machine has"

    def line(prefix: str) -> str:
        found = [x for x in lines if x.startswith(prefix)]
        assert len(found) == 1, (prefix, result.stdout)
        return found[0]

    assert line("torch ").startswith(f"torch          {torch.__version__}, ")
    assert line("CUDA / GPU").endswith("no NVIDIA GPU on this machine (no /dev/nvidia0, no nvidia-smi): the CPU backends run here")
    assert line("TensorRT ").startswith("TensorRT       not importable (module tensorrt); next: pip install tensorrt")
    assert line("ONNX Runtime").startswith(f"ONNX Runtime   {onnxruntime.__version__}, providers: ") and "CPUExecutionProvider" in line("ONNX Runtime")
    assert line("OpenCV").startswith(f"OpenCV         {cv2.__version__} (")
    gst = doctor.opencv_build_flags(cv2.getBuildInformation())["GStreamer"] or ""
    assert f"GStreamer {gst.split()[0] if gst else 'not listed'}" in line("OpenCV")
    assert line("Jetson") == "Jetson         not a Jetson"
    assert line("  onnxruntime").startswith("  onnxruntime  --backend auto picks it here (on cpu)")
    assert line("  tensorrt").startswith("  tensorrt     not installed; next: ")
    assert lines[-1] == "--backend auto here: onnxruntime on cpu"
    assert "Traceback" not in result.stdout


@pytest.mark.skipif(not _this_machine_is_the_ci_shape(), reason="expects a machine without GPU or TensorRT, with onnxruntime")
def test_doctor_json() -> None:
    result = _run("--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    names = [c["name"] for c in data["checks"]]
    assert names == ["python", "numpy", "torch", "CUDA / GPU", "TensorRT", "TensorRT-RTX", "torch2trt", "ONNX Runtime", "Triton", "OpenCV", "Jetson"]
    by = {c["name"]: c for c in data["checks"]}
    assert by["TensorRT"]["status"] == "missing" and by["TensorRT"]["next_step"]
    assert "CPUExecutionProvider" in by["ONNX Runtime"]["data"]["providers"]
    assert by["Jetson"]["data"] == {"jetson": False}
    assert data["auto"] == {"backend": "onnxruntime", "device": "cpu"}
    assert [b["name"] for b in data["backends"]] == ["torch", "onnxruntime", "tensorrt", "torch2trt", "triton"]


def test_a_failing_probe_is_one_line_and_the_doctor_goes_on(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args: object) -> doctor.Check:
        raise RuntimeError("simulated\nsecond line")

    monkeypatch.setattr(doctor, "probe_opencv", boom)
    monkeypatch.setattr(doctor, "probe_torch", lambda jetson=False: (_ for _ in ()).throw(ImportError("No module named 'torch'")))
    text = doctor.render_text(doctor.diagnose())
    assert "OpenCV         probe failed (RuntimeError: simulated)" in text
    assert "torch          probe failed (ImportError: No module named 'torch'); next: pip install torch" in text
    assert "second line" not in text and text.rstrip().splitlines()[-1].startswith("--backend auto here:")


def test_doctor_runs_even_when_torch_is_too_old_for_other_commands(cli: InProcessCli, monkeypatch: pytest.MonkeyPatch) -> None:
    real = metadata.version
    monkeypatch.setattr(metadata, "version", lambda name: "1.13.1" if name == "torch" else real(name))
    result = cli("doctor", fake_model=False)
    assert result.returncode == 0, result.stderr
    assert "older than 2.6: only safetensors and hash-checked ImageNet weights load" in result.stdout
    assert cli("models", fake_model=False).returncode == 2


@pytest.mark.parametrize(
    "arch, capability, ok, how",
    [
        (["sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120"], (9, 0), True, "native code for sm_90"),
        (["sm_75", "sm_80", "sm_86", "sm_90"], (8, 7), True, "binary-compatible code (sm_86) for sm_87"),
        (["sm_50", "sm_60", "sm_70", "compute_70"], (8, 7), True, "only PTX (compute_70) for sm_87: JIT-compiled at first use (slow start)"),
        (["sm_90", "sm_100"], (8, 7), False, "no code for sm_87 (built for sm_90, sm_100)"),
        ([], (8, 7), False, "no code for sm_87 (built for CPU only)"),
    ],
)
def test_torch_arch_support(arch: list[str], capability: tuple[int, int], ok: bool, how: str) -> None:
    assert doctor._arch_support(arch, capability) == (ok, how)


def test_opencv_build_flags() -> None:
    import cv2

    here = doctor.opencv_build_flags(cv2.getBuildInformation())
    assert here["FFMPEG"] is not None and here["FFMPEG"].split()[0] in ("YES", "NO")
    text = "  Video I/O:\n    DC1394:                      NO\n    FFMPEG:                      YES\n    GStreamer:                   YES (1.22.0)\n"
    assert doctor.opencv_build_flags(text) == {"GStreamer": "YES (1.22.0)", "FFMPEG": "YES"}
    assert doctor.opencv_build_flags("") == {"GStreamer": None, "FFMPEG": None}


def test_jetson_line_from_recorded_facts(tmp_path: Path) -> None:
    from streamer.telemetry.jetson import read_facts

    data = ROOT / "tests" / "data" / "jetson" / "orin_nano_super_jp62"
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "nv_tegra_release").write_text((data / "nv_tegra_release").read_text(encoding="utf-8"), encoding="utf-8")
    facts = read_facts(tmp_path, run=lambda cmd: (data / "nvpmodel-q.txt").read_text() if cmd[0] == "nvpmodel" else None)
    check = doctor.probe_jetson(facts)
    assert check.detail == "unknown model, L4T 36.4.3 (JetPack 6.2), power mode 25W (1), clocks unknown"
    assert check.next_step == "sudo jetson_clocks before timing (steady clocks)"
    assert doctor.probe_tensorrt(jetson=True).next_step in (doctor.JETSON_TRT_HINT, None)


def test_system_tensorrt_outside_the_venv_is_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    system = tmp_path / "usr" / "lib" / "python3" / "dist-packages" / "tensorrt"
    system.mkdir(parents=True)
    monkeypatch.setattr(doctor, "SYSTEM_TENSORRT", (system,))
    monkeypatch.setattr(doctor, "_present", lambda module: False)
    monkeypatch.setattr(sys, "base_prefix", "/usr")
    monkeypatch.setattr(sys, "prefix", str(tmp_path / "venv"))
    check = doctor.probe_tensorrt(jetson=True)
    assert check.status == "missing" and str(system) in check.detail and "--system-site-packages" in (check.next_step or "")
