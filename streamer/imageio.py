"""Decoding still images: quietly, and several at a time.

Image folders are decoded ahead of the pipeline by a small pool of threads
(:class:`OrderedPrefetcher`), since one thread decoding one JPEG after another
is what bounds a folder run on a machine with cores to spare.

The decoder is Pillow, for two reasons: it never writes to the process's
stderr (libjpeg's "Corrupt JPEG data" and libpng's "libpng error" lines, which
OpenCV's decoders let through, would precede our own one line about a bad
file), and it releases the GIL while it decodes, so the pool's threads decode
in parallel.  It gives the same pixels as ``cv2.imread`` for JPEG and PNG
(both use libjpeg-turbo with the same IDCT; checked on the bundled photos),
and EXIF orientation is applied as OpenCV does.  Images Pillow cannot open or
convert faithfully (16-bit and float images, formats it lacks such as
OpenEXR) go to OpenCV, with its native stderr caught, one at a time.
"""

from __future__ import annotations

import io
import logging
import os
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Generic, Iterable, Iterator, TypeVar

import numpy as np

log = logging.getLogger(__name__)

_T = TypeVar("_T")
_R = TypeVar("_R")

MAX_PIXELS = 1 << 30
"""Largest image decoded (OpenCV's own default limit, about 1.07 gigapixels)."""

_PIL_FAITHFUL_MODES = frozenset({"RGB", "RGBA", "RGBX", "L", "LA", "P", "PA", "1", "CMYK", "YCbCr"})
"""Pillow modes whose conversion to 8-bit RGB matches OpenCV's; others (16-bit, 32-bit int/float) go to OpenCV."""


class UnreadableImage(Exception):
    """The file is not an image this program can decode (damaged, truncated, empty, too large)."""


def decode_image_bytes(data: bytes, name: str, cv2_fallback: Callable[[np.ndarray], np.ndarray | None] | None = None) -> np.ndarray:
    """Encoded image bytes -> BGR uint8 (H, W, 3) array; raises :class:`UnreadableImage`.

    ``cv2_fallback`` decodes what Pillow cannot (given the bytes as a uint8 array);
    without it such a file is unreadable.
    """
    if not data:
        raise UnreadableImage("empty file")
    from PIL import Image, ImageOps, UnidentifiedImageError

    _silence_pillow_warnings()
    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.width * im.height > MAX_PIXELS:
                raise UnreadableImage(f"{im.width}x{im.height} is larger than {MAX_PIXELS} pixels")
            if im.mode not in _PIL_FAITHFUL_MODES:
                raise _UseOpenCV(f"Pillow mode {im.mode}")
            im.load()
            rotated = ImageOps.exif_transpose(im)
            rgb = rotated.convert("RGB") if rotated.mode != "RGB" else rotated
            array = np.asarray(rgb)
    except UnreadableImage:
        raise
    except (_UseOpenCV, UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError, EOFError) as exc:
        # Not for Pillow (a format it lacks, 16-bit) or damaged ("image file is truncated",
        # "broken PNG file"): OpenCV decides, as it did before Pillow was tried; its
        # decoders are more lenient with damaged JPEGs.
        return _fallback(data, name, cv2_fallback, str(exc) or type(exc).__name__)
    import cv2

    return cv2.cvtColor(array, cv2.COLOR_RGB2BGR)


class _UseOpenCV(Exception):
    pass


def _silence_pillow_warnings() -> None:
    """Pillow's own warnings ("Corrupt EXIF data", DecompressionBombWarning) would reach stderr
    before our one line about the file; :data:`MAX_PIXELS` is the size limit that counts.

    A process-wide filter on warnings raised from Pillow's modules, (re)placed first in the
    filter list on every decode: ``warnings.catch_warnings`` is not thread-safe, and decodes
    run on several threads; a filter added once could be lost when some other code restores
    the list.
    """
    import warnings

    warnings.filterwarnings("ignore", module=r"PIL(\.|$)")


def _fallback(data: bytes, name: str, cv2_fallback: Callable[[np.ndarray], np.ndarray | None] | None, why: str) -> np.ndarray:
    if cv2_fallback is None:
        raise UnreadableImage(why)
    image = cv2_fallback(np.frombuffer(data, dtype=np.uint8))
    if image is None or not image.size:
        raise UnreadableImage(why)
    log.debug("%s: decoded by OpenCV (Pillow: %s)", name, why)
    return image


def default_workers() -> int:
    """Threads that decode (or encode) an image folder: up to 8, one core left for the rest of the pipeline."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(8, cores - 1))


class OrderedPrefetcher(Generic[_T, _R]):
    """``fn`` applied to ``items`` by a pool of threads, results handed out in order.

    At most ``ahead`` results wait (bounded memory).  ``workers <= 1`` runs
    ``fn`` in the caller's thread, without a pool.  ``fn``'s exceptions come out
    of :meth:`next` for the item that raised them.  :meth:`close` stops the
    pool without waiting for work still queued.
    """

    def __init__(self, fn: Callable[[_T], _R], items: Iterable[_T], workers: int, ahead: int | None = None) -> None:
        self._fn = fn
        self._items: Iterator[_T] = iter(items)
        self._workers = max(1, workers)
        self._ahead = max(1, ahead if ahead is not None else 2 * self._workers)
        self._pending: deque[tuple[_T, Future[_R]]] = deque()
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self._closed = False

    def _fill(self) -> None:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self._workers, thread_name_prefix="streamer-decode")
        while len(self._pending) < self._ahead:
            try:
                item = next(self._items)
            except StopIteration:
                return
            self._pending.append((item, self._pool.submit(self._fn, item)))

    def next(self) -> tuple[_T, _R] | None:
        """The next item and its result (or its exception raised), None when all are done."""
        if self._workers == 1:
            if self._closed:
                return None
            try:
                item = next(self._items)
            except StopIteration:
                return None
            return item, self._fn(item)
        with self._lock:
            if self._closed:
                return None
            self._fill()
            if not self._pending:
                return None
            item, future = self._pending.popleft()
            self._fill()
        return item, future.result()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            pending, self._pending = self._pending, deque()
            pool, self._pool = self._pool, None
        for _, future in pending:
            future.cancel()
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)


MAX_IMAGE_FILE_BYTES = 256 << 20
"""Larger image files are not read at all (a 2 GiB file named .jpg would take gigabytes to decode)."""


def read_file_bytes(path: Path) -> bytes:
    try:
        size = path.stat().st_size
        if size > MAX_IMAGE_FILE_BYTES:
            raise UnreadableImage(f"{size / (1 << 20):.0f} MiB is larger than the {MAX_IMAGE_FILE_BYTES >> 20} MiB an image may be")
        return path.read_bytes()
    except OSError as exc:
        raise UnreadableImage(exc.strerror or str(exc)) from exc
