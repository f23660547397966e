"""Annotators: small objects with ``annotate(frame, result) -> frame``.

Style lives in ``__init__``, data comes in ``annotate`` (as in supervision):
every annotator gets the same :class:`Result` and draws the part it is for,
in place, returning the frame.  Text is scaled to the frame and drawn on a
dark band so it stays legible on any frame size and content.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from engines.backends.base import Prediction

Colour = tuple[int, int, int]
"""BGR."""


@dataclass(frozen=True)
class Result:
    """What one frame's annotators may show."""

    prediction: Prediction
    fps: float | None = None
    """Pipeline FPS (intervals between rendered frames, over a sliding window; the load is not in it)."""
    latency_ms: float | None = None
    """This frame's latency as the run summary counts it (:attr:`streamer.pipeline.RunSummary.latency_basis`):
    capture to render for live sources; for files from its capture, or the model becoming ready if later."""
    model_line: str = ""
    warning: str | None = None


class Annotator(Protocol):
    def annotate(self, image: np.ndarray, result: Result) -> np.ndarray:
        """Draw on ``image`` (in place) and return it."""
        ...


def _text_scale(image: np.ndarray) -> tuple[float, int]:
    h, w = image.shape[:2]
    scale = max(0.35, min(h, w) / 720.0 * 0.9)
    return scale, max(1, int(round(scale * 2)))


@functools.lru_cache(maxsize=1024)
def _text_size(text: str, scale: float, thickness: int) -> tuple[tuple[int, int], int]:
    """``cv2.getTextSize`` in the font every annotator uses, remembered: the model line and a stream's
    name are the same on every frame, and each OpenCV call is one more wait for the GIL when many
    streams render at once."""
    import cv2

    (w, h), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
    return (int(w), int(h)), int(base)


def _fit(text: str, scale: float, thickness: int, width: int) -> str:
    """``text``, cut short with "..." where it is wider than ``width`` pixels at this scale."""
    if _text_size(text, scale, thickness)[0][0] <= width:
        return text
    for end in range(len(text) - 1, 0, -1):
        cut = text[:end].rstrip() + "..."
        if _text_size(cut, scale, thickness)[0][0] <= width:
            return cut
    return ""


def _draw_lines(image: np.ndarray, lines: list[tuple[str, Colour]], bottom: bool) -> None:
    import cv2

    if not lines:
        return
    font = cv2.FONT_HERSHEY_SIMPLEX
    scale, thickness = _text_scale(image)
    h, w = image.shape[:2]
    sizes = [_text_size(text, scale, thickness) for text, _ in lines]
    line_h = max(sz[0][1] + sz[1] for sz in sizes) + int(8 * scale)
    # Shrink the text until the widest line fits the frame (re-measured each time:
    # glyph widths do not scale exactly with the font scale).
    widest = max(sz[0][0] for sz in sizes)
    for _ in range(16):
        if widest + 12 <= w or scale <= 0.03:
            break
        scale *= max(0.5, min(0.95, (w - 12) / max(widest, 1)))
        thickness = max(1, int(round(scale * 2)))
        sizes = [_text_size(text, scale, thickness) for text, _ in lines]
        widest = max(sz[0][0] for sz in sizes)
        line_h = max(sz[0][1] + sz[1] for sz in sizes) + max(2, int(8 * scale))
    if widest + 12 > w:  # a frame too narrow even for the smallest text: cut the long lines short
        lines = [(_fit(text, scale, thickness, w - 12), colour) for text, colour in lines]
        widest = max(_text_size(text, scale, thickness)[0][0] for text, _ in lines)
    band_h = line_h * len(lines) + 6
    y0 = h - band_h if bottom else 0
    y0 = max(0, y0)
    x1 = min(w, widest + 14)
    roi = image[y0 : y0 + band_h, 0:x1]
    cv2.convertScaleAbs(roi, dst=roi, alpha=0.4)  # darken under the text, in place (no temporaries)
    for i, (text, colour) in enumerate(lines):
        y = y0 + line_h * (i + 1) - int(4 * scale)
        cv2.putText(image, text, (6, y), font, scale, colour, thickness, cv2.LINE_AA)


class LabelAnnotator:
    """Top-k labels with their confidence, top-left."""

    def __init__(self, topk: int = 1, top_colour: Colour = (80, 255, 80), colour: Colour = (230, 230, 230)) -> None:
        self.topk = max(1, topk)
        self.top_colour = top_colour
        self.colour = colour

    def annotate(self, image: np.ndarray, result: Result) -> np.ndarray:
        prediction = result.prediction
        lines = []
        for rank, (label, score) in enumerate(zip(prediction.labels[: self.topk], prediction.scores[: self.topk])):
            lines.append((f"{label}: {score * 100:.1f}%", self.top_colour if rank == 0 else self.colour))
        _draw_lines(image, lines, bottom=False)
        return image


class StatsAnnotator:
    """Pipeline FPS, this frame's latency, model/backend/precision and any warning, bottom-left."""

    def __init__(
        self, colour: Colour = (255, 255, 255), model_colour: Colour = (200, 200, 200), warning_colour: Colour = (60, 60, 255)
    ) -> None:
        self.colour = colour
        self.model_colour = model_colour
        self.warning_colour = warning_colour

    def annotate(self, image: np.ndarray, result: Result) -> np.ndarray:
        fps = f"{result.fps:.1f}" if result.fps is not None else "--"
        latency = f"{result.latency_ms:.0f} ms" if result.latency_ms is not None else "--"
        lines = [(f"FPS {fps}  latency {latency}", self.colour), (result.model_line, self.model_colour)]
        if result.warning:
            lines.insert(0, (result.warning, self.warning_colour))
        _draw_lines(image, lines, bottom=True)
        return image


class StreamNameAnnotator:
    """The stream's name, top-right: which camera or file this frame is from (several streams in one run)."""

    def __init__(self, name: str, colour: Colour = (255, 220, 120)) -> None:
        self.name = name
        self.colour = colour

    def annotate(self, image: np.ndarray, result: Result) -> np.ndarray:
        import cv2

        font = cv2.FONT_HERSHEY_SIMPLEX
        scale, thickness = _text_scale(image)
        h, w = image.shape[:2]
        (tw, th), base = _text_size(self.name, scale, thickness)
        if tw + 12 > w:  # a long name on a small frame: shrink it to fit
            scale *= max(0.1, (w - 12) / max(tw, 1))
            thickness = max(1, int(round(scale * 2)))
            (tw, th), base = _text_size(self.name, scale, thickness)
        band_h = min(h, th + base + int(8 * scale) + 6)
        x0 = max(0, w - tw - 14)
        roi = image[0:band_h, x0:w]
        cv2.convertScaleAbs(roi, dst=roi, alpha=0.4)  # darken under the name, in place, as _draw_lines does
        cv2.putText(image, self.name, (x0 + 7, band_h - base - 3), font, scale, self.colour, thickness, cv2.LINE_AA)
        return image
