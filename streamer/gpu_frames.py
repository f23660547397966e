"""Frames that start on the GPU: the one seam for GPU JPEG decoding and NVDEC video decoding.

A :class:`~streamer.sources.Frame` may carry ``device_image`` beside ``image``: the same pixels,
(H, W, 3) uint8 BGR (OpenCV's layout, as ``image``), as a torch tensor on the device that decoded
it.  The batcher hands ``device_image`` to the inference worker (:func:`frame_pixels`), and the
backend's ``preprocess`` uses it where it is (``engines.preprocess``: no host upload); the render
and encode side keep reading ``image``, the host copy, which the source copies back
asynchronously (one copy per frame into page-locked memory, queued on the source's own CUDA
stream; the source waits once per decoded batch, never per frame, before handing the batch out).

:class:`DeviceCopier` is that stream and those copies, shared by the two GPU sources:
:class:`GpuJpegFolderSource` here (a folder of photographs, JPEGs decoded in batches by nvJPEG
through ``torchvision.io.decode_jpeg(list, device='cuda')``) and
:class:`streamer.sources_nvdec.NvdecVideoSource` (video files through PyNvVideoCodec).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from streamer.sources import Frame, ImageListSource

if TYPE_CHECKING:
    import torch

    from streamer.imageio import OrderedPrefetcher

log = logging.getLogger(__name__)

JPEG_EXTENSIONS = frozenset({".jpg", ".jpeg"})
JPEG_BATCH = 16
"""Photographs decoded by one nvJPEG call (a batch that the capture thread then hands out one by one)."""


def frame_pixels(frame: Frame) -> "np.ndarray | torch.Tensor":
    """What the inference worker is given for ``frame``: its device image when it has one, else the host image."""
    return frame.device_image if frame.device_image is not None else frame.image


def cuda_device(device: str | None) -> str | None:
    """``device`` when it names a CUDA device that torch can use, else None (the CPU path)."""
    if not device or not device.startswith("cuda"):
        return None
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    index = int(device.split(":")[1]) if ":" in device else 0
    return f"cuda:{index}" if index < torch.cuda.device_count() else None


class DeviceCopier:
    """A source's CUDA stream (or the CPU, for tests): device images made on it and their host copies.

    :meth:`publish` turns an (H, W, 3) uint8 BGR tensor into (host ndarray, device tensor), the
    host copy queued without waiting; :meth:`wait` waits once for everything queued so far (the
    source calls it once per decoded batch, before any frame of the batch leaves it).
    """

    def __init__(self, device: str) -> None:
        import torch

        self.device = torch.device(device)
        self.stream: "torch.cuda.Stream | None" = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None

    def context(self) -> Any:
        """``with copier.context():`` runs torch work on the source's stream."""
        import contextlib

        import torch

        return torch.cuda.stream(self.stream) if self.stream is not None else contextlib.nullcontext()

    def publish(self, bgr: "torch.Tensor") -> "tuple[np.ndarray, torch.Tensor]":
        """(host copy, device image) of a contiguous (H, W, 3) uint8 BGR tensor made on this stream."""
        import torch

        if bgr.device.type != "cuda":
            return bgr.numpy().copy(), bgr
        host = torch.empty(tuple(bgr.shape), dtype=torch.uint8, pin_memory=True)
        host.copy_(bgr, non_blocking=True)
        return host.numpy(), bgr

    def wait(self) -> None:
        if self.stream is not None:
            self.stream.synchronize()


def rgb_chw_to_bgr_hwc(image: "torch.Tensor") -> "torch.Tensor":
    """(3, H, W) RGB (torchvision's decoders) -> contiguous (H, W, 3) BGR (OpenCV's layout)."""
    return image.flip(0).permute(1, 2, 0).contiguous()


def _decode_on_cpu(path: Path, data: bytes) -> np.ndarray | None:
    from streamer.imageio import UnreadableImage, decode_image_bytes
    from streamer.sources import _opencv_decode

    try:
        return decode_image_bytes(data, path.name, lambda blob: _opencv_decode(blob, path.name))
    except UnreadableImage as exc:
        log.debug("%s: %s", path.name, exc)
        return None


def _prefetch(path: Path) -> "tuple[bytes | None, np.ndarray | None, float]":
    """On a reading thread: a JPEG's bytes (for the GPU), or any other image decoded on the CPU here."""
    from streamer.imageio import read_file_bytes

    start = time.perf_counter()
    try:
        data = bytes(read_file_bytes(path))
    except Exception as exc:  # noqa: BLE001 - an unreadable file is skipped like an undecodable one
        log.debug("%s: %s", path.name, exc)
        return None, None, time.perf_counter() - start
    if _looks_like_jpeg(path, data) and _gpu_decodable(data):
        return data, None, time.perf_counter() - start
    return None, _decode_on_cpu(path, data), time.perf_counter() - start


def _gpu_decodable(data: bytes) -> bool:
    """A JPEG the GPU decodes as the CPU path would: within the pixel limit, YCbCr or grey, no EXIF rotation
    (the CPU path applies it; nvJPEG does not).  Reads the header only."""
    import io

    from PIL import Image

    from streamer.imageio import MAX_PIXELS

    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.width * im.height > MAX_PIXELS or im.mode not in ("RGB", "L"):
                return False
            return int(im.getexif().get(0x0112, 1) or 1) == 1
    except Exception:  # noqa: BLE001 - not for the GPU; the CPU path decides and says why
        return False


def _looks_like_jpeg(path: Path, data: bytes) -> bool:
    return path.suffix.lower() in JPEG_EXTENSIONS and data[:3] == b"\xff\xd8\xff"


class GpuJpegFolderSource(ImageListSource):
    """One image, a folder of images or a glob, with the JPEGs decoded in batches on the GPU. Lossless.

    Files are read ahead by threads (bytes only), then up to :data:`JPEG_BATCH` JPEGs at a time
    are decoded by one ``torchvision.io.decode_jpeg(list, device=...)`` call; the frames carry the
    decoded tensor as ``device_image`` and its host copy as ``image``.  Other formats (PNG, ...)
    and JPEGs nvJPEG refuses (CMYK, progressive ones on some versions, damaged files) are decoded
    on the CPU as :class:`ImageListSource` does, in order; unreadable ones are skipped with the same
    warning.  Same names, same order, same count as the CPU path.
    """

    def __init__(self, paths: list[Path], display_name: str, device: str) -> None:
        super().__init__(paths, display_name)
        self.copier = DeviceCopier(device)
        self._bytes: "OrderedPrefetcher[Path, tuple[bytes | None, np.ndarray | None, float]] | None" = None
        self._ready: list[Frame] = []
        self.gpu_decoded = 0
        """Images decoded on the GPU so far (the rest went through the CPU decoder)."""

    def _open_impl(self) -> None:
        from streamer.imageio import OrderedPrefetcher, default_workers

        self.close()
        workers = default_workers() if len(self.paths) > 1 else 1
        self._bytes = OrderedPrefetcher(_prefetch, self.paths, workers)

    def _read_impl(self) -> Frame | None:
        while not self._ready:
            if not self._decode_next_batch():
                return None
        return self._ready.pop(0)

    def _decode_next_batch(self) -> bool:
        """Read up to a batch of files and decode them into ``_ready``; False at the end."""
        reader = self._bytes
        if reader is None:
            return False
        batch: "list[tuple[Path, bytes | None, np.ndarray | None, float]]" = []
        while len(batch) < JPEG_BATCH:
            got = reader.next()
            if got is None:
                break
            path, (data, image, read_s) = got
            batch.append((path, data, image, read_s))
        if not batch:
            return False
        start = time.perf_counter()
        jpegs = [i for i, item in enumerate(batch) if item[1] is not None]
        decoded = self._decode_on_gpu([batch[i][1] or b"" for i in jpegs])
        published: "dict[int, tuple[np.ndarray, torch.Tensor]]" = {}
        with self.copier.context():
            for i, tensor in zip(jpegs, decoded):
                if tensor is not None:
                    published[i] = self.copier.publish(rgb_chw_to_bgr_hwc(tensor))
        self.copier.wait()  # once per batch: the device images and their host copies are complete
        gpu_s = (time.perf_counter() - start) / max(1, len(published))
        for i, (path, data, image, read_s) in enumerate(batch):
            if i in published:
                host, device_image = published[i]
                frame = self._make_frame(host, path.name, read_s + gpu_s)
                frame.device_image = device_image
                self.gpu_decoded += 1
                self._ready.append(frame)
                continue
            decode_s = read_s
            if data is not None:  # a JPEG nvJPEG refused (CMYK, damaged...): the CPU decoder's turn
                t0 = time.perf_counter()
                image = _decode_on_cpu(path, data)
                decode_s += time.perf_counter() - t0
            if image is None:
                self._skip_unreadable(path)
                continue
            self._ready.append(self._make_frame(image, path.name, decode_s))
        return True

    def _decode_on_gpu(self, blobs: Sequence[bytes]) -> "list[torch.Tensor | None]":
        """One nvJPEG call for the whole list; on a failure, one call per image to find the ones it refuses."""
        if not blobs:
            return []
        import torch
        from torchvision.io import ImageReadMode, decode_jpeg

        device = self.copier.device
        datas = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in blobs]
        with self.copier.context():
            try:
                return list(decode_jpeg(datas, mode=ImageReadMode.RGB, device=device))
            except RuntimeError as exc:
                log.debug("batched GPU JPEG decode failed (%s); decoding one by one", exc)
            out: "list[torch.Tensor | None]" = []
            for data in datas:
                try:
                    out.append(decode_jpeg(data, mode=ImageReadMode.RGB, device=device))
                except RuntimeError:
                    out.append(None)
            return out

    def close(self) -> None:
        super().close()
        reader, self._bytes = self._bytes, None
        if reader is not None:
            reader.close()
        self._ready = []


def gpu_jpeg_available(device: str | None) -> bool:
    """True when torchvision can decode JPEGs on ``device`` (a CUDA device; torchvision with nvJPEG)."""
    if cuda_device(device) is None:
        return False
    try:
        from torchvision.io import decode_jpeg  # noqa: F401
    except ImportError:
        return False
    return True


__all__ = ["DeviceCopier", "GpuJpegFolderSource", "cuda_device", "frame_pixels", "gpu_jpeg_available", "rgb_chw_to_bgr_hwc"]
