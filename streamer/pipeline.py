"""Capture thread -> bounded queue -> inference worker -> bounded queue -> render stage.

* Files and image folders are lossless: blocking bounded queues, every frame
  reaches the sink exactly once, in order.
* Live sources keep only the newest frame (a one-slot mailbox) and count drops.
* The inference worker builds and owns the backend on its own thread.
* Shutdown goes through a sentinel; every blocking call waits in short slices
  and checks a shared stop event, so an exception in any stage stops the
  whole pipeline promptly instead of hanging on a full or empty queue.
* The render stage runs on the calling (main) thread: OpenCV windows need it,
  and Ctrl-C arrives there.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from engines.backends.base import Backend, Prediction, postprocess
from engines.errors import ConfigError, ModelHung, PipelineError, SinkError, SourceError, SourceLost, SourceTimeout, StreamerError
from streamer.overlay import FrameInfo, LabelAnnotator, StatsAnnotator
from streamer.sinks import Sink, ThreadedSink
from streamer.sources import Frame, Source
from streamer.stats import FpsMeter, LatencyStats, StageTimes

log = logging.getLogger(__name__)

_SLICE = 0.05  # seconds each blocking call waits before checking the stop event
_HUNG_FACTOR = 20.0
"""A batch running this many times longer than the slowest one so far is a hung model ..."""
_FIRST_BATCH_S = 60.0
"""... and the first batch (lazy initialisation, a first shape to tune for) gets at least a minute."""


class _EndOfStream:
    """Sentinel that ends the stream."""


EOS = _EndOfStream()


@dataclass(frozen=True)
class PipelineConfig:
    batch: int = 1
    topk: int = 1
    queue_size: int = 8
    max_frames: int | None = None
    stall_timeout_s: float = 10.0
    """A source that delivers no frame for this long is an error (watchdog); so is a model batch
    that runs this long, if that is also 20 times the slowest batch so far (see ``Pipeline._watchdog``)."""
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


class LatestSlot:
    """A one-item mailbox: ``put`` replaces what is there and counts the drop.

    The end-of-stream marker never replaces a frame: it is delivered after
    the frame still waiting, so a live source's last frame is not lost.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._item: Any = None
        self._has = False
        self._ended = False
        self.dropped = 0

    def put(self, item: Any) -> None:
        with self._cond:
            if isinstance(item, _EndOfStream):
                self._ended = True
            elif not self._ended:
                if self._has:
                    self.dropped += 1
                self._item, self._has = item, True
            self._cond.notify()

    def get(self, timeout: float) -> Any:
        with self._cond:
            if not (self._has or self._ended) and not self._cond.wait_for(lambda: self._has or self._ended, timeout):
                raise queue.Empty
            if self._has:
                item, self._item, self._has = self._item, None, False
                return item
            return EOS


@dataclass
class Result:
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


class PredictionsWriter:
    """Writes one JSON object per frame to a temporary file, renamed on finalize."""

    def __init__(self, path: Path, overwrite: bool = False) -> None:
        from streamer.sinks import check_output_path

        check_output_path(path, overwrite)
        self.path = path
        self.temp_path = path.with_name(f".{path.name}.partial-{os.getpid()}")
        try:
            self._fh = open(self.temp_path, "w", encoding="utf-8")
        except OSError as exc:
            raise SinkError(f"{path}: cannot write predictions ({exc.strerror})") from exc

    def write(self, frame: Frame, prediction: Prediction, latency_ms: float) -> None:
        record = {
            "frame": frame.index,
            "source": frame.name,
            "topk": prediction.as_json(),
            "latency_ms": round(latency_ms, 3),
        }
        try:
            self._fh.write(json.dumps(record) + "\n")
        except OSError as exc:
            raise SinkError(f"{self.path}: write failed ({exc.strerror})") from exc

    def finalize(self) -> None:
        if self._fh.closed:
            return
        try:
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self._fh.close()
        except OSError as exc:
            self.abort()
            raise SinkError(f"{self.path}: write failed ({exc.strerror or exc}); predictions discarded") from exc
        os.replace(self.temp_path, self.path)

    def abort(self) -> None:
        try:
            self.temp_path.unlink()  # first: closing may fail (a full disk flushes on close)
        except FileNotFoundError:
            pass
        if not self._fh.closed:
            try:
                self._fh.close()
            except OSError:
                pass


ProgressCallback = Callable[[int], None]


class Pipeline:
    """Runs ``source`` through a backend into ``sink``; see the module docstring."""

    def __init__(
        self,
        source: Source,
        sink: Sink,
        backend_factory: Callable[[], Backend],
        config: PipelineConfig | None = None,
        predictions: PredictionsWriter | None = None,
        warning: str | None = None,
        on_frame: ProgressCallback | None = None,
        on_loaded: Callable[[Backend], None] | None = None,
    ) -> None:
        self.source = source
        self.sink = sink
        self.backend_factory = backend_factory
        self.config = config or PipelineConfig()
        self.predictions = predictions
        self.warning = warning
        self.on_frame = on_frame
        self.on_loaded = on_loaded
        self.stop = threading.Event()
        self.times = StageTimes()
        self.summary = RunSummary()
        self._errors: list[BaseException] = []
        self._errors_lock = threading.Lock()
        self._loaded = threading.Event()
        self._read_started: float | None = None
        """When the capture thread entered ``source.read()`` (None when not reading)."""
        self._batch_started: float | None = None
        """When the inference worker started the current batch (None between batches)."""
        self._slowest_batch = 0.0
        """The longest a batch has taken so far (the warm-up inference to begin with), in seconds."""
        self._batches_done = 0
        self._capture_thread: threading.Thread | None = None
        self.backend: Backend | None = None
        lossless = not source.live
        self._q_in: queue.Queue[Any] | LatestSlot = queue.Queue(self.config.queue_size) if lossless else LatestSlot()
        self._q_out: queue.Queue[Any] = queue.Queue(self.config.queue_size)
        # A threaded file sink times its own writes on its writer thread.
        self._sink_times_itself = False
        for inner in getattr(sink, "sinks", [sink]):
            if isinstance(inner, ThreadedSink):
                inner.on_write = lambda seconds: self.times.add("write", seconds)
                self._sink_times_itself = True
        self.label_annotator = LabelAnnotator(self.config.topk)
        self.stats_annotator = StatsAnnotator()

    # -- plumbing ------------------------------------------------------------
    def _fail(self, exc: BaseException) -> None:
        with self._errors_lock:
            self._errors.append(exc)
        self.stop.set()

    def _put(self, q: "queue.Queue[Any] | LatestSlot", item: Any) -> bool:
        """Put, waiting in slices; False if the pipeline is stopping."""
        if isinstance(q, LatestSlot):
            q.put(item)
            return True
        while not self.stop.is_set():
            try:
                q.put(item, timeout=_SLICE)
                return True
            except queue.Full:
                continue
        return False

    def _get(self, q: "queue.Queue[Any] | LatestSlot") -> Any:
        """Get, waiting in slices; None if the pipeline is stopping."""
        while not self.stop.is_set():
            try:
                return q.get(timeout=_SLICE)
            except queue.Empty:
                continue
        return None

    # -- stages --------------------------------------------------------------
    def _capture(self) -> None:
        try:
            limit = self.config.max_frames
            count = 0
            while not self.stop.is_set():
                if limit is not None and count >= limit:
                    break
                self._read_started = time.perf_counter()
                try:
                    frame = self.source.read()
                except SourceError:
                    if not (self.source.live and self.source.reconnectable):
                        raise
                    frame = None
                finally:
                    self._read_started = None
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
                if not self._put(self._q_in, frame):
                    return
            self._put(self._q_in, EOS)
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
            first = self._get(self._q_in)
            if first is None or isinstance(first, _EndOfStream):
                return None
            if not self.source.live or time.perf_counter() - first.t_capture <= self.config.max_frame_age_s:
                break
            self.summary.stale += 1  # e.g. the last frame before a lost connection
        frames = [first]
        q = self._q_in
        while len(frames) < self.config.batch and isinstance(q, queue.Queue):
            try:
                item = q.get_nowait() if len(frames) > 0 else None
            except queue.Empty:
                # In file mode wait briefly for the rest of the batch rather than run it part-empty.
                try:
                    item = q.get(timeout=_SLICE)
                except queue.Empty:
                    break
            if isinstance(item, _EndOfStream):
                q.put(item)  # let the next call see the end
                break
            frames.append(item)
        return frames

    def _infer(self) -> None:
        backend: Backend | None = None
        try:
            backend = self.backend_factory()
            backend.load()
            self.backend = backend
            self.summary.load_s = backend.load_seconds
            self.summary.backend = backend.description
            labels = backend.spec.labels
            if backend.ready_seconds is not None and backend.load_seconds is not None:
                self._slowest_batch = max(0.0, backend.ready_seconds - backend.load_seconds)
            self._loaded.set()
            if self.on_loaded is not None:
                self.on_loaded(backend)
            while not self.stop.is_set():
                frames = self._next_batch()
                if frames is None:
                    break
                n = len(frames)
                t0 = time.perf_counter()
                self._batch_started = t0
                batch = backend.preprocess([f.image for f in frames])
                backend.synchronize()
                t1 = time.perf_counter()
                logits = backend.infer(batch)
                backend.synchronize()
                t2 = time.perf_counter()
                predictions = postprocess(logits, labels, self.config.topk)
                t3 = time.perf_counter()
                self._batch_started = None
                self._slowest_batch = max(self._slowest_batch, t3 - t0)
                self._batches_done += 1
                self.times.add("preprocess", t1 - t0, n)
                self.times.add("inference", t2 - t1, n)
                self.times.add("postprocess", t3 - t2, n)
                for frame, prediction in zip(frames, predictions):
                    if not self._put(self._q_out, Result(frame, prediction)):
                        return
            self._put(self._q_out, EOS)
        except BaseException as exc:  # noqa: BLE001
            self._fail(exc)
        finally:
            self._loaded.set()
            if backend is not None:
                try:
                    backend.close()
                except Exception as exc:  # noqa: BLE001
                    log.warning("backend close failed: %s", exc)

    def _render_loop(self, start: float) -> None:
        fps = FpsMeter()
        latencies: list[float] = []
        model_line = ""
        while True:
            if self._errors:
                return
            try:
                item = self._q_out.get(timeout=_SLICE)
            except queue.Empty:
                if self.stop.is_set():
                    return
                self._watchdog()
                continue
            if isinstance(item, _EndOfStream):
                break
            result: Result = item
            if not model_line and self.backend is not None:
                model_line = self.backend.description
            t0 = time.perf_counter()
            image = result.frame.image
            latency = t0 - result.frame.t_capture
            fps.tick(t0)
            self.label_annotator.annotate(image, result.prediction)
            self.stats_annotator.annotate(image, FrameInfo(fps.fps, latency * 1000.0, model_line, self.warning))
            t1 = time.perf_counter()
            self.sink.write(image, result.frame.name)
            t2 = time.perf_counter()
            if self.predictions is not None:
                self.predictions.write(result.frame, result.prediction, latency * 1000.0)
            self.times.add("render", t1 - t0)
            if not self._sink_times_itself:
                self.times.add("write", t2 - t1)
            latencies.append(latency)
            self.summary.frames_out += 1
            if self.summary.first_frame_s is None:
                self.summary.first_frame_s = t2 - start
            if self.on_frame is not None:
                self.on_frame(self.summary.frames_out)
            if self.sink.stop_requested:
                self.summary.stopped_by_user = True
                self.stop.set()
                break
        self.summary.latency = LatencyStats.of(latencies)

    def _watchdog(self) -> None:
        """Fail a model stuck in one batch, or a source stuck inside one read, for too long.

        A source: only time spent in ``source.read()`` counts (waiting on a full
        queue behind a slow model, or for the model to load, is not source
        silence), up to the stall timeout.  A model: only time inside one batch
        counts (not the load, not waiting for frames), up to the stall timeout or
        20 times the slowest batch so far, whichever is longer, and at least a
        minute for the first batch.  A call that never returns cannot be
        cancelled; the run stops around it and keeps what was labelled before.
        """
        self._watch_model()
        started = self._read_started
        if started is None:
            return
        idle = time.perf_counter() - started
        limit = self.config.stall_timeout_s
        if self.source.live and self.source.reconnectable:
            # A live read gives up by itself after its own timeout (FFmpeg checks it a
            # little late) and is then reconnected; only a read stuck well past it is fatal.
            limit += max(2.0, 0.5 * limit)
        if idle > limit:
            raise SourceTimeout(f"{self.source.display_name}: no frame for {idle:.1f} s")

    def _watch_model(self) -> None:
        started = self._batch_started
        if started is None:
            return
        busy = time.perf_counter() - started
        limit = max(self.config.stall_timeout_s, _HUNG_FACTOR * self._slowest_batch)
        if self._batches_done == 0:
            limit = max(limit, _FIRST_BATCH_S)
        if busy > limit:
            slowest = f"; the slowest batch before took {self._slowest_batch:.2f} s" if self._batches_done else ""
            raise ModelHung(f"the model gave no result for {busy:.1f} s (inference hung?){slowest}")

    # -- driver --------------------------------------------------------------
    def run(self) -> RunSummary:
        """Run to the end of the source, an error, the user quitting, or Ctrl-C.

        On success and on Ctrl-C the sink and predictions file are finalised;
        on an error they are discarded and a :class:`StreamerError` is raised.
        """
        start = time.perf_counter()
        self._capture_thread = threading.Thread(target=self._capture, name="capture", daemon=True)
        worker = threading.Thread(target=self._infer, name="inference", daemon=True)
        self.worker_thread = worker
        interrupted = False
        try:
            try:
                worker.start()
                self._capture_thread.start()
                self._render_loop(start)
            except KeyboardInterrupt:
                interrupted = True
            except BaseException as exc:  # noqa: BLE001
                self._fail(exc)
        finally:
            self.stop.set()
            for thread in (self._capture_thread, worker):
                if thread.is_alive():
                    thread.join(timeout=self.config.join_timeout_s)
            if not self._capture_thread.is_alive():
                self.source.close()  # else it is inside a read; closing under it is unsafe
        self.summary.elapsed_s = time.perf_counter() - start
        self.summary.interrupted = interrupted
        if isinstance(self._q_in, LatestSlot):
            self.summary.dropped = self._q_in.dropped + self.summary.stale
        self.summary.stages = self.times.summary()
        if self.summary.latency is None and self.summary.frames_out:
            self.summary.latency = None
        out = self.summary.frames_out
        if out >= 2 and self.summary.first_frame_s is not None:
            span = self.summary.elapsed_s - self.summary.first_frame_s
            self.summary.pipeline_fps = (out - 1) / span if span > 0 else None
        if self._errors and not interrupted:
            error = self._errors[0]
            if isinstance(error, (SourceLost, ModelHung)) and self.summary.frames_out > 0:
                # The camera is gone for good, or the model hangs, but what was recorded before is sound: keep it.
                self._finalize_outputs()
                if isinstance(error, ModelHung):
                    raise ModelHung(f"{error}; kept the {self.summary.frames_out} frames labelled before it") from error
            else:
                self._abort_outputs()
            raise _as_streamer_error(error)
        if interrupted and self.summary.frames_out == 0:
            self._abort_outputs()  # nothing to keep
            raise KeyboardInterrupt
        self._finalize_outputs()
        if interrupted:
            raise KeyboardInterrupt
        return self.summary

    @property
    def threads_alive(self) -> bool:
        """True if a stage thread is still inside a call it could not leave (see ``cli.main``)."""
        threads = [self._capture_thread, getattr(self, "worker_thread", None)]
        return any(t is not None and t.is_alive() for t in threads)

    def _finalize_outputs(self) -> None:
        try:
            self.sink.finalize()
        except BaseException:
            if self.predictions is not None:
                self.predictions.abort()
            raise
        if self.predictions is not None:
            self.predictions.finalize()

    def _abort_outputs(self) -> None:
        self.sink.abort()
        if self.predictions is not None:
            self.predictions.abort()


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
    "EOS",
    "LatestSlot",
    "Pipeline",
    "PipelineConfig",
    "PredictionsWriter",
    "RunSummary",
    "SourceError",
]
