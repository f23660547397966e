#!/usr/bin/env python3
"""Run the real ``streamer build`` path for every model x precision and record what TensorRT(-RTX) did.

    PYTHONPATH=$PWD python tools/trt_rtx_check.py --out DIR [--module tensorrt_rtx] [--batch 4]
        [--models m1,m2] [--precisions fp32,fp16,int8] [--calib samples/images]

Each case is ``streamer build --model M --precision P --batch B --weights W``
run in this process through :func:`streamer.cli.main` (the engines' own code:
ONNX export, TensorRT's parser and builder, the store, deserialisation), with
a fresh cache folder under ``DIR/cache``.  Weights: the packaged ImageNet ones
where the model has them on disk (efficientnet_lite0), else ``random`` (no
download).  int8 calibrates on ``--calib`` (default ``samples/images``).

Written per case: ``DIR/<model>-<precision>.json`` with ``parsed``, ``built``,
``build_seconds``, ``plan_bytes``, ``deserialized`` and ``reason`` (the
runtime's own words when it refused), the exit status and the one stderr line;
then ``DIR/results.json`` (all cases, the module, its version and the GPU) and
``DIR/results.md`` (a table to quote).  ``--module tensorrt_rtx`` (the default)
makes ``import tensorrt`` fail in this process so that the engines use
TensorRT for RTX even where TensorRT is installed too; ``--module tensorrt``
checks TensorRT itself.  Exit status 0 when every case ran (whatever its
outcome), 2 when the module cannot be imported.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import re
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # the checkout's engines/ and streamer/ when run as a script

BUILT_RE = re.compile(r"TensorRT built (?P<onnx>\S+) \((?P<precision>\w+)\) in (?P<seconds>[0-9.]+) s: (?P<bytes>[0-9]+) bytes")


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def _gpu() -> dict[str, Any]:
    import torch

    if not torch.cuda.is_available():
        return {"cuda": False}
    props = torch.cuda.get_device_properties(0)
    return {
        "cuda": True,
        "name": props.name,
        "compute_capability": f"{props.major}.{props.minor}",
        "sm_count": props.multi_processor_count,
        "memory_mib": props.total_memory >> 20,
        "cuda_version": torch.version.cuda,
    }


def _weights(model: str) -> str:
    from engines.models import get_spec, imagenet_weights_available

    spec = get_spec(model)
    return "imagenet" if spec.packaged_weights is not None and imagenet_weights_available(spec) else "random"


def run_case(model: str, precision: str, batch: int, out: Path, calib: Path) -> dict[str, Any]:
    """``streamer build`` for one case, in this process; what it did, from its log and its stderr line."""
    from streamer import cli

    cache = out / "cache"
    weights = _weights(model)
    argv = ["build", "--model", model, "--precision", precision, "--batch", str(batch), "--weights", weights,
            "--cache-dir", str(cache)]  # fmt: skip
    if precision == "int8":
        argv += ["--calib", str(calib)]
    records = _Records()
    root = logging.getLogger("engines.backends.tensorrt")  # streamer sets "engines" to WARNING
    old_level = root.level
    old_handlers = logging.getLogger().handlers[:]  # streamer's main replaces them with one on our stderr
    root.addHandler(records)
    root.setLevel(logging.INFO)
    stderr, stdout = io.StringIO(), io.StringIO()
    start = time.perf_counter()
    try:
        with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(stdout):
            code = cli.main(argv)
    finally:
        root.removeHandler(records)
        root.setLevel(old_level)
        logging.getLogger().handlers[:] = old_handlers
    seconds = time.perf_counter() - start
    errors = [line for line in stderr.getvalue().splitlines() if line.startswith("streamer")]
    error = errors[-1] if errors else None
    built = [m for m in (BUILT_RE.search(line) for line in records.lines) if m]
    parser_rejected = bool(error and "ONNX parser rejected" in error)
    refused_before = bool(error and ("not available" in error or "needs" in error) and not built)
    reason = None
    if error and "could not deserialize it" in error:
        reason = error.split("could not deserialize it", 1)[1].lstrip(": ").strip()
    elif error:
        reason = error.removeprefix("streamer: error: ")
    return {
        "model": model,
        "precision": precision,
        "batch": batch,
        "weights": weights,
        "argv": ["streamer", *argv],
        "exit_status": code,
        "parsed": None if refused_before else not parser_rejected,
        "built": bool(built),
        "build_seconds": float(built[-1]["seconds"]) if built else None,
        "plan_bytes": int(built[-1]["bytes"]) if built else None,
        "deserialized": code == 0,
        "reason": reason,
        "stdout": stdout.getvalue().strip().splitlines(),
        "seconds": round(seconds, 2),
    }


def _markdown(summary: dict[str, Any]) -> str:
    gpu = summary["gpu"]
    lines = [
        f"# {summary['module']} {summary['version']} on {gpu.get('name', 'no GPU')} "
        f"(compute capability {gpu.get('compute_capability', '?')})",
        "",
        f"`{summary['command']}`, {summary['date']}",
        "",
        "| model | precision | parsed | built | build s | plan | deserialized | reason |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for c in summary["cases"]:
        plan = f"{c['plan_bytes'] / 1e6:.1f} MB" if c["plan_bytes"] else "-"
        secs = f"{c['build_seconds']:.1f}" if c["build_seconds"] is not None else "-"
        parsed = "-" if c["parsed"] is None else ("yes" if c["parsed"] else "no")
        reason = (c["reason"] or "").replace("|", "\\|")
        lines.append(
            f"| {c['model']} | {c['precision']} | {parsed} | {'yes' if c['built'] else 'no'} | {secs} | {plan} | "
            f"{'yes' if c['deserialized'] else 'no'} | {reason} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    from engines.models import model_names

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="folder for the per-case JSON and the summary")
    ap.add_argument("--module", choices=("tensorrt_rtx", "tensorrt"), default="tensorrt_rtx")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--models", default=",".join(model_names()))
    ap.add_argument("--precisions", default="fp32,fp16,int8")
    ap.add_argument("--calib", type=Path, default=ROOT / "samples" / "images")
    args = ap.parse_args(argv)
    if args.module == "tensorrt_rtx":
        sys.modules["tensorrt"] = None  # type: ignore[assignment]  # `import tensorrt` fails: RTX only
    from engines.backends.tensorrt.util import tensorrt_info
    from engines.errors import BackendUnavailable

    try:
        info = tensorrt_info()
    except BackendUnavailable as exc:
        print(f"trt_rtx_check: {exc}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    cases = []
    for model in args.models.split(","):
        for precision in args.precisions.split(","):
            case = run_case(model, precision, args.batch, args.out, args.calib)
            (args.out / f"{model}-{precision}.json").write_text(json.dumps(case, indent=2) + "\n")
            cases.append(case)
            print(f"{model} {precision}: built={case['built']} deserialized={case['deserialized']} {case['reason'] or ''}")
    summary = {
        "module": info.module,
        "version": info.version,
        "gpu": _gpu(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": "python tools/trt_rtx_check.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "cases": cases,
    }
    (args.out / "results.json").write_text(json.dumps(summary, indent=2) + "\n")
    (args.out / "results.md").write_text(_markdown(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
