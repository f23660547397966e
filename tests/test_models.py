"""Model registry, labels, safe weight loading and preprocessing against torchvision."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from engines.errors import ConfigError, ModelError, WeightsError
from engines.models import (
    DEFAULT_MODEL,
    OFFLINE_FALLBACK_MODEL,
    WeightsChoice,
    build_model,
    get_spec,
    imagenet_labels,
    imagenet_weights_available,
    load_state_dict,
    model_names,
    resolve_weights_file,
)
from engines.preprocess import PreprocessSpec, preprocess
from helpers import MODEL, SAMPLE_VIDEO, assert_clean_failure, read_frames, read_jsonl, run_cli

FOUR_MODELS = ["alexnet", "resnet18", "mobilenet_v3_large", "efficientnet_lite0"]


# -- registry and labels -------------------------------------------------------------------
def test_registry_lists_the_four_models() -> None:
    assert sorted(model_names()) == sorted(FOUR_MODELS)
    assert DEFAULT_MODEL in model_names() and OFFLINE_FALLBACK_MODEL in model_names()
    for name in FOUR_MODELS:
        spec = get_spec(name)
        assert spec.name == name and spec.num_classes == 1000 and spec.description
        assert (spec.weights_url is None) != (spec.packaged_weights is None), "exactly one weight source"


def test_unknown_model_names_the_choices() -> None:
    with pytest.raises(ModelError) as info:
        get_spec("vgg16")
    for name in FOUR_MODELS:
        assert name in str(info.value)


def test_labels_are_the_1000_imagenet_classes() -> None:
    labels = imagenet_labels()
    assert len(labels) == 1000
    assert all(isinstance(x, str) and x.strip() for x in labels)
    assert len(set(labels)) >= 998  # ImageNet itself repeats "crane" and "maillot"
    known = {0: "tench", 1: "goldfish", 281: "tabby", 282: "tiger cat", 872: "tripod", 985: "daisy", 999: "toilet tissue"}
    for index, name in known.items():
        assert labels[index] == name
    assert all(get_spec(n).labels == labels for n in FOUR_MODELS), "one label list for every model"


def test_shipped_labels_are_torchvisions() -> None:
    """engines/imagenet_classes.txt is a copy of torchvision's list (read without importing every torchvision model)."""
    from torchvision.models._meta import _IMAGENET_CATEGORIES

    assert imagenet_labels() == tuple(_IMAGENET_CATEGORIES)


def test_labels_do_not_import_torchvision_models() -> None:
    """The first labelled frame of an ONNX Runtime or TensorRT run must not wait for torchvision's model zoo."""
    import subprocess
    import sys

    code = "import sys; from engines.models import imagenet_labels; imagenet_labels(); print('torchvision.models' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("name", FOUR_MODELS)
def test_every_model_builds_and_gives_1000_logits(name: str) -> None:
    loaded = build_model(get_spec(name), WeightsChoice("random"))
    assert not loaded.module.training
    assert loaded.random_weights and loaded.weights_path is None
    with torch.inference_mode():
        logits = loaded.module(torch.zeros(2, *get_spec(name).preprocess.input_shape))
    assert tuple(logits.shape) == (2, 1000)
    assert torch.isfinite(logits).all()


def test_random_weights_are_reproducible() -> None:
    a = build_model(get_spec(MODEL), WeightsChoice("random")).module.state_dict()
    b = build_model(get_spec(MODEL), WeightsChoice("random")).module.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_weights_choice_parsing(tmp_path: Path) -> None:
    assert WeightsChoice.parse("imagenet").kind == "imagenet"
    assert WeightsChoice.parse("random").kind == "random"
    choice = WeightsChoice.parse(str(tmp_path / "w.pt"))
    assert choice.kind == "file" and choice.path == tmp_path / "w.pt"


def test_weight_availability_offline() -> None:
    # conftest points TORCH_HOME at an empty folder: only the packaged weights exist
    assert imagenet_weights_available(get_spec(MODEL))
    assert not imagenet_weights_available(get_spec("alexnet"))
    with pytest.raises(WeightsError, match="not cached"):
        resolve_weights_file(get_spec("alexnet"), WeightsChoice("imagenet"), download=False)
    assert resolve_weights_file(get_spec(MODEL), WeightsChoice("imagenet")).is_file()
    assert resolve_weights_file(get_spec(MODEL), WeightsChoice("random")) is None


# -- safe loading ---------------------------------------------------------------------------
class _Exploit:
    """Unpickling this calls os.system: what a booby-trapped checkpoint does."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {self.marker}",))


def _malicious_files(tmp_path: Path) -> tuple[Path, list[Path]]:
    marker = tmp_path / "PWNED"
    zip_format = tmp_path / "evil_zip.pt"
    torch.save({"_fc.bias": torch.zeros(1000), "payload": _Exploit(marker)}, zip_format)
    legacy = tmp_path / "evil_legacy.pth"
    with open(legacy, "wb") as fh:
        pickle.dump({"payload": _Exploit(marker)}, fh, protocol=2)
    # premise: with an unsafe loader the payload really runs
    with open(legacy, "rb") as fh:
        pickle.load(fh)  # noqa: S301 - proving the exploit works
    assert marker.exists()
    marker.unlink()
    return marker, [zip_format, legacy]


def test_pickle_that_runs_code_is_refused(tmp_path: Path) -> None:
    marker, files = _malicious_files(tmp_path)
    for path in files:
        with pytest.raises(WeightsError, match="refusing"):
            load_state_dict(path)
        with pytest.raises(WeightsError):
            build_model(get_spec(MODEL), WeightsChoice.parse(str(path)))
    assert not marker.exists(), "the pickled payload ran"


def test_pickle_that_runs_code_is_refused_by_the_cli(tmp_path: Path) -> None:
    marker, files = _malicious_files(tmp_path)
    result = run_cli(
        ["run", SAMPLE_VIDEO, "-o", tmp_path / "out.mp4", "-m", MODEL, "--backend", "torch", "--weights", files[0], "--no-summary"],
        cwd=tmp_path,
    )
    line = assert_clean_failure(result)
    assert "evil_zip.pt" in line
    assert result.returncode == 2
    assert not marker.exists()
    assert not [p.name for p in tmp_path.iterdir() if "out" in p.name], "no output, not even a partial one"


@pytest.fixture(scope="module")
def lite0_state() -> dict[str, torch.Tensor]:
    return build_model(get_spec(MODEL), WeightsChoice("imagenet")).module.state_dict()


def test_state_dict_round_trips(tmp_path: Path, lite0_state: dict[str, torch.Tensor], sample_images: Path) -> None:
    plain = tmp_path / "plain.pt"
    wrapped = tmp_path / "wrapped.pth"
    torch.save(lite0_state, plain)
    torch.save({"state_dict": lite0_state, "epoch": 3}, wrapped)
    reference = build_model(get_spec(MODEL), WeightsChoice("imagenet")).module
    x = preprocess([cv2.imread(str(sample_images / "cat.jpg"))], get_spec(MODEL).preprocess)
    with torch.inference_mode():
        expected = reference(x)
    for path in (plain, wrapped):
        loaded = build_model(get_spec(MODEL), WeightsChoice.parse(str(path)))
        assert loaded.weights_path == path
        with torch.inference_mode():
            assert torch.equal(loaded.module(x), expected)


def test_state_dict_of_another_model_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "resnet.pt"
    torch.save(build_model(get_spec("resnet18"), WeightsChoice("random")).module.state_dict(), path)
    with pytest.raises(WeightsError, match="does not fit"):
        build_model(get_spec(MODEL), WeightsChoice.parse(str(path)))


@pytest.mark.parametrize("content", ["tensor", "truncated", "text", "missing"])
def test_bad_weights_files(tmp_path: Path, lite0_state: dict[str, torch.Tensor], content: str) -> None:
    path = tmp_path / "w.pt"
    if content == "tensor":
        torch.save(torch.zeros(3), path)
    elif content == "truncated":
        torch.save(lite0_state, path)
        path.write_bytes(path.read_bytes()[: 100_000])
    elif content == "text":
        path.write_text("not weights")
    with pytest.raises(WeightsError):
        build_model(get_spec(MODEL), WeightsChoice.parse(str(path)))


def test_weights_file_is_what_the_cli_runs(tmp_path: Path, lite0_state: dict[str, torch.Tensor], sample_images: Path) -> None:
    """A state dict edited so every image is class 123 ('spiny lobster'): the run must say 123."""
    edited = dict(lite0_state)
    edited["_fc.bias"] = lite0_state["_fc.bias"].clone()
    edited["_fc.bias"][123] += 100.0
    path = tmp_path / "edited.pt"
    torch.save(edited, path)
    result = run_cli(
        ["run", sample_images, "--headless", "-m", MODEL, "--backend", "torch", "--weights", path, "--predictions", tmp_path / "p.jsonl", "--no-summary"],
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    records = read_jsonl(tmp_path / "p.jsonl")
    assert len(records) == 8
    assert {r["topk"][0]["index"] for r in records} == {123}
    assert {r["topk"][0]["label"] for r in records} == {imagenet_labels()[123]}


# -- preprocessing ------------------------------------------------------------------------------
def _torchvision_transform(spec: PreprocessSpec):  # type: ignore[no-untyped-def]
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms._presets import ImageClassification

    interpolation = InterpolationMode.BILINEAR if spec.interpolation == "bilinear" else InterpolationMode.BICUBIC
    return ImageClassification(
        crop_size=spec.crop, resize_size=spec.resize, mean=spec.mean, std=spec.std, interpolation=interpolation, antialias=True
    )


def _test_images(sample_images: Path) -> dict[str, np.ndarray]:
    """BGR uint8: the 8 photos, a 720p video frame, a small frame (upscaled), a tall one, a grey one."""
    images = {p.name: cv2.imread(str(p)) for p in sorted(sample_images.glob("*.jpg"))}
    frame = read_frames(SAMPLE_VIDEO, limit=1)[0]
    images["video_720p"] = frame
    images["small_160x90"] = cv2.resize(frame, (160, 90), interpolation=cv2.INTER_AREA)
    images["tall_300x700"] = cv2.resize(frame, (300, 700), interpolation=cv2.INTER_AREA)
    return images


@pytest.mark.parametrize("model", ["resnet18", "efficientnet_lite0"], ids=["torchvision-bilinear", "lite-bicubic"])
def test_preprocess_matches_torchvision_on_pil_images(sample_images: Path, model: str) -> None:
    """Measured: mean |diff| <= 0.0025 and max 1-2 levels of 8-bit input; asserted with a margin."""
    spec = get_spec(model).preprocess
    transform = _torchvision_transform(spec)
    one_level = 1.0 / (255.0 * min(spec.std))  # one 8-bit step after normalisation
    for name, bgr in _test_images(sample_images).items():
        reference = transform(Image.fromarray(np.ascontiguousarray(bgr[:, :, ::-1])))
        ours = preprocess([bgr], spec)[0]
        assert ours.shape == reference.shape == (3, 224, 224)
        diff = (ours - reference).abs()
        assert float(diff.mean()) < 0.005, f"{name}: mean |diff| {float(diff.mean()):.4f}"
        assert float(diff.max()) <= 2 * one_level + 1e-4, f"{name}: max |diff| {float(diff.max()):.4f}"


def test_preprocess_batch_equals_one_by_one(sample_images: Path) -> None:
    spec = get_spec(MODEL).preprocess
    images = list(_test_images(sample_images).values())[:5]
    batch = preprocess(images, spec)
    assert batch.shape == (5, 3, 224, 224) and batch.dtype == torch.float32
    for i, image in enumerate(images):
        assert torch.allclose(batch[i], preprocess([image], spec)[0], atol=1e-5)
    same = [images[0], images[0].copy()]
    assert torch.equal(preprocess(same, spec)[0], preprocess(same, spec)[1])


def test_preprocess_accepts_grey_and_bgra(sample_images: Path) -> None:
    spec = get_spec(MODEL).preprocess
    bgr = cv2.imread(str(sample_images / "cameraman.jpg"))
    grey = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
    as_bgr = cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR)
    assert torch.equal(preprocess([grey], spec), preprocess([as_bgr], spec))
    bgra = cv2.cvtColor(bgr, cv2.COLOR_BGR2BGRA)
    assert torch.equal(preprocess([bgra], spec), preprocess([bgr], spec))


def test_preprocess_uses_rgb_order() -> None:
    spec = get_spec("resnet18").preprocess
    red_bgr = np.zeros((256, 256, 3), np.uint8)
    red_bgr[..., 2] = 255
    x = preprocess([red_bgr], spec)[0]
    expected_r = (1.0 - spec.mean[0]) / spec.std[0]
    expected_b = (0.0 - spec.mean[2]) / spec.std[2]
    assert float(x[0].mean()) == pytest.approx(expected_r, abs=1e-4)
    assert float(x[2].mean()) == pytest.approx(expected_b, abs=1e-4)


def test_preprocess_rejects_bad_input() -> None:
    spec = get_spec(MODEL).preprocess
    with pytest.raises(ConfigError):
        preprocess([], spec)
    with pytest.raises(ConfigError):
        preprocess([np.zeros((10, 10, 3), np.float32)], spec)
    with pytest.raises(ConfigError):
        preprocess([np.zeros((10, 10, 2), np.uint8)], spec)
    with pytest.raises(ConfigError):
        PreprocessSpec(resize=200, crop=224)
    with pytest.raises(ConfigError):
        PreprocessSpec(std=(0.2, 0.0, 0.2))
