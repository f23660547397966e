"""Several sources in one run: ``streamer run SRC1 SRC2 ... -o OUTDIR/`` (or ``--sources FILE``).

Each source is one :class:`~streamer.pipeline.Pipeline` (its own capture and
batcher threads, its own queues: lossless for files and folders, newest frame
wins for live sources), and its render loop runs on a thread of its own, named
``stream-NAME``.  Every pipeline submits to ONE
:class:`~streamer.inference.InferenceWorker` built with ``max_batch`` /
``max_wait_s``, which runs the requests of all streams waiting together as one
batch (Triton's dynamic batcher, DeepStream's ``nvstreammux``).

* Names: every stream gets a short unique name (:func:`stream_names`: ``cam0``,
  ``bikes``, ``bikes-2``, ``host-path`` for a URL, without credentials), safe in a
  file name and a URL; its outputs are named after it: ``OUTDIR/NAME.mp4`` (a
  folder ``OUTDIR/NAME/`` of images for an image source), ``--predictions DIR/``
  -> ``DIR/NAME.jsonl``, ``-o http://HOST:PORT/`` -> one page listing the
  streams, each at ``/s/NAME/`` (:class:`~streamer.sinks.http.HttpHub`).
* A source that cannot be opened, or a stream that fails, is one line on
  stderr naming the stream; the others go on; the exit status is non-zero at
  the end.  Ctrl-C / SIGTERM (on the main thread) interrupts every pipeline,
  each finalises its own outputs.
* ``--show`` is refused with several sources: OpenCV windows belong to the main
  thread, and the live view shows every stream on one page instead.

The Python API (``streamer.run``) stays single-source.
"""

from __future__ import annotations

import contextlib
import logging
import re
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence, TextIO
from urllib.parse import urlsplit

from engines.errors import ConfigError, SourceError, StreamerError

if TYPE_CHECKING:
    import argparse

    from engines.backends.base import Prediction
    from streamer.inference import InferenceWorker
    from streamer.pipeline import Pipeline, RunSummary
    from streamer.sinks import ResultSink, Sink
    from streamer.sinks.http import HttpHub
    from streamer.sources import Frame, Source

log = logging.getLogger(__name__)

NAME_MAX = 48
"""Longest stream name (before a ``-N`` suffix): file names and URLs stay short."""
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


# -- sources and names ------------------------------------------------------------------------
def read_sources_file(path: Path) -> list[str]:
    """``--sources FILE``: one source a line; ``#`` starts a comment line; blank lines are skipped.

    A line is taken whole (spaces inside a path or a pipeline are kept); only a line whose
    first non-blank character is ``#`` is a comment, since ``#`` may appear in a URL.
    """
    try:
        text = path.expanduser().read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"--sources {path}: no such file") from None
    except IsADirectoryError:
        raise ConfigError(f"--sources {path}: is a folder; give a text file with one source a line") from None
    except UnicodeDecodeError:
        raise ConfigError(f"--sources {path}: not a UTF-8 text file") from None
    except OSError as exc:
        raise ConfigError(f"--sources {path}: cannot read ({exc.strerror or exc})") from None
    sources = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            sources.append(line)
    if not sources:
        raise ConfigError(f"--sources {path}: no sources in it (one a line; '#' comments and blank lines are skipped)")
    return sources


def _safe(text: str) -> str:
    name = _UNSAFE.sub("-", text).strip(".-_")
    name = re.sub(r"-{2,}", "-", name)
    return name[:NAME_MAX].strip(".-_")


def base_name(source: str, gst: bool = False) -> str:
    """A short name for one source (not yet unique): ``cam0``, ``bikes``, ``host-path``, ``gst``."""
    text = source.strip()
    if gst:
        return "gst"
    if re.fullmatch(r"\d+", text):
        return f"cam{int(text)}"
    match = re.fullmatch(r"/dev/video(\d+)", text)
    if match:
        return f"cam{match.group(1)}"
    match = re.fullmatch(r"csi://(\d+)", text, re.I)
    if match:
        return f"csi{match.group(1)}"
    if re.match(r"^[a-z][a-z0-9+.-]*://", text, re.I):
        try:
            parts = urlsplit(text)
            host = parts.hostname or ""
            port = parts.port
        except ValueError:
            host, port = "", None
        segments = [p for p in parts.path.split("/") if p] if host else []
        last = Path(segments[-1]).stem if segments else ""
        # The host (and a port other than the scheme's usual one) and the last path part; never credentials or a query.
        pieces = [host.replace(".", "-")] + ([str(port)] if port and port not in (80, 443, 554) else []) + ([last] if last else [])
        return _safe("-".join(p for p in pieces if p)) or "stream"
    path = Path(text).expanduser()
    if any(ch in path.name for ch in "*?["):  # a glob: its folder
        path = path.parent
    name = path.stem if path.suffix and not text.endswith(("/", "\\")) else path.name
    return _safe(name) or "stream"


def stream_names(sources: Sequence[str], gst: bool = False) -> list[str]:
    """One unique name per source, in order: the second ``bikes`` is ``bikes-2`` (compared case-blind,
    for case-insensitive file systems)."""
    names: list[str] = []
    taken: set[str] = set()
    bases = [base_name(s, gst) for s in sources]
    reserved = {b.lower() for b in bases}
    for base in bases:
        name, n = base, 1
        while name.lower() in taken or (n > 1 and name.lower() in reserved):
            n += 1
            name = f"{base}-{n}"
        taken.add(name.lower())
        names.append(name)
    return names


# -- outputs ------------------------------------------------------------------------------------
_CODEC_EXTENSION = {"vp9": ".webm", "vp8": ".webm", "mjpeg": ".avi"}


def video_extension(codec: str | None) -> str:
    """The per-stream video file's extension for ``--codec`` (``.mp4`` unless the codec needs another)."""
    return _CODEC_EXTENSION.get(codec or "", ".mp4")


def _is_folder_output(text: str) -> bool:
    from streamer.sinks.http import looks_like_http_output

    if looks_like_http_output(text):
        return False
    path = Path(text).expanduser()
    return text.endswith(("/", "\\")) or path.is_dir() or path.suffix == ""


class _Lines:
    """Shared by the streams' terminal observers: one lock, so lines from several threads never interleave."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream
        self.lock = threading.Lock()

    def emit(self, line: str) -> None:
        from engines.errors import SinkError

        out = self._stream if self._stream is not None else sys.stdout
        with self.lock:
            try:
                out.write(line + "\n")
                out.flush()
            except BrokenPipeError:
                raise SinkError("stdout was closed (broken pipe)") from None
            except OSError as exc:
                raise SinkError(f"stdout: write failed ({exc.strerror or exc})") from None


class NamedLabels:
    """A :class:`ResultSink` for one stream of a headless run: ``NAME frame 12: tabby 0.41`` on stdout."""

    def __init__(self, name: str, lines: _Lines, with_name: bool = False) -> None:
        self.name = name
        self._lines = lines
        self.with_name = with_name

    def write(self, frame: "Frame", prediction: "Prediction", latency_ms: float) -> None:
        from streamer.sinks.terminal import label_line

        self._lines.emit(f"{self.name} {label_line(frame, prediction, self.with_name)}")

    def finalize(self) -> None:
        pass

    def abort(self) -> None:
        pass


class NamedJsonLines(NamedLabels):
    """``--predictions -`` with several streams: the predictions file's JSON lines with ``"stream": NAME`` first."""

    def write(self, frame: "Frame", prediction: "Prediction", latency_ms: float) -> None:
        import json

        from streamer.sinks.predictions import prediction_record

        self._lines.emit(json.dumps({"stream": self.name, **prediction_record(frame, prediction, latency_ms)}))


@dataclass
class Stream:
    """One source of a multi-stream run, and what became of it."""

    name: str
    text: str
    source: "Source | None" = None
    pipeline: "Pipeline | None" = None
    summary: "RunSummary | None" = None
    error: str | None = None
    exit_code: int = 0
    interrupted: bool = False
    thread: threading.Thread | None = None
    outputs: list[str] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return self.error is not None


@dataclass(frozen=True)
class MultiResult:
    streams: list[Stream]
    elapsed_s: float
    batches: int
    frames_batched: int
    interrupted: bool

    @property
    def mean_batch(self) -> float | None:
        return self.frames_batched / self.batches if self.batches else None


# -- the run ------------------------------------------------------------------------------------
def decode_threads_for(streams: int) -> int | None:
    """FFmpeg threads per decoder when ``streams`` decode in one process: the cores shared among them
    (None for one stream: OpenCV's default, one per core)."""
    if streams <= 1:
        return None
    import os

    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return max(1, cores // streams)


SWITCH_INTERVAL_ENV = "STREAMER_SWITCH_INTERVAL_MS"


def switch_interval_s() -> float | None:
    """Python's thread switch interval for a several-stream run (``sys.setswitchinterval``), from
    ``$STREAMER_SWITCH_INTERVAL_MS``; None: Python's own (5 ms)."""
    import math
    import os

    text = os.environ.get(SWITCH_INTERVAL_ENV, "").strip()
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"${SWITCH_INTERVAL_ENV}: expected milliseconds, got {text!r}") from None
    if not math.isfinite(value) or not 0.01 <= value <= 100:
        raise ConfigError(f"${SWITCH_INTERVAL_ENV}: expected 0.01 to 100 ms, got {text}")
    return value / 1000.0


class MultiRun:
    """Run several pipelines on one shared :class:`InferenceWorker` until every stream ends.

    ``streams`` already have their pipelines (built on ``worker``).  :meth:`run` starts the
    worker and one thread per stream, waits for them on the calling thread in short slices
    and, on ``KeyboardInterrupt`` there (Ctrl-C, SIGTERM through ``cli.main``), interrupts
    every pipeline so each finalises its own outputs.  The worker is closed at the end.
    """

    def __init__(
        self, streams: list[Stream], worker: "InferenceWorker", join_timeout_s: float = 2.0, close_worker: bool = True,
        switch_interval_s: float | None = None,
    ) -> None:  # fmt: skip
        self.streams = streams
        self.worker = worker
        self.join_timeout_s = join_timeout_s
        self.close_worker = close_worker
        """False: the worker outlives the run (the bench runs several on one)."""
        self.switch_interval_s = switch_interval_s
        """Python's thread switch interval while the streams run (None: leave it as it is)."""
        self.interrupted = False

    def _wait_for(self, running: list[Stream]) -> None:
        """Until every stream's thread has ended (stop signals only interrupt the streams meanwhile:
        see :meth:`_signals_interrupt_streams`; leaving early would close the shared worker under
        streams still finalising their outputs)."""
        while True:
            try:
                alive = [s.thread for s in running if s.thread is not None and s.thread.is_alive()]
                if not alive:
                    return
                alive[0].join(timeout=0.1)
            except KeyboardInterrupt:  # a handler that raises anyway (not ours): same as a signal
                self.interrupt()

    @contextlib.contextmanager
    def _signals_interrupt_streams(self) -> Iterator[None]:
        """While the streams run, Ctrl-C / SIGTERM / SIGHUP interrupt every stream and raise nothing.

        A ``KeyboardInterrupt`` raised by a signal handler lands on whatever bytecode the main thread
        runs next, which may lie outside any ``try`` (Python 3.11 checks for signals at a loop's
        backward jump): it escaped the wait loop about one run in five on a loaded machine and closed
        the shared worker under a live stream.  So each stop signal whose handler is Python's (the
        CLI's, or Python's default Ctrl-C handler) is wrapped: the wrapper interrupts the streams, then
        calls the previous handler (it keeps its own record: the CLI ignores later signals) and swallows
        the ``KeyboardInterrupt`` it raises.  Off the main thread signals cannot be handled here: no-op.
        """
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        import signal

        previous: dict[int, Any] = {}

        def on_signal(signum: int, frame: Any) -> None:
            self.interrupt()
            handler = previous.get(signum)
            if callable(handler):
                try:
                    handler(signum, frame)
                except KeyboardInterrupt:
                    pass

        for name in ("SIGINT", "SIGTERM", "SIGHUP"):
            signum = getattr(signal, name, None)
            if signum is None:
                continue
            handler = signal.getsignal(signum)
            if callable(handler):
                previous[signum] = handler
                signal.signal(signum, on_signal)
        try:
            yield
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def _run_one(self, stream: Stream) -> None:
        assert stream.pipeline is not None
        try:
            stream.summary = stream.pipeline.run()
        except KeyboardInterrupt:
            stream.interrupted = True
            stream.summary = stream.pipeline.summary
        except StreamerError as exc:
            stream.error, stream.exit_code = _one_line(exc), exc.exit_code
            stream.summary = stream.pipeline.summary
        except BaseException as exc:  # noqa: BLE001 - one line, the others go on
            stream.error, stream.exit_code = f"{type(exc).__name__}: {_one_line(exc)}", 1
            stream.summary = stream.pipeline.summary
        if stream.error is not None and self._load_error_quietly() is None:  # a failed load is one line for the run
            _say(f"streamer: error: stream {stream.name}: {stream.error}")

    def _load_error_quietly(self) -> BaseException | None:
        try:
            return self.load_error()
        except StreamerError:  # the worker is closed: no load error to report here
            return None

    def load_error(self) -> BaseException | None:
        """The shared model's load error, once it failed (every stream fails with it)."""
        if self.worker.thread is None:
            return None
        future = self.worker.loaded_future()
        if not future.done() or future.cancelled():
            return None
        return future.exception()

    def interrupt(self) -> None:
        self.interrupted = True
        for stream in self.streams:
            if stream.pipeline is not None:
                stream.pipeline.interrupt()

    def run(self) -> MultiResult:
        start = time.perf_counter()
        running = [s for s in self.streams if s.pipeline is not None]
        error: BaseException | None = None
        batches0 = self.worker.batches_done
        interval = sys.getswitchinterval()
        if self.switch_interval_s is not None:
            sys.setswitchinterval(self.switch_interval_s)
        with contextlib.ExitStack() as restore, self._signals_interrupt_streams():
            restore.callback(sys.setswitchinterval, interval)
            try:
                try:
                    self.worker.start()
                    for stream in running:
                        stream.thread = threading.Thread(target=self._run_one, args=(stream,), name=f"stream-{stream.name}", daemon=True)
                        stream.thread.start()
                except KeyboardInterrupt:
                    self.interrupt()  # the streams already started finalise what they labelled
                self._wait_for(running)
                error = self.load_error()
            finally:
                if self.close_worker:
                    self.worker.close(timeout=self.join_timeout_s)
        if error is not None:
            raise error if isinstance(error, StreamerError) else _model_error(error)
        frames = sum(s.summary.frames_out for s in running if s.summary is not None)
        return MultiResult(self.streams, time.perf_counter() - start, self.worker.batches_done - batches0, frames, self.interrupted)


def _model_error(exc: BaseException) -> StreamerError:
    from engines.errors import PipelineError

    err = PipelineError(f"the model failed to load: {type(exc).__name__}: {_one_line(exc)}")
    err.__cause__ = exc
    return err


def _one_line(exc: BaseException) -> str:
    from streamer.redact import redact_text

    text = str(exc).strip()
    return redact_text(text.splitlines()[0] if text else type(exc).__name__)


def _say(text: str) -> None:
    try:
        print(text, file=sys.stderr, flush=True)
    except (OSError, ValueError, AttributeError):
        pass


# -- the command ----------------------------------------------------------------------------------
def sources_of(args: "argparse.Namespace") -> list[str]:
    """Every source of ``streamer run``: the positional ones, then ``--sources FILE``'s."""
    sources: list[str] = ([args.source] if args.source is not None else []) + list(getattr(args, "more_sources", None) or [])
    if getattr(args, "sources_file", None) is not None:
        sources += read_sources_file(args.sources_file)
    return sources


def add_multi_arguments(inputs: "argparse._ActionsContainer", performance: "argparse._ActionsContainer") -> None:
    """``streamer run``'s options for several sources (the positional SOURCE itself is in ``cli``)."""
    from streamer.cli import _positive_int

    inputs.add_argument("more_sources", nargs="*", metavar="SOURCE", help="more sources: several streams in one run (then -o is a folder or a live view)")
    inputs.add_argument("--sources", dest="sources_file", type=Path, default=None, metavar="FILE", help="read sources from FILE, one a line ('#' comments, blank lines skipped)")
    performance.add_argument("--max-batch", type=_positive_int, default=None, metavar="N", help="several sources: most frames in one batch across streams (default: streams x --batch, at most 64; 8 with --backend triton)")
    performance.add_argument("--max-wait-ms", type=_non_negative_float, default=0.0, metavar="MS", help="several sources: how long a batch waits for other streams' frames (default: 0, take what is ready)")


def _non_negative_float(text: str) -> float:
    import argparse
    import math

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text}")
    return value


def is_multi(args: "argparse.Namespace") -> bool:
    return len(sources_of(args)) > 1 or getattr(args, "sources_file", None) is not None


def cmd_run_multi(args: "argparse.Namespace") -> int:
    """``streamer run`` with several sources (see the module docstring); returns the exit status."""
    import contextlib
    from dataclasses import replace

    from streamer.cli import (
        EXIT_INTERRUPTED,
        _annotators,
        backend_options_from_args,
        pipeline_config_from_args,
        run_model_from_args,
        source_options_from_args,
    )
    from streamer.inference import InferenceWorker, freeze_heap
    from streamer.overlay import StreamNameAnnotator
    from streamer.pipeline import Pipeline
    from streamer.sources import open_source

    texts = sources_of(args)
    if args.show:
        raise ConfigError(
            f"--show takes one source ({len(texts)} given): OpenCV windows belong to one thread; "
            "watch every stream on one page with -o http://127.0.0.1:8080/"
        )
    if args.gst_output:
        raise ConfigError("--gst-output takes one source; with several, -o is a folder (OUTDIR/) or a live view (http://HOST:PORT/)")
    for output in args.output or []:
        from streamer.sinks.http import looks_like_http_output

        if not looks_like_http_output(output) and not _is_folder_output(output):
            raise ConfigError(
                f"-o {output}: with several sources -o is a folder (each stream writes OUTDIR/NAME{video_extension(args.codec)}) "
                "or a live view (http://HOST:PORT/)"
            )
    folders_given = [str(Path(o).expanduser().resolve()) for o in args.output or [] if not _looks_http(o)]
    if len(set(folders_given)) < len(folders_given):
        raise ConfigError("-o: the same folder given twice; each output needs its own path")
    predictions = args.predictions
    if predictions is not None and str(predictions) != "-" and not _is_folder_output(str(predictions)):
        raise ConfigError(f"--predictions {predictions}: with several sources give a folder (each stream writes DIR/NAME.jsonl) or '-'")
    if args.token is not None and not any(_looks_http(o) for o in args.output or []):
        raise ConfigError("--token applies to a live view (-o http://HOST:PORT/)")
    config = pipeline_config_from_args(args)
    json_to_stdout = predictions is not None and str(predictions) == "-"
    info = sys.stderr if json_to_stdout else sys.stdout
    source_options = source_options_from_args(args, args.device)
    if source_options.decode_threads is None:
        source_options = replace(source_options, decode_threads=decode_threads_for(len(texts)))
    names = stream_names(texts, gst=args.gst)
    streams = [Stream(name, text) for name, text in zip(names, texts)]
    with contextlib.ExitStack() as until_the_pipelines_own_them:
        # Open every source first (a bad one is one line, the others go on), then build the outputs:
        # cheap checks, nothing written; a bad output (one that exists, without --overwrite) stops the run.
        for stream in streams:
            try:
                stream.source = open_source(stream.text, source_options)
            except (SourceError, ConfigError) as exc:
                stream.error, stream.exit_code = _one_line(exc), exc.exit_code
                _say(f"streamer: error: stream {stream.name}: {stream.error}")
                continue
            until_the_pipelines_own_them.callback(stream.source.close)
        opened = [s for s in streams if s.source is not None]
        if not opened:
            raise SourceError(f"none of the {len(streams)} sources could be opened")
        # A Triton server batches up to its own --max-batch (8 by default): the client's batches stay within it unless told.
        most = 8 if args.backend == "triton" else 64
        max_batch = max(args.batch, args.max_batch or min(most, max(1, len(opened)) * args.batch))
        options = backend_options_from_args(args, batch=max_batch)
        model = run_model_from_args(args, options, config)
        worker = InferenceWorker(model.recipe, args.topk, max_batch=max_batch, max_wait_s=args.max_wait_ms / 1000.0)
        worker.on_loaded(freeze_heap)  # no full garbage collection stops every stream to walk the loaded model
        folders = [o for o in args.output or [] if not _looks_http(o)]
        if predictions is not None and not json_to_stdout:
            folders.append(str(predictions))
        for folder in folders:
            _make_folder(Path(folder).expanduser())
        hub = _make_hub(args, [s.name for s in opened], info)
        lines = _Lines()
        for stream in opened:
            assert stream.source is not None
            sink, observers = _stream_outputs(args, stream, hub, lines, json_to_stdout)
            annotators = _annotators(args)
            if not args.no_stats or not args.no_labels:
                annotators.insert(0, StreamNameAnnotator(stream.name))
            stream.pipeline = Pipeline(stream.source, sink, worker, model.config, observers=observers, annotators=annotators, warning=model.warning)
        until_the_pipelines_own_them.pop_all()
    where = ", ".join(f"{s.name} ({s.source.display_name})" for s in opened if s.source is not None)
    print(
        f"streamer: {model.spec.name} on {model.backend} {args.precision} {model.device}; {len(opened)} streams, "
        f"batches of up to {max_batch} across them: {where}",
        file=info, flush=True,
    )  # fmt: skip
    try:
        result = MultiRun(streams, worker, switch_interval_s=switch_interval_s()).run()
    finally:
        if hub is not None:
            hub.stop()
    if not args.no_summary:
        with contextlib.redirect_stdout(info):
            try:
                print_multi_summary(result)
            except (OSError, ValueError):
                pass
    failed = [s for s in streams if s.failed]
    if result.interrupted:
        kept = sum(s.summary.frames_out for s in streams if s.summary is not None)
        _say(f"streamer: interrupted; finalised {len(opened) - len(failed)} streams' outputs with {kept} frames in all")
        return EXIT_INTERRUPTED
    if failed:
        _say(f"streamer: error: {len(failed)} of {len(streams)} streams failed: {', '.join(s.name for s in failed)}")
        return max(s.exit_code for s in failed) or 1
    return 0


def _make_folder(folder: Path) -> None:
    """An output folder of several streams: created if missing (as an image folder output is)."""
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"{folder}: exists and is not a folder (with several sources -o and --predictions are folders)")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"{folder}: cannot create output folder ({exc.strerror or exc})") from None


def _looks_http(text: str) -> bool:
    from streamer.sinks.http import looks_like_http_output

    return looks_like_http_output(text)


def _make_hub(args: "argparse.Namespace", names: list[str], info: TextIO) -> "HttpHub | None":
    from streamer.sinks.http import HttpHub, parse_http_output

    views = [o for o in args.output or [] if _looks_http(o)]
    if len(views) > 1:
        raise ConfigError("with several sources give one live view (-o http://HOST:PORT/); it lists every stream")
    if not views:
        return None
    return HttpHub(parse_http_output(views[0]), names, token=args.token, announce=sys.stderr)


def _stream_outputs(
    args: "argparse.Namespace", stream: Stream, hub: "HttpHub | None", lines: _Lines, json_to_stdout: bool
) -> "tuple[Sink, list[ResultSink]]":
    """One stream's sink (its file in each -o folder, its view on the hub) and observers."""
    from streamer.sinks import NullSink, PredictionsWriter, TeeSink, VideoOptions, make_sink

    assert stream.source is not None
    source = stream.source
    sinks: list[Sink] = []
    observers: list[ResultSink] = []
    video = VideoOptions(codec=args.codec, crf=args.crf, preset=args.preset)
    path = Path(stream.text).expanduser()
    input_path = path if not args.gst and path.is_file() else None
    for output in args.output or []:
        if _looks_http(output):
            continue
        folder = Path(output).expanduser()
        target = folder / stream.name if source.kind == "images" else folder / f"{stream.name}{video_extension(args.codec)}"
        shown = f"{target}/" if source.kind == "images" else str(target)
        sinks.append(
            make_sink(
                shown, False, overwrite=args.overwrite, fourcc=args.fourcc, timeout_s=args.timeout,
                video=video, input_path=input_path, keep_pts=not args.realtime,
            )
        )  # fmt: skip
        stream.outputs.append(shown)
    if hub is not None:
        view = hub.view(stream.name)
        sinks.append(view)
        observers.append(view.events)
        stream.outputs.append(f"{hub.address.key}s/{stream.name}/")
    if args.predictions is not None:
        if json_to_stdout:
            observers.append(NamedJsonLines(stream.name, lines))
        else:
            target = Path(args.predictions).expanduser() / f"{stream.name}.jsonl"
            observers.append(PredictionsWriter(target, overwrite=args.overwrite))
            stream.outputs.append(str(target))
    sink: Sink = NullSink() if not sinks else sinks[0] if len(sinks) == 1 else TeeSink(sinks)
    if not sinks and not json_to_stdout and args.predictions is None:
        observers.append(NamedLabels(stream.name, lines, with_name=source.kind == "images"))  # headless: labels on stdout
    return sink, observers


# -- the summary ----------------------------------------------------------------------------------
def print_multi_summary(result: MultiResult) -> None:
    """One row per stream (frames, drops, FPS, latency, status) and a total row."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"streamer: {len(result.streams)} streams")
    for col in ("stream", "in / out / dropped", "FPS", "latency p50 / p99 ms", "status"):
        table.add_column(col, justify="left" if col in ("stream", "status") else "right", no_wrap=col != "latency p50 / p99 ms")
    total_in = total_out = total_drop = 0
    for s in result.streams:
        summary = s.summary
        status = "failed" if s.failed else "interrupted" if s.interrupted else "ok"
        if summary is None:
            table.add_row(s.name, "--", "--", "--", status)
            continue
        total_in += summary.frames_in
        total_out += summary.frames_out
        total_drop += summary.dropped
        lat = summary.latency
        table.add_row(
            s.name,
            f"{summary.frames_in} / {summary.frames_out} / {summary.dropped}",
            f"{summary.pipeline_fps:.1f}" if summary.pipeline_fps else "--",
            f"{lat.p50_ms:.1f} / {lat.p99_ms:.1f}" if lat is not None else "--",
            status,
        )  # fmt: skip
    firsts = [s.summary.first_frame_s for s in result.streams if s.summary is not None and s.summary.first_frame_s is not None]
    span = result.elapsed_s - min(firsts) if firsts else 0.0  # from the first labelled frame: the load is not in it
    fps = (total_out - 1) / span if span > 0 and total_out > 1 else None
    failed = sum(1 for s in result.streams if s.failed)
    table.add_row(
        "total",
        f"{total_in} / {total_out} / {total_drop}",
        f"{fps:.1f}" if fps else "--",
        "--",
        f"{len(result.streams) - failed} of {len(result.streams)} ok",
    )  # fmt: skip
    Console().print(table)
    batch = f"; mean batch {result.mean_batch:.1f} frames in {result.batches} batches" if result.mean_batch else ""
    Console().print(f"{result.elapsed_s:.1f} s{batch} (one model for every stream)")


__all__ = [
    "MultiResult",
    "MultiRun",
    "NamedJsonLines",
    "NamedLabels",
    "Stream",
    "add_multi_arguments",
    "base_name",
    "cmd_run_multi",
    "is_multi",
    "print_multi_summary",
    "read_sources_file",
    "sources_of",
    "stream_names",
    "video_extension",
]
