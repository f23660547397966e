"""Video files decoded by NVDEC through PyNvVideoCodec (``--decoder nvdec``; ``pip install .[nvdec]``).

PyNvVideoCodec (NVIDIA's PyPI package; it bundles FFmpeg's demuxer) decodes on the GPU's video
engine and converts to interleaved RGB in CUDA memory, which torch reads through DLPack.
:class:`NvdecVideoSource` takes frames from its ``ThreadedDecoder`` (decoding runs ahead on a
thread of its own) a batch at a time, turns each into an (H, W, 3) BGR tensor on the source's CUDA
stream (the copy also frees the decoder's surface) and queues its host copy
(:class:`streamer.gpu_frames.DeviceCopier`); it waits once per batch.  The frame's
``device_image`` goes to the GPU preprocessing without a host round trip; ``image`` (the host
copy) goes to the overlay and the encoder.  Every frame, in order, to the end of the file, like
:class:`streamer.sources.VideoFileSource`; the frame times are index / frame rate.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

from engines.errors import SourceError
from streamer.sources import DEFAULT_FPS, MAX_SANE_FPS, Frame, Source, SourceOptions

log = logging.getLogger(__name__)

DECODE_BATCH = 8
"""Frames taken from the decoder per call (the source waits for its GPU copies once per batch)."""
BUFFER_FRAMES = 16
"""Frames the decoder's thread decodes ahead."""
INSTALL_HINT = "pip install 'streamer[nvdec]' (NVIDIA's PyNvVideoCodec)"


def import_nvc() -> Any:
    """PyNvVideoCodec, or one clear :class:`SourceError` line when it is missing or cannot load."""
    try:
        import PyNvVideoCodec as nvc  # type: ignore[import-not-found, import-untyped, unused-ignore]
    except ImportError as exc:
        missing = getattr(exc, "name", None) in ("PyNvVideoCodec", None) and "PyNvVideoCodec" in str(exc)
        why = "is not installed" if missing else f"cannot be loaded ({exc})"
        raise SourceError(f"--decoder nvdec: PyNvVideoCodec {why}; {INSTALL_HINT}") from None
    except OSError as exc:  # its CUDA or driver libraries
        raise SourceError(f"--decoder nvdec: PyNvVideoCodec cannot be loaded ({exc}); it needs an NVIDIA driver") from None
    return nvc


def nvdec_device(options: SourceOptions) -> str:
    """The CUDA device NVDEC decodes on (the model's, else cuda:0); one clear line when there is none."""
    from streamer.gpu_frames import cuda_device

    wanted = options.device if options.device and options.device.startswith("cuda") else "cuda:0"
    device = cuda_device(wanted)
    if device is None:
        if options.device == "cpu":
            raise SourceError("--decoder nvdec decodes on the GPU and hands the frames to a model there; it does not apply with --device cpu")
        raise SourceError(f"--decoder nvdec needs an NVIDIA GPU with CUDA ({wanted} is not available here); use --decoder ffmpeg")
    return device


class NvdecVideoSource(Source):
    """A video file decoded by NVDEC into GPU memory. Lossless (see the module docstring)."""

    kind = "video file"

    def __init__(self, path: Path, options: SourceOptions) -> None:
        super().__init__(path.name)
        if options.realtime:
            raise SourceError("--decoder nvdec reads files as fast as they decode; --realtime replays are read by FFmpeg (--decoder ffmpeg)")
        self.path = path
        self.options = options
        self.device = nvdec_device(options)
        self._nvc = import_nvc()
        self._decoder: Any = None
        self._pending: list[Frame] = []
        self._ended = False
        self._copier: Any = None

    def _open_impl(self) -> None:
        from streamer.gpu_frames import DeviceCopier

        self.close()  # a second open starts a fresh decoder
        nvc = self._nvc
        gpu_id = int(self.device.split(":")[1])
        self._copier = DeviceCopier(self.device)
        try:
            self._decoder = nvc.ThreadedDecoder(
                str(self.path),
                BUFFER_FRAMES,
                gpu_id=gpu_id,
                use_device_memory=True,
                output_color_type=nvc.OutputColorType.RGB,
            )
            meta = self._decoder.get_stream_metadata()
        except Exception as exc:  # noqa: BLE001 - the library raises plain RuntimeErrors / Exceptions
            self._decoder = None
            raise SourceError(f"{self.display_name}: NVDEC cannot open it ({_one_line(exc)}); try --decoder ffmpeg") from None
        fps = float(getattr(meta, "average_fps", 0.0) or 0.0)
        if math.isfinite(fps) and 1.0 <= fps <= MAX_SANE_FPS:
            self.fps, self.fps_trusted = fps, True
        else:
            self.fps, self.fps_trusted = DEFAULT_FPS, False
            log.warning("%s: frame rate metadata %r is not plausible; assuming %.0f FPS", self.display_name, fps, DEFAULT_FPS)
        count = int(getattr(meta, "num_frames", 0) or 0)
        if 0 < count < 1e8:
            self.total_hint = count
        self._pending = []
        self._ended = False

    def _read_impl(self) -> Frame | None:
        if not self._pending and not self._ended:
            self._decode_batch()
        if not self._pending:
            self._check_complete()
            return None
        return self._pending.pop(0)

    def _decode_batch(self) -> None:
        import torch

        from streamer.gpu_frames import DeviceCopier

        decoder, copier = self._decoder, self._copier
        if decoder is None or not isinstance(copier, DeviceCopier):
            self._ended = True
            return
        start = time.perf_counter()
        try:
            frames = decoder.get_batch_frames(DECODE_BATCH)
        except Exception as exc:  # noqa: BLE001
            raise SourceError(f"{self.display_name}: NVDEC decode failed ({_one_line(exc)})") from None
        if not frames:
            self._ended = True
            return
        published = []
        with copier.context():
            for decoded in frames:
                rgb = torch.from_dlpack(decoded)  # (H, W, 3) RGB on the GPU, the decoder's surface
                published.append(copier.publish(rgb.flip(2).contiguous()))  # BGR, our own memory
        copier.wait()  # once per batch: the decoder may reuse its surfaces from the next call on
        per_frame = (time.perf_counter() - start) / len(frames)
        for host, device_image in published:
            frame = self._make_frame(host, self.display_name, per_frame)
            frame.device_image = device_image
            self._pending.append(frame)

    def _pts_s(self, now: float) -> float | None:
        return round(self._index / self.fps, 6)

    def _check_complete(self) -> None:
        total = self.total_hint
        if total is None or getattr(self, "_completeness_said", False):
            return
        self._completeness_said = True
        got = self._index
        if 0 < got < total - max(1, total // 100):
            log.warning("%s: got %d of %d frames the container announced (file truncated?)", self.display_name, got, total)

    def close(self) -> None:
        decoder, self._decoder = self._decoder, None
        self._pending = []
        if decoder is not None:
            try:
                decoder.end()
            except Exception as exc:  # noqa: BLE001 - closing must not raise
                log.debug("NVDEC decoder end: %s", exc)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


__all__ = ["NvdecVideoSource", "import_nvc", "nvdec_device"]
