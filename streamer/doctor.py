"""``streamer doctor``: what this machine has, what each backend would do here, and the next step when one is missing.

Run it first on a new machine (a Jetson above all).  It loads no model and builds
nothing; every probe runs in its own ``try`` and becomes one line, so the command
always finishes and exits 0.  ``--json`` prints the same facts for a machine.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

OK, MISSING, WARN, INFO = "ok", "missing", "warn", "info"
SYSTEM_TENSORRT = (Path("/usr/lib/python3/dist-packages/tensorrt"), Path(f"/usr/lib/python3.{sys.version_info.minor}/dist-packages/tensorrt"))
"""Where JetPack's python3-libnvinfer (and Debian-style packages) put the TensorRT module."""
JETSON_TRT_HINT = (
    "on a Jetson make the venv with --system-site-packages to see JetPack's python3-libnvinfer "
    "(python3 -m venv --system-site-packages .venv; sudo apt install python3-libnvinfer if it is absent)"
)


@dataclass
class Check:
    """One probe's answer: a status, one line of detail, and the next step when something is missing."""

    name: str
    status: str
    detail: str
    next_step: str | None = None
    data: dict[str, Any] = field(default_factory=dict)

    def line(self, width: int = 14) -> str:
        text = f"{self.name:<{width}} {self.detail}"
        return text + (f"; next: {self.next_step}" if self.next_step else "")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def _probe(name: str, fn: Callable[[], Check]) -> Check:
    try:
        return fn()
    except BaseException as exc:  # noqa: BLE001 - a probe must never stop the doctor (an extension may even exit)
        if isinstance(exc, KeyboardInterrupt):
            raise
        return Check(name, WARN, f"probe failed ({_first_line(exc)})")


def _present(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _dist_version(*names: str) -> str | None:
    from importlib import metadata

    for name in names:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return None


def _jetson_facts() -> Any:
    from streamer.telemetry.jetson import read_facts

    return read_facts()


# -- probes ----------------------------------------------------------------------------------------------------------
def probe_python() -> Check:
    venv = sys.prefix != sys.base_prefix
    system_site = None
    cfg = Path(sys.prefix) / "pyvenv.cfg"
    if venv and cfg.is_file():
        m = re.search(r"^include-system-site-packages\s*=\s*(\w+)", cfg.read_text(encoding="utf-8", errors="replace"), re.MULTILINE)
        system_site = bool(m and m.group(1).lower() == "true")
    where = "no venv" if not venv else ("venv with system site-packages" if system_site else "venv without system site-packages")
    return Check(
        "python", OK, f"{sys.version.split()[0]} ({sys.executable}), {where}",
        data={"version": sys.version.split()[0], "executable": sys.executable, "venv": venv, "system_site_packages": system_site},
    )


def probe_numpy() -> Check:
    import numpy

    return Check("numpy", OK, f"{numpy.__version__} ({Path(numpy.__file__).parent})", data={"version": numpy.__version__})


def _arch_support(arch_list: list[str], capability: tuple[int, int]) -> tuple[bool, str]:
    """Whether a torch built for ``arch_list`` has code that runs on ``capability``, and how."""
    major, minor = capability
    sass = [a for a in arch_list if a.startswith("sm_")]
    ptx = [a for a in arch_list if a.startswith("compute_")]
    want = f"sm_{major}{minor}"
    if want in sass:
        return True, f"native code for {want}"
    same_major = [a for a in sass if re.fullmatch(rf"sm_{major}(\d)", a) and int(a[len(f"sm_{major}"):]) <= minor]
    if same_major:
        return True, f"binary-compatible code ({same_major[-1]}) for {want}"
    older_ptx = [a for a in ptx if int(a[len("compute_"):]) <= major * 10 + minor]
    if older_ptx:
        return True, f"only PTX ({older_ptx[-1]}) for {want}: JIT-compiled at first use (slow start)"
    return False, f"no code for {want} (built for {', '.join(arch_list) or 'CPU only'})"


def probe_torch(jetson: bool = False) -> list[Check]:
    import torch

    from engines.models import torch_load_is_safe

    safe = torch_load_is_safe()
    build = f"CUDA {torch.version.cuda} build" if torch.version.cuda else "CPU-only build"
    load = "pickled weights load with weights_only=True" if safe else (
        "older than 2.6: only safetensors and hash-checked ImageNet weights load (README: 'Weights on torch older than 2.6')"
    )
    checks = [
        Check(
            "torch", OK if safe else WARN, f"{torch.__version__}, {build}; {load}",
            data={"version": torch.__version__, "cuda_build": torch.version.cuda, "safe_torch_load": safe,
                  "arch_list": list(torch.cuda.get_arch_list()) if torch.version.cuda else []},
        )
    ]
    checks.append(_probe("CUDA / GPU", lambda: probe_gpu(torch, jetson)))
    return checks


def nvidia_gpu_present(jetson: bool = False) -> bool:
    """Whether this machine has an NVIDIA GPU at all, as the OS sees it (a driver node, nvidia-smi, or a Jetson)."""
    import shutil

    return jetson or Path("/dev/nvidia0").exists() or shutil.which("nvidia-smi") is not None


def probe_gpu(torch: Any, jetson: bool = False) -> Check:
    hardware = nvidia_gpu_present(jetson)
    if not hardware and not (torch.version.cuda and torch.cuda.is_available()):
        return Check("CUDA / GPU", INFO, "no NVIDIA GPU on this machine (no /dev/nvidia0, no nvidia-smi): the CPU backends run here",
                     data={"gpus": [], "cuda_build": torch.version.cuda})
    wheel = ("NVIDIA's JetPack torch wheel (PyPI's aarch64 CUDA wheels are built for SBSA servers, not Jetson)" if jetson
             else "a CUDA build of torch from pytorch.org")
    if not torch.version.cuda:
        return Check("CUDA / GPU", MISSING, "an NVIDIA GPU is present but torch is a CPU-only build", f"install {wheel}")
    if not torch.cuda.is_available():
        return Check("CUDA / GPU", MISSING, f"an NVIDIA GPU is present but torch (CUDA {torch.version.cuda} build) cannot use it",
                     f"install {wheel}" if jetson else "check the driver (nvidia-smi) supports CUDA "
                     f"{torch.version.cuda}, or install a torch built for the driver's CUDA")
    gpus = []
    worst: Check | None = None
    arch = list(torch.cuda.get_arch_list())
    for i in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(i)
        cap = (int(props.major), int(props.minor))
        ok, how = _arch_support(arch, cap)
        gpus.append({"index": i, "name": props.name, "capability": f"{cap[0]}.{cap[1]}", "memory_gb": round(props.total_memory / 1e9, 1),
                     "sm_count": getattr(props, "multi_processor_count", None), "torch_has_code": ok, "torch_code": how})
        if not ok and worst is None:
            worst = Check("CUDA / GPU", WARN, f"GPU {i} {props.name} (compute {cap[0]}.{cap[1]}): torch has {how}",
                          f"install a torch built for sm_{cap[0]}{cap[1]} (on a Jetson Orin: NVIDIA's JetPack torch wheel; the PyPI aarch64 wheel has no sm_87)")
    detail = "; ".join(f"GPU {g['index']} {g['name']}, compute {g['capability']}, {g['memory_gb']} GB, torch: {g['torch_code']}" for g in gpus)
    if worst is not None:
        worst.data = {"gpus": gpus}
        return worst
    return Check("CUDA / GPU", OK, f"CUDA {torch.version.cuda}; {detail}", data={"gpus": gpus, "cuda": torch.version.cuda})


def _trt_missing_step(jetson: bool) -> str:
    return JETSON_TRT_HINT if jetson else "pip install tensorrt (x86-64 or SBSA Linux with an NVIDIA GPU), or TensorRT-RTX: pip install tensorrt-rtx"


def probe_tensorrt(jetson: bool) -> Check:
    if not _present("tensorrt"):
        system = next((p for p in SYSTEM_TENSORRT if p.is_dir()), None)
        if system is not None and sys.prefix != sys.base_prefix:
            return Check("TensorRT", MISSING, f"not importable: the system's TensorRT is at {system}, but this venv does not see the "
                         "system site-packages", "recreate the venv with --system-site-packages (python3 -m venv --system-site-packages .venv)",
                         data={"system_tensorrt": str(system)})
        return Check("TensorRT", MISSING, "not importable (module tensorrt)", _trt_missing_step(jetson))
    try:
        import tensorrt
    except Exception as exc:  # noqa: BLE001 - present but broken (a missing libnvinfer, a CUDA mismatch)
        return Check("TensorRT", MISSING, f"module tensorrt is installed but does not import ({_first_line(exc)})",
                     "install the TensorRT libraries matching its Python package (JetPack ships both; on x86 pip install tensorrt)")

    version = getattr(tensorrt, "__version__", None) or _dist_version("tensorrt", "tensorrt-cu12", "tensorrt-cu13") or "?"
    return Check("TensorRT", OK, f"{version} ({Path(getattr(tensorrt, '__file__', '') or '?').parent})", data={"version": version})


def probe_tensorrt_rtx() -> Check:
    if not _present("tensorrt_rtx"):
        return Check("TensorRT-RTX", INFO, "not importable (module tensorrt_rtx); optional: TensorRT is enough")
    import tensorrt_rtx

    version = getattr(tensorrt_rtx, "__version__", None) or _dist_version("tensorrt-rtx", "tensorrt_rtx") or "?"
    return Check("TensorRT-RTX", OK, f"{version}", data={"version": version})


def probe_torch2trt() -> Check:
    if not _present("torch2trt"):
        return Check("torch2trt", INFO, "not importable; optional (only --backend torch2trt uses it)",
                     "install it from source if you want that backend: github.com/NVIDIA-AI-IOT/torch2trt (needs TensorRT)")
    version = _dist_version("torch2trt") or "?"
    return Check("torch2trt", OK, f"{version} (it reports 0.5.0 before and after its TensorRT-10 rewrite)", data={"version": version})


def probe_onnxruntime() -> Check:
    if not _present("onnxruntime"):
        return Check("ONNX Runtime", MISSING, "not importable", "pip install 'streamer[onnx]' (onnx, onnxruntime, onnxscript)")
    import onnxruntime

    providers = list(onnxruntime.get_available_providers())
    onnx = _dist_version("onnx")
    detail = f"{onnxruntime.__version__}, providers: {', '.join(providers) or 'none'}; onnx {onnx or 'not installed'}"
    step = None if onnx else "pip install 'streamer[onnx]' (the ONNX export needs onnx and onnxscript)"
    return Check("ONNX Runtime", OK if onnx else WARN, detail, step,
                 data={"version": onnxruntime.__version__, "providers": providers, "onnx": onnx})


def probe_triton() -> Check:
    """Triton Inference Server: the client (``--backend triton --url``) and PyTriton (``streamer serve``)."""
    client = _dist_version("tritonclient") if _present("tritonclient") else None
    server = _dist_version("nvidia-pytriton") if _present("pytriton") else None
    detail = (f"client tritonclient {client}" if client else "client not installed") + (
        f"; server nvidia-pytriton {server}" if server else "; server (streamer serve) not installed")
    if client is None:
        step = "optional: pip install 'tritonclient[grpc,http]' for --backend triton; streamer serve needs nvidia-pytriton in its own venv (README, Serving on Triton)"
        return Check("Triton", INFO, detail, step, data={"client": None, "server": server})
    return Check("Triton", OK, detail, data={"client": client, "server": server})


def opencv_build_flags(build_information: str) -> dict[str, str | None]:
    """``cv2.getBuildInformation()`` -> {"GStreamer": "YES (1.22.0)" | "NO", "FFMPEG": ...} (None if not listed)."""
    out: dict[str, str | None] = {}
    for key in ("GStreamer", "FFMPEG"):
        m = re.search(rf"^\s*{key}:\s*(.+?)\s*$", build_information, re.MULTILINE)
        out[key] = m.group(1) if m else None
    return out


def probe_opencv(jetson: bool) -> Check:
    import cv2

    flags = opencv_build_flags(cv2.getBuildInformation())
    gst = (flags["GStreamer"] or "not listed").split()[0]
    ffmpeg = (flags["FFMPEG"] or "not listed").split()[0]
    where = Path(getattr(cv2, "__file__", "") or "?").parent
    step = None
    if gst != "YES":
        step = ("--gst pipelines and csi:// need an OpenCV with GStreamer: keep JetPack's system OpenCV "
                "(venv with --system-site-packages, no opencv-python in it)") if jetson else (
                "only needed for --gst pipelines: use a system OpenCV built with GStreamer (e.g. Debian's python3-opencv) in a --system-site-packages venv")
    return Check("OpenCV", OK if gst == "YES" or not jetson else WARN, f"{cv2.__version__} ({where}), GStreamer {gst}, FFmpeg {ffmpeg}", step,
                 data={"version": cv2.__version__, "gstreamer": gst == "YES", "ffmpeg": ffmpeg == "YES", "path": str(where)})


def probe_jetson(facts: Any) -> Check:
    from streamer.telemetry.jetson import startup_line

    if facts is None:
        return Check("Jetson", INFO, "not a Jetson", data={"jetson": False})
    line = startup_line(facts) or "jetson: facts unreadable"
    step = None if facts.clocks_locked else "sudo jetson_clocks before timing (steady clocks)"
    return Check("Jetson", OK if facts.clocks_locked else WARN, line[len("jetson: "):], step, data={"jetson": True, **facts.as_dict()})


# -- backends ----------------------------------------------------------------------------------------------------------
def backend_verdicts(checks: dict[str, Check], jetson: bool) -> tuple[list[Check], dict[str, Any]]:
    """One line per backend: installed here, would ``--backend auto`` pick it, and why not."""
    from engines.backends import BACKEND_NAMES, backend_installed, choose_auto_backend

    auto: dict[str, Any] = {}
    try:
        name, device = choose_auto_backend("auto")
        auto = {"backend": name, "device": device}
    except BaseException as exc:  # noqa: BLE001 - even the choice must not stop the doctor
        if isinstance(exc, KeyboardInterrupt):
            raise
        auto = {"backend": None, "device": None, "error": _first_line(exc)}
    gpu = checks.get("CUDA / GPU")
    cuda = bool(gpu and gpu.status == OK)
    out: list[Check] = []
    for backend in BACKEND_NAMES:
        installed = _safe_bool(lambda: backend_installed(backend))
        picked = auto.get("backend") == backend
        step = None
        if picked:
            status, why = OK, f"--backend auto picks it here (on {auto['device']})"
        elif not installed:
            status = MISSING
            why = "not installed"
            step = {
                "onnxruntime": "pip install 'streamer[onnx]'",
                "tensorrt": _trt_missing_step(jetson) + "; and pip install 'streamer[tensorrt]'",
                "torch2trt": "install torch2trt from source (github.com/NVIDIA-AI-IOT/torch2trt) and TensorRT",
                "torch": "pip install torch",
            }.get(backend)
        else:
            status = INFO
            why = {
                "torch": "installed; auto picks it on a CUDA GPU without TensorRT, or on the CPU without ONNX Runtime",
                "onnxruntime": "installed; auto picks it on the CPU only (on a GPU TensorRT or torch comes first)",
                "tensorrt": "importable, but auto picks it only with a CUDA GPU" + ("" if cuda else " and none is visible here"),
                "torch2trt": "installed; auto never picks it: ask for it with --backend torch2trt" + ("" if cuda else " (needs a CUDA GPU)"),
            }.get(backend, "installed")
        if backend == "onnxruntime" and installed and "ONNX Runtime" in checks:
            providers = checks["ONNX Runtime"].data.get("providers") or []
            why += f"; providers {', '.join(p.removesuffix('ExecutionProvider') for p in providers) or 'none'}"
        out.append(Check(backend, status, why, step, data={"installed": installed, "auto": picked}))
    triton = checks.get("Triton")
    client = bool(triton and triton.data.get("client"))
    out.append(
        Check(
            "triton", INFO if client else MISSING,
            "client installed; a client of a Triton server (--backend triton --url grpc://HOST:PORT, from streamer serve); auto never picks it"
            if client else "not installed (a client of a Triton server: --backend triton --url grpc://HOST:PORT)",
            None if client else "pip install 'tritonclient[grpc,http]'",
            data={"installed": client, "auto": False},
        )
    )  # fmt: skip
    return out, auto


def _safe_bool(fn: Callable[[], bool]) -> bool:
    try:
        return bool(fn())
    except Exception:  # noqa: BLE001
        return False


def diagnose() -> dict[str, Any]:
    """Every probe's answer; never raises."""
    facts = None
    try:
        facts = _jetson_facts()
    except Exception:  # noqa: BLE001
        facts = None
    jetson = facts is not None
    checks: list[Check] = [_probe("python", probe_python), _probe("numpy", probe_numpy)]
    torch_checks = _probe_many("torch", lambda: probe_torch(jetson))
    checks += torch_checks
    checks += [
        _probe("TensorRT", lambda: probe_tensorrt(jetson)),
        _probe("TensorRT-RTX", probe_tensorrt_rtx),
        _probe("torch2trt", probe_torch2trt),
        _probe("ONNX Runtime", probe_onnxruntime),
        _probe("Triton", probe_triton),
        _probe("OpenCV", lambda: probe_opencv(jetson)),
        _probe("Jetson", lambda: probe_jetson(facts)),
    ]
    by_name = {c.name: c for c in checks}
    try:
        backends, auto = backend_verdicts(by_name, jetson)
    except Exception as exc:  # noqa: BLE001
        backends, auto = [Check("backends", WARN, f"probe failed ({_first_line(exc)})")], {"backend": None, "device": None}
    return {"checks": checks, "backends": backends, "auto": auto}


def _probe_many(name: str, fn: Callable[[], list[Check]]) -> list[Check]:
    try:
        return fn()
    except BaseException as exc:  # noqa: BLE001
        if isinstance(exc, KeyboardInterrupt):
            raise
        return [Check(name, MISSING if isinstance(exc, ImportError) else WARN, f"probe failed ({_first_line(exc)})",
                      "pip install torch" if isinstance(exc, ImportError) else None)]


def render_text(result: dict[str, Any]) -> str:
    lines = ["streamer doctor: what this machine has", ""]
    lines += [c.line() for c in result["checks"]]
    lines += ["", "backends:"]
    lines += ["  " + c.line(12) for c in result["backends"]]
    auto = result["auto"]
    lines += ["", f"--backend auto here: {auto['backend']} on {auto['device']}" if auto.get("backend") else
              f"--backend auto here: cannot tell ({auto.get('error', 'unknown')})"]
    return "\n".join(lines) + "\n"


def render_json(result: dict[str, Any]) -> str:
    return json.dumps(
        {"checks": [asdict(c) for c in result["checks"]], "backends": [asdict(c) for c in result["backends"]], "auto": result["auto"]},
        indent=2, default=str,
    ) + "\n"


def cmd_doctor(args: argparse.Namespace) -> int:
    result = diagnose()
    sys.stdout.write(render_json(result) if args.json else render_text(result))
    sys.stdout.flush()
    return 0


def add_doctor_command(sub: Any) -> None:
    """Register ``streamer doctor`` on the CLI's subparsers."""
    p = sub.add_parser("doctor", help="what this machine has and what each backend would do here (run it first)",
                       description="Print which TensorRT, TensorRT-RTX, torch2trt, ONNX Runtime, CUDA/GPU, torch, OpenCV and "
                                   "Jetson facts this machine has, what --backend auto would pick, and the next step when one is missing.")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_doctor, skip_torch_check=True)
