"""``streamer bench``: the command line.

    streamer bench [SOURCE] --model M[,M] --backends torch,onnxruntime,tensorrt,torch2trt
        --precision fp32,fp16 --device cuda --repeats R --warmup W --batch 1,8 --report DIR
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Any

from streamer.bench.config import (
    DEFAULT_VARIANTS,
    SINKS,
    WEIGHTS_AUTO,
    BenchConfig,
    ModelChoice,
    parse_int_list,
    split_list,
)
from streamer.bench.paths import display_path

SAMPLES = Path(__file__).resolve().parents[2] / "samples"
"""The samples of a source checkout; an installed package has none, and then SOURCE (and --images) must be given."""
DEFAULT_SOURCE = SAMPLES / "video" / "bigbuckbunny.mp4"
DEFAULT_IMAGES = SAMPLES / "images"
EXIT_NOT_REALTIME = 3


def add_bench_command(subparsers: argparse._SubParsersAction[Any]) -> None:
    from engines.backends import BACKEND_NAMES
    from streamer.cli import _positive_float, _positive_int, add_model_arguments

    p = subparsers.add_parser(
        "bench",
        help="measure load time, speed, memory, output change and real-time capability",
        description=(
            "Benchmark every backend and precision on SOURCE (default: the bundled sample video) and write "
            "report.md, report.json, report.csv and PNG plots to --report DIR. Each case runs in its own process. "
            "Cases that cannot run here (backend not installed, fp16 on the CPU, TensorRT without a GPU) are listed "
            "as skipped with the reason."
        ),
        conflict_handler="resolve",
    )
    p.add_argument("source", nargs="?", default=None, help="video file or image folder (default: samples/video/bigbuckbunny.mp4 of a source checkout)")
    add_model_arguments(p, multi=True)
    # Bench takes lists where run takes one value; these replace the shared options.
    p.add_argument("--model", "-m", default=None, help="model(s), comma-separated (default: alexnet, or efficientnet_lite0 when offline)")
    p.add_argument(
        "--weights",
        default="imagenet",
        help="imagenet | random | auto | PATH. auto: ImageNet weights where already on disk, else random weights "
        "(reported as 'random weights: timing only', no output-change figures) (default: imagenet)",
    )
    p.add_argument("--device", "-d", default="auto", help="device(s), comma-separated: auto | cpu | cuda | cuda:N (default: auto)")
    p.add_argument("--backends", default=",".join(BACKEND_NAMES), help=f"comma-separated (default: all: {','.join(BACKEND_NAMES)})")
    p.add_argument("--precision", "-p", default="fp32,fp16", help="comma-separated: fp32, fp16, int8 (default: fp32,fp16)")
    p.add_argument("--batch", default="1,8", help="batch sizes, comma-separated (default: 1,8)")
    p.add_argument("--repeats", "-r", type=_positive_int, default=5, help="passes over the source per measurement (default: 5)")
    p.add_argument("--warmup", "-w", type=int, default=10, help="warm-up frames before timing (default: 10)")
    p.add_argument("--report", type=Path, default=Path("bench-report"), metavar="DIR", help="output folder (default: bench-report)")
    p.add_argument("--overwrite", action="store_true", help="replace a report already in DIR")
    p.add_argument(
        "--images",
        type=Path,
        default=None,
        metavar="DIR",
        help="photographs for the output-change and reference-script parts (default: SOURCE when it is a folder of images, else samples/images)",
    )
    p.add_argument("--target-fps", type=_positive_float, default=None, help="real-time target (default: the source's FPS)")
    p.add_argument("--max-frames", type=_positive_int, default=None, help="use only the first N frames of the source")
    p.add_argument("--sink", choices=SINKS, default="video", help="pipeline output: video = H.264 file (as streamer run -o writes it) in a temp folder (write = encoding), null = discard (default: video)")
    p.add_argument(
        "--variants",
        nargs="?",
        const=",".join(DEFAULT_VARIANTS),
        default=None,
        help="add torch rows with these options: cuda_graphs, channels_last, cuda_graphs+channels_last, fused (alexnet on CUDA) "
        f"(bare --variants: {','.join(DEFAULT_VARIANTS)})",
    )
    p.add_argument("--decode-encode-baseline", action="store_true", help="also measure decode-only and encode-only FPS of the source")
    p.add_argument("--no-realtime", action="store_true", help="skip the live replay at the target rate")
    p.add_argument(
        "--no-lab-method",
        action="store_true",
        help="skip the reference script (one image at a time, as a naive script does) and the pipeline-over-images comparison",
    )
    p.add_argument(
        "--require-realtime",
        action="store_true",
        help=f"exit with status {EXIT_NOT_REALTIME} when a case with a verdict is not real-time (for CI and scripts)",
    )
    p.add_argument("--replot", type=Path, default=None, metavar="DIR", help="redraw the plots and report.md of the report in DIR from its report.json; measures nothing")
    p.add_argument("--case-timeout", type=_positive_float, default=1800.0, metavar="S", help="give up on one case after S seconds (default: 1800)")
    p.add_argument(
        "--retry-busy",
        type=int,
        default=0,
        metavar="N",
        help="on a shared machine: measure a case again, up to N times, when other processes used more than 10%% of "
        "the CPU during it, and keep the least disturbed attempt (default: 0)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress output on stderr")
    from streamer.bench.streams import add_streams_arguments

    add_streams_arguments(p)  # --streams N,...: several live streams in one process (streamer/bench/streams.py)
    p.set_defaults(func=cmd_bench)


def _models(text: str | None, weights: str) -> tuple[list[ModelChoice], list[str]]:
    from engines.models import (
        DEFAULT_MODEL,
        WeightsChoice,
        get_spec,
        imagenet_weights_available,
        resolve_weights_file,
    )
    from streamer.cli import resolve_model

    notes: list[str] = []
    if text is None and weights != WEIGHTS_AUTO:
        spec, _w, note = resolve_model(None, weights)
        if note:
            notes.append(f"No --model given and AlexNet's ImageNet weights are unavailable: {note}.")
        return [ModelChoice(spec.name, weights)], notes
    names = split_list(text or DEFAULT_MODEL, "--model")
    out = []
    for name in names:
        spec = get_spec(name)
        if weights == WEIGHTS_AUTO:
            # No download attempt: "auto" means "what this machine already has", so it is quick and offline-safe.
            if imagenet_weights_available(spec):
                out.append(ModelChoice(name, "imagenet"))
            else:
                out.append(ModelChoice(name, "random", note="its ImageNet weights are not on this machine"))
        else:
            resolve_weights_file(spec, WeightsChoice.parse(weights))
            out.append(ModelChoice(name, weights))
    return out, notes


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    from engines.backends import BACKEND_NAMES
    from engines.backends.base import PRECISIONS, resolve_device_name
    from engines.errors import ConfigError, SourceError
    from streamer.redact import redact_url
    from streamer.sources import STREAM_SCHEMES

    text = (args.source or "").strip()
    if text.lower().startswith(STREAM_SCHEMES):
        # Checked before the text becomes a Path, which folds "rtsp://" into "rtsp:/" and calls it a missing file.
        raise ConfigError(f"bench measures a video file or an image folder, not a network stream: {redact_url(text)}")
    backends = split_list(args.backends, "--backends")
    for b in backends:
        if b not in BACKEND_NAMES:
            raise ConfigError(f"unknown backend {b!r} in --backends; choose from {', '.join(BACKEND_NAMES)}")
    precisions = split_list(args.precision, "--precision")
    for prec in precisions:
        if prec not in PRECISIONS:
            raise ConfigError(f"unknown precision {prec!r}; choose from {', '.join(PRECISIONS)}")
    devices = []
    for d in split_list(args.device, "--device"):
        resolved = resolve_device_name(d)
        if resolved not in devices:
            devices.append(resolved)
    batches = parse_int_list(args.batch, "--batch")
    if args.warmup < 0:
        raise ConfigError(f"--warmup must be >= 0, got {args.warmup}")
    variants = tuple(split_list(args.variants, "--variants")) if args.variants else ()
    source = Path(args.source).expanduser() if args.source else DEFAULT_SOURCE
    if not source.exists():
        raise SourceError(f"{source}: no such file or folder" + ("" if args.source else " (no samples installed with this package; pass SOURCE)"))
    images = args.images
    if images is None:
        from streamer.sources import _image_paths_in

        images = source if source.is_dir() and _image_paths_in(source) else DEFAULT_IMAGES
        if not images.is_dir():
            raise SourceError(f"{images}: no samples installed with this package; pass --images DIR (a folder of photographs)")
    models, notes = _models(args.model, args.weights)
    command = ["streamer", "bench", display_path(source)]
    command += ["--model", ",".join(m.name for m in models), "--weights", args.weights]
    command += ["--backends", ",".join(backends), "--precision", ",".join(precisions), "--device", ",".join(devices)]
    command += ["--batch", ",".join(map(str, batches)), "--repeats", str(args.repeats), "--warmup", str(args.warmup)]
    if args.images is not None:
        command += ["--images", display_path(args.images)]
    for flag, value in (("--target-fps", args.target_fps), ("--max-frames", args.max_frames), ("--threads", args.threads), ("--workspace", args.workspace)):
        if value is not None:
            command += [flag, str(value)]
    if args.sink != "video":
        command += ["--sink", args.sink]
    if variants:
        command += ["--variants", ",".join(variants)]
    for flag, on in (
        ("--cuda-graphs", args.cuda_graphs),
        ("--channels-last", args.channels_last),
        ("--decode-encode-baseline", args.decode_encode_baseline),
        ("--no-realtime", args.no_realtime),
        ("--no-lab-method", args.no_lab_method),
        ("--require-realtime", args.require_realtime),
    ):
        if on:
            command.append(flag)
    if args.cache_dir is not None:
        command += ["--cache-dir", str(args.cache_dir)]
    if args.retry_busy:
        command += ["--retry-busy", str(args.retry_busy)]
    command += ["--report", display_path(args.report)]
    return BenchConfig(
        source=source.resolve(),
        images=images.expanduser().resolve(),
        report_dir=args.report.expanduser(),
        models=tuple(models),
        backends=tuple(backends),
        precisions=tuple(precisions),
        devices=tuple(devices),
        batches=tuple(batches),
        repeats=args.repeats,
        warmup=args.warmup,
        variants=variants,
        target_fps=args.target_fps,
        max_frames=args.max_frames,
        sink=args.sink,
        realtime=not args.no_realtime,
        lab_reference=not args.no_lab_method,
        codec_baseline=args.decode_encode_baseline,
        cache_dir=args.cache_dir.expanduser().resolve() if args.cache_dir else None,
        workspace_mb=args.workspace,
        calib_dir=args.calib.expanduser().resolve() if args.calib else None,
        threads=args.threads,
        base_cuda_graphs=args.cuda_graphs,
        base_channels_last=args.channels_last,
        case_timeout_s=args.case_timeout,
        retry_busy=args.retry_busy,
        overwrite=args.overwrite,
        command=shlex.join(command),
        notes=tuple(notes),
    )


def realtime_failure(rows: list[dict[str, Any]]) -> str | None:
    """Why ``--require-realtime`` fails for these report rows (None: every case with a verdict is real-time)."""
    judged = [r for r in rows if r["status"] in ("ok", "partial") and r.get("realtime") and r["realtime"].get("capable") is not None]
    if not judged:
        return "no case has a real-time verdict (batch 1 on a video file, without --no-realtime)"
    slow = [r for r in judged if not r["realtime"]["capable"]]
    if slow:
        which = ", ".join(f"{r.get('label') or r['key']} ({' and '.join(r['realtime'].get('failed') or ['?'])} failed)" for r in slow)
        return f"{len(slow)} of {len(judged)} cases are not real-time: {which}"
    return None


def cmd_bench(args: argparse.Namespace) -> int:
    from streamer.bench.runner import run_bench

    if getattr(args, "streams", None) is not None:
        from streamer.bench.streams import cmd_bench_streams

        return cmd_bench_streams(args)
    if args.replot is not None:
        from streamer.bench.plots import replot

        written = replot(args.replot)
        print(f"streamer: redrew {', '.join(written) or 'nothing'} and report.md in {args.replot}")
        return 0
    config = config_from_args(args)
    report = run_bench(config, progress=not args.no_progress)
    rows = report["results"]
    ok = [r for r in rows if r["status"] in ("ok", "partial")]
    print(f"streamer: bench report in {config.report_dir}/report.md ({len(ok)} of {len(rows)} cases measured)")
    for line in report.get("verdicts") or []:
        print(f"  {line}")
    if rows and not ok:
        print("streamer: error: no case could be measured; see the report's skipped/failed table", file=sys.stderr)
        return 1
    if args.require_realtime:
        problem = realtime_failure(rows)
        if problem is not None:
            print(f"streamer: error: --require-realtime: {problem}", file=sys.stderr)
            return EXIT_NOT_REALTIME
    return 0
