"""Image decoding (Pillow first, OpenCV for the rest), quiet on damaged files, and the ordered decode pool."""

from __future__ import annotations

import io
import os
import shutil
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path
from typing import Callable, Iterator, TypeVar

import cv2
import numpy as np
import pytest
from PIL import Image

from helpers import SAMPLE_IMAGES
from streamer import imageio
from streamer.imageio import OrderedPrefetcher, UnreadableImage, decode_image_bytes
from streamer.sources import ImageListSource, _read_image, open_source

_T = TypeVar("_T")

SAMPLE_JPEGS = sorted(SAMPLE_IMAGES.glob("*.jpg"))


class _Fallback:
    """OpenCV's decoder as ``decode_image_bytes``' fallback, counting its calls."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, data: np.ndarray) -> np.ndarray | None:
        self.calls += 1
        return cv2.imdecode(data, cv2.IMREAD_COLOR)


def _imread(path: Path) -> np.ndarray:
    image = cv2.imread(str(path))
    assert image is not None, path
    return image


def _imdecode(data: bytes) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None
    return image


def _encode(image: np.ndarray, ext: str) -> bytes:
    ok, data = cv2.imencode(ext, image)
    assert ok
    return data.tobytes()


def _pillow_rejects(data: bytes) -> bool:
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
    except Exception:  # noqa: BLE001 - any refusal counts
        return True
    return False


def _marker_in_scan(jpeg: bytes) -> bytes:
    """``jpeg`` with a DHT marker planted in the middle of its entropy-coded data.

    Pillow refuses it ("broken data stream"); libjpeg under OpenCV decodes it with
    "Corrupt JPEG data: premature end of data segment" printed on fd 2.
    """
    sos = jpeg.index(b"\xff\xda")
    pos = sos + (len(jpeg) - sos) // 2
    return jpeg[:pos] + b"\xff\xc4" + jpeg[pos + 2 :]


def _garbled_png(image: np.ndarray) -> bytes:
    """A PNG with noise inside its image data: libpng says "bad adaptive filter value"."""
    import random

    data = bytearray(_encode(image, ".png"))
    data[len(data) // 3 : len(data) // 3 + 4096] = random.Random(20260611).randbytes(4096)
    return bytes(data)


def _fd2_of(call: Callable[[], _T]) -> tuple[_T, bytes, list[str]]:
    """``call()``'s result, what reached file descriptor 2 meanwhile, and the Python warnings it raised.

    A warning is reported apart: under pytest it never reaches fd 2, but in the CLI
    Python prints it on stderr.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with tempfile.TemporaryFile() as sink, warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            os.dup2(sink.fileno(), 2)
            try:
                result = call()
            finally:
                sys.stderr.flush()
                os.dup2(saved, 2)
            sink.seek(0)
            written = sink.read()
    finally:
        os.close(saved)
    return result, written, [f"{w.category.__name__}: {w.message}" for w in caught]


# -- decode_image_bytes: the same pixels as OpenCV ---------------------------------------------
@pytest.mark.parametrize("path", SAMPLE_JPEGS, ids=lambda p: p.name)
def test_sample_photos_decode_to_exactly_opencvs_pixels(path: Path) -> None:
    fallback = _Fallback()
    image = decode_image_bytes(path.read_bytes(), path.name, fallback)
    expected = _imread(path)
    assert image.dtype == np.uint8 and image.shape == expected.shape
    assert np.array_equal(image, expected)
    assert fallback.calls == 0, "Pillow decodes a plain JPEG itself"


def test_png_and_grayscale_png_match_opencv() -> None:
    photo = _imread(SAMPLE_IMAGES / "palace.jpg")
    png = _encode(photo, ".png")
    assert np.array_equal(decode_image_bytes(png, "palace.png"), photo), "PNG is lossless: the very pixels"
    gray_png = _encode(cv2.cvtColor(photo, cv2.COLOR_BGR2GRAY), ".png")
    gray = decode_image_bytes(gray_png, "gray.png")
    assert gray.shape == photo.shape and gray.dtype == np.uint8, "grayscale comes out as 3-channel BGR"
    assert np.array_equal(gray, _imdecode(gray_png))


def test_16_bit_png_goes_to_opencv_and_matches_it() -> None:
    photo = _imread(SAMPLE_IMAGES / "cameraman.jpg")
    rng = np.random.default_rng(7)
    gray16 = cv2.cvtColor(photo, cv2.COLOR_BGR2GRAY).astype(np.uint16) * 256 + rng.integers(0, 256, photo.shape[:2]).astype(np.uint16)
    png16 = _encode(gray16, ".png")
    fallback = _Fallback()
    image = decode_image_bytes(png16, "deep.png", fallback)
    assert fallback.calls == 1, "a 16-bit grayscale PNG (Pillow mode I;16) is decoded by OpenCV"
    assert image.dtype == np.uint8 and np.array_equal(image, _imdecode(png16))
    with pytest.raises(UnreadableImage):
        decode_image_bytes(png16, "deep.png")  # no fallback: unreadable, not wrong pixels

    # Pillow 13 opens a 16-bit colour PNG itself (as 8-bit RGB, the high bytes); the pixels
    # must still be OpenCV's, low bytes ignored exactly as OpenCV ignores them.
    colour16 = photo.astype(np.uint16) * 256 + rng.integers(0, 256, photo.shape).astype(np.uint16)
    rgb16 = _encode(colour16, ".png")
    assert np.array_equal(decode_image_bytes(rgb16, "deep_rgb.png", _Fallback()), _imdecode(rgb16))


@pytest.mark.parametrize("orientation", [6, 3, 8])
def test_exif_orientation_is_applied_as_opencv_does(tmp_path: Path, orientation: int) -> None:
    path = tmp_path / f"rotated_{orientation}.jpg"
    exif = Image.Exif()
    exif[0x0112] = orientation
    with Image.open(SAMPLE_IMAGES / "cat.jpg") as im:
        im.save(path, exif=exif, quality=92)
    expected = _imread(path)  # OpenCV applies EXIF orientation
    image = decode_image_bytes(path.read_bytes(), path.name)
    assert image.shape == expected.shape
    if orientation in (6, 8):
        assert image.shape[:2] == (451, 300), "a quarter turn swaps width and height"
    assert np.array_equal(image, expected)


@pytest.mark.parametrize(
    "case",
    ["empty", "text", "jpeg-cut-at-10", "jpeg-cut-at-1000", "jpeg-cut-in-half", "png-cut-in-half", "png-garbled"],
)
def test_damaged_or_foreign_files_are_unreadable(case: str) -> None:
    jpeg = (SAMPLE_IMAGES / "palace.jpg").read_bytes()
    png = _encode(_imread(SAMPLE_IMAGES / "palace.jpg"), ".png")
    data = {
        "empty": b"",
        "text": b"streamer: these are notes, not an image\n" * 20,
        "jpeg-cut-at-10": jpeg[:10],
        "jpeg-cut-at-1000": jpeg[:1000],
        "jpeg-cut-in-half": jpeg[: len(jpeg) // 2],
        "png-cut-in-half": png[: len(png) // 2],
        "png-garbled": _garbled_png(_imread(SAMPLE_IMAGES / "palace.jpg")),
    }[case]
    with pytest.raises(UnreadableImage):
        decode_image_bytes(data, case)
    with pytest.raises(UnreadableImage):  # OpenCV gets its say, and refuses too
        _fd2_of(lambda: decode_image_bytes(data, case, _Fallback()))


def test_garbled_jpeg_that_opencv_still_decodes_goes_through_the_fallback() -> None:
    garbled = _marker_in_scan((SAMPLE_IMAGES / "palace.jpg").read_bytes())
    assert _pillow_rejects(garbled), "precondition: Pillow refuses this file"
    expected, said, _ = _fd2_of(lambda: _imdecode(garbled))
    assert b"Corrupt JPEG" in said, "precondition: libjpeg under OpenCV complains but decodes"
    fallback = _Fallback()
    image, _, _ = _fd2_of(lambda: decode_image_bytes(garbled, "garbled.jpg", fallback))
    assert fallback.calls == 1
    assert np.array_equal(image, expected)
    with pytest.raises(UnreadableImage):
        decode_image_bytes(garbled, "garbled.jpg")


# -- _read_image: nothing reaches stderr -----------------------------------------------------------
@pytest.mark.parametrize("kind", ["jpeg-marker-in-scan", "png-garbled", "png-cut"])
def test_damaged_image_writes_nothing_to_fd2(tmp_path: Path, kind: str) -> None:
    photo_path = SAMPLE_IMAGES / "palace.jpg"
    if kind == "jpeg-marker-in-scan":
        path, data = tmp_path / "broken.jpg", _marker_in_scan(photo_path.read_bytes())
    elif kind == "png-garbled":
        path, data = tmp_path / "broken.png", _garbled_png(_imread(photo_path))
    else:
        path, data = tmp_path / "broken.png", _encode(_imread(photo_path), ".png")[:5000]
    path.write_bytes(data)
    _, said, _ = _fd2_of(lambda: cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR))
    if kind != "png-cut":
        # libjpeg and libpng print these themselves.  For the cut PNG the line is OpenCV's own
        # log, which an earlier in-process CLI run may have silenced (OPENCV_LOG_LEVEL=SILENT).
        assert said, "precondition: OpenCV's decoder alone prints on fd 2 for this file"

    image, written, warned = _fd2_of(lambda: _read_image(path))
    assert written == b"", written
    assert warned == []
    if kind == "jpeg-marker-in-scan":
        assert image is not None and image.shape == (427, 640, 3), "OpenCV still decodes it"
    else:
        assert image is None


def test_jpeg_with_corrupt_exif_decodes_quietly(tmp_path: Path) -> None:
    """A damaged EXIF block (common from cheap cameras and editors) must not add lines to stderr."""
    import struct

    jpeg = (SAMPLE_IMAGES / "palace.jpg").read_bytes()
    payload = b"Exif\x00\x00MM\x00\x2a\x00\x00\x00\x08" + b"\xff" * 40  # an IFD that claims 65535 entries
    path = tmp_path / "bad_exif.jpg"
    path.write_bytes(jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + jpeg[2:])
    image, written, warned = _fd2_of(lambda: _read_image(path))
    assert written == b""
    assert image is not None and np.array_equal(image, _imread(path))
    assert warned == [], warned


def test_damaged_png_claiming_a_huge_size_is_unreadable_and_quiet(tmp_path: Path) -> None:
    """A 200-byte PNG whose header says 10000x10000 (above Pillow's 89 Mpx warning limit)."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", 10_000, 10_000, 8, 2, 0, 0, 0)
    path = tmp_path / "huge.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 1000)) + chunk(b"IEND", b""))
    image, written, warned = _fd2_of(lambda: _read_image(path))
    assert image is None
    assert written == b"", written
    assert warned == [], warned


# -- OrderedPrefetcher -----------------------------------------------------------------------------
def _drain(prefetcher: OrderedPrefetcher[int, _T]) -> list[tuple[int, _T]]:
    out = []
    while (got := prefetcher.next()) is not None:
        out.append(got)
    return out


@pytest.mark.parametrize("workers", [1, 4])
def test_prefetcher_hands_results_out_in_input_order(workers: int) -> None:
    n = 12
    finished: list[int] = []
    lock = threading.Lock()

    def slow_first(i: int) -> int:
        time.sleep(0.004 * (n - i))  # earlier items take longer
        with lock:
            finished.append(i)
        return i * i

    prefetcher = OrderedPrefetcher(slow_first, range(n), workers)
    try:
        assert _drain(prefetcher) == [(i, i * i) for i in range(n)]
    finally:
        prefetcher.close()
    if workers > 1:
        assert finished != sorted(finished), "later items did finish first; the order was restored"


@pytest.mark.parametrize("workers", [1, 4])
def test_prefetcher_raises_an_items_error_for_that_item_only(workers: int) -> None:
    def fn(i: int) -> int:
        if i == 3:
            raise ValueError("item 3 is bad")
        return -i

    prefetcher = OrderedPrefetcher(fn, range(8), workers)
    try:
        assert [prefetcher.next() for _ in range(3)] == [(0, 0), (1, -1), (2, -2)]
        with pytest.raises(ValueError, match="item 3"):
            prefetcher.next()
        assert _drain(prefetcher) == [(i, -i) for i in range(4, 8)]
        assert prefetcher.next() is None
    finally:
        prefetcher.close()


def _wait_for(predicate: Callable[[], bool], timeout: float = 2.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.002)
    return predicate()


def test_prefetcher_never_runs_more_than_ahead_items_beyond_the_consumer() -> None:
    ahead, n = 3, 20
    gate = threading.Event()
    started: list[int] = []
    lock = threading.Lock()

    def gated(i: int) -> int:
        with lock:
            started.append(i)
        assert gate.wait(5.0)
        return i

    prefetcher = OrderedPrefetcher(gated, range(n), workers=8, ahead=ahead)  # more threads than `ahead`
    try:
        time.sleep(0.05)
        assert started == [], "nothing is decoded before the first next()"
        first: list[tuple[int, int] | None] = []
        consumer = threading.Thread(target=lambda: first.append(prefetcher.next()))
        consumer.start()
        assert _wait_for(lambda: len(started) == 1 + ahead)
        time.sleep(0.1)  # give idle threads every chance to take more
        assert sorted(started) == list(range(1 + ahead)), "the item being waited for and `ahead` more"
        gate.set()
        consumer.join(5.0)
        assert first == [(0, 0)]
        for consumed in range(2, n + 1):
            assert prefetcher.next() == (consumed - 1, consumed - 1)
            with lock:
                assert len(started) <= consumed + ahead
        assert prefetcher.next() is None
        assert sorted(started) == list(range(n))
    finally:
        gate.set()
        prefetcher.close()


def test_prefetcher_close_is_prompt_and_drops_work_not_started() -> None:
    gate = threading.Event()
    started: list[int] = []
    lock = threading.Lock()
    generated: list[int] = []

    def items() -> Iterator[int]:
        for i in range(100):
            generated.append(i)
            yield i

    def gated(i: int) -> int:
        with lock:
            started.append(i)
        gate.wait(5.0)
        return i

    prefetcher = OrderedPrefetcher(gated, items(), workers=2, ahead=4)
    got: list[tuple[int, int] | None] = []
    consumer = threading.Thread(target=lambda: got.append(prefetcher.next()))
    consumer.start()
    try:
        assert _wait_for(lambda: len(started) == 2)  # both threads busy, three more items queued
        t0 = time.perf_counter()
        prefetcher.close()
        assert time.perf_counter() - t0 < 0.5, "close() does not wait for work in progress"
        assert prefetcher.next() is None
    finally:
        gate.set()
    consumer.join(5.0)
    assert got == [(0, 0)], "the item already handed to the consumer still arrives"
    time.sleep(0.1)
    assert sorted(started) == [0, 1], "queued items were cancelled, not run"
    assert len(generated) == 5, "items beyond `ahead` were never even taken from the iterator"


@pytest.mark.parametrize("workers", [1, 3])
def test_prefetcher_next_after_close_gives_nothing(workers: int) -> None:
    calls: list[int] = []

    def fn(i: int) -> int:
        calls.append(i)
        return i

    prefetcher = OrderedPrefetcher(fn, range(10), workers)
    assert prefetcher.next() == (0, 0)
    prefetcher.close()
    got = prefetcher.next()
    if workers > 1:
        assert got is None
        return
    assert got is None and calls == [0]


# -- ImageListSource through the pool -----------------------------------------------------------
def _mixed_folder(folder: Path) -> dict[str, np.ndarray]:
    """12 images under mixed names: byte copies of the photos, and PNG re-encodings."""
    names = [
        "b_rocket.jpg", "a_cat.JPG", "C_coffee.png", "10_flower.jpg", "2_palace.jpeg", "img_9.jpg",
        "img_10.png", "Zeta.jpg", "_first.jpg", "mid dle.jpg", "x-grace.png", "0.jpg",
    ]  # fmt: skip
    expected: dict[str, np.ndarray] = {}
    for i, name in enumerate(names):
        source = SAMPLE_JPEGS[i % len(SAMPLE_JPEGS)]
        target = folder / name
        if target.suffix.lower() == ".png":
            image = _imread(source)
            target.write_bytes(_encode(image, ".png"))
        else:
            shutil.copyfile(source, target)
        expected[name] = _imread(target)
    return expected


@pytest.mark.parametrize("workers", [None, 1, 4], ids=["default", "1", "4"])
def test_image_folder_frames_come_in_name_order_with_the_right_pixels(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, workers: int | None
) -> None:
    expected = _mixed_folder(tmp_path)
    broken = tmp_path / "img_11.jpg"
    broken.write_bytes(_marker_in_scan((SAMPLE_IMAGES / "cat.jpg").read_bytes())[:3000])  # unreadable, skipped
    if workers is not None:
        monkeypatch.setattr(imageio, "default_workers", lambda: workers)
    source = open_source(str(tmp_path))
    assert isinstance(source, ImageListSource)
    try:
        frames = list(source)
    finally:
        source.close()
    assert [f.name for f in frames] == sorted(expected)
    assert [f.index for f in frames] == list(range(len(expected)))
    for frame in frames:
        assert np.array_equal(frame.image, expected[frame.name]), frame.name
        assert frame.decode_s > 0.0
    assert source.unreadable == 1


def test_image_folder_source_closed_early_stops_decoding(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _mixed_folder(tmp_path)
    monkeypatch.setattr(imageio, "default_workers", lambda: 3)
    source = open_source(str(tmp_path))
    frames = iter(source)
    first = next(frames)
    assert first.name == "0.jpg"
    source.close()
    source.close()  # twice is harmless
