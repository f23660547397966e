"""Image preprocessing shared by every backend.

A :class:`PreprocessSpec` says how a model was trained to see images (resize,
crop, mean/std, channel order).  :func:`preprocess` applies it to OpenCV frames
(BGR, uint8, HWC) with PyTorch on any device, so the GPU path uploads uint8
bytes and does the float work on the GPU, and the CPU backends (ONNX Runtime)
run the very same code on the CPU.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Sequence

import numpy as np

from engines.errors import ConfigError

if TYPE_CHECKING:
    import torch

Interpolation = Literal["bilinear", "bicubic"]


@dataclass(frozen=True)
class PreprocessSpec:
    """How to turn a photograph into the network's input tensor."""

    resize: int = 256
    """Length the shorter image side is resized to, before the crop."""
    crop: int = 224
    """Side of the square centre crop fed to the network."""
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    """Per-channel mean, in RGB order, on the 0..1 scale."""
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    """Per-channel standard deviation, in RGB order, on the 0..1 scale."""
    interpolation: Interpolation = "bilinear"
    channel_order: Literal["RGB", "BGR"] = "RGB"

    def __post_init__(self) -> None:
        if self.crop <= 0 or self.resize < self.crop:
            raise ConfigError(f"preprocess: need 0 < crop <= resize, got crop={self.crop} resize={self.resize}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ConfigError("preprocess: mean and std need three values, std > 0")
        if self.interpolation not in ("bilinear", "bicubic"):
            raise ConfigError(f"preprocess: unknown interpolation {self.interpolation!r}")
        if self.channel_order not in ("RGB", "BGR"):
            raise ConfigError(f"preprocess: unknown channel order {self.channel_order!r}")

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """Shape (C, H, W) of one preprocessed image."""
        return (3, self.crop, self.crop)


def resized_size(height: int, width: int, shorter: int) -> tuple[int, int]:
    """Size after resizing the shorter side to ``shorter`` (torchvision's rule)."""
    if height <= width:
        return shorter, int(shorter * width / height)
    return int(shorter * height / width), shorter


def _to_uint8_bgr(frame: np.ndarray) -> np.ndarray:
    if frame.dtype != np.uint8:
        raise ConfigError(f"preprocess: frames must be uint8, got {frame.dtype}")
    if frame.ndim == 2:
        frame = np.repeat(frame[:, :, None], 3, axis=2)
    elif frame.ndim == 3 and frame.shape[2] == 4:
        frame = frame[:, :, :3]
    if frame.ndim != 3 or frame.shape[2] != 3:
        raise ConfigError(f"preprocess: expected an HxWx3 frame, got shape {frame.shape}")
    return frame


class PinnedStaging:
    """Reusable page-locked host buffers for uploading frames to a GPU.

    Pinning a fresh buffer per frame costs milliseconds (measured ~6 ms per
    720p frame on an H200 host); reusing one per frame shape makes the upload an
    asynchronous DMA. An event per buffer guards reuse until its copy is done.
    The buffer for a frame shape holds a power of two of frames, grown to the
    largest batch seen, and a smaller batch uses its first rows: batches of
    every size from 1 up (several streams batched together) pin it only a few times.
    """

    _MAX_SHAPES = 8

    def __init__(self) -> None:
        self._buffers: dict[tuple[int, ...], tuple["torch.Tensor", "torch.cuda.Event | None"]] = {}

    @staticmethod
    def capacity(n: int) -> int:
        """Frames a buffer holds for a batch of ``n``: the next power of two."""
        return 1 << max(0, n - 1).bit_length()

    def upload(self, frames: Sequence[np.ndarray], device: "torch.device") -> "torch.Tensor":
        import torch

        frame_shape = tuple(frames[0].shape)
        n = len(frames)
        buf, event = self._buffers.get(frame_shape, (None, None))
        if event is not None:
            event.synchronize()  # the last copy out of it is done: it may be written again
        if buf is None or buf.shape[0] < n:
            if buf is None and len(self._buffers) >= self._MAX_SHAPES:
                self._buffers.clear()
            buf = torch.empty((self.capacity(n), *frame_shape), dtype=torch.uint8).pin_memory()
        rows = buf[:n]
        np.stack(frames, out=rows.numpy())  # numpy's one thread: torch's intra-op threads were tried and spun ~8 cores (OpenMP) beside the decoders
        gpu = rows.to(device, non_blocking=True)
        done = torch.cuda.Event()
        done.record(torch.cuda.current_stream(device))
        self._buffers[frame_shape] = (buf, done)
        return gpu


def _device_frame(frame: "torch.Tensor", target: "torch.device") -> "torch.Tensor":
    """A frame that is a tensor already (``Frame.device_image``: (H, W, 3) uint8 BGR, usually on the GPU),
    on ``target``: no host round trip when it is there already."""
    import torch

    if frame.dtype != torch.uint8 or frame.ndim != 3 or int(frame.shape[2]) != 3:
        raise ConfigError(f"preprocess: a frame tensor must be (H, W, 3) uint8 BGR, got {tuple(frame.shape)} {frame.dtype}")
    if frame.device.type == "cuda" and target.type == "cuda" and frame.device == target:
        # Made on another thread's stream (a decoder's): the caching allocator must not hand its
        # memory out again before this stream's reads of it are done.
        frame.record_stream(torch.cuda.current_stream(target))
        return frame
    return frame.to(target, non_blocking=frame.device.type == "cuda")


def preprocess(
    frames: "Sequence[np.ndarray | torch.Tensor]",
    spec: PreprocessSpec,
    device: "torch.device | str" = "cpu",
    dtype: "torch.dtype | None" = None,
    staging: PinnedStaging | None = None,
) -> "torch.Tensor":
    """Turn BGR uint8 frames into a normalised NCHW batch on ``device``.

    A frame is a host ndarray (HxWx3, OpenCV's layout) or a tensor of that layout already on a
    device (a GPU decoder's output, see :mod:`streamer.gpu_frames`), which is used where it is,
    without a copy through the host.  Frames of one size go through as one batch (one upload,
    one resize); frames of different sizes are processed one by one and stacked.
    """
    import torch

    if not frames:
        raise ConfigError("preprocess: no frames given")
    target = torch.device(device)
    out_dtype = dtype if dtype is not None else torch.float32
    if any(isinstance(f, torch.Tensor) for f in frames):
        tensors = [_device_frame(f, target) if isinstance(f, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(_to_uint8_bgr(f))).to(target) for f in frames]
        if all(t.shape == tensors[0].shape for t in tensors):
            return _preprocess_uint8(torch.stack(tensors), spec, out_dtype)
        return torch.cat([_preprocess_uint8(t.unsqueeze(0), spec, out_dtype) for t in tensors])
    arrays = [_to_uint8_bgr(f) for f in frames]  # type: ignore[arg-type]
    groups: list[list[np.ndarray]]
    if all(a.shape == arrays[0].shape for a in arrays):
        groups = [arrays]
    else:
        groups = [[a] for a in arrays]
    outputs = []
    for group in groups:
        if staging is not None and target.type == "cuda":
            uploaded = staging.upload(group, target)
        else:
            uploaded = torch.from_numpy(np.ascontiguousarray(np.stack(group))).to(target)
        outputs.append(_preprocess_uint8(uploaded, spec, out_dtype))
    return outputs[0] if len(outputs) == 1 else torch.cat(outputs)


def _preprocess_uint8(batch: "torch.Tensor", spec: PreprocessSpec, dtype: "torch.dtype") -> "torch.Tensor":
    """(N, H, W, 3) uint8 BGR on its device -> (N, 3, crop, crop) normalised.

    Order matters for speed: resize and crop first (on the CPU in uint8, whose
    antialiased kernels are vectorised and ~10x faster than float; on a GPU in
    float), then flip channels, convert and normalise only the small crop.
    """
    import torch
    import torch.nn.functional as F

    x = batch.permute(0, 3, 1, 2)  # a channels-last view, no copy
    height, width = int(x.shape[2]), int(x.shape[3])
    new_h, new_w = resized_size(height, width, spec.resize)
    if (new_h, new_w) != (height, width):
        if x.device.type != "cpu":
            x = x.float()
        x = F.interpolate(x, size=(new_h, new_w), mode=spec.interpolation, align_corners=False, antialias=True)
        if spec.interpolation == "bicubic" and x.is_floating_point():
            x = x.clamp_(0.0, 255.0)
    top = int(round((new_h - spec.crop) / 2.0))
    left = int(round((new_w - spec.crop) / 2.0))
    x = x[:, :, top : top + spec.crop, left : left + spec.crop]
    if spec.channel_order == "RGB":
        x = x.flip(1)
    x = x.float()
    mean, std = _normalisation(spec.mean, spec.std, x.device)
    x = (x - mean) / std
    return x.to(dtype).contiguous()


def preprocess_device_batch(batch: "torch.Tensor", spec: PreprocessSpec, dtype: "torch.dtype") -> "torch.Tensor":
    """(N, H, W, 3) uint8 BGR already on its device -> the network's (N, 3, crop, crop) input: the steps
    of :func:`preprocess` after the upload (a CUDA graph captures them, see TorchBackend.classify)."""
    return _preprocess_uint8(batch, spec, dtype)


@functools.lru_cache(maxsize=None)
def _normalisation(mean: tuple[float, ...], std: tuple[float, ...], device: "torch.device") -> tuple["torch.Tensor", "torch.Tensor"]:
    """The (1, 3, 1, 1) mean and std tensors, in 0..255 units, made once per device.

    Making them per frame cost two host-to-device copies, each of which waits for the
    GPU's queue to drain (a pageable copy is synchronous): the pipeline's inference
    thread then stalled on the previous frame's network on every frame.
    """
    import torch

    m = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1) * 255.0
    s = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1) * 255.0
    return m.to(device), s.to(device)
