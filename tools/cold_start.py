"""Cold start: process start to first labelled frame of ``streamer run``, one fresh process per case.

Each case runs ``python -m streamer run SOURCE --predictions - --headless -v ...`` in a new
process; the time from spawning it to the first JSON line on its stdout is the start to the
first labelled frame as a user sees it (interpreter, imports, model load, warm-up, first frame).
The run's own summary (stderr) gives "model load", "start to model ready" and "start to first
labelled frame" counted from the pipeline's start, and the torch backend's -v log lines give
its load phases (model built, moved to the device, graph captured).

A case is ``MODEL/BACKEND/PRECISION/VARIANT[/bBATCH][/ENV=VALUE...]``, VARIANT one of eager,
cuda_graphs, fused, channels_last; e.g. ``efficientnet_lite0/torch/fp16/cuda_graphs/b8`` or
``efficientnet_lite0/torch/fp16/cuda_graphs/b8/STREAMER_TORCH_DEPTHWISE=native``.  Backends that
are not installed are reported as such without running.  ``--prime`` runs one untimed process
first, so every timed case finds the libraries in the page cache.

    python tools/cold_start.py --source bikes.mp4 --out cold.json             # the default cases
    python tools/cold_start.py --case alexnet/torch/fp16/fused --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import re
import selectors
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

VARIANT_FLAGS = {"eager": [], "cuda_graphs": ["--cuda-graphs"], "fused": ["--fused"], "channels_last": ["--channels-last"]}
SUMMARY_ROWS = {
    "model_load_s": "model load",
    "ready_s": "start to model ready",
    "first_frame_s": "start to first labelled frame",
}
PHASE_LOGS = {
    "build_s": re.compile(r"torch backend: \S+ built with \S+ weights in ([\d.]+) s"),
    "to_device_s": re.compile(r"torch backend: moved to \S+ \S+ in ([\d.]+) s"),
    "graph_capture_s": re.compile(r"torch backend: CUDA graph at batch \d+ captured in ([\d.]+) s"),
    "fused_setup_s": re.compile(r"torch backend: fused network set up and captured in ([\d.]+) s"),
}


def default_cases(gpu: bool) -> list[str]:
    out = []
    for model in ("alexnet", "efficientnet_lite0"):
        if gpu:
            for precision in ("fp32", "fp16"):
                for variant in ("eager", "cuda_graphs"):
                    out.append(f"{model}/torch/{precision}/{variant}")
            if model == "alexnet":
                out.append(f"{model}/torch/fp16/fused")
        out.append(f"{model}/onnxruntime/fp32/eager")
        out.append(f"{model}/tensorrt/fp16/eager")
        out.append(f"{model}/torch2trt/fp16/eager")
    return out


@dataclass
class Case:
    model: str
    backend: str
    precision: str
    variant: str
    batch: int = 1
    env: dict[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> "Case":
        parts = text.split("/")
        if len(parts) < 4 or parts[3] not in VARIANT_FLAGS:
            raise SystemExit(f"cold_start: case {text!r}: expected MODEL/BACKEND/PRECISION/VARIANT[/bN][/ENV=VALUE...]")
        case = cls(parts[0], parts[1], parts[2], parts[3])
        for extra in parts[4:]:
            if re.fullmatch(r"b\d+", extra):
                case.batch = int(extra[1:])
            elif "=" in extra:
                key, _, value = extra.partition("=")
                case.env[key] = value
            else:
                raise SystemExit(f"cold_start: case {text!r}: {extra!r} is neither bN nor ENV=VALUE")
        return case

    @property
    def name(self) -> str:
        env = "".join(f"/{k}={v}" for k, v in self.env.items())
        return f"{self.model}/{self.backend}/{self.precision}/{self.variant}/b{self.batch}{env}"

    def command(self, source: str, max_frames: int, weights: str) -> list[str]:
        device = "cpu" if self.backend == "onnxruntime" else "cuda"
        cmd = [sys.executable, "-m", "streamer", "run", source, "--predictions", "-", "--headless", "--no-progress"]
        cmd += ["--max-frames", str(max_frames), "--model", self.model, "--backend", self.backend, "--precision", self.precision]
        cmd += ["--device", device, "--batch", str(self.batch), "-v", *VARIANT_FLAGS[self.variant]]
        if self.model == "alexnet":
            cmd += ["--weights", weights]
        return cmd


def backend_ready(name: str) -> bool:
    from engines.backends import backend_installed

    return backend_installed(name)


def run_case(case: Case, args: argparse.Namespace) -> dict[str, Any]:
    from engines.backends import backend_installed

    row: dict[str, Any] = {"case": case.name, **{k: v for k, v in asdict(case).items() if k != "env"}, "env": case.env}
    if not backend_installed(case.backend):
        row["status"] = "not installed"
        return row
    weights = args.alexnet_weights or "random"
    cmd = case.command(args.source, args.max_frames, weights)
    env = {**os.environ, **case.env, "PYTHONUNBUFFERED": "1"}
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    first_line_s: float | None = None
    out_lines: list[bytes] = []
    err_chunks: list[bytes] = []
    sel = selectors.DefaultSelector()
    assert proc.stdout is not None and proc.stderr is not None
    sel.register(proc.stdout, selectors.EVENT_READ, "out")
    sel.register(proc.stderr, selectors.EVENT_READ, "err")
    open_streams = 2
    deadline = t0 + args.timeout
    while open_streams:
        if time.perf_counter() > deadline:
            proc.kill()
            row["status"] = "timed out"
            break
        for ready, _ in sel.select(timeout=0.5):
            data = os.read(ready.fileobj.fileno(), 65536)  # type: ignore[union-attr]
            if not data:
                sel.unregister(ready.fileobj)
                open_streams -= 1
                continue
            if ready.data == "out":
                if first_line_s is None and b"\n" in data:
                    first_line_s = time.perf_counter() - t0
                out_lines.append(data)
            else:
                err_chunks.append(data)
    rc = proc.wait()
    row["process_s"] = time.perf_counter() - t0
    row["first_labelled_frame_s"] = first_line_s
    stderr = b"".join(err_chunks).decode(errors="replace")
    row.setdefault("status", "ok" if rc == 0 and first_line_s is not None else f"exit {rc}")
    for key, label in SUMMARY_ROWS.items():
        m = re.search(re.escape(label) + r"\W+([\d.]+) s", stderr)
        row[key] = float(m.group(1)) if m else None
    for key, pattern in PHASE_LOGS.items():
        m = pattern.search(stderr)
        row[key] = float(m.group(1)) if m else None
    if row["first_frame_s"] is not None and first_line_s is not None:
        row["before_pipeline_s"] = first_line_s - row["first_frame_s"]  # interpreter + imports + setup
    if row["status"] != "ok":
        row["stderr_tail"] = stderr[-1500:]
    lines = b"".join(out_lines).decode(errors="replace").splitlines()
    if lines:
        try:
            first = json.loads(lines[0])
            row["first_prediction"] = first.get("predictions", first.get("top", first))
        except json.JSONDecodeError:
            row["first_prediction"] = lines[0][:200]
    return row


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    by_case: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_case.setdefault(row["case"], []).append(row)
    out = []
    for name, group in by_case.items():
        ok = [r for r in group if r.get("status") == "ok"]
        entry: dict[str, Any] = {"case": name, "runs": len(group), "ok": len(ok), "status": group[-1].get("status")}
        # run 1 may pay what later runs find cached (an ONNX export, the page cache): kept apart
        entry["each_run_first_labelled_frame_s"] = [r.get("first_labelled_frame_s") for r in group]
        for key in ("first_labelled_frame_s", "first_frame_s", "model_load_s", "ready_s", "before_pipeline_s", "build_s", "to_device_s", "graph_capture_s", "fused_setup_s"):
            values = [r[key] for r in ok if r.get(key) is not None]
            entry[key] = statistics.median(values) if values else None
        out.append(entry)
    return out


def markdown(summary: list[dict[str, Any]]) -> str:
    def f(v: Any) -> str:
        return f"{v:.2f}" if isinstance(v, (int, float)) else "--"

    lines = [
        "| case | process start to first labelled frame (s), median | each run, in order (s) | pipeline start to first frame (s) | model load (s) | before the pipeline (s) | build (s) | to device (s) | graph / fused setup (s) | runs ok |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for e in summary:
        if e["status"] == "not installed":
            lines.append(f"| {e['case']} | not installed here (cannot run on this machine) | | | | | | | | 0 |")
            continue
        if not e["ok"]:
            lines.append(f"| {e['case']} | {e['status']} | | | | | | | | 0/{e['runs']} |")
            continue
        setup = e.get("graph_capture_s") if e.get("graph_capture_s") is not None else e.get("fused_setup_s")
        lines.append(
            f"| {e['case']} | **{f(e['first_labelled_frame_s'])}** | {', '.join(f(v) for v in e['each_run_first_labelled_frame_s'])} | {f(e['first_frame_s'])} | {f(e['model_load_s'])} | "
            f"{f(e['before_pipeline_s'])} | {f(e['build_s'])} | {f(e['to_device_s'])} | {f(setup)} | {e['ok']}/{e['runs']} |"
        )
    return "\n".join(lines) + "\n"


def first_use(model: str, precision: str, batch: int) -> dict[str, Any]:
    """In this (fresh) process: the time of each step of a first GPU inference, and of each layer's first call."""
    t0 = time.perf_counter()
    import torch

    from engines.backends.torch_tuning import fp16_depthwise_choice, use_native_depthwise
    from engines.models import WeightsChoice, build_model, get_spec

    steps: dict[str, float] = {"import_torch_s": time.perf_counter() - t0}
    t = time.perf_counter()
    torch.zeros(1, device="cuda")
    torch.cuda.synchronize()
    steps["cuda_init_s"] = time.perf_counter() - t
    t = time.perf_counter()
    spec = get_spec(model)
    module = build_model(spec, WeightsChoice("random" if model == "alexnet" else "imagenet")).module
    steps["build_s"] = time.perf_counter() - t
    t = time.perf_counter()
    dtype = torch.float16 if precision == "fp16" else torch.float32
    module = module.to("cuda", dtype=dtype)
    if precision == "fp16" and fp16_depthwise_choice() == "native":
        use_native_depthwise(module)
    torch.cuda.synchronize()
    steps["to_device_s"] = time.perf_counter() - t
    layers: list[tuple[str, float]] = []
    starts: dict[int, float] = {}

    def pre(mod: Any, _inp: Any) -> None:
        torch.cuda.synchronize()
        starts[id(mod)] = time.perf_counter()

    def post(mod: Any, _inp: Any, _out: Any) -> None:
        torch.cuda.synchronize()
        layers.append((f"{type(mod).__name__} {getattr(mod, 'kernel_size', '')} g{getattr(mod, 'groups', '')}", time.perf_counter() - starts[id(mod)]))

    handles = []
    for sub in module.modules():
        if not list(sub.children()):
            handles.append(sub.register_forward_pre_hook(pre))
            handles.append(sub.register_forward_hook(post))
    x = torch.zeros((batch, *spec.preprocess.input_shape), device="cuda", dtype=dtype)
    t = time.perf_counter()
    with torch.inference_mode():
        module(x)
    torch.cuda.synchronize()
    steps["first_forward_s"] = time.perf_counter() - t
    for h in handles:
        h.remove()
    t = time.perf_counter()
    with torch.inference_mode():
        module(x)
    torch.cuda.synchronize()
    steps["second_forward_s"] = time.perf_counter() - t
    by_kind: dict[str, list[float]] = {}
    for name, seconds in layers:
        by_kind.setdefault(name, []).append(seconds)
    kinds = sorted(({"layer": k, "calls": len(v), "first_call_s_total": sum(v)} for k, v in by_kind.items()), key=lambda r: -float(r["first_call_s_total"]))
    return {"model": model, "precision": precision, "batch": batch, "depthwise": fp16_depthwise_choice(), "steps": steps, "layers_by_kind": kinds[:15]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source", default=None, help="video (or image folder) to label (required without --first-use)")
    ap.add_argument("--case", action="append", default=[], help="MODEL/BACKEND/PRECISION/VARIANT[/bN][/ENV=VALUE...] (repeatable; default: every backend and precision)")
    ap.add_argument("--cpu-only", action="store_true", help="default cases without the GPU ones")
    ap.add_argument("--max-frames", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=1, help="fresh processes per case")
    ap.add_argument("--prime", action="store_true", help="one untimed run first (page cache)")
    ap.add_argument("--alexnet-weights", default=None, help="--weights for alexnet cases (default: random)")
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds per process")
    ap.add_argument("--budget", type=float, default=None, help="stop starting cases after this many seconds")
    ap.add_argument("--out", type=Path, default=None, help="JSON (and a .md beside it)")
    ap.add_argument("--first-use", default=None, metavar="MODEL/PRECISION/bN", help="instead: time each step and layer of a first GPU inference in this process, print JSON")
    args = ap.parse_args()
    if args.first_use:
        model, precision, b = args.first_use.split("/")
        print(json.dumps(first_use(model, precision, int(b.lstrip("b")))))
        return
    if args.source is None:
        ap.error("--source is required")
    cases = [Case.parse(c) for c in (args.case or default_cases(gpu=not args.cpu_only))]
    start = time.perf_counter()
    rows: list[dict[str, Any]] = []
    if args.prime:
        run_case(Case("efficientnet_lite0", "onnxruntime" if args.cpu_only else "torch", "fp32", "eager"), args)
    for _ in range(args.repeats):
        for case in cases:
            if args.budget is not None and time.perf_counter() - start > args.budget and backend_ready(case.backend):
                rows.append({"case": case.name, "status": "not run (budget)"})
                continue
            row = run_case(case, args)
            rows.append(row)
            print(json.dumps({k: row.get(k) for k in ("case", "status", "first_labelled_frame_s", "first_frame_s", "model_load_s", "build_s", "to_device_s", "graph_capture_s", "fused_setup_s")}), flush=True)
            if args.out:
                args.out.write_text(json.dumps({"rows": rows}, indent=2))
    summary = summarise(rows)
    report = {
        "source": args.source,
        "max_frames": args.max_frames,
        "repeats": args.repeats,
        "primed": args.prime,
        "alexnet_weights": args.alexnet_weights or "random",
        "python": sys.version.split()[0],
        "summary": summary,
        "rows": rows,
    }
    table = markdown(summary)
    print(table)
    if args.out:
        args.out.write_text(json.dumps(report, indent=2))
        args.out.with_suffix(".md").write_text(table)


if __name__ == "__main__":
    main()
