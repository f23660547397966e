"""Decode-only and encode-only throughput of the source file, for ``--decode-encode-baseline``.

The pipeline can never write a file faster than OpenCV decodes the input or
encodes the output; the slower of the two is the ceiling that the pipeline's
file throughput is compared against.  Both are measured in the same run, on
the same frames: decoding with OpenCV's FFmpeg backend, as the pipeline's file source does,
and encoding through the pipeline's own video sink (:class:`streamer.sinks.VideoFileSink`:
PyAV, H.264 at its default preset, no audio), so the ceiling is the encoder in use.
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


def decode_encode(source: Path, repeats: int, out_dir: Path, max_frames: int | None = None, step: StepFn | None = None) -> dict[str, Any]:
    import cv2
    import numpy as np

    from streamer.sinks import VideoFileSink
    from streamer.sinks.video import DEFAULT_PRESET
    from streamer.sources import cv_path  # OpenCV segfaults on a name that is not UTF-8

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
        path = out_dir / f"encode-{r}.mp4"
        start = time.perf_counter()
        writer = VideoFileSink(path, overwrite=True)
        writer.open(size, float(fps_in))
        try:
            for image in frames:
                writer.write(image, "")
            writer.finalize()
        except BaseException:
            writer.abort()
            raise
        encode_fps.append(len(frames) / (time.perf_counter() - start))
        path.unlink(missing_ok=True)
        if step is not None:
            step("decode/encode baseline", r + 1, repeats)
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
        "bound_fps": bound,
        "bound_statistic": f"median of {repeats} passes",
        "bound_by": "decode" if dec_median <= enc_median else "encode",
        "serial_fps": 1.0 / (1.0 / dec_median + 1.0 / enc_median),
    }
