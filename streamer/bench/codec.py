"""Decode-only and encode-only throughput of the source file, for ``--decode-encode-baseline``.

The pipeline can never write a file faster than OpenCV decodes the input or
encodes the output; the slower of the two is the ceiling that the pipeline's
file throughput is compared against.  Both are measured in the same run, on
the same frames: decoding with OpenCV's FFmpeg backend, as the pipeline's file source does,
and encoding through the pipeline's own video sink (:class:`streamer.sinks.VideoFileSink`:
PyAV, H.264 at its default preset, no audio), so the ceiling is the encoder in use, with
the encoder threads the pipeline's sink uses (every CPU this process may use, at most 16).
Beside it, for the record, the same encode with one encoder thread (``encode_fps_1thread``):
what a single x264 thread would allow, on at most the first ``ONE_THREAD_FRAMES`` frames.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from streamer.stats import summarize

StepFn = Callable[[str, int, int], None]

MIN_REPEATS = 5
"""Passes of each baseline at least, whatever ``--repeats`` says: the ceiling is their median."""
ONE_THREAD_PASSES = 2
ONE_THREAD_FRAMES = 264
"""The one-thread encode is for the record only: two passes over at most this many frames."""


def decode_encode(
    source: Path,
    repeats: int,
    out_dir: Path,
    max_frames: int | None = None,
    step: StepFn | None = None,
    one_thread_passes: int | None = None,
    one_thread_frames: int = ONE_THREAD_FRAMES,
) -> dict[str, Any]:
    import cv2
    import numpy as np

    from streamer.sinks import VideoFileSink, VideoOptions
    from streamer.sinks.video import DEFAULT_PRESET, _threads
    from streamer.sources import cv_path  # OpenCV segfaults on a name that is not UTF-8

    def encode(path: Path, images: list[np.ndarray], threads: int | None) -> float:
        start = time.perf_counter()
        writer = VideoFileSink(path, overwrite=True, options=VideoOptions(threads=threads))
        writer.open(size, float(fps_in))
        try:
            for image in images:
                writer.write(image, "")
            writer.finalize()
        except BaseException:
            writer.abort()
            raise
        fps = len(images) / (time.perf_counter() - start)
        path.unlink(missing_ok=True)
        return fps

    def decode_all(keep: bool) -> tuple[int, float, list[np.ndarray]]:
        frames: list[np.ndarray] = []
        count = 0
        start = time.perf_counter()
        cap = cv2.VideoCapture(cv_path(Path(source)), cv2.CAP_FFMPEG)
        try:
            while max_frames is None or count < max_frames:
                ok, image = cap.read()
                if not ok or image is None:
                    break
                count += 1
                if keep:
                    frames.append(image)
        finally:
            cap.release()
        return count, time.perf_counter() - start, frames

    count, _, frames = decode_all(keep=True)  # also warms the file cache and FFmpeg
    if count == 0:
        raise ValueError(f"{source}: no decodable frame")
    fps_in = cv2.VideoCapture(cv_path(Path(source)), cv2.CAP_FFMPEG).get(cv2.CAP_PROP_FPS) or 30.0
    h, w = frames[0].shape[:2]
    size = (w - w % 2 or 2, h - h % 2 or 2)
    decode_fps = []
    encode_fps = []
    out_dir.mkdir(parents=True, exist_ok=True)
    repeats = max(repeats, MIN_REPEATS)
    for r in range(repeats):
        n, seconds, _ = decode_all(keep=False)
        decode_fps.append(n / seconds)
        encode_fps.append(encode(out_dir / f"encode-{r}.mp4", frames, None))
        if step is not None:
            step("decode/encode baseline", r + 1, repeats)
    one_thread = [encode(out_dir / f"encode-1t-{r}.mp4", frames[:one_thread_frames], 1) for r in range(ONE_THREAD_PASSES if one_thread_passes is None else one_thread_passes)]
    dec = summarize(decode_fps)
    enc = summarize(encode_fps)
    # Medians: a shared host's encoder speed moves by a third between passes a few
    # seconds apart (106 and 163 FPS measured on one H200 host); one slow pass must
    # not set the ceiling.
    dec_median, enc_median = float(dec["p50"] or 0.0), float(enc["p50"] or 0.0)  # repeats >= 5: never None
    bound = min(dec_median, enc_median)
    return {
        "frames": count,
        "frame_size": [w, h],
        "decode_fps": dec,
        "encode_fps": enc,
        "codec": f"h264 {DEFAULT_PRESET} (streamer's video sink, PyAV)",
        "encoder_threads": _threads(),
        "encode_fps_1thread": summarize(one_thread) if one_thread else None,
        "bound_fps": bound,
        "bound_statistic": f"median of {repeats} passes",
        "bound_by": "decode" if dec_median <= enc_median else "encode",
        "serial_fps": 1.0 / (1.0 / dec_median + 1.0 / enc_median),
    }
