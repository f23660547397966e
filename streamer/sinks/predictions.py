"""Predictions as JSON lines, written under a temporary name and renamed when complete."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, TextIO


from engines.errors import SinkError

if TYPE_CHECKING:

    from engines.backends.base import Prediction
    from streamer.sources import Frame

from streamer.outputs import OutputLock, hidden_name, is_stream
from streamer.sinks.base import check_output_path

log = logging.getLogger(__name__)

def prediction_record(frame: "Frame", prediction: "Prediction", latency_ms: float) -> dict[str, object]:
    """One frame's JSON object, as written to the predictions file and sent on the live view's /events."""
    return {
        "frame": frame.index,
        "source": frame.name,
        "pts_s": frame.pts_s,
        "topk": prediction.as_json(),
        "latency_ms": round(latency_ms, 3),
    }


class PredictionsWriter:
    """A :class:`ResultSink`: one JSON object per frame to a temporary file, renamed on finalize.

    The final path is locked from the first write to the end (:class:`streamer.outputs.OutputLock`):
    a second run writing the same file fails with one line.  An existing character device or FIFO
    (``/dev/null``, a named pipe) is written in place: no temporary file, nothing replaced.
    """

    def __init__(self, path: Path, overwrite: bool = False) -> None:
        check_output_path(path, overwrite, allow_stream=True)
        self.path = path
        self.overwrite = overwrite
        self.stream = is_stream(path)
        self.temp_path = path if self.stream else hidden_name(path, f"partial-{os.getpid()}")
        self._lock = OutputLock(path)
        self._fh: "TextIO | None" = None
        """Opened on the first write (or an empty finalize): nothing is on disk before the run writes."""
        self._done = False

    def _file(self) -> "TextIO":
        if self._fh is None:
            if self._done:
                raise SinkError(f"{self.path}: predictions already finalised or discarded")
            check_output_path(self.path, self.overwrite, allow_stream=True)
            if not self.stream:
                self._lock.acquire()
            try:
                self._fh = open(self.temp_path, "w", encoding="utf-8")
            except OSError as exc:
                self._lock.release()
                raise SinkError(f"{self.path}: cannot write predictions ({exc.strerror})") from exc
        return self._fh

    def write(self, frame: "Frame", prediction: "Prediction", latency_ms: float) -> None:
        fh = self._file()
        try:
            fh.write(json.dumps(prediction_record(frame, prediction, latency_ms), allow_nan=False) + "\n")  # RFC 8259 has no NaN
        except ValueError as exc:
            raise SinkError(f"{self.path}: frame {frame.index} has a score that is not a number ({exc})") from exc
        except OSError as exc:
            raise SinkError(f"{self.path}: write failed ({exc.strerror})") from exc

    def finalize(self) -> None:
        if self._done:
            return
        fh = self._file()  # a run that labelled nothing still leaves an (empty) file
        try:
            fh.flush()
            if not self.stream:
                os.fsync(fh.fileno())
            fh.close()
        except OSError as exc:
            self.abort()
            raise SinkError(f"{self.path}: write failed ({exc.strerror or exc}); predictions discarded") from exc
        self._done = True
        try:
            if not self.stream:
                os.replace(self.temp_path, self.path)
        finally:
            self._lock.release()

    def abort(self) -> None:
        self._done = True
        if self._fh is None:
            self._lock.release()
            return
        try:
            if not self.stream:
                self.temp_path.unlink()  # first: closing may fail (a full disk flushes on close)
        except FileNotFoundError:
            pass
        finally:
            self._lock.release()
        if not self._fh.closed:
            try:
                self._fh.close()
            except OSError:
                pass
