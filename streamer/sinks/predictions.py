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
    """A :class:`ResultSink`: one JSON object per frame to a temporary file, renamed on finalize."""

    def __init__(self, path: Path, overwrite: bool = False) -> None:
        check_output_path(path, overwrite)
        self.path = path
        self.overwrite = overwrite
        self.temp_path = path.with_name(f".{path.name}.partial-{os.getpid()}")
        self._fh: "TextIO | None" = None
        """Opened on the first write (or an empty finalize): nothing is on disk before the run writes."""
        self._done = False

    def _file(self) -> "TextIO":
        if self._fh is None:
            if self._done:
                raise SinkError(f"{self.path}: predictions already finalised or discarded")
            check_output_path(self.path, self.overwrite)
            try:
                self._fh = open(self.temp_path, "w", encoding="utf-8")
            except OSError as exc:
                raise SinkError(f"{self.path}: cannot write predictions ({exc.strerror})") from exc
        return self._fh

    def write(self, frame: "Frame", prediction: "Prediction", latency_ms: float) -> None:
        fh = self._file()
        try:
            fh.write(json.dumps(prediction_record(frame, prediction, latency_ms)) + "\n")
        except OSError as exc:
            raise SinkError(f"{self.path}: write failed ({exc.strerror})") from exc

    def finalize(self) -> None:
        if self._done:
            return
        fh = self._file()  # a run that labelled nothing still leaves an (empty) file
        try:
            fh.flush()
            os.fsync(fh.fileno())
            fh.close()
        except OSError as exc:
            self.abort()
            raise SinkError(f"{self.path}: write failed ({exc.strerror or exc}); predictions discarded") from exc
        self._done = True
        os.replace(self.temp_path, self.path)

    def abort(self) -> None:
        self._done = True
        if self._fh is None:
            return
        try:
            self.temp_path.unlink()  # first: closing may fail (a full disk flushes on close)
        except FileNotFoundError:
            pass
        if not self._fh.closed:
            try:
                self._fh.close()
            except OSError:
                pass
