"""Frames that start on the GPU (streamer.gpu_frames, streamer.sources_nvdec): the seam with CPU tensors,
the image-folder path still lossless with identical labels, the NVDEC source's error lines, and
GPU-only checks that run where CUDA is (skipped here)."""

from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from engines.errors import SourceError
from engines.models import get_spec
from engines.preprocess import preprocess
from helpers import MODEL, SAMPLE_VIDEO, assert_clean_failure, files_in, read_jsonl, run_cli
from streamer.gpu_frames import DeviceCopier, GpuJpegFolderSource, frame_pixels, rgb_chw_to_bgr_hwc
from streamer.sources import Frame, ImageListSource, SourceOptions, open_source

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU (runs on the device machine)")


def _photos(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.jpg"))


# -- the seam, with CPU tensors ----------------------------------------------------
def test_preprocess_takes_tensors_as_it_takes_arrays(sample_images: Path) -> None:
    spec = get_spec(MODEL).preprocess
    images = [cv2.imread(str(p)) for p in _photos(sample_images)[:3]]  # three sizes
    from_arrays = preprocess(images, spec)
    from_tensors = preprocess([torch.from_numpy(i) for i in images], spec)
    mixed = preprocess([images[0], torch.from_numpy(images[1]), images[2]], spec)
    assert torch.equal(from_arrays, from_tensors)
    assert torch.equal(from_arrays, mixed)
    same = [images[0], images[0]]  # one size: one batch
    assert torch.equal(preprocess(same, spec), preprocess([torch.from_numpy(i) for i in same], spec))


def test_preprocess_rejects_a_tensor_of_another_layout() -> None:
    from engines.errors import ConfigError

    with pytest.raises(ConfigError, match=r"\(H, W, 3\) uint8 BGR"):
        preprocess([torch.zeros(3, 32, 32, dtype=torch.uint8)], get_spec(MODEL).preprocess)


def test_frame_pixels_prefers_the_device_image() -> None:
    host = np.zeros((4, 4, 3), np.uint8)
    frame = Frame(0, host, 0.0, "x")
    assert frame_pixels(frame) is host
    frame.device_image = torch.from_numpy(host)
    assert frame_pixels(frame) is frame.device_image


def test_rgb_chw_to_bgr_hwc_and_the_cpu_copier() -> None:
    rgb = torch.arange(3 * 2 * 5, dtype=torch.uint8).reshape(3, 2, 5)
    bgr = rgb_chw_to_bgr_hwc(rgb)
    assert bgr.shape == (2, 5, 3) and bgr.is_contiguous()
    assert torch.equal(bgr[..., 0], rgb[2]) and torch.equal(bgr[..., 2], rgb[0])
    host, device_image = DeviceCopier("cpu").publish(bgr)
    assert np.array_equal(host, bgr.numpy()) and host.flags.writeable
    before = int(device_image[0, 0, 0])
    host[0, 0, 0] = 255 - before  # the host copy is the overlay's to draw on: the device image is not touched
    assert int(device_image[0, 0, 0]) == before


# -- the image-folder path ----------------------------------------------------------
def _read_all(source: ImageListSource) -> list[Frame]:
    frames = []
    with source:
        while (frame := source.read()) is not None:
            frames.append(frame)
    return frames


def test_jpeg_folder_source_is_lossless_and_in_order(sample_images: Path, tmp_path: Path) -> None:
    """The batched decoder on the CPU (torchvision's decode_jpeg): same names, order and pixels as the CPU path;
    a PNG and a damaged JPEG in the folder go through the CPU decoder / are skipped as before."""
    folder = tmp_path / "mixed"
    folder.mkdir()
    for p in _photos(sample_images):
        (folder / p.name).write_bytes(p.read_bytes())
    cv2.imwrite(str(folder / "dd_png.png"), cv2.imread(str(_photos(sample_images)[0])))
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    paths = sorted(folder.iterdir())
    cpu = _read_all(ImageListSource(paths, "mixed"))
    gpu_path = GpuJpegFolderSource(paths, "mixed", "cpu")
    batched = _read_all(gpu_path)
    assert [f.name for f in batched] == [f.name for f in cpu] and len(cpu) == len(paths) - 1
    assert [f.index for f in batched] == list(range(len(batched)))
    assert gpu_path.unreadable == 1 and gpu_path.gpu_decoded == 8
    for a, b in zip(cpu, batched):
        assert a.image.shape == b.image.shape
        assert np.abs(a.image.astype(int) - b.image.astype(int)).mean() < 1.0, a.name
        if b.device_image is not None:
            assert np.array_equal(b.device_image.numpy(), b.image)
    assert next(f for f in batched if f.name == "dd_png.png").device_image is None


def test_open_source_picks_the_gpu_folder_path_only_for_a_cuda_model(sample_images: Path) -> None:
    with open_source(str(sample_images), SourceOptions(device="cpu")) as cpu_source:
        assert type(cpu_source) is ImageListSource
    with open_source(str(sample_images)) as default:
        assert type(default) is ImageListSource
    with open_source(str(sample_images), SourceOptions(device="cuda:0")) as source:
        assert isinstance(source, GpuJpegFolderSource) is CUDA


def test_folder_run_labels_identical_on_the_tensor_path(sample_images: Path, tmp_path: Path) -> None:
    """The pipeline fed device images (CPU tensors here) labels every photo as the array path does."""
    from engines.backends import create_backend
    from engines.backends.base import BackendOptions
    from engines.models import WeightsChoice
    from streamer.bench.latency import FrameRecorder
    from streamer.pipeline import Pipeline, PipelineConfig
    from streamer.sinks import make_sink

    spec = get_spec(MODEL)
    recipe = lambda: create_backend("torch", spec, WeightsChoice.parse("imagenet"), BackendOptions.for_batch(4, device="cpu"))  # noqa: E731
    results = {}
    for kind, source in (("arrays", ImageListSource(_photos(sample_images), "a")), ("tensors", GpuJpegFolderSource(_photos(sample_images), "t", "cpu"))):
        recorder = FrameRecorder()
        sink = make_sink(str(tmp_path / kind) + "/", False)
        Pipeline(source.open(), sink, recipe, PipelineConfig(batch=4), observers=[recorder]).run()
        results[kind] = recorder.top1
        assert files_in(tmp_path / kind) == [p.name for p in _photos(sample_images)]
    assert results["arrays"] == results["tensors"] and len(results["arrays"]) == 8


# -- NVDEC: the error lines ------------------------------------------------------------
def test_nvdec_without_a_gpu_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    import streamer.gpu_frames as gpu_frames

    monkeypatch.setattr(gpu_frames, "cuda_device", lambda device: None)
    with pytest.raises(SourceError, match=r"^--decoder nvdec needs an NVIDIA GPU with CUDA \(cuda:0 is not available here\); use --decoder ffmpeg$"):
        open_source(str(SAMPLE_VIDEO), SourceOptions(decoder="nvdec"))
    with pytest.raises(SourceError, match="does not apply with --device cpu"):
        open_source(str(SAMPLE_VIDEO), SourceOptions(decoder="nvdec", device="cpu"))


def test_nvdec_without_the_package_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    import streamer.gpu_frames as gpu_frames

    monkeypatch.setattr(gpu_frames, "cuda_device", lambda device: "cuda:0")  # pretend a GPU: the package is what is missing
    monkeypatch.setitem(sys.modules, "PyNvVideoCodec", None)  # import fails as when it is not installed
    with pytest.raises(SourceError, match=r"^--decoder nvdec: PyNvVideoCodec is not installed; pip install 'streamer\[nvdec\]'"):
        open_source(str(SAMPLE_VIDEO), SourceOptions(decoder="nvdec", device="cuda:0"))


def test_nvdec_cli_error_is_one_clean_line(tmp_path: Path) -> None:
    args = ["run", SAMPLE_VIDEO, "--decode", "nvdec", "-o", tmp_path / "out.mp4", "-m", MODEL, "--backend", "torch", "--no-summary"]
    if CUDA:
        pytest.skip("a GPU is here: the no-GPU error does not apply")
    line = assert_clean_failure(run_cli(args, cwd=tmp_path))
    assert "--decoder nvdec" in line and "GPU" in line
    assert not (tmp_path / "out.mp4").exists()


# -- on the GPU (the device machine) ------------------------------------------------------
@needs_cuda
def test_gpu_jpeg_folder_matches_the_cpu_path(sample_images: Path) -> None:
    paths = _photos(sample_images)
    cpu = _read_all(ImageListSource(paths, "c"))
    source = GpuJpegFolderSource(paths, "g", "cuda:0")
    gpu = _read_all(source)
    assert source.gpu_decoded == len(paths)
    assert [f.name for f in gpu] == [f.name for f in cpu]
    for a, b in zip(cpu, gpu):
        assert b.device_image is not None and b.device_image.is_cuda
        assert np.array_equal(b.device_image.cpu().numpy(), b.image)
        assert np.abs(a.image.astype(int) - b.image.astype(int)).mean() < 2.0, a.name  # nvJPEG's IDCT vs libjpeg's


@needs_cuda
def test_gpu_folder_run_end_to_end(sample_images: Path, tmp_path: Path) -> None:
    result = run_cli(
        ["run", sample_images, "-o", tmp_path / "out", "--predictions", tmp_path / "p.jsonl", "-m", MODEL, "--backend", "torch", "--batch", "8", "--no-summary"],
        cwd=tmp_path, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert files_in(tmp_path / "out") == [p.name for p in _photos(sample_images)]
    assert len(read_jsonl(tmp_path / "p.jsonl")) == 8


@needs_cuda
def test_nvdec_source_every_frame_in_order() -> None:
    pytest.importorskip("PyNvVideoCodec")
    from streamer.sources_nvdec import NvdecVideoSource

    cap = cv2.VideoCapture(str(SAMPLE_VIDEO))
    expected = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    ok, first = cap.read()
    cap.release()
    source = open_source(str(SAMPLE_VIDEO), SourceOptions(decoder="nvdec", device="cuda:0"))
    assert isinstance(source, NvdecVideoSource)
    frames = 0
    try:  # open_source opened it already
        while (frame := source.read()) is not None:
            if frames == 0:
                assert frame.image.shape == first.shape and frame.device_image.is_cuda
                assert np.abs(frame.image.astype(int) - first.astype(int)).mean() < 6.0  # colour conversion differs a little
            assert frame.index == frames
            frames += 1
    finally:
        source.close()
    assert frames == expected


@needs_cuda
def test_several_streams_on_the_gpu_label_as_one_stream_does(tmp_path: Path) -> None:
    """Two copies of the sample video in one run (one worker batching across them) give the same
    labels, frame for frame, as the video alone, and the same scores to rounding."""
    alone = run_cli(["run", SAMPLE_VIDEO, "--predictions", tmp_path / "alone.jsonl", "-m", MODEL, "--backend", "torch", "--no-summary"], cwd=tmp_path, timeout=300)
    assert alone.returncode == 0, alone.stderr
    both = run_cli(
        ["run", SAMPLE_VIDEO, SAMPLE_VIDEO, "--predictions", tmp_path / "multi", "-m", MODEL, "--backend", "torch", "--no-summary"],
        cwd=tmp_path, timeout=300,
    )  # fmt: skip
    assert both.returncode == 0, both.stderr
    expected = [r["topk"][0] for r in read_jsonl(tmp_path / "alone.jsonl")]
    stem = SAMPLE_VIDEO.stem
    for name in (stem, f"{stem}-2"):
        got = [r["topk"][0] for r in read_jsonl(tmp_path / "multi" / f"{name}.jsonl")]
        assert [g["label"] for g in got] == [e["label"] for e in expected], name
        # batches of 1 and of 2 may take different cuDNN kernels: the scores agree to rounding, not bit for bit
        assert max(abs(g["score"] - e["score"]) for g, e in zip(got, expected)) < 1e-3, name
