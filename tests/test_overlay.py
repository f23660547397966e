"""Annotators draw where they should, at any frame size, on real frames."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from engines.backends.base import Prediction
from streamer.overlay import LabelAnnotator, Result, StatsAnnotator

PREDICTION = Prediction(
    (281, 282, 285),
    (0.512, 0.301, 0.098),
    ("tabby, tabby cat", "tiger cat", "Egyptian cat"),
)
WARNING = "RANDOM WEIGHTS - for timing only, labels are meaningless"
INFO = Result(PREDICTION, 24.96, 123.4, "efficientnet_lite0 | torch fp32 cpu")
SIZES = [(160, 90), (320, 180), (640, 480), (1280, 720), (1920, 1080), (3840, 2160)]
PORTRAIT = [(90, 160), (720, 1280), (1080, 1920)]  # phone video


def _grey(w: int, h: int) -> np.ndarray:
    return np.full((h, w, 3), 128, np.uint8)


def _changed_rows(before: np.ndarray, after: np.ndarray) -> np.ndarray:
    return np.nonzero((before != after).any(axis=(1, 2)))[0]


def _red_text_pixels(image: np.ndarray) -> int:
    b, g, r = (image[..., i].astype(int) for i in range(3))
    return int(((r > 200) & (g < 130) & (b < 130)).sum())


def _green_text_pixels(image: np.ndarray) -> int:
    b, g, r = (image[..., i].astype(int) for i in range(3))
    return int(((g > 200) & (r < 150) & (b < 150)).sum())


@pytest.fixture(scope="module")
def real_frame(sample_images: Path) -> np.ndarray:
    return cv2.imread(str(sample_images / "palace.jpg"))


def test_label_annotator_draws_in_a_top_band(real_frame: np.ndarray) -> None:
    h, w = real_frame.shape[:2]
    out = LabelAnnotator(1).annotate(real_frame.copy(), INFO)
    rows = _changed_rows(real_frame, out)
    assert rows.size and rows[0] == 0
    assert rows[-1] < h // 4, "nothing drawn below the top band"
    band = slice(0, int(rows[-1]) + 1)
    cols = np.nonzero((real_frame[band] != out[band]).any(axis=(0, 2)))[0]
    assert cols[0] == 0 and cols[-1] < w // 2, "one short line stays on the left"
    assert _green_text_pixels(out[band]) > 20, "top-1 is drawn in green"
    assert out[band].astype(int).mean() < real_frame[band].astype(int).mean(), "the band is darkened for contrast"


def test_more_labels_make_a_taller_band(real_frame: np.ndarray) -> None:
    one = _changed_rows(real_frame, LabelAnnotator(1).annotate(real_frame.copy(), INFO))[-1]
    three = _changed_rows(real_frame, LabelAnnotator(3).annotate(real_frame.copy(), INFO))[-1]
    assert three > 2 * one
    # topk beyond what the prediction holds draws what there is
    five = _changed_rows(real_frame, LabelAnnotator(5).annotate(real_frame.copy(), INFO))[-1]
    assert five == three


def test_stats_annotator_draws_in_a_bottom_band(real_frame: np.ndarray) -> None:
    h, _w = real_frame.shape[:2]
    out = StatsAnnotator().annotate(real_frame.copy(), INFO)
    rows = _changed_rows(real_frame, out)
    assert rows[-1] == h - 1
    assert rows[0] > h // 2, "nothing drawn above the bottom band"
    drawn = (out != real_frame).any(axis=2)
    red = (out[..., 2] > 200) & (out[..., 1] < 130) & (out[..., 0] < 130)
    assert not (drawn & red).any(), "no warning line without a warning"


def test_stats_text_changes_with_the_numbers(real_frame: np.ndarray) -> None:
    a = StatsAnnotator().annotate(real_frame.copy(), INFO)
    b = StatsAnnotator().annotate(real_frame.copy(), Result(PREDICTION, 5.0, 900.0, INFO.model_line))
    unknown = StatsAnnotator().annotate(real_frame.copy(), Result(PREDICTION, None, None, INFO.model_line))
    assert not np.array_equal(a, b)
    assert not np.array_equal(a, unknown)


@pytest.mark.parametrize("size", [(320, 180), (1280, 720), (1920, 1080)])
def test_random_weights_warning_is_drawn_in_red(size: tuple[int, int]) -> None:
    w, h = size
    frame = _grey(w, h)
    plain = StatsAnnotator().annotate(frame.copy(), INFO)
    warned = StatsAnnotator().annotate(frame.copy(), Result(PREDICTION, INFO.fps, INFO.latency_ms, INFO.model_line, WARNING))
    assert _red_text_pixels(plain) == 0
    assert _red_text_pixels(warned) > 50
    plain_rows, warned_rows = _changed_rows(frame, plain), _changed_rows(frame, warned)
    assert warned_rows[0] < plain_rows[0], "the warning adds a line to the band"
    red_rows = np.nonzero(((warned[..., 2] > 200) & (warned[..., 1] < 130)).any(axis=1))[0]
    assert np.median(red_rows) < plain_rows[0] <= red_rows[-1] + 8, "the warning is the line above the stats lines"


def _assert_text_fits(w: int, h: int, topk: int) -> None:
    frame = _grey(w, h)
    out = LabelAnnotator(topk).annotate(frame.copy(), INFO)
    out = StatsAnnotator().annotate(out, Result(PREDICTION, INFO.fps, INFO.latency_ms, INFO.model_line, WARNING))
    assert out.shape == frame.shape and out.dtype == np.uint8
    # text pixels are brighter than the darkened band (128 * 2 // 5 = 51): none may reach the right edge
    text = (out.max(axis=2) > 60) & (out != frame).any(axis=2)
    cols = np.nonzero(text.any(axis=0))[0]
    assert cols.size, "something was drawn"
    assert cols[-1] < w - 2, f"text runs off the right edge at {w}x{h}"
    label_rows = _changed_rows(frame, LabelAnnotator(topk).annotate(frame.copy(), INFO))
    stats_rows = _changed_rows(frame, StatsAnnotator().annotate(frame.copy(), Result(PREDICTION, 1.0, 1.0, INFO.model_line, WARNING)))
    assert label_rows[-1] < stats_rows[0], f"label and stats bands overlap at {w}x{h}"


@pytest.mark.parametrize("size", SIZES, ids=[f"{w}x{h}" for w, h in SIZES])
@pytest.mark.parametrize("topk", [1, 3])
def test_text_fits_every_frame_size(size: tuple[int, int], topk: int) -> None:
    _assert_text_fits(*size, topk)


@pytest.mark.parametrize("size", PORTRAIT, ids=[f"{w}x{h}" for w, h in PORTRAIT])
def test_text_fits_portrait_frames(size: tuple[int, int]) -> None:
    _assert_text_fits(*size, 1)


@pytest.mark.parametrize("size", [(160, 90), (1920, 1080)])
def test_text_on_real_frames_at_extreme_sizes(real_frame: np.ndarray, size: tuple[int, int]) -> None:
    frame = cv2.resize(real_frame, size, interpolation=cv2.INTER_AREA)
    out = LabelAnnotator(3).annotate(frame.copy(), INFO)
    out = StatsAnnotator().annotate(out, Result(PREDICTION, 30.0, 33.0, INFO.model_line, WARNING))
    assert out.shape == frame.shape
    assert not np.array_equal(out, frame)


def test_annotators_draw_in_place_and_return_the_frame(real_frame: np.ndarray) -> None:
    frame = real_frame.copy()
    assert LabelAnnotator(1).annotate(frame, INFO) is frame
    assert StatsAnnotator().annotate(frame, INFO) is frame
    assert not np.array_equal(frame, real_frame)
