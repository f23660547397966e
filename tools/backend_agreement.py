"""Do the torch backend's GPU paths (eager, CUDA graph, fused; fp32/fp16) agree with CPU fp32 on real images?

Runs the real TorchBackend, one image per ``infer()``, on the photos of samples/images and every 25th frame
of a video; writes top-1 agreement and the least cosine per variant as JSON.  Needs a CUDA GPU (the CPU
reference alone runs anywhere; GPU variants then report their error).

    python tools/backend_agreement.py OUT.json [VIDEO]
"""

from __future__ import annotations

import glob
import json
import sys
from typing import Any

import cv2
import numpy as np
import torch

from engines.backends.base import BackendOptions
from engines.backends.torch_backend import TorchBackend
from engines.models import WeightsChoice, get_spec

VARIANTS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("eager-fp32", {"device": "cuda", "precision": "fp32"}),
    ("eager-fp16", {"device": "cuda", "precision": "fp16"}),
    ("graph-fp32", {"device": "cuda", "precision": "fp32", "cuda_graphs": True}),
    ("graph-fp16", {"device": "cuda", "precision": "fp16", "cuda_graphs": True}),
    ("fused-fp16", {"device": "cuda", "precision": "fp16", "fused": True}),
)


def real_images(video: str) -> list[np.ndarray]:
    images = [im for p in sorted(glob.glob("samples/images/*.jpg")) if (im := cv2.imread(p)) is not None]
    cap = cv2.VideoCapture(video)
    index = 0
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        if index % 25 == 0:
            images.append(frame)
        index += 1
    cap.release()
    return images


def logits(model: str, weights: str, images: list[np.ndarray], **fields: Any) -> torch.Tensor:
    backend = TorchBackend(get_spec(model), WeightsChoice.parse(weights), BackendOptions.for_batch(1, **fields))
    backend.load()
    try:
        return torch.stack([backend.infer(backend.preprocess([im])).float().cpu()[0] for im in images])
    finally:
        backend.close()


def main() -> None:
    out_path = sys.argv[1]
    images = real_images(sys.argv[2] if len(sys.argv) > 2 else ".media/media/bikes.mp4")
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    out: dict[str, Any] = {"gpu": gpu, "torch": torch.__version__, "images": len(images), "rows": []}
    for model, weights in (("alexnet", "random"), ("efficientnet_lite0", "imagenet")):
        ref = logits(model, weights, images, device="cpu", precision="fp32")
        for name, fields in VARIANTS:
            if name.startswith("fused") and model != "alexnet":
                continue
            row: dict[str, Any] = {"model": model, "variant": name}
            try:
                got = logits(model, weights, images, **fields)
                cosine = torch.nn.functional.cosine_similarity(got, ref, dim=1)
                row.update(top1=float((got.argmax(1) == ref.argmax(1)).float().mean()), cos_min=float(cosine.min()))
            except Exception as exc:  # noqa: BLE001 - one variant failing must not lose the others
                row["error"] = f"{type(exc).__name__}: {exc}"[:300]
            print(row, flush=True)
            out["rows"].append(row)
    with open(out_path, "w", encoding="utf-8") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
