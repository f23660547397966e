"""GPU decode measurements for docs/benchmarks/h200-nvdec and docs/benchmarks/h200-photos (one device call).

Parts (each guarded by a deadline, each writing its JSON as soon as it is done, under OUT):

* ``decode``: decode-only FPS of each video: OpenCV (FFmpeg), PyAV, PyNvVideoCodec's ThreadedDecoder
  alone, and streamer's NvdecVideoSource (decoder + BGR copy on the GPU + the host copy), with the
  mean absolute pixel difference of NVDEC's frames against OpenCV's.
* ``e2e``: the real pipeline (streamer.bench.latency.run_pipeline: the Pipeline ``streamer run``
  builds) on each video with --decoder ffmpeg and nvdec, null sink and H.264 file sink, AlexNet and
  efficientnet_lite0 fp16 (CUDA graph), batch 1 and 8; top-1 agreement between the decode paths.
* ``photos``: the lab's one-image-at-a-time method against the pipeline on the same folder, same run
  (streamer.bench.reference: the functions ``streamer bench``'s photo part calls), for 11 and 1000
  photos, and a profile of the 11-photo pipeline (GPU vs CPU JPEG decode, batch 1 vs 16) plus JPEG
  encoding on threads (OpenCV, Pillow) against torchvision's GPU encoder.

Usage: python tools/bench_gpu_decode.py OUT MEDIA_DIR [--parts decode,e2e,photos] [--budget S] [--dry]
``--dry`` runs everything tiny on the CPU (a check of the script, no figures).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable

VIDEOS = ("carphone_pristine.mp4", "bikes.mp4", "bigbuckbunny.mp4", "bigbuckbunny_1080p.mp4")
T0 = time.perf_counter()


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - T0:6.1f}s] {msg}", flush=True)


def save(out: Path, name: str, data: Any) -> None:
    (out / f"{name}.json").write_text(json.dumps(data, indent=1, default=str))


def guarded(name: str, deadline: float, fn: Callable[[], Any]) -> Any:
    if time.perf_counter() > deadline:
        log(f"SKIP {name}: past the deadline")
        return {"skipped": "past the deadline"}
    t = time.perf_counter()
    try:
        result = fn()
        log(f"done {name} in {time.perf_counter() - t:.1f}s")
        return result
    except Exception as exc:  # noqa: BLE001 - keep the other parts
        log(f"FAILED {name}: {type(exc).__name__}: {exc}")
        traceback.print_exc()
        return {"error": f"{type(exc).__name__}: {exc}"}


# -- decode only ---------------------------------------------------------------
def decode_opencv(path: Path, limit: int | None) -> tuple[float, int, list[Any]]:
    import cv2

    cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    frames: list[Any] = []
    n = 0
    t = time.perf_counter()
    while True:
        ok, image = cap.read()
        if not ok:
            break
        if len(frames) < 16:
            frames.append(image)
        n += 1
        if limit and n >= limit:
            break
    dt = time.perf_counter() - t
    cap.release()
    return n / dt, n, frames


def decode_pyav(path: Path, limit: int | None) -> tuple[float, int]:
    import av

    n = 0
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        t = time.perf_counter()
        for frame in container.decode(stream):
            frame.to_ndarray(format="bgr24")
            n += 1
            if limit and n >= limit:
                break
        dt = time.perf_counter() - t
    return n / dt, n


def decode_nvc_raw(path: Path) -> tuple[float, int]:
    import PyNvVideoCodec as nvc  # type: ignore[import-not-found, import-untyped, unused-ignore]
    import torch

    dec = nvc.ThreadedDecoder(str(path), 16, gpu_id=0, use_device_memory=True, output_color_type=nvc.OutputColorType.RGB)
    n = 0
    t = time.perf_counter()
    while True:
        frames = dec.get_batch_frames(8)
        if not frames:
            break
        for f in frames:
            torch.from_dlpack(f)
        n += len(frames)
    torch.cuda.synchronize()
    dt = time.perf_counter() - t
    dec.end()
    return n / dt, n


def decode_source(path: Path, decoder: str, device: str | None) -> tuple[float, int, list[Any]]:
    from streamer.sources import SourceOptions, open_source

    t = time.perf_counter()
    src = open_source(str(path), SourceOptions(decoder=decoder, device=device))
    frames: list[Any] = []
    n = 0
    while (f := src.read()) is not None:
        if len(frames) < 16:
            frames.append(f.image)
        n += 1
    dt = time.perf_counter() - t
    src.close()
    return n / dt, n, frames


def part_decode(media: Path, dry: bool) -> dict[str, Any]:
    import numpy as np

    out: dict[str, Any] = {}
    for name in VIDEOS:
        path = media / name
        row: dict[str, Any] = {}
        runs = 1 if dry else 2
        cv_fps, row["frames"], cv_frames = max((decode_opencv(path, None) for _ in range(runs)), key=lambda r: r[0])
        row["opencv_fps"] = round(cv_fps, 1)
        row["pyav_fps"] = round(max(decode_pyav(path, None)[0] for _ in range(runs)), 1)
        row["source_ffmpeg_fps"] = round(max(decode_source(path, "ffmpeg", None)[0] for _ in range(runs)), 1)
        if not dry:
            decode_nvc_raw(path)  # first use: CUDA context, decoder session
            row["nvdec_raw_fps"] = round(max(decode_nvc_raw(path)[0] for _ in range(runs)), 1)
            best = max((decode_source(path, "nvdec", "cuda:0") for _ in range(runs)), key=lambda r: r[0])
            row["source_nvdec_fps"] = round(best[0], 1)
            row["source_nvdec_frames"] = best[1]
            diffs = [float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean()) for a, b in zip(cv_frames, best[2])]
            row["nvdec_vs_opencv_mean_abs_diff"] = round(statistics.mean(diffs), 3) if diffs else None
            row["nvdec_vs_opencv_max_abs_diff_frame0"] = int(np.abs(cv_frames[0].astype(np.int16) - best[2][0].astype(np.int16)).max())
        out[name] = row
        log(f"decode {name}: {row}")
    return out


# -- end to end ------------------------------------------------------------------
def part_e2e(media: Path, out_dir: Path, dry: bool, deadline: float) -> dict[str, Any]:
    from engines.backends import create_backend
    from engines.backends.base import BackendOptions
    from engines.models import WeightsChoice, get_spec, imagenet_weights_available
    from streamer.bench.latency import run_pipeline
    from streamer.inference import InferenceWorker

    device = "cpu" if dry else "cuda:0"
    rows: list[dict[str, Any]] = []
    models = ("alexnet",) if dry else ("alexnet", "efficientnet_lite0")
    batches = (1,) if dry else (1, 8)
    videos = VIDEOS[:1] if dry else VIDEOS
    decoders = ("ffmpeg",) if dry else ("ffmpeg", "nvdec")
    for model in models:
        spec = get_spec(model)
        weights = "imagenet" if imagenet_weights_available(spec) else "random"
        for batch in batches:
            if time.perf_counter() > deadline:
                rows.append({"model": model, "batch": batch, "skipped": "past the deadline"})
                continue
            options = BackendOptions.for_batch(batch, device=device, precision="fp32" if dry else "fp16", cuda_graphs=not dry)
            recipe = lambda: create_backend("torch", spec, WeightsChoice.parse(weights), options)  # noqa: E731
            with InferenceWorker(recipe) as worker:
                worker.wait_loaded()
                for video in videos:
                    if time.perf_counter() > deadline:
                        rows.append({"model": model, "batch": batch, "video": video, "skipped": "past the deadline"})
                        continue
                    top1: dict[str, list[int]] = {}
                    for sink in ("null", "video"):
                        for decoder in decoders:
                            kw: dict[str, Any] = dict(sink_kind=sink, out_dir=out_dir, fps=30.0, batch=batch, decoder=decoder, decode_device=device)
                            run_pipeline(str(media / video), worker, **kw)  # warm (first use of this size / decoder)
                            walls = []
                            for _ in range(1 if dry else 2):
                                r = run_pipeline(str(media / video), worker, **kw)
                                walls.append(r.wall_s)
                            best = min(walls)
                            stages = {k: round(float(h.mean or 0.0) * 1000.0, 3) for k, h in r.stages.items() if h.count}
                            top1[f"{sink}-{decoder}"] = r.recorder.top1
                            row = {
                                "model": model, "weights": weights, "batch": batch, "video": video, "sink": sink, "decoder": decoder,
                                "frames": r.frames_out, "fps": round(r.frames_out / best, 1), "walls_s": [round(w, 4) for w in walls],
                                "stages_ms": stages,
                            }
                            rows.append(row)
                            log(f"e2e {model} b{batch} {video} {sink} {decoder}: {row['fps']} FPS")
                    if "null-nvdec" in top1:
                        a, b = top1["null-ffmpeg"], top1["null-nvdec"]
                        agree = sum(x == y for x, y in zip(a, b)) / max(1, len(a))
                        rows.append({"model": model, "batch": batch, "video": video, "top1_agreement_ffmpeg_vs_nvdec": round(agree * 100, 2), "frames": [len(a), len(b)]})
    return {"rows": rows}


# -- photos -----------------------------------------------------------------------
def make_photos(root: Path, samples: Path, count_big: int) -> tuple[Path, Path]:
    import numpy as np
    from PIL import Image

    eleven = root / "photos11"
    eleven.mkdir(parents=True, exist_ok=True)
    for p in sorted(samples.glob("*.jpg")):
        (eleven / p.name).write_bytes(p.read_bytes())
    added: list[str] = []
    try:
        import skimage.data as skd  # type: ignore[import-not-found, import-untyped, unused-ignore]

        candidates: list[tuple[str, Callable[[], Any]]] = [
            ("chelsea", skd.chelsea), ("motorcycle", lambda: skd.stereo_motorcycle()[0]), ("hubble_deep_field", skd.hubble_deep_field),
            ("retina", skd.retina), ("immunohistochemistry", skd.immunohistochemistry),
        ]
        for name, fn in candidates:
            if len(added) >= 3:
                break
            try:
                array = np.asarray(fn())
            except Exception as exc:  # noqa: BLE001 - a data set that needs a download
                log(f"skimage {name}: {exc}")
                continue
            if array.ndim != 3:
                continue
            Image.fromarray(array[:, :, :3].astype(np.uint8)).save(eleven / f"skimage_{name}.jpg", quality=92)
            added.append(name)
    except ImportError:
        pass
    big = root / "photos1000"
    big.mkdir(parents=True, exist_ok=True)
    bases = [Image.open(p).convert("RGB") for p in sorted(eleven.glob("*.jpg"))]
    rng = np.random.default_rng(15)

    def one(i: int) -> None:
        im = bases[i % len(bases)]
        w, h = im.size
        f = rng.uniform(0.6, 1.0)
        cw, ch = int(w * f), int(h * f)
        x, y = int(rng.uniform(0, w - cw + 1)), int(rng.uniform(0, h - ch + 1))
        s = rng.uniform(0.6, 1.6)
        out = im.crop((x, y, x + cw, y + ch)).resize((max(32, int(cw * s)), max(32, int(ch * s))), Image.Resampling.BILINEAR)
        out.save(big / f"photo_{i:04d}.jpg", quality=90)

    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one, range(count_big)))
    log(f"photos: {len(list(eleven.glob('*.jpg')))} in photos11 (skimage: {added}), {count_big} in photos1000")
    return eleven, big


def lab_vs_pipeline(model: str, folder: Path, device: str, repeats: int, work: Path, configs: list[dict[str, Any]]) -> dict[str, Any]:
    from engines.models import get_spec, imagenet_weights_available
    from streamer.bench.reference import lab_method, pipeline_folder

    images = sorted(p for p in folder.iterdir() if p.suffix == ".jpg")
    weights = "imagenet" if imagenet_weights_available(get_spec(model)) else "random"
    lab = lab_method(model, weights, device, images, repeats, min(3, len(images)), work / f"lab-{model}")
    res: dict[str, Any] = {"model": model, "weights": weights, "images": len(images), "lab_total_s": lab["total_s"], "lab_per_image_ms": lab["per_image_ms"], "pipelines": []}
    for config in configs:
        pipe = pipeline_folder(model, weights, device, folder, repeats, work / f"pipe-{model}", config=dict(config))
        lab_mean = float(lab["total_s"]["mean"])
        pipe_mean = float(pipe["total_s"]["mean"])
        agree = sum(a == b for a, b in zip(lab["top1"], pipe["top1"])) / max(1, len(lab["top1"]))
        entry = {"config": pipe["config"], "method": pipe["method"], "total_s": pipe["total_s"], "stages_ms": pipe["stages_ms"],
                 "speedup_vs_lab_mean": round(lab_mean / pipe_mean, 2), "same_top1_as_lab_pct": round(agree * 100, 1)}
        res["pipelines"].append(entry)
        log(f"photos {model} {folder.name} {config}: lab {lab_mean * 1000:.1f} ms, pipeline {pipe_mean * 1000:.1f} ms -> {entry['speedup_vs_lab_mean']}x")
    return res


def encode_microbench(folder: Path, dry: bool) -> dict[str, Any]:
    import io
    from concurrent.futures import ThreadPoolExecutor

    import cv2
    import torch
    from PIL import Image

    images: list[Any] = [cv2.imread(str(p)) for p in sorted(folder.glob("*.jpg"))]
    out: dict[str, Any] = {"images": len(images)}
    with ThreadPoolExecutor(8) as pool:
        for name, fn in (
            ("opencv_threads8", lambda im: cv2.imencode(".jpg", im)[1]),
            ("pillow_threads8", lambda im: Image.fromarray(im[:, :, ::-1]).save(io.BytesIO(), "JPEG", quality=95)),
        ):
            list(pool.map(fn, images))
            t = time.perf_counter()
            for _ in range(5):
                list(pool.map(fn, images))
            out[name + "_ms_per_set"] = round((time.perf_counter() - t) / 5 * 1000, 3)
    t = time.perf_counter()
    for _ in range(5):
        for im in images:
            cv2.imencode(".jpg", im)
    out["opencv_1thread_ms_per_set"] = round((time.perf_counter() - t) / 5 * 1000, 3)
    if not dry:
        from torchvision.io import encode_jpeg

        gpu = [torch.from_numpy(im[:, :, ::-1].copy()).permute(2, 0, 1).contiguous().cuda() for im in images]
        encode_jpeg(gpu, quality=95)
        torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(5):
            data = encode_jpeg(gpu, quality=95)
            [d.cpu() for d in data]
        out["torchvision_gpu_batch_ms_per_set"] = round((time.perf_counter() - t) / 5 * 1000, 3)
        t = time.perf_counter()
        for _ in range(5):
            host = [torch.from_numpy(im[:, :, ::-1].copy()).permute(2, 0, 1).contiguous().cuda() for im in images]
            data = encode_jpeg(host, quality=95)
            [d.cpu() for d in data]
        out["torchvision_gpu_batch_with_upload_ms_per_set"] = round((time.perf_counter() - t) / 5 * 1000, 3)
    log(f"encode: {out}")
    return out


def make_1080p(media: Path, work: Path) -> Path:
    """``bigbuckbunny_1080p.mp4`` as .media made it (the 720p clip upscaled with Lanczos, H.264 High, about
    5.1 Mbit/s, no audio) when it is not in MEDIA (it did not fit the device's carry limit); returns the folder."""
    if (media / "bigbuckbunny_1080p.mp4").is_file():
        return media
    import shutil

    import av
    import cv2

    folder = work / "media"
    folder.mkdir(parents=True, exist_ok=True)
    for name in VIDEOS[:-1]:
        shutil.copy(media / name, folder / name)
    with av.open(str(media / "bigbuckbunny.mp4")) as src, av.open(str(folder / "bigbuckbunny_1080p.mp4"), "w") as dst:
        stream = dst.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt, stream.bit_rate = 1920, 1080, "yuv420p", 5_146_000
        stream.profile = "High"
        for frame in src.decode(video=0):
            big = cv2.resize(frame.to_ndarray(format="bgr24"), (1920, 1080), interpolation=cv2.INTER_LANCZOS4)
            for packet in stream.encode(av.VideoFrame.from_ndarray(big, format="bgr24")):
                dst.mux(packet)
        for packet in stream.encode():
            dst.mux(packet)
    log(f"made {folder / 'bigbuckbunny_1080p.mp4'} ({(folder / 'bigbuckbunny_1080p.mp4').stat().st_size} bytes)")
    return folder


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("out", type=Path)
    ap.add_argument("media", type=Path)
    ap.add_argument("--samples", type=Path, default=Path("samples/images"))
    ap.add_argument("--parts", default="decode,e2e,photos")
    ap.add_argument("--budget", type=float, default=300.0)
    ap.add_argument("--dry", action="store_true")
    args = ap.parse_args()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    deadline = T0 + args.budget
    parts = args.parts.split(",")
    import torch

    env: dict[str, Any] = {"torch": torch.__version__, "cuda": torch.version.cuda, "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
                           "cpus": os.cpu_count(), "python": sys.version.split()[0]}
    try:
        import torchvision

        env["torchvision"] = torchvision.__version__
        import PyNvVideoCodec as nvc  # type: ignore[import-not-found, import-untyped, unused-ignore]

        env["PyNvVideoCodec"] = nvc.__version__
    except Exception as exc:  # noqa: BLE001
        env["import_error"] = str(exc)
    save(out, "environment", env)
    log(f"env {env}")
    work = Path("/tmp/gpudec-work")
    work.mkdir(parents=True, exist_ok=True)
    device = "cpu" if args.dry else "cuda:0"
    args.media = make_1080p(args.media, work)
    if "decode" in parts:
        save(out, "decode", guarded("decode", deadline, lambda: part_decode(args.media, args.dry)))
    if "photos" in parts:
        eleven, big = make_photos(work, args.samples, 40 if args.dry else 1000)
        reps = 2 if args.dry else 5
        best = {"backend": "torch", "precision": "fp32" if args.dry else "fp16", "cuda_graphs": not args.dry}
        configs = [dict(best, batch=16), dict(best, batch=1), dict(best, batch=1, gpu_decode=False)]
        photos: dict[str, Any] = {}
        for model in ("alexnet", "efficientnet_lite0"):
            photos[f"{model}-11"] = guarded(f"photos {model} 11", deadline, functools.partial(lab_vs_pipeline, model, eleven, device, reps, work, configs))
            save(out, "photos", photos)
        photos["encode"] = guarded("encode", deadline, lambda: encode_microbench(eleven, args.dry))
        save(out, "photos", photos)
    if "e2e" in parts:
        save(out, "e2e", guarded("e2e", deadline, lambda: part_e2e(args.media, work, args.dry, deadline - 45)))
    if "photos" in parts:
        for model in ("alexnet", "efficientnet_lite0"):
            photos[f"{model}-1000"] = guarded(f"photos {model} 1000", deadline, functools.partial(lab_vs_pipeline, model, big, device, 1, work, [dict(best, batch=16), dict(best, batch=16, gpu_decode=False)]))
            save(out, "photos", photos)
    log("all done")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    raise SystemExit(main())
