#!/usr/bin/env python3
"""Parse ONNX files with TensorRT for RTX and build them; print one JSON report.

Meant to be run on a GPU machine, from a checkout (it imports only the project's
``engines/backends/tensorrt/util.py``, which imports no TensorRT until asked)::

    python tools/trt_rtx_parse_check.py model.onnx [more.onnx ...] \\
        [--compute-capability SM86 ...] [--max-batch 4] [--workspace-mb 1024] [--out report.json]

For every file it reports: whether TensorRT-RTX's ``OnnxParser`` accepted it
(and every parser error if not), whether ``build_serialized_network``
produced a plan, the build time, the plan's size, and whether
``Runtime.deserialize_cuda_engine`` could load that plan on this machine.  A
deserialization failure is reported as such (``"deserialized": false`` with
the runtime's log), never hidden: an ahead-of-time plan for another compute
capability, or a GPU TensorRT-RTX does not support, fails there.
Exit status: 0 if every file parsed, built and deserialized; 1 otherwise;
2 if TensorRT-RTX cannot be imported.

How the Python bindings are exposed (checked against the PyPI wheels,
TensorRT-RTX 1.7.1.116, Nov 2026):

* ``tensorrt-rtx-cu13-libs`` installs the package ``tensorrt_rtx_libs``: the
  shared libraries (TensorRT-RTX runtime and ONNX parser) and a small loader.
  It has no Python API of its own.
* ``tensorrt-rtx-cu13-bindings`` installs ``tensorrt_rtx_bindings``: a pybind11
  module ``tensorrt_rtx_bindings/tensorrt_rtx.so`` whose ``__init__`` first
  ``import tensorrt_rtx_libs`` (to load the libraries) and then re-exports
  everything (``Builder``, ``OnnxParser``, ``Runtime``, ...,
  ``__version__``).
* ``import tensorrt_rtx`` - the name NVIDIA's samples use - comes from the
  ``tensorrt-rtx`` / ``tensorrt-rtx-cu13`` front package, which re-exports
  the bindings.  This script tries ``tensorrt_rtx`` first and falls back to
  ``tensorrt_rtx_bindings`` (the same accessor the tensorrt backend uses,
  :func:`engines.backends.tensorrt.util.import_tensorrt`), and says which one it used.
* The 1.7.1.116 bindings name compute capabilities CURRENT, SM75, SM80, SM86,
  SM89, SM120 and SM121 (Turing to Blackwell RTX parts; no SM90, so an H100
  is refused).  Networks are strongly typed; there is no implicit int8
  calibration.  (From the wheel's exported names; not run here.)
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout's engines/, when run as a script
from engines.backends.tensorrt.util import dims as _dims  # noqa: E402
from engines.backends.tensorrt.util import import_tensorrt  # noqa: E402
from engines.errors import BackendUnavailable  # noqa: E402

RTX_MODULES = ("tensorrt_rtx", "tensorrt_rtx_bindings")


def make_logger(trt: Any, messages: list[dict[str, str]]) -> Any:
    severity_names = {
        trt.ILogger.Severity.INTERNAL_ERROR: "internal_error",
        trt.ILogger.Severity.ERROR: "error",
        trt.ILogger.Severity.WARNING: "warning",
        trt.ILogger.Severity.INFO: "info",
        trt.ILogger.Severity.VERBOSE: "verbose",
    }

    class Collector(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)

        def log(self, severity: Any, msg: str) -> None:
            level = severity_names.get(severity, str(severity))
            if level in ("internal_error", "error", "warning"):
                messages.append({"severity": level, "message": msg})

    return Collector()


def parser_errors(parser: Any) -> list[dict[str, Any]]:
    out = []
    for i in range(parser.num_errors):
        error = parser.get_error(i)
        item: dict[str, Any] = {"text": str(error)}
        for field in ("desc", "node", "node_name", "node_operator", "code"):
            getter = getattr(error, field, None)
            if callable(getter):
                try:
                    value = getter()
                except Exception as exc:  # noqa: BLE001 - report what we can
                    value = f"<{type(exc).__name__}>"
                item[field] = value if isinstance(value, (int, str)) else str(value)
        out.append(item)
    return out


def dims(value: Any) -> list[int]:
    return list(_dims(value))


def check_file(trt: Any, path: Path, args: argparse.Namespace) -> dict[str, Any]:
    messages: list[dict[str, str]] = []
    logger = make_logger(trt, messages)
    report: dict[str, Any] = {"file": str(path), "parsed": False, "built": False, "deserialized": None}
    try:
        data = path.read_bytes()
    except OSError as exc:
        report["error"] = f"cannot read: {exc}"
        return report
    report["onnx_bytes"] = len(data)

    builder = trt.Builder(logger)
    flags = 0
    if hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    start = time.perf_counter()
    ok = parser.parse(data, str(path))
    report["parse_seconds"] = round(time.perf_counter() - start, 3)
    report["parse_errors"] = parser_errors(parser)
    report["parsed"] = bool(ok)
    if not ok:
        report["log"] = messages
        return report
    report["inputs"] = [
        {"name": network.get_input(i).name, "shape": dims(network.get_input(i).shape)} for i in range(network.num_inputs)
    ]
    report["outputs"] = [
        {"name": network.get_output(i).name, "shape": dims(network.get_output(i).shape)}
        for i in range(network.num_outputs)
    ]

    config = builder.create_builder_config()
    if args.workspace_mb is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, args.workspace_mb << 20)
    if args.compute_capability:
        if not hasattr(config, "set_compute_capability"):
            report["error"] = "this TensorRT-RTX has no IBuilderConfig.set_compute_capability"
            return report
        config.num_compute_capabilities = len(args.compute_capability)
        for index, name in enumerate(args.compute_capability):
            cc = getattr(trt.ComputeCapability, name.upper(), None)
            if cc is None or not config.set_compute_capability(cc, index):
                known = [n for n in dir(trt.ComputeCapability) if n.isupper()]
                report["error"] = f"compute capability {name!r} refused (known: {', '.join(known)})"
                report["log"] = messages
                return report
        report["compute_capabilities"] = [c.upper() for c in args.compute_capability]
    profile = None
    for tensor in report["inputs"]:
        shape = tensor["shape"]
        if -1 not in shape:
            continue
        if -1 in shape[1:]:
            report["error"] = f"input {tensor['name']} has a dynamic non-batch dimension {shape}; not handled here"
            return report
        profile = profile or builder.create_optimization_profile()
        rest = shape[1:]
        profile.set_shape(tensor["name"], [1, *rest], [args.max_batch, *rest], [args.max_batch, *rest])
    if profile is not None:
        config.add_optimization_profile(profile)
        report["profile_max_batch"] = args.max_batch

    start = time.perf_counter()
    try:
        plan = builder.build_serialized_network(network, config)
    except Exception as exc:  # noqa: BLE001 - reported, not raised
        plan = None
        report["error"] = f"build raised {type(exc).__name__}: {exc}"
    report["build_seconds"] = round(time.perf_counter() - start, 3)
    if plan is None:
        report["log"] = messages
        return report
    blob = bytes(plan)
    report["built"] = True
    report["serialized_bytes"] = len(blob)

    runtime = trt.Runtime(logger)
    before = len(messages)
    try:
        engine = runtime.deserialize_cuda_engine(blob)
        report["deserialized"] = engine is not None
        if engine is None:
            report["deserialize_error"] = "deserialize_cuda_engine returned None"
    except Exception as exc:  # noqa: BLE001
        report["deserialized"] = False
        report["deserialize_error"] = f"{type(exc).__name__}: {exc}"
    if not report["deserialized"]:
        report["deserialize_log"] = messages[before:]
    report["log"] = messages
    return report


def gpu_description() -> dict[str, Any]:
    try:
        import torch
    except ImportError:
        return {"torch": None}
    if not torch.cuda.is_available():
        return {"cuda": False}
    props = torch.cuda.get_device_properties(0)
    return {"cuda": True, "name": props.name, "compute_capability": f"{props.major}.{props.minor}", "cuda_version": torch.version.cuda}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("onnx", nargs="+", type=Path, help="ONNX files to parse and build")
    ap.add_argument("--compute-capability", action="append", default=[], metavar="SMxx",
                    help="build ahead of time for this compute capability (repeatable; default: the current GPU)")
    ap.add_argument("--max-batch", type=int, default=1, help="profile max for a dynamic batch dimension (default: 1)")
    ap.add_argument("--workspace-mb", type=int, default=None, help="builder workspace limit")
    ap.add_argument("--out", type=Path, default=None, help="also write the report to this file")
    args = ap.parse_args(argv)

    report: dict[str, Any] = {"python": platform.python_version(), "platform": platform.platform(), "gpu": gpu_description()}
    try:
        module_name, trt = import_tensorrt(RTX_MODULES)
    except BackendUnavailable as exc:
        report["error"] = f"TensorRT-RTX cannot be imported: {exc}"
        print(json.dumps(report, indent=2))
        return 2
    report["module"] = module_name
    report["version"] = str(getattr(trt, "__version__", "unknown"))
    report["files"] = [check_file(trt, path, args) for path in args.onnx]
    report["all_ok"] = all(f.get("parsed") and f.get("built") and f.get("deserialized") for f in report["files"])
    text = json.dumps(report, indent=2, default=str)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")
    return 0 if report["all_ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
