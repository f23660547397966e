"""Annotators: small objects with ``annotate(frame, result) -> frame``.

Style lives in ``__init__``, data comes in ``annotate`` (as in supervision).
Text is scaled to the frame and drawn on a dark band so it stays legible on
any frame size and content.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from engines.backends.base import Prediction


@dataclass
class FrameInfo:
    """What the overlay shows besides the prediction."""

    fps: float | None
    latency_ms: float | None
    model_line: str
    warning: str | None = None


def _text_scale(image: np.ndarray) -> tuple[float, int]:
    h, w = image.shape[:2]
    scale = max(0.35, min(h, w) / 720.0 * 0.9)
    return scale, max(1, int(round(scale * 2)))


def _draw_lines(image: np.ndarray, lines: list[tuple[str, tuple[int, int, int]]], bottom: bool) -> None:
    import cv2

    if not lines:
        return
    font = cv2.FONT_HERSHEY_SIMPLEX
    scale, thickness = _text_scale(image)
    h, w = image.shape[:2]
    sizes = [cv2.getTextSize(text, font, scale, thickness) for text, _ in lines]
    line_h = max(sz[0][1] + sz[1] for sz in sizes) + int(8 * scale)
    # Shrink the text until the widest line fits the frame (re-measured each time:
    # glyph widths do not scale exactly with the font scale).
    widest = max(sz[0][0] for sz in sizes)
    for _ in range(12):
        if widest + 12 <= w or scale <= 0.1:
            break
        scale *= max(0.5, min(0.95, (w - 12) / max(widest, 1)))
        thickness = max(1, int(round(scale * 2)))
        sizes = [cv2.getTextSize(text, font, scale, thickness) for text, _ in lines]
        widest = max(sz[0][0] for sz in sizes)
        line_h = max(sz[0][1] + sz[1] for sz in sizes) + max(2, int(8 * scale))
    band_h = line_h * len(lines) + 6
    y0 = h - band_h if bottom else 0
    y0 = max(0, y0)
    x1 = min(w, widest + 14)
    roi = image[y0 : y0 + band_h, 0:x1]
    roi[:] = (roi.astype(np.uint16) * 2 // 5).astype(np.uint8)  # darken under the text
    for i, (text, colour) in enumerate(lines):
        y = y0 + line_h * (i + 1) - int(4 * scale)
        cv2.putText(image, text, (6, y), font, scale, colour, thickness, cv2.LINE_AA)


class LabelAnnotator:
    """Top-k labels with their confidence, top-left."""

    def __init__(self, topk: int = 1) -> None:
        self.topk = max(1, topk)

    def annotate(self, image: np.ndarray, prediction: Prediction) -> np.ndarray:
        lines = []
        for rank, (label, score) in enumerate(zip(prediction.labels[: self.topk], prediction.scores[: self.topk])):
            colour = (80, 255, 80) if rank == 0 else (230, 230, 230)
            lines.append((f"{label}: {score * 100:.1f}%", colour))
        _draw_lines(image, lines, bottom=False)
        return image


class StatsAnnotator:
    """Pipeline FPS, capture-to-render latency and model/backend/precision, bottom-left."""

    def annotate(self, image: np.ndarray, info: FrameInfo) -> np.ndarray:
        fps = f"{info.fps:.1f}" if info.fps is not None else "--"
        latency = f"{info.latency_ms:.0f} ms" if info.latency_ms is not None else "--"
        lines = [(f"FPS {fps}  latency {latency}", (255, 255, 255)), (info.model_line, (200, 200, 200))]
        if info.warning:
            lines.insert(0, (info.warning, (60, 60, 255)))
        _draw_lines(image, lines, bottom=True)
        return image
