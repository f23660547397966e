"""The queues between the pipeline's stages, and the stop-aware ways to use them.

* Files and folders are lossless: a bounded :class:`queue.Queue`, so a slow
  stage makes the one before it wait.
* Live sources keep only the newest frame: :class:`LatestSlot` replaces what
  is waiting and counts the drop.
* :data:`EOS` ends a stream.  :func:`put` and :func:`get` wait in short slices
  and give up once a stop event is set, so no stage hangs on a full or empty
  queue after another stage failed.
"""

from __future__ import annotations

import queue
import threading
from typing import Any, Union

SLICE_S = 0.05
"""Seconds each blocking call waits before it checks the stop event."""


class EndOfStream:
    """Sentinel type that ends a stream (use the :data:`EOS` instance)."""

    def __repr__(self) -> str:
        return "EOS"


EOS = EndOfStream()


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
            if isinstance(item, EndOfStream):
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


StageQueue = Union["queue.Queue[Any]", LatestSlot]


def put(q: StageQueue, item: Any, stop: threading.Event) -> bool:
    """Put ``item``, waiting in slices; False if ``stop`` was set first (a :class:`LatestSlot` never waits)."""
    if isinstance(q, LatestSlot):
        q.put(item)
        return True
    while not stop.is_set():
        try:
            q.put(item, timeout=SLICE_S)
            return True
        except queue.Full:
            continue
    return False


def get(q: StageQueue, stop: threading.Event) -> Any:
    """Get an item, waiting in slices; None if ``stop`` was set first."""
    while not stop.is_set():
        try:
            return q.get(timeout=SLICE_S)
        except queue.Empty:
            continue
    return None


__all__ = ["EOS", "EndOfStream", "LatestSlot", "SLICE_S", "StageQueue", "get", "put"]
