"""int8 calibration data: the images of ``--calib DIR`` through the model's own preprocessing.

:class:`CalibrationImages` is the one reader, shared by the tensorrt backend (an
``IInt8EntropyCalibrator2`` fed whole batches) and the torch2trt backend (its
``int8_calib_dataset``, one preprocessed image per item).
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from engines.backends.tensorrt.util import CallbackErrors, trt
from engines.errors import EngineError

if TYPE_CHECKING:
    import torch

    from engines.preprocess import PreprocessSpec

log = logging.getLogger("engines.backends.tensorrt")

CALIBRATION_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def calibration_images(folder: Path) -> list[Path]:
    """The images an int8 calibration reads from ``folder`` (recursive, sorted by relative path)."""
    folder = folder.expanduser()
    if not folder.is_dir():
        raise EngineError(f"calibration folder {folder} does not exist or is not a folder")
    images = [
        p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in CALIBRATION_IMAGE_SUFFIXES
    ]
    images.sort(key=lambda p: p.relative_to(folder).as_posix())
    if not images:
        raise EngineError(
            f"calibration folder {folder} holds no images ({', '.join(CALIBRATION_IMAGE_SUFFIXES)})"
        )
    return images


_calib_memo: dict[tuple[str, tuple[tuple[str, int, int], ...]], str] = {}


def calibration_set_sha256(folder: Path | None) -> str | None:
    """SHA-256 over the sorted relative names, sizes and modification times of the calibration images
    (None: no folder).  No image is read: a load never re-hashes the set, and the result is memoised
    per (folder, listing) for the process."""
    if folder is None:
        return None
    folder = folder.expanduser()
    listing = []
    for path in calibration_images(folder):
        st = path.stat()
        listing.append((path.relative_to(folder).as_posix(), int(st.st_size), int(st.st_mtime_ns)))
    memo_key = (str(folder.resolve()), tuple(listing))
    cached = _calib_memo.get(memo_key)
    if cached is not None:
        return cached
    digest = hashlib.sha256()
    for name, size, mtime in listing:
        raw = name.encode("utf-8")
        digest.update(len(raw).to_bytes(8, "big") + raw)
        digest.update(size.to_bytes(8, "big") + mtime.to_bytes(8, "big", signed=True))
    value = digest.hexdigest()
    _calib_memo[memo_key] = value
    return value


class CalibrationImages:
    """Calibration images read and preprocessed on demand: item ``i`` is ``[image i]``, (3, H, W) float32
    on ``device`` (torch2trt's dataset contract); :meth:`batch` stacks whole batches (TensorRT's)."""

    def __init__(self, images: Sequence[Path], spec: "PreprocessSpec", device: str) -> None:
        self.images = list(images)
        self.spec = spec
        self.device = device

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> list["torch.Tensor"]:
        return [self.read([self.images[index]])[0]]

    def read(self, paths: Sequence[Path]) -> "torch.Tensor":
        """``paths`` as one contiguous (N, 3, H, W) float32 batch on the device."""
        import cv2
        import torch

        from engines.preprocess import preprocess

        frames = []
        for path in paths:
            frame = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if frame is None:
                raise EngineError(f"int8 calibration: cannot read image {path}")
            frames.append(frame)
        return preprocess(frames, self.spec, self.device, torch.float32).contiguous()

    def batches(self, batch: int) -> list[list[Path]]:
        """The images in whole batches of ``batch`` (repeated when fewer; a partial last batch dropped)."""
        paths = list(self.images)
        if len(paths) < batch:
            log.warning("int8 calibration: %d image(s) for a batch of %d; repeating images", len(paths), batch)
            paths = (paths * (batch // len(paths) + 1))[:batch]
        if len(paths) % batch:
            log.info("int8 calibration: the last %d image(s) do not fill a batch and are skipped", len(paths) % batch)
        return [paths[i : i + batch] for i in range(0, len(paths) - batch + 1, batch)]


class CalibrationTable:
    """The calibration table of one build: read from the store if there, kept in memory when TensorRT
    writes it, and stored by the builder only after the engine was built (a failed or interrupted build
    leaves no table behind)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.written: bytes | None = None

    def read(self) -> bytes | None:
        if self.path.is_file():
            log.info("int8 calibration: reusing the table %s", self.path.name)
            return self.path.read_bytes()
        return None

    def commit(self) -> None:
        from engines.cache import atomic_write

        if self.written:
            atomic_write(self.path, self.written)


def make_calibrator(
    images: CalibrationImages,
    batch_shape: tuple[int, ...],
    table: CalibrationTable,
    errors: CallbackErrors,
) -> "trt.IInt8EntropyCalibrator2":
    """An entropy calibrator feeding ``images`` in whole batches of ``batch_shape`` (the calibration
    profile's shape: ``(N, 3, H, W)``).  Whatever a callback raises (an unreadable image, Ctrl-C) is
    kept in ``errors``; ``get_batch`` then reports the end of the data, and the builder re-raises."""
    batch = int(batch_shape[0])
    batches = images.batches(batch)

    class _Calibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)
            self._next = 0
            self.buffer: torch.Tensor | None = None

        def get_batch_size(self) -> int:
            return batch

        def get_batch(self, names: list[str]) -> list[int]:
            def read() -> list[int]:
                if self._next >= len(batches):
                    return []  # no more batches
                chunk = batches[self._next]
                self._next += 1
                tensor = images.read(chunk)
                if tuple(tensor.shape) != tuple(batch_shape):
                    raise EngineError(
                        f"int8 calibration: a batch of shape {tuple(tensor.shape)} for a profile of {tuple(batch_shape)}"
                    )
                self.buffer = tensor  # kept alive until the next call: TensorRT reads it after we return
                log.info("int8 calibration: batch %d/%d", self._next, len(batches))
                return [int(tensor.data_ptr())]

            return errors.call(read, [])

        def read_calibration_cache(self) -> bytes | None:  # None: no cache (documented)
            return errors.call(table.read, None)

        def write_calibration_cache(self, cache: "bytes | memoryview") -> None:
            def keep() -> None:
                table.written = bytes(cache)

            errors.call(keep, None)

    return _Calibrator()
