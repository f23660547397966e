"""Backend registry: names to classes, imported lazily.

``create_backend("tensorrt", ...)`` imports TensorRT only then, and a missing
optional package becomes :class:`BackendUnavailable` naming the extra to install.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING

from engines.errors import BackendUnavailable, ConfigError

if TYPE_CHECKING:
    from engines.backends.base import Backend, BackendOptions
    from engines.models import ModelSpec, WeightsChoice

# name -> (module, class, python packages it needs, pip extra)
_BACKENDS: dict[str, tuple[str, str, tuple[str, ...], str | None]] = {
    "torch": ("engines.backends.torch_backend", "TorchBackend", ("torch",), None),
    "onnxruntime": ("engines.backends.onnxruntime_backend", "OnnxRuntimeBackend", ("onnxruntime", "onnx"), "onnx"),
    "tensorrt": ("engines.backends.tensorrt", "TensorRTBackend", ("tensorrt", "onnx"), "tensorrt"),
    "torch2trt": ("engines.backends.torch2trt_backend", "Torch2TRTBackend", ("torch2trt", "tensorrt"), "torch2trt"),
}
BACKEND_NAMES: tuple[str, ...] = tuple(_BACKENDS)
"""Backends that run the network in this process (what the bench, build and serve choose from)."""
# Backends whose network runs elsewhere: a client of a server (``streamer run --backend triton --url ...``).
_REMOTE: dict[str, tuple[str, str, tuple[str, ...], str | None]] = {
    "triton": ("engines.backends.triton_backend", "TritonBackend", ("tritonclient",), "triton"),
}
REMOTE_BACKEND_NAMES: tuple[str, ...] = tuple(_REMOTE)


def _module_present(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def tensorrt_module_present() -> bool:
    """True if ``tensorrt`` (or TensorRT for RTX) can be imported (no import is done)."""
    from engines.backends.tensorrt.util import MODULE_NAMES

    return any(_module_present(name) for name in MODULE_NAMES)


def backend_installed(name: str) -> bool:
    """Whether the Python packages a backend needs are importable (no import is done)."""
    entry = _BACKENDS.get(name) or _REMOTE.get(name)
    if entry is None:
        return False
    needs = entry[2]
    return all(tensorrt_module_present() if n == "tensorrt" else _module_present(n) for n in needs)


def available_backends() -> list[str]:
    return [n for n in _BACKENDS if backend_installed(n)]


def backend_class(name: str) -> type["Backend"]:
    entry = _BACKENDS.get(name) or _REMOTE.get(name)
    if entry is None:
        raise ConfigError(f"unknown backend {name!r}; choose one of: auto, {', '.join(_BACKENDS)}")
    module_name, class_name, _needs, extra = entry
    if not backend_installed(name):
        hint = f"pip install 'streamer[{extra}]'" if extra else "pip install torch"
        if name == "torch2trt":
            hint = "install torch2trt from source (github.com/NVIDIA-AI-IOT/torch2trt) and TensorRT"
        elif name == "tensorrt":
            hint = "install TensorRT's Python package (JetPack ships it; on x86: pip install tensorrt)"
        raise BackendUnavailable(f"backend {name!r} is not installed: {hint}")
    module = importlib.import_module(module_name)
    cls: type[Backend] = getattr(module, class_name)
    return cls


def choose_auto_backend(device: str) -> tuple[str, str]:
    """``--backend auto``: (backend, device) following the documented order.

    TensorRT where it imports and a CUDA GPU is present, else PyTorch on CUDA,
    else ONNX Runtime on the CPU (measured faster than PyTorch on 2 cores, see
    docs/benchmarks), else PyTorch on the CPU.
    """
    from engines.backends.base import resolve_device_name

    resolved = resolve_device_name(device)
    if resolved.startswith("cuda"):
        if backend_installed("tensorrt"):
            return "tensorrt", resolved
        return "torch", resolved
    if backend_installed("onnxruntime"):
        return "onnxruntime", resolved
    return "torch", resolved


def create_backend(
    name: str, spec: "ModelSpec", weights: "WeightsChoice", options: "BackendOptions"
) -> "Backend":
    """Instantiate (not load) a backend by name; ``auto`` picks one."""
    from dataclasses import replace

    if name == "auto":
        name, device = choose_auto_backend(options.device)
        options = replace(options, device=device)
    return backend_class(name)(spec, weights, options)
