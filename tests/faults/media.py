"""Real frames from the bundled samples, serial stamps, and decoding checks.

The sample paths, :func:`read_frames`, :func:`count_frames` and the clip encoder are the suite's
general ones from ``tests/helpers.py`` (re-exported here); what is the fault suite's own is the
12-bit serial stamp, the cached sample frames and the stamped, looping :func:`make_clip`.
"""

from __future__ import annotations

import functools
import shutil
from pathlib import Path

import cv2
import numpy as np

import helpers
from helpers import REPO, SAMPLE_IMAGES, SAMPLE_VIDEO, count_frames, read_frames  # noqa: F401 - re-exported

# A serial number drawn as STAMP_BITS black/white squares across the middle of
# the frame: it survives JPEG and mp4v coding, and the overlay bands (top and
# bottom) never cover it.
STAMP_BITS = 12


def _boxes(width: int, height: int) -> list[tuple[int, int, int]]:
    # Positions are fractions of the width, so a stamp still reads after the frame is resized.
    cells = 2 * STAMP_BITS + 1
    side = max(8, round(width / cells))
    y0 = height // 2 - side // 2
    return [(round(width * (2 * b + 1) / cells), y0, side) for b in range(STAMP_BITS)]


def stamp(image: np.ndarray, serial: int) -> np.ndarray:
    """Draw ``serial`` (0 <= serial < 2**STAMP_BITS) into ``image`` in place; returns it."""
    if not 0 <= serial < 1 << STAMP_BITS:
        raise ValueError(f"serial {serial} does not fit {STAMP_BITS} bits")
    h, w = image.shape[:2]
    for b, (x, y, s) in enumerate(_boxes(w, h)):
        image[y : y + s, x : x + s] = 255 if (serial >> b) & 1 else 0
    return image


def read_serial(image: np.ndarray) -> int:
    h, w = image.shape[:2]
    value = 0
    for b, (x, y, s) in enumerate(_boxes(w, h)):
        q = s // 4
        if float(image[y + q : y + s - q, x + q : x + s - q].mean()) > 127:
            value |= 1 << b
    return value


def imread(path: Path | str, flags: int = cv2.IMREAD_COLOR) -> np.ndarray:
    image = cv2.imread(str(path), flags)
    assert image is not None, f"cannot read {path}"
    return image


def is_blank(image: np.ndarray) -> bool:
    """A frame with no picture in it (all one colour, as a failed decode or a zeroed buffer)."""
    return float(image.std()) < 4.0


@functools.lru_cache(maxsize=8)
def sample_frames(count: int, size: tuple[int, int]) -> tuple[np.ndarray, ...]:
    """The first ``count`` frames of the sample video, resized to ``size`` (width, height)."""
    frames = [cv2.resize(image, size, interpolation=cv2.INTER_AREA) for image in read_frames(SAMPLE_VIDEO, limit=count)]
    assert len(frames) == count, f"the sample has only {len(frames)} frames"
    for frame in frames:
        frame.setflags(write=False)
    return tuple(frames)


def count_frames_of_copy(path: Path, scratch: Path) -> int:
    """Decode a snapshot of a file another process is still writing."""
    copy = scratch / f"snapshot-{path.name.lstrip('.')}"
    shutil.copyfile(path, copy)
    try:
        return count_frames(copy)
    finally:
        copy.unlink(missing_ok=True)


def video_size(path: Path | str) -> tuple[int, int]:
    cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    try:
        return int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
    finally:
        cap.release()


def make_clip(dest: Path, frames: int, size: tuple[int, int] = (320, 180), fps: float = 25.0, fourcc: str = "mp4v") -> Path:
    """Re-encode the first ``frames`` frames of the sample video into ``dest`` (the sample looped past
    its end), each stamped with its index (:func:`stamp`): :func:`helpers.make_clip` so set."""
    return helpers.make_clip(dest, frames, size=size, fps=fps, fourcc=fourcc, stamp=stamp, loop=True)
