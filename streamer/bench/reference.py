"""References: PyTorch fp32 on the CPU (for output change), and the lab's own method (for speed).

The lab's method, redone on the same images and device: one image at a time
through PIL and torchvision transforms, the model on the device, the argmax
pulled to the host per image with ``.item()``, the label drawn with PIL's
``ImageDraw`` and the image saved.  Beside it, the pipeline's own run over the
same image folder (JPEGs decoded in batches on the GPU where the model runs on one,
else Pillow/OpenCV on threads; batched GPU/CPU preprocessing, threads, JPEG output), so the reader sees what the pipeline gains end to end.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from streamer.stats import across_repeats, summarize

StepFn = Callable[[str, int, int], None]


def find_labels(folder: Path) -> dict[str, Any]:
    """``labels.json`` in the image folder or its parent (the samples layout), else {}."""
    for candidate in (folder / "labels.json", folder.parent / "labels.json"):
        if candidate.is_file():
            try:
                data = json.loads(candidate.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                return {}
            return data if isinstance(data, dict) else {}
    return {}


def compute_reference(model: str, weights: str, images: list[Path], out_dir: Path) -> dict[str, Any]:
    """Preprocess ``images`` once on the CPU and run PyTorch fp32 on the CPU; save both as .npy."""
    import cv2
    import torch

    from engines.models import WeightsChoice, build_model, get_spec
    from engines.preprocess import preprocess

    spec = get_spec(model)
    loaded = build_model(spec, WeightsChoice.parse(weights))
    tensors = []
    for path in images:
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            raise ValueError(f"{path}: not a readable image")
        tensors.append(preprocess([image], spec.preprocess, "cpu", torch.float32))
    inputs = torch.cat(tensors)
    with torch.inference_mode():
        logits = loaded.module(inputs).float()
    out_dir.mkdir(parents=True, exist_ok=True)
    np.save(out_dir / "inputs.npy", inputs.numpy())
    np.save(out_dir / "reference.npy", logits.numpy())
    names = [p.name for p in images]
    (out_dir / "names.json").write_text(json.dumps(names), encoding="utf-8")
    top1 = logits.argmax(1).tolist()
    return {
        "backend": "torch",
        "precision": "fp32",
        "device": "cpu",
        "images": names,
        "top1": {n: spec.labels[i] for n, i in zip(names, top1)},
    }


def _pil_transform(model: str) -> Any:
    from torchvision import transforms as T

    from engines.models import get_spec

    pp = get_spec(model).preprocess
    mode = T.InterpolationMode.BICUBIC if pp.interpolation == "bicubic" else T.InterpolationMode.BILINEAR
    return T.Compose([T.Resize(pp.resize, interpolation=mode), T.CenterCrop(pp.crop), T.ToTensor(), T.Normalize(pp.mean, pp.std)])


def lab_method(
    model: str,
    weights: str,
    device: str,
    images: list[Path],
    repeats: int,
    warmup: int,
    out_dir: Path,
    threads: int | None = None,
    step: StepFn | None = None,
) -> dict[str, Any]:
    """The lab's loop, timed per image (open, transform, infer, ``.item()``, draw, save)."""
    import torch
    from PIL import Image, ImageDraw

    from engines.backends.base import resolve_device_name
    from engines.models import WeightsChoice, build_model, get_spec

    device = resolve_device_name(device)
    if threads is not None and device == "cpu":
        torch.set_num_threads(threads)
    spec = get_spec(model)
    labels = spec.labels
    t0 = time.perf_counter()
    module = build_model(spec, WeightsChoice.parse(weights)).module.to(device)
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)
    load_s = time.perf_counter() - t0
    transform = _pil_transform(model)
    out_dir.mkdir(parents=True, exist_ok=True)

    def one(path: Path) -> tuple[float, int]:
        start = time.perf_counter()
        img = Image.open(path).convert("RGB")
        x = transform(img).unsqueeze(0).to(device)
        with torch.no_grad():
            out = module(x)
        idx = int(out.argmax(1).item())
        draw = ImageDraw.Draw(img)
        draw.text((10, 10), labels[idx], fill=(255, 0, 0))
        img.save(out_dir / path.name)
        return time.perf_counter() - start, idx

    for i in range(warmup):
        one(images[i % len(images)])
    per_image: list[list[float]] = []
    totals: list[float] = []
    top1: list[int] = []
    for r in range(repeats):
        t_rep = time.perf_counter()
        rep = []
        for path in images:
            seconds, idx = one(path)
            rep.append(seconds * 1000.0)
            if r == 0:
                top1.append(idx)
        totals.append(time.perf_counter() - t_rep)
        per_image.append(rep)
        if step is not None:
            step("lab method", r + 1, repeats)
    return {
        "method": "PIL open + torchvision transforms + model(x) + argmax().item() + ImageDraw + save, one image at a time",
        "device": device,
        "load_s": load_s,
        "per_image_ms": across_repeats(per_image),
        "total_s": summarize(totals),
        "images": len(images),
        "top1": top1,
    }


def fastest_folder_config(device: str) -> dict[str, Any]:
    """The pipeline configuration the lab comparison uses: the fastest this code offers on ``device``.

    On a GPU: PyTorch fp16 replayed as a CUDA graph, batch 16 (clamped to the
    folder's size): the photos' JPEGs are decoded on the GPU 16 at a time
    (:class:`streamer.gpu_frames.GpuJpegFolderSource`), so a batch no longer waits
    for the slowest of several CPU decodes, and one batch costs one host sync
    instead of one per photo (with CPU decoding, batch 1 was faster on an H200:
    8 photos took 23 ms at batch 1, 46 ms at batch 8).  On the CPU: ONNX Runtime
    fp32 where it is installed (the fastest CPU backend measured), else PyTorch
    fp32, batch 1.
    """
    if device.startswith("cuda"):
        return {"backend": "torch", "precision": "fp16", "cuda_graphs": True, "batch": 16}
    from engines.backends import backend_installed

    cpu_backend = "onnxruntime" if backend_installed("onnxruntime") else "torch"
    return {"backend": cpu_backend, "precision": "fp32", "cuda_graphs": False, "batch": 1}


def describe_folder_config(config: dict[str, Any]) -> str:
    graphs = " + CUDA graph" if config.get("cuda_graphs") else ""
    return f"{config['backend']} {config['precision']}{graphs}, batch {config['batch']}"


def pipeline_folder(
    model: str,
    weights: str,
    device: str,
    folder: Path,
    repeats: int,
    out_dir: Path,
    threads: int | None = None,
    step: StepFn | None = None,
    config: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """``streamer run FOLDER -o DIR`` on ``device`` with ``config`` (default: torch fp32, batch 1):
    end-to-end wall time for the N images."""
    from engines.backends import create_backend
    from engines.backends.base import BackendOptions
    from engines.models import WeightsChoice, get_spec
    from streamer.bench.latency import run_pipeline
    from streamer.inference import InferenceWorker

    config = dict(config or {"backend": "torch", "precision": "fp32", "cuda_graphs": False, "batch": 1})
    spec = get_spec(model)
    from streamer.sources import _image_paths_in

    paths = _image_paths_in(folder)
    batch = max(1, min(int(config["batch"]), len(paths)))
    config["batch"] = batch
    options = BackendOptions.for_batch(
        batch, device=device, threads=threads, precision=config["precision"], cuda_graphs=bool(config["cuda_graphs"])
    )
    recipe = lambda: create_backend(config["backend"], spec, WeightsChoice.parse(weights), options)
    with InferenceWorker(recipe) as worker:
        worker.wait_loaded()
        backend_device = worker.call(lambda backend: backend.device).result()
        # As ``streamer run`` does: a model on a GPU gets its JPEGs decoded there (gpu_decode: False = the CPU path).
        decode_device = backend_device if config.get("gpu_decode", True) else None
        common: dict[str, Any] = dict(sink_kind="images", out_dir=out_dir, fps=30.0, batch=batch, decode_device=decode_device)
        run_pipeline(str(folder), worker, **common)  # warm-up pass
        runs = []
        for r in range(repeats):
            runs.append(run_pipeline(str(folder), worker, **common))
            if step is not None:
                step("pipeline on images", r + 1, repeats)
    walls = [r.wall_s for r in runs]
    n = runs[0].frames_out if runs else 0
    stages = {name: round(float(h.mean or 0.0) * 1000.0, 3) for name, h in runs[-1].stages.items() if h.count} if runs else {}
    return {
        "method": "streamer.pipeline.Pipeline over the folder ("
        + ("JPEGs decoded in batches on the GPU" if decode_device and decode_device.startswith("cuda") else "Pillow/OpenCV decode on threads")
        + ") -> JPEG folder (encoded on threads), "
        f"{describe_folder_config(config)}; wall time from opening the folder to the last file written",
        "config": config,
        "stages_ms": stages,
        "device": backend_device,
        "total_s": summarize(walls),
        "per_image_ms": summarize([w * 1000.0 / n for w in walls]) if n else summarize([]),
        "per_image_of": "each run's wall time / images (the pipeline overlaps images, so no per-image timer exists)",
        "images": n,
        "top1": runs[0].recorder.top1 if runs else [],
    }
