"""A persistent inference worker: one thread that owns one backend and serves batches until closed.

The worker builds the backend from a *recipe* (a callable) and loads it on its
own thread, so the CUDA context, cuDNN/cuBLAS handles and execution plans that
PyTorch keeps per thread are made once, at load, on the thread that uses them.
It then serves requests from any number of callers until :meth:`close`:

* :meth:`submit` ``(images) -> Future[BatchResult]``: preprocess, network and
  top-k on a list of BGR images; the result carries the predictions in order
  and the stage times of the batch they ran in.
* :meth:`call` ``(fn) -> Future``: any other work on the loaded backend, on the
  worker's thread (the bench times the network alone this way).

Requests are served in order.  With ``max_batch`` set, requests waiting within
``max_wait_s`` of the first are run as one batch of at most ``max_batch``
images (Triton's dynamic batcher, DeepStream's ``nvstreammux``), and each
caller gets back its own slice: this is how several streams will share one
model.  Without it (the default) each request is one batch, as the pipeline
builds them.

What a supervisor needs is public: :attr:`batch_started` (perf_counter of the
batch in progress, None between batches), :attr:`slowest_batch_s` (starting
at the load's warm-up inference) and :attr:`batches_done`.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Sequence, TypeVar

import numpy as np

from engines.backends.base import Backend, Prediction
from engines.errors import PipelineError
from streamer.stats import StageTimes

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

T = TypeVar("T")
Recipe = Callable[[], Backend]
THREAD_NAME = "inference"
"""The worker thread's name (``cli.entry`` looks for it when deciding to exit promptly)."""


@dataclass(frozen=True)
class LoadInfo:
    """What the worker reports once, when its backend is loaded."""

    description: str
    """The overlay's model line: model, backend, precision, device."""
    load_s: float | None
    """Building or loading the backend (``Backend.load_seconds``)."""
    ready_s: float | None
    """Load plus the warm-up inference (``Backend.ready_seconds``)."""


@dataclass(frozen=True)
class BatchResult:
    """One request's predictions, and the times of the batch it ran in (seconds, whole batch)."""

    predictions: list[Prediction]
    batch_size: int
    preprocess_s: float
    inference_s: float
    postprocess_s: float


@dataclass
class _Batch:
    images: "Sequence[np.ndarray | torch.Tensor]"
    future: "Future[BatchResult]"


@dataclass
class _Call:
    fn: Callable[[Backend], Any]
    future: "Future[Any]"


_CLOSE = object()


def freeze_heap() -> None:
    """``gc.freeze()``: what is alive once the model is loaded (torch, the model, OpenCV: ~340k objects)
    moves to the collector's permanent generation, so a full collection during the run no longer walks
    it.  Such a pass took 130-200 ms on the 2-core machine, with every thread of every stream stopped:
    a dropped frame on each live stream.  For the command line's runs, which live as long as their
    model; not done by the Python API (the cycles it would keep could be the caller's)."""
    import gc

    gc.freeze()


class InferenceWorker:
    """Owns a thread and the backend its recipe builds; see the module docstring.

    ``with InferenceWorker(recipe) as worker:`` starts it and closes it.
    """

    def __init__(self, recipe: Recipe, topk: int = 1, *, max_batch: int | None = None, max_wait_s: float = 0.0) -> None:
        if max_batch is not None and max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.recipe = recipe
        self.topk = topk
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.times = StageTimes()
        """Preprocess / inference / postprocess per frame over the worker's life (bounded)."""
        self.batch_started: float | None = None
        self.slowest_batch_s = 0.0
        self.batches_done = 0
        self._requests: "queue.Queue[Any]" = queue.Queue()
        self._loaded: "Future[LoadInfo]" = Future()
        self._closing = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    # -- life ----------------------------------------------------------------
    def start(self) -> "InferenceWorker":
        """Start the thread, which builds and loads the backend (no-op if started)."""
        with self._lock:
            if self._closing.is_set():
                raise PipelineError("the inference worker is closed")
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=THREAD_NAME, daemon=True)
                self._thread.start()
        return self

    def wait_loaded(self, timeout: float | None = None) -> LoadInfo:
        """Block until the backend is loaded; re-raises the load's error. ``TimeoutError`` after ``timeout``."""
        self.start()
        return self._loaded.result(timeout)

    def loaded_future(self) -> "Future[LoadInfo]":
        """The load's outcome as a future (starts the worker): for callers that wait in slices."""
        self.start()
        return self._loaded

    def on_loaded(self, fn: Callable[[], object]) -> None:
        """Call ``fn()`` once the backend has loaded (on the worker's thread, before any batch; at once if
        it has already); not if the load fails or the worker closes first.  Does not start the worker."""

        def done(future: "Future[LoadInfo]") -> None:
            if not future.cancelled() and future.exception() is None:
                fn()

        self._loaded.add_done_callback(done)

    @property
    def loaded(self) -> LoadInfo | None:
        """The load's report, once it succeeded."""
        if self._loaded.done() and not self._loaded.cancelled() and self._loaded.exception() is None:
            return self._loaded.result()
        return None

    def close(self, timeout: float | None = None) -> bool:
        """Stop serving (queued requests are cancelled), close the backend on its thread.

        Waits up to ``timeout`` seconds (None: for ever) for the thread to end;
        returns False if it is still inside a call it cannot leave.
        """
        self._closing.set()
        self._requests.put(_CLOSE)
        thread = self._thread
        if thread is None:
            return True
        if thread is not threading.current_thread():
            thread.join(timeout)
        return not thread.is_alive()

    @property
    def thread(self) -> threading.Thread | None:
        return self._thread

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def __enter__(self) -> "InferenceWorker":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- requests --------------------------------------------------------------
    def submit(self, images: "Sequence[np.ndarray | torch.Tensor]") -> "Future[BatchResult]":
        """Classify ``images`` (BGR uint8 HxWx3: host arrays, or tensors on a device, see
        :mod:`streamer.gpu_frames`); the future holds their predictions in order."""
        future: "Future[BatchResult]" = Future()
        self._enqueue(_Batch(list(images), future))
        return future

    def call(self, fn: Callable[[Backend], T]) -> "Future[T]":
        """Run ``fn(backend)`` on the worker's thread, after the requests already queued."""
        future: "Future[T]" = Future()
        self._enqueue(_Call(fn, future))
        return future

    def _enqueue(self, item: Any) -> None:
        if self._closing.is_set():
            raise PipelineError("the inference worker is closed")
        self.start()
        if self._loaded.done() and not self._loaded.cancelled() and self._loaded.exception() is not None:
            raise PipelineError("the inference worker's backend failed to load") from self._loaded.exception()
        self._requests.put(item)

    # -- the thread ------------------------------------------------------------
    def _run(self) -> None:
        backend: Backend | None = None
        try:
            try:
                backend = self.recipe()
                backend.load()
                info = LoadInfo(backend.description, backend.load_seconds, backend.ready_seconds)
                backend.spec.labels  # read now, at load, rather than inside the first batch
                if backend.ready_seconds is not None and backend.load_seconds is not None:
                    self.slowest_batch_s = max(0.0, backend.ready_seconds - backend.load_seconds)
            except BaseException as exc:  # noqa: BLE001 - handed to whoever waits for the load
                if self._loaded.set_running_or_notify_cancel():  # else close() cancelled the wait
                    self._loaded.set_exception(exc)
                self._cancel_queued(exc)
                return
            if not self._loaded.set_running_or_notify_cancel():
                return  # closed while loading: nobody waits for this backend
            self._loaded.set_result(info)
            self._serve(backend)
        finally:
            if backend is not None:
                try:
                    backend.close()
                except Exception as exc:  # noqa: BLE001
                    log.warning("backend close failed: %s", exc)

    def _serve(self, backend: Backend) -> None:
        while True:
            item = self._requests.get()
            if item is _CLOSE or self._closing.is_set():
                self._cancel_queued(None, first=item)
                return
            if isinstance(item, _Call):
                if item.future.set_running_or_notify_cancel():
                    try:
                        item.future.set_result(item.fn(backend))
                    except BaseException as exc:  # noqa: BLE001 - the caller's
                        item.future.set_exception(exc)
                continue
            batches = [b for b in self._gather(item) if b.future.set_running_or_notify_cancel()]
            if batches:
                self._run_batch(backend, batches)

    def _gather(self, first: _Batch) -> list[_Batch]:
        """``first`` and, with ``max_batch``, the requests that join it within ``max_wait_s``."""
        batches = [first]
        if self.max_batch is None:
            return batches
        size = len(first.images)
        deadline = time.perf_counter() + self.max_wait_s
        while size < self.max_batch:
            try:
                nxt = self._requests.get(timeout=max(0.0, deadline - time.perf_counter()))
            except queue.Empty:
                break
            if not isinstance(nxt, _Batch) or size + len(nxt.images) > self.max_batch:
                self._requests.put(nxt)  # served next (order between streams is not promised)
                break
            batches.append(nxt)
            size += len(nxt.images)
        return batches

    def _run_batch(self, backend: Backend, batches: list[_Batch]) -> None:
        images = [image for b in batches for image in b.images]
        n = len(images)
        try:
            t0 = time.perf_counter()
            self.batch_started = t0
            run = backend.classify(images, self.topk)
            t3 = time.perf_counter()
        except BaseException as exc:  # noqa: BLE001 - each caller gets the error
            self.batch_started = None
            for b in batches:
                b.future.set_exception(exc)
            return
        self.batch_started = None
        self.slowest_batch_s = max(self.slowest_batch_s, t3 - t0)
        self.batches_done += 1
        pre, inf, post = run.preprocess_s, run.inference_s, run.postprocess_s
        self.times.add("preprocess", pre, n)
        self.times.add("inference", inf, n)
        self.times.add("postprocess", post, n)
        at = 0
        for b in batches:
            k = len(b.images)
            b.future.set_result(BatchResult(run.predictions[at : at + k], n, pre, inf, post))
            at += k

    def _cancel_queued(self, error: BaseException | None, first: Any = None) -> None:
        items = [first] if first is not None else []
        while True:
            try:
                items.append(self._requests.get_nowait())
            except queue.Empty:
                break
        for item in items:
            if isinstance(item, (_Batch, _Call)) and item.future.set_running_or_notify_cancel():
                item.future.set_exception(error or PipelineError("the inference worker is closed"))


__all__ = ["BatchResult", "InferenceWorker", "LoadInfo", "Recipe", "THREAD_NAME", "freeze_heap"]
