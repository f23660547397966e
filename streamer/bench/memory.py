"""Memory as the operating system and the GPU driver see it.

* Host: the process's peak resident set (``getrusage`` ``ru_maxrss``, exact but
  only ever growing) and a sampler thread that keeps the peak of each phase
  (cold load, warm load, processing) from ``psutil``.
* GPU: what the *driver* says the process holds - ``nvidia-smi
  --query-compute-apps`` filtered by our pid, else NVML through pynvml, else the
  device-wide change of ``torch.cuda.mem_get_info`` since CUDA was initialised
  (labelled, since it also moves with other processes and leaves out the CUDA
  context).  The driver sees every allocation: PyTorch's, cuDNN/cuBLAS
  workspaces, TensorRT's engine and activations, the CUDA context.
  ``torch.cuda.max_memory_allocated`` is reported beside it and sees only
  tensors made by PyTorch's caching allocator: for a TensorRT engine that is the
  input and output buffers (the lab's 606208-byte "max memory" is exactly a
  1x3x224x224 fp32 input, 602112 B, plus a 1000-class fp32 output rounded up to
  PyTorch's 512-byte block, 4096 B).
* Jetson: CPU and GPU share one memory and NVML has no per-process figure, so
  the process's unified memory is its RSS, labelled as such.
"""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from engines.backends.base import Backend

MB = 1024.0 * 1024.0

SMI_QUERY = ["--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"]


def host_rss_mb() -> float:
    """Current resident set of this process (psutil, else /proc/self/statm)."""
    try:
        import psutil
    except ImportError:
        with open("/proc/self/statm", encoding="ascii") as fh:
            pages = int(fh.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / MB
    return float(psutil.Process().memory_info().rss) / MB


def host_peak_rss_mb() -> float:
    """Peak resident set of this process so far (``ru_maxrss``: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return float(peak) / MB if sys.platform == "darwin" else float(peak) / 1024.0


def is_jetson() -> bool:
    if os.path.exists("/etc/nv_tegra_release"):
        return True
    try:
        with open("/proc/device-tree/model", "rb") as fh:
            return b"jetson" in fh.read().lower()
    except OSError:
        return False


def parse_compute_apps(text: str, pid: int) -> float | None:
    """MiB that ``pid`` holds according to ``nvidia-smi --query-compute-apps=pid,used_memory`` (summed over GPUs).

    None if the pid is not listed (no CUDA context yet, or a container whose
    pids the driver does not see).
    """
    total = 0.0
    found = False
    for line in text.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) < 2 or not parts[0].isdigit():
            continue
        if int(parts[0]) != pid:
            continue
        try:
            total += float(parts[1])
            found = True
        except ValueError:
            continue  # "[N/A]" on some platforms
    return total if found else None


def _run_smi(args: list[str], timeout: float = 10.0) -> str | None:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        done = subprocess.run([exe, *args], capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


def smi_process_mb(pid: int) -> float | None:
    text = _run_smi(SMI_QUERY)
    return parse_compute_apps(text, pid) if text is not None else None


def nvml_process_mb(pid: int) -> float | None:
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
        try:
            total = 0.0
            found = False
            for i in range(pynvml.nvmlDeviceGetCount()):
                handle = pynvml.nvmlDeviceGetHandleByIndex(i)
                for proc in pynvml.nvmlDeviceGetComputeRunningProcesses(handle):
                    if proc.pid == pid and proc.usedGpuMemory is not None:
                        total += proc.usedGpuMemory / MB
                        found = True
            return total if found else None
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # noqa: BLE001 - NVML errors mean "not available"
        return None


@dataclass
class GpuProbe:
    """Reads this process's GPU memory with the best method that works here (chosen once)."""

    device: str
    method: str = "none"
    note: str = ""
    _baseline_used_mb: float = 0.0
    _read: Callable[[], float | None] | None = None

    @classmethod
    def create(cls, device: str) -> GpuProbe:
        """Call after the CUDA context exists (the driver lists a process only then)."""
        pid = os.getpid()
        probe = cls(device)
        if is_jetson():
            probe.method = "jetson-unified-rss"
            probe.note = "Jetson: CPU and GPU share memory and NVML has no per-process figure; this is the process RSS"
            probe._read = host_rss_mb
            return probe
        if smi_process_mb(pid) is not None:
            probe.method = "nvidia-smi"
            probe.note = "driver's per-process figure (nvidia-smi --query-compute-apps), sampled"
            probe._read = lambda: smi_process_mb(pid)
            return probe
        if nvml_process_mb(pid) is not None:
            probe.method = "pynvml"
            probe.note = "driver's per-process figure through NVML, sampled"
            probe._read = lambda: nvml_process_mb(pid)
            return probe
        import torch

        free, total = torch.cuda.mem_get_info(device)
        probe._baseline_used_mb = (total - free) / MB
        probe.method = "mem_get_info-delta"
        probe.note = (
            "device-wide used memory minus its value right after CUDA init (torch.cuda.mem_get_info): "
            "the driver did not list this pid; excludes the CUDA context, includes other processes' changes"
        )

        def read_delta() -> float | None:
            f, t = torch.cuda.mem_get_info(device)
            return max(0.0, (t - f) / MB - probe._baseline_used_mb)

        probe._read = read_delta
        return probe

    def read(self) -> float | None:
        if self._read is None:
            return None
        try:
            return self._read()
        except Exception:  # noqa: BLE001 - a failed reading is a missing sample
            return None


APPLICATION_PHASES = ("warm_load", "pipeline", "realtime")
"""Phases whose peak is the application's footprint: the loaded engine running the real pipeline
(not the cold build, not the bench's own preprocessed inputs held for the network-alone timing)."""


@dataclass
class MemorySampler:
    """Background sampler keeping the peak host RSS and GPU memory of each named phase.

    On a CUDA device it also keeps ``torch.cuda.max_memory_allocated`` per phase
    (the peak counter is reset at every phase boundary).
    """

    gpu: GpuProbe | None = None
    torch_device: str | None = None
    host_interval_s: float = 0.05
    gpu_interval_s: float = 0.25
    host_peaks: dict[str, float] = field(default_factory=dict)
    gpu_peaks: dict[str, float] = field(default_factory=dict)
    torch_peaks: dict[str, float] = field(default_factory=dict)
    _phase: str = "start"
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _thread: threading.Thread | None = None

    def start(self) -> MemorySampler:
        self._thread = threading.Thread(target=self._loop, name="bench-memory", daemon=True)
        self._thread.start()
        return self

    def phase(self, name: str) -> None:
        """Close the current phase with a synchronous sample and open ``name``."""
        self.sample()
        self._torch_peak(reset=True)
        with self._lock:
            self._phase = name
        self.sample()

    def _torch_peak(self, reset: bool) -> None:
        if self.torch_device is None:
            return
        import torch

        peak = torch.cuda.max_memory_allocated(self.torch_device) / MB
        with self._lock:
            self.torch_peaks[self._phase] = max(self.torch_peaks.get(self._phase, 0.0), peak)
        if reset:
            torch.cuda.reset_peak_memory_stats(self.torch_device)

    @staticmethod
    def peak_of(peaks: dict[str, float], phases: tuple[str, ...] = APPLICATION_PHASES) -> float | None:
        values = [v for k, v in peaks.items() if k in phases]
        return max(values) if values else None

    def sample(self, with_gpu: bool = True) -> None:
        rss = host_rss_mb()
        gpu = self.gpu.read() if (with_gpu and self.gpu is not None) else None
        with self._lock:
            p = self._phase
            self.host_peaks[p] = max(self.host_peaks.get(p, 0.0), rss)
            if gpu is not None:
                self.gpu_peaks[p] = max(self.gpu_peaks.get(p, 0.0), gpu)

    def _loop(self) -> None:
        next_gpu = 0.0
        while not self._stop.wait(self.host_interval_s):
            now = time.perf_counter()
            do_gpu = self.gpu is not None and now >= next_gpu
            if do_gpu:
                next_gpu = now + self.gpu_interval_s
            try:
                self.sample(with_gpu=do_gpu)
            except Exception:  # noqa: BLE001 - never let the sampler kill the case
                pass

    def stop(self) -> None:
        self.sample()
        self._torch_peak(reset=False)
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)


def dir_size_bytes(path: Path | None) -> int | None:
    if path is None or not path.is_dir():
        return None
    total = 0
    for p in path.rglob("*"):
        try:
            if p.is_file() and not p.is_symlink():
                total += p.stat().st_size
        except OSError:
            continue
    return total


def engine_info(backend: Backend) -> dict[str, Any]:
    """What a loaded backend's :attr:`~engines.backends.base.Backend.artifact` says about its engine
    (None where it has none: eager PyTorch)."""
    artifact = backend.artifact
    if artifact is None:
        return {"engine_file_bytes": None, "engine_file": None, "trt_device_memory_bytes": None, "cache_hit": None, "engine_build_s": None}
    return {
        "engine_file_bytes": artifact.size_bytes,
        "engine_file": artifact.path.name,
        "trt_device_memory_bytes": artifact.device_memory_bytes,
        "cache_hit": not artifact.built,
        "engine_build_s": artifact.build_seconds,
    }
