"""Labels on the terminal: one line per frame, or the JSON lines on stdout (``--predictions -``)."""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, TextIO

from engines.errors import SinkError
from streamer.sinks.predictions import prediction_record

if TYPE_CHECKING:
    from engines.backends.base import Prediction
    from streamer.sources import Frame


def label_line(frame: Frame, prediction: Prediction, with_name: bool = False) -> str:
    """``frame 12: tabby 0.41 | tiger cat 0.21`` (``frame 3 (cat.jpg): ...`` with the name)."""
    labels = " | ".join(f"{label} {score:.2f}" for label, score in zip(prediction.labels, prediction.scores))
    where = f" ({frame.name})" if with_name else ""
    return f"frame {frame.index}{where}: {labels}"


class _StreamObserver:
    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream

    @property
    def stream(self) -> TextIO:
        return self._stream if self._stream is not None else sys.stdout

    def _emit(self, line: str) -> None:
        try:
            self.stream.write(line + "\n")
            self.stream.flush()
        except BrokenPipeError:
            raise SinkError("stdout was closed (broken pipe)") from None
        except OSError as exc:
            raise SinkError(f"stdout: write failed ({exc.strerror or exc})") from None

    def finalize(self) -> None:
        try:
            self.stream.flush()
        except OSError:
            pass

    def abort(self) -> None:
        self.finalize()  # what was printed cannot be taken back


class TerminalLabels(_StreamObserver):
    """A :class:`~streamer.sinks.base.ResultSink` printing one line per labelled frame (headless runs)."""

    def __init__(self, stream: TextIO | None = None, with_name: bool = False) -> None:
        super().__init__(stream)
        self.with_name = with_name

    def write(self, frame: Frame, prediction: Prediction, latency_ms: float) -> None:
        self._emit(label_line(frame, prediction, self.with_name))


class JsonLinesStdout(_StreamObserver):
    """``--predictions -``: the predictions file's JSON lines, on stdout, one per frame as it is labelled."""

    def write(self, frame: Frame, prediction: Prediction, latency_ms: float) -> None:
        self._emit(json.dumps(prediction_record(frame, prediction, latency_ms)))


__all__ = ["JsonLinesStdout", "TerminalLabels", "label_line"]
