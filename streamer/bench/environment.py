"""The machine and software a report was measured on (null where a figure does not apply)."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any


def _run(cmd: list[str], timeout: float = 15.0) -> str | None:
    if shutil.which(cmd[0]) is None:
        return None
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = (done.stdout or "").strip()
    return text if done.returncode == 0 and text else None


def cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.lower().startswith(("model name", "hardware", "cpu model")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _version(module: str, attr: str = "__version__") -> str | None:
    try:
        mod = __import__(module)
    except Exception:  # noqa: BLE001 - any import failure means "not available"
        return None
    value = getattr(mod, attr, None)
    return str(value) if value is not None else None


def tensorrt_version() -> str | None:
    from importlib import metadata

    for dist in ("tensorrt", "tensorrt-cu12", "tensorrt-cu13", "tensorrt_rtx"):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return _version("tensorrt")


def gpu_info() -> list[dict[str, Any]]:
    text = _run(
        [
            "nvidia-smi",
            "--query-gpu=index,name,driver_version,memory.total,pstate,clocks.sm,clocks.max.sm,power.limit,persistence_mode",
            "--format=csv,noheader,nounits",
        ]
    )
    out: list[dict[str, Any]] = []
    if text is None:
        return out
    keys = ("index", "name", "driver", "memory_total_mb", "pstate", "sm_clock_mhz", "sm_clock_max_mhz", "power_limit_w", "persistence_mode")
    for line in text.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == len(keys):
            out.append(dict(zip(keys, parts)))
    return out


def checkout_root() -> Path | None:
    """The git checkout this package runs from (an editable install), or None for an installed package."""
    here = Path(__file__).resolve().parents[2]
    return here if (here / ".git").exists() and (here / "streamer").is_dir() else None


def git_state(repo: Path) -> dict[str, Any]:
    commit = _run(["git", "-C", str(repo), "rev-parse", "HEAD"])
    status = _run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"])
    return {"commit": commit, "dirty": bool(status) if commit else None}


def collect(device: str = "cpu") -> dict[str, Any]:
    """Everything section 6 of the bench asks for; ``device`` is the first bench device."""
    import cv2
    import torch

    try:
        import psutil

        physical = psutil.cpu_count(logical=False)
        logical = psutil.cpu_count(logical=True)
    except ImportError:
        physical, logical = None, os.cpu_count()
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    cuda_ok = torch.cuda.is_available()
    gpus = gpu_info()
    jetson_env = jetson_fields()
    env: dict[str, Any] = {
        "cpu_model": cpu_model(),
        "cpu_cores_physical": physical,
        "cpu_cores_logical": logical,
        "cpu_cores_usable": affinity,
        "torch_threads": torch.get_num_threads(),
        "host_memory_gb": _host_memory_gb(),
        "gpu_name": (torch.cuda.get_device_name(0) if cuda_ok else (gpus[0]["name"] if gpus else None)),
        "gpu_count": torch.cuda.device_count() if cuda_ok else 0,
        "gpu_capability": ".".join(map(str, torch.cuda.get_device_capability(0))) if cuda_ok else None,
        "gpus": gpus or None,
        "driver": gpus[0]["driver"] if gpus else None,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if cuda_ok else None,
        "tf32_conv": bool(torch.backends.cudnn.allow_tf32) if cuda_ok else None,
        "tf32_matmul": bool(torch.backends.cuda.matmul.allow_tf32) if cuda_ok else None,
        "torch": torch.__version__,
        "torchvision": _version("torchvision"),
        "tensorrt": tensorrt_version(),
        "torch2trt": _version("torch2trt"),
        "onnxruntime": _version("onnxruntime"),
        "onnxruntime_providers": _ort_providers(),
        "onnx": _version("onnx"),
        "opencv": cv2.__version__,
        "numpy": _version("numpy"),
        "os": platform.platform(),
        "python": platform.python_version(),
        "python_executable": sys.executable,
        **jetson_env,
        "bench_device": device,
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
    return env


def _ort_providers() -> list[str] | None:
    try:
        import onnxruntime

        return list(onnxruntime.get_available_providers())
    except Exception:  # noqa: BLE001
        return None


def jetson_fields(root: Path = Path("/")) -> dict[str, Any]:
    """The Jetson facts a report keeps (read without root; every value None off a Jetson).

    ``jetson_power_mode`` is the mode name and id (``nvpmodel -q``, else the nvpmodel status file);
    ``jetson_clocks`` is "locked" / "not locked" judged from sysfs min == max, since
    ``jetson_clocks --show`` needs root; ``jetson_facts`` holds everything, per clock domain.
    """
    from streamer.telemetry import jetson

    try:
        facts = jetson.read_facts(root)
    except Exception:  # noqa: BLE001 - a machine we cannot read is reported as unknown, never as a failure
        facts = None
    if facts is None:
        return {
            "jetson": False,
            "jetson_model": None, "jetson_l4t": None, "jetson_jetpack": None,
            "jetson_power_mode": None, "jetson_clocks": None, "jetson_facts": None,
        }
    mode = None
    if facts.power_mode or facts.power_mode_id is not None:
        mode = f"{facts.power_mode or '?'}" + (f" (mode {facts.power_mode_id})" if facts.power_mode_id is not None else "")
    clocks = {True: "locked", False: "not locked", None: None}[facts.clocks_locked]
    return {
        "jetson": True,
        "jetson_model": facts.model,
        "jetson_l4t": facts.l4t,
        "jetson_jetpack": facts.jetpack,
        "jetson_power_mode": mode,
        "jetson_clocks": clocks,
        "jetson_facts": facts.as_dict(),
    }


def _host_memory_gb() -> float | None:
    try:
        import psutil

        return round(psutil.virtual_memory().total / 1e9, 1)
    except ImportError:
        return None


class CpuUsage:
    """How busy the rest of the machine was while this process measured (others' share of all cores).

    Timings on a shared machine are only as good as its quietness; this is put
    beside every case so a disturbed number can be seen as such.
    """

    def __init__(self) -> None:
        try:
            import psutil
        except ImportError:
            psutil = None
        self._psutil = psutil
        self._t0 = _time()
        if psutil is not None:
            self._sys0 = psutil.cpu_times()
            self._own0 = psutil.Process().cpu_times()

    def result(self) -> dict[str, float | None]:
        if self._psutil is None:
            return {"other_processes": None, "steal": None, "own": None}
        t1 = _time()
        sys1 = self._psutil.cpu_times()
        own1 = self._psutil.Process().cpu_times()
        wall = t1 - self._t0
        cores = self._psutil.cpu_count() or 1
        if wall <= 0:
            return {"other_processes": None, "steal": None, "own": None}

        def busy(t: Any) -> float:
            idle = getattr(t, "idle", 0.0) + getattr(t, "iowait", 0.0)
            steal = getattr(t, "steal", 0.0)
            return float(sum(t)) - idle - steal - getattr(t, "guest", 0.0) - getattr(t, "guest_nice", 0.0)

        own = (own1.user + own1.system) - (self._own0.user + self._own0.system)
        other = max(0.0, busy(sys1) - busy(self._sys0) - own)
        steal = getattr(sys1, "steal", 0.0) - getattr(self._sys0, "steal", 0.0)
        scale = wall * cores
        return {"other_processes": min(1.0, other / scale), "steal": min(1.0, max(0.0, steal) / scale), "own": min(1.0, own / scale)}


def _time() -> float:
    import time

    return time.perf_counter()


def device_line(env: dict[str, Any], devices: list[str]) -> str:
    """One line naming what the numbers were measured on, for the top of the report."""
    cores = env.get("cpu_cores_usable") or env.get("cpu_cores_logical")
    cpu = f"{env.get('cpu_model') or 'unknown CPU'} ({cores} cores)"
    if any(d.startswith("cuda") for d in devices) and env.get("gpu_name"):
        return f"GPU {env['gpu_name']} (driver {env.get('driver') or '?'}, CUDA {env.get('cuda') or '?'}); host CPU {cpu}"
    gpu = f"; GPU present but not benchmarked: {env['gpu_name']}" if env.get("gpu_name") else "; no GPU"
    return f"CPU {cpu}{gpu}"
