"""Capture thread -> queue -> batcher thread -> inference worker -> queue -> render stage.

* Files and image folders are lossless: blocking bounded queues, every frame
  reaches the sink exactly once, in order.
* Live sources keep only the newest frame (a one-slot mailbox) and count drops.
* The model runs on an :class:`~streamer.inference.InferenceWorker`, which
  builds and owns the backend on its own thread and may outlive the run (the
  bench runs many pipelines on one); the batcher thread takes frames from the
  input queue, submits them and queues the results.
* Shutdown goes through a sentinel; every blocking call waits in short slices
  and checks a shared stop event, so an exception in any stage stops the
  whole pipeline promptly instead of hanging on a full or empty queue.
* Live sources (cameras, streams, ``--realtime`` replays) are read only once
  the model is ready, so nothing is captured, and then dropped, during the load.
* Latency is counted from when a frame could first be processed: its capture,
  or the model becoming ready if that was later (a file's first frames are read
  during the load); for live sources that is always the capture.  The summary
  says which (:attr:`RunSummary.latency_basis`).
* The render stage runs on the calling (main) thread: OpenCV windows need it,
  and Ctrl-C arrives there.  It draws the annotators, converts the frame for
  the sink (:meth:`Sink.prepare`: a video file's BGR -> I420, off the writer
  thread), writes the sink and tells the observers; between frames it runs
  the :class:`Watchdog`.
* The pipeline owns every output it is handed: it opens the sink, and at the
  end finalises or aborts the sink and every observer together.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent.futures import CancelledError, Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Sequence

from engines.backends.base import Prediction
from engines.errors import ConfigError, ModelHung, PipelineError, SourceError, SourceLost, SourceTimeout, StreamerError
from streamer import queues
from streamer.gpu_frames import frame_pixels
from streamer.inference import BatchResult, InferenceWorker, LoadInfo, Recipe
from streamer.overlay import Annotator, LabelAnnotator, Result, StatsAnnotator
from streamer.queues import EOS, EndOfStream, LatestSlot
from streamer.sinks import ResultSink, Sink
from streamer.sources import Frame, Source
from streamer.stats import FpsMeter, Histogram, LatencyStats, StageTimes

log = logging.getLogger(__name__)

_SLICE = queues.SLICE_S
_HUNG_FACTOR = 20.0
"""A batch running this many times longer than the slowest one so far is a hung model ..."""
_FIRST_BATCH_S = 60.0
"""... and the first batch (lazy initialisation, a first shape to tune for) gets at least a minute."""


@dataclass(frozen=True)
class PipelineConfig:
    batch: int = 1
    topk: int = 1
    queue_size: int = 8
    max_frames: int | None = None
    stall_timeout_s: float = 10.0
    """A source that delivers no frame for this long is an error (watchdog); so is a model batch
    that runs this long, if that is also 20 times the slowest batch so far (see :class:`Watchdog`)."""
    load_timeout_s: float = 600.0
    join_timeout_s: float = 2.0
    reconnect_timeout_s: float = 60.0
    """Live sources: how long to keep trying to reconnect after the stream is lost (0: don't)."""
    max_frame_age_s: float = 1.0
    """Live sources: a frame older than this when the model is ready for it is dropped, not classified."""

    def __post_init__(self) -> None:
        if self.batch < 1:
            raise ConfigError(f"batch must be >= 1, got {self.batch}")
        if not 1 <= self.topk <= 1000:
            raise ConfigError(f"topk must be between 1 and 1000, got {self.topk}")
        if self.queue_size < 1:
            raise ConfigError(f"queue size must be >= 1, got {self.queue_size}")
        if self.max_frames is not None and self.max_frames < 1:
            raise ConfigError(f"max frames must be >= 1, got {self.max_frames}")
        if self.stall_timeout_s <= 0:
            raise ConfigError("stall timeout must be positive")
        if self.reconnect_timeout_s < 0:
            raise ConfigError("reconnect timeout must be >= 0")
        if self.max_frame_age_s <= 0:
            raise ConfigError("max frame age must be positive")


@dataclass
class _Labelled:
    frame: Frame
    prediction: Prediction


@dataclass
class RunSummary:
    frames_in: int = 0
    frames_out: int = 0
    dropped: int = 0
    unreadable: int = 0
    elapsed_s: float = 0.0
    first_frame_s: float | None = None
    """Start of the run to the first labelled frame rendered (includes model load)."""
    load_s: float | None = None
    pipeline_fps: float | None = None
    stages: dict[str, dict[str, float]] = field(default_factory=dict)
    latency: LatencyStats | None = None
    interrupted: bool = False
    backend: str = ""
    stopped_by_user: bool = False
    stale: int = 0
    """Live frames dropped because they were too old by the time the model was free."""
    reconnects: int = 0
    latency_basis: str = "capture->render"
    """What :attr:`latency` (and each observer's ``latency_ms``) measures: ``"capture->render"``
    for live sources; ``"ready->render"`` for files and folders, i.e. from the frame's capture or the
    model becoming ready, whichever is later (frames read during the load wait for it, not for the pipeline)."""
    skipped_during_load: int = 0
    """Live frames captured before the model was ready and too old once it was (not in ``dropped``):
    at most the one frame a camera gives when it is opened, since live sources are read only after the load."""
    ready_s: float | None = None
    """Start of the run to the model being ready (load and warm-up; ~0 for a worker loaded before the run)."""


class Watchdog:
    """Fails a model stuck in one batch, or a source stuck inside one read, for too long.

    A source: only time spent in ``source.read()`` counts (waiting on a full
    queue behind a slow model, or for the model to load, is not source
    silence), up to the stall timeout.  A model: only time inside one batch
    counts (not the load, not waiting for frames), up to the stall timeout or
    20 times the slowest batch so far, whichever is longer, and at least a
    minute for the first batch.  A call that never returns cannot be
    cancelled; the run stops around it and keeps what was labelled before.
    """

    def __init__(self, source: Source, worker: InferenceWorker, stall_timeout_s: float) -> None:
        self.source = source
        self.worker = worker
        self.stall_timeout_s = stall_timeout_s
        self.read_started: float | None = None
        """When the capture thread entered ``source.read()`` (None when not reading); set by the capture thread."""

    def check(self) -> None:
        """Raise :class:`ModelHung` or :class:`SourceTimeout` if a stage is stuck."""
        self._check_model()
        started = self.read_started
        if started is None:
            return
        idle = time.perf_counter() - started
        limit = self.stall_timeout_s
        if self.source.live and self.source.reconnectable:
            # A live read gives up by itself after its own timeout (FFmpeg checks it a
            # little late) and is then reconnected; only a read stuck well past it is fatal.
            limit += max(2.0, 0.5 * limit)
        if idle > limit:
            raise SourceTimeout(f"{self.source.display_name}: no frame for {idle:.1f} s")

    def _check_model(self) -> None:
        started = self.worker.batch_started
        if started is None:
            return
        busy = time.perf_counter() - started
        slowest, done = self.worker.slowest_batch_s, self.worker.batches_done
        limit = max(self.stall_timeout_s, _HUNG_FACTOR * slowest)
        if done == 0:
            limit = max(limit, _FIRST_BATCH_S)
        if busy > limit:
            before = f"; the slowest batch before took {slowest:.2f} s" if done else ""
            raise ModelHung(f"the model gave no result for {busy:.1f} s (inference hung?){before}")


class Pipeline:
    """Runs ``source`` through a model into ``sink`` and the observers; see the module docstring.

    ``model`` is an :class:`InferenceWorker` (started if need be, never closed
    here: its owner closes it) or a recipe, from which the pipeline makes a
    worker for this run and closes it at the end.  ``observers`` get every
    labelled frame after the sink (predictions file, progress, the bench's
    recorder); ``annotators`` draw on each frame before the sink (default: the
    top-k labels and the stats line).
    """

    def __init__(
        self,
        source: Source,
        sink: Sink,
        model: InferenceWorker | Recipe,
        config: PipelineConfig | None = None,
        *,
        observers: Sequence[ResultSink] = (),
        annotators: Sequence[Annotator] | None = None,
        warning: str | None = None,
    ) -> None:
        self.source = source
        self.sink = sink
        self.config = config or PipelineConfig()
        self._owns_worker = not isinstance(model, InferenceWorker)
        self.worker = InferenceWorker(model, self.config.topk) if not isinstance(model, InferenceWorker) else model
        self.observers = list(observers)
        self.annotators: list[Annotator] = (
            [LabelAnnotator(self.config.topk), StatsAnnotator()] if annotators is None else list(annotators)
        )
        self.warning = warning
        self.stop = threading.Event()
        self.times = StageTimes()
        self.latency = Histogram()
        """Capture (or model ready, if later) to render, seconds, of every frame rendered (bounded)."""
        self._ready = threading.Event()
        self._interrupt = threading.Event()
        self._ready_at: float | None = None
        """perf_counter when the model was ready for this run (set once by the batcher thread)."""
        self.summary = RunSummary()
        self.summary.latency_basis = "capture->render" if source.live else "ready->render"
        self.watchdog = Watchdog(source, self.worker, self.config.stall_timeout_s)
        self._errors: list[BaseException] = []
        self._errors_lock = threading.Lock()
        self._model_line = ""
        self._capture_thread: threading.Thread | None = None
        self._batcher_thread: threading.Thread | None = None
        self._q_in: queues.StageQueue = queue.Queue(self.config.queue_size) if not source.live else LatestSlot()
        self._q_out: "queue.Queue[_Labelled | EndOfStream]" = queue.Queue(self.config.queue_size)

    # -- plumbing ------------------------------------------------------------
    def _fail(self, exc: BaseException) -> None:
        with self._errors_lock:
            self._errors.append(exc)
        self.stop.set()

    # -- stages --------------------------------------------------------------
    def _capture(self) -> None:
        try:
            if self.source.live:
                # Read nothing until the model can take it: a live frame captured during
                # the load would only be dropped (and a --realtime replay would run ahead).
                while not self._ready.is_set():
                    if self.stop.wait(_SLICE):
                        return
            limit = self.config.max_frames
            count = 0
            while not self.stop.is_set():
                if limit is not None and count >= limit:
                    break
                self.watchdog.read_started = time.perf_counter()
                try:
                    frame = self.source.read()
                except SourceError:
                    if not (self.source.live and self.source.reconnectable):
                        raise
                    frame = None
                finally:
                    self.watchdog.read_started = None
                if frame is None:
                    if self.source.live and self.source.reconnectable and self.config.reconnect_timeout_s > 0:
                        if self._reconnect():
                            continue
                        if self.stop.is_set():
                            return
                        raise SourceLost(
                            f"{self.source.display_name}: lost, and not back within {self.config.reconnect_timeout_s:.0f} s"
                        )
                    break
                self.times.add("decode", frame.decode_s)
                count += 1
                self.summary.frames_in = count
                if not queues.put(self._q_in, frame, self.stop):
                    return
            queues.put(self._q_in, EOS, self.stop)
        except BaseException as exc:  # noqa: BLE001 - reported to the main thread
            self._fail(exc)
        finally:
            self.summary.unreadable = self.source.unreadable

    def _reconnect(self) -> bool:
        """Reopen a lost live source with exponential backoff; False if it stays away."""
        name = self.source.display_name
        lost_at = time.perf_counter()
        delay = 0.25
        attempt = 0
        log.warning("%s: stream lost; reconnecting", name)
        while not self.stop.is_set():
            if time.perf_counter() - lost_at > self.config.reconnect_timeout_s:
                return False
            attempt += 1
            try:
                self.source.reopen()
            except SourceError:
                self.stop.wait(delay)
                delay = min(delay * 2, 5.0)
                continue
            self.summary.reconnects += 1
            log.warning("%s: reconnected after %.1f s (%d attempts)", name, time.perf_counter() - lost_at, attempt)
            return True
        return False

    def _next_batch(self) -> list[Frame] | None:
        """Up to ``batch`` frames: wait for one, then take what is ready. None at the end."""
        while True:
            first = queues.get(self._q_in, self.stop)
            if first is None or isinstance(first, EndOfStream):
                return None
            if not self.source.live or time.perf_counter() - first.t_capture <= self.config.max_frame_age_s:
                break
            if self._ready_at is not None and first.t_capture < self._ready_at:
                self.summary.skipped_during_load += 1  # the frame a camera gave when it was opened
            else:
                self.summary.stale += 1  # e.g. the last frame before a lost connection
        frames = [first]
        q = self._q_in
        while len(frames) < self.config.batch and isinstance(q, queue.Queue):
            try:
                # In file mode wait briefly for the rest of the batch rather than run it part-empty.
                item = q.get(timeout=_SLICE)
            except queue.Empty:
                break
            if isinstance(item, EndOfStream):
                q.put(item)  # let the next call see the end
                break
            frames.append(item)
        return frames

    def _wait(self, future: "Future[LoadInfo] | Future[BatchResult]") -> "LoadInfo | BatchResult | None":
        """The future's result, waiting in slices; None (and the future cancelled) if the run stops first."""
        while not self.stop.is_set():
            try:
                return future.result(timeout=_SLICE)
            except FutureTimeout:
                continue
            except CancelledError:
                return None
        future.cancel()
        return None

    def _batcher(self) -> None:
        try:
            info = self._wait(self.worker.loaded_future())
            if not isinstance(info, LoadInfo):
                return
            self.summary.load_s = info.load_s
            self.summary.backend = self._model_line = info.description
            self._ready_at = time.perf_counter()
            self._ready.set()
            while not self.stop.is_set():
                frames = self._next_batch()
                if frames is None:
                    break
                result = self._wait(self.worker.submit([frame_pixels(f) for f in frames]))
                if not isinstance(result, BatchResult):
                    return
                n = len(frames)
                per = n / result.batch_size  # this run's share of a batch shared with other streams
                self.times.add("preprocess", result.preprocess_s * per, n)
                self.times.add("inference", result.inference_s * per, n)
                self.times.add("postprocess", result.postprocess_s * per, n)
                for frame, prediction in zip(frames, result.predictions):
                    if not queues.put(self._q_out, _Labelled(frame, prediction), self.stop):
                        return
            queues.put(self._q_out, EOS, self.stop)
        except BaseException as exc:  # noqa: BLE001
            self._fail(exc)

    def _render_loop(self, start: float) -> None:
        fps = FpsMeter()
        times_writes = self.sink.write_times is None
        while True:
            if self._errors:
                return
            if self._interrupt.is_set():
                raise KeyboardInterrupt
            try:
                item = self._q_out.get(timeout=_SLICE)
            except queue.Empty:
                if self.stop.is_set():
                    return
                self.watchdog.check()
                continue
            if isinstance(item, EndOfStream):
                break
            t0 = time.perf_counter()
            image = item.frame.image
            if self.summary.ready_s is None and self._ready_at is not None:
                self.summary.ready_s = self._ready_at - start
            # From when the frame could first be processed: captured, and the model ready.
            latency = t0 - max(item.frame.t_capture, self._ready_at or item.frame.t_capture)
            fps.tick(t0)
            result = Result(item.prediction, fps.fps, latency * 1000.0, self._model_line, self.warning)
            for annotator in self.annotators:
                image = annotator.annotate(image, result)
            payload = self.sink.prepare(image)  # the video file's colour conversion, here: beside the writer thread's encoding
            t1 = time.perf_counter()
            self.sink.write(payload, item.frame.name)
            t2 = time.perf_counter()
            for observer in self.observers:
                observer.write(item.frame, item.prediction, latency * 1000.0)
            self.times.add("render", t1 - t0)
            if times_writes:
                self.times.add("write", t2 - t1)
            self.latency.add(latency)
            self.summary.frames_out += 1
            if self.summary.first_frame_s is None:
                self.summary.first_frame_s = t2 - start
            if self.sink.stop_requested:
                self.summary.stopped_by_user = True
                self.stop.set()
                break

    # -- driver --------------------------------------------------------------
    def interrupt(self) -> None:
        """Stop as Ctrl-C does, from any thread: the render loop (on whichever thread runs :meth:`run`)
        raises ``KeyboardInterrupt`` at its next frame, so the outputs are finalised (several streams)."""
        self._interrupt.set()

    def run(self) -> RunSummary:
        """Run to the end of the source, an error, the user quitting, or Ctrl-C.

        Opens the sink first.  On success and on Ctrl-C the sink and observers
        are finalised (aborted if nothing was labelled before Ctrl-C); on an
        error they are discarded and a :class:`StreamerError` is raised, except
        that a lost camera or a hung model keeps what was labelled before it.
        """
        start = time.perf_counter()
        self._capture_thread = threading.Thread(target=self._capture, name="capture", daemon=True)
        self._batcher_thread = threading.Thread(target=self._batcher, name="batcher", daemon=True)
        interrupted = False
        try:
            try:
                self.sink.open(self.source.frame_size or (0, 0), self.source.fps)
                self.worker.start()
                self._batcher_thread.start()
                self._capture_thread.start()
                self._render_loop(start)
            except KeyboardInterrupt:
                interrupted = True
            except BaseException as exc:  # noqa: BLE001
                self._fail(exc)
        finally:
            self.stop.set()
            for thread in (self._capture_thread, self._batcher_thread):
                if thread.is_alive():
                    thread.join(timeout=self.config.join_timeout_s)
            if self._owns_worker:
                self.worker.close(timeout=self.config.join_timeout_s)
            if not self._capture_thread.is_alive():
                self.source.close()  # else it is inside a read; closing under it is unsafe
        return self._conclude(start, interrupted)

    def _conclude(self, start: float, interrupted: bool) -> RunSummary:
        summary = self.summary
        summary.elapsed_s = time.perf_counter() - start
        summary.interrupted = interrupted
        if isinstance(self._q_in, LatestSlot):
            summary.dropped = self._q_in.dropped + summary.stale
        summary.latency = LatencyStats.of(self.latency)
        out = summary.frames_out
        if out >= 2 and summary.first_frame_s is not None:
            span = summary.elapsed_s - summary.first_frame_s
            summary.pipeline_fps = (out - 1) / span if span > 0 else None
        try:
            self._keep_or_discard(interrupted)
        finally:
            written = self.sink.write_times  # complete now: finalising drained a writer thread
            if written is not None:
                self.times.merge("write", written)
            summary.stages = self.times.summary()
        return summary

    def _keep_or_discard(self, interrupted: bool) -> None:
        """Finalise or abort the outputs; raise the run's error (or KeyboardInterrupt) if it had one."""
        out = self.summary.frames_out
        if self._errors and not interrupted:
            error = self._errors[0]
            if isinstance(error, (SourceLost, ModelHung)) and out > 0:
                # The camera is gone for good, or the model hangs, but what was recorded before is sound: keep it.
                self._finalize_outputs()
                if isinstance(error, ModelHung):
                    raise ModelHung(f"{error}; kept the {out} frames labelled before it") from error
            else:
                self._abort_outputs()
            raise _as_streamer_error(error)
        if interrupted and out == 0:
            self._abort_outputs()  # nothing to keep
            raise KeyboardInterrupt
        self._finalize_outputs()
        if interrupted:
            raise KeyboardInterrupt

    @property
    def threads_alive(self) -> bool:
        """True if a stage thread is still inside a call it could not leave (see ``cli.entry``)."""
        threads = [self._capture_thread, self._batcher_thread, self.worker.thread if self._owns_worker else None]
        return any(t is not None and t.is_alive() for t in threads)

    def _finalize_outputs(self) -> None:
        """Finalise the sink, then each observer; the first failure aborts everything not yet finalised."""
        pending: list[Sink | ResultSink] = [self.sink, *self.observers]
        try:
            while pending:
                pending[0].finalize()
                pending.pop(0)
        except BaseException:
            for output in pending[1:]:
                output.abort()
            raise

    def _abort_outputs(self) -> None:
        outputs: list[Sink | ResultSink] = [self.sink, *self.observers]
        for output in outputs:
            try:
                output.abort()
            except Exception as exc:  # noqa: BLE001 - keep aborting the others
                log.warning("discarding %s failed: %s", type(output).__name__, exc)


def _as_streamer_error(exc: BaseException) -> StreamerError:
    if isinstance(exc, StreamerError):
        return exc
    if isinstance(exc, MemoryError):
        return PipelineError("out of host memory")
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if "out of memory" in text.lower():
        err = PipelineError(f"out of GPU memory: {text}")
    else:
        err = PipelineError(f"{type(exc).__name__}: {text}" if text else type(exc).__name__)
    err.__cause__ = exc
    return err


__all__ = [
    "Pipeline",
    "PipelineConfig",
    "RunSummary",
    "SourceError",
    "Watchdog",
]
