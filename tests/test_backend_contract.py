"""One contract, every backend: what the pipeline may rely on, whichever engine runs the model.

The suite is parametrized over every registered backend; those whose packages
(or GPU) this machine lacks are skipped with the reason.  Real photographs,
EfficientNet-Lite0 with its ImageNet weights (shipped offline), and the torch
backend as the reference.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import numpy as np
import pytest

torch = pytest.importorskip("torch")
cv2 = pytest.importorskip("cv2")

from engines.backends import BACKEND_NAMES, backend_class, backend_installed, create_backend  # noqa: E402
from engines.backends.base import Artifact, Backend, BackendOptions, postprocess  # noqa: E402
from engines.errors import BackendError, ConfigError  # noqa: E402
from engines.models import WeightsChoice, get_spec  # noqa: E402

if TYPE_CHECKING:
    import torch as torch_types

SAMPLES = Path(__file__).resolve().parents[1] / "samples"
IMAGE_FILES = sorted((SAMPLES / "images").glob("*.jpg"))
MODEL = "efficientnet_lite0"
WEIGHTS = WeightsChoice.parse("imagenet")
GPU_ONLY = {"tensorrt", "torch2trt"}
BATCH = 3
"""Largest batch in the contract runs: 8 images go through as 3 + 3 + 2."""


def _device(name: str) -> str:
    return "cuda" if name in GPU_ONLY else "cpu"


def _params() -> list[object]:
    params: list[object] = []
    for name in BACKEND_NAMES:
        marks = []
        if not backend_installed(name):
            marks.append(pytest.mark.skip(reason=f"backend {name!r}: its Python packages are not installed here"))
        elif _device(name) == "cuda" and not torch.cuda.is_available():
            marks.append(pytest.mark.skip(reason=f"backend {name!r} needs a CUDA GPU"))
        params.append(pytest.param(name, marks=marks, id=name))
    return params


BACKENDS = _params()


@pytest.fixture(scope="module")
def frames() -> list[np.ndarray]:
    images = [cv2.imread(str(p)) for p in IMAGE_FILES]
    assert len(images) == 8 and all(img is not None for img in images)
    return images


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("contract-cache")


def options(name: str, cache: Path, **changes: object) -> BackendOptions:
    base = BackendOptions.for_batch(BATCH, device=_device(name), cache_dir=cache)
    return replace(base, **changes)  # type: ignore[arg-type]


def make(name: str, cache: Path, **changes: object) -> Backend:
    return create_backend(name, get_spec(MODEL), WEIGHTS, options(name, cache, **changes))


def classify(backend: Backend, frames: list[np.ndarray]) -> "torch_types.Tensor":
    """Logits for every frame, in batches of at most ``BATCH``."""
    chunks = [backend.infer(backend.preprocess(frames[i : i + BATCH])) for i in range(0, len(frames), BATCH)]
    return torch.cat([c.float().cpu() for c in chunks])


@pytest.fixture(scope="module")
def reference(frames: list[np.ndarray], cache: Path) -> list[int]:
    """Top-1 of the torch backend, checked against the photographs' labels first."""
    with make("torch", cache) as backend:
        top1 = [p.top1 for p in postprocess(classify(backend, frames), get_spec(MODEL).labels)]
    labels = json.loads((SAMPLES / "labels.json").read_text())
    labelled = [(i, labels[p.name]) for i, p in enumerate(IMAGE_FILES) if p.name in labels]
    correct = sum(top1[i] in accepted for i, accepted in labelled)
    assert correct >= len(labelled) - 1, f"reference is wrong on {len(labelled) - correct} labelled photographs"
    return top1


@pytest.fixture
def loaded(request: pytest.FixtureRequest, cache: Path) -> Iterator[Backend]:
    backend = make(request.param, cache)
    backend.load()
    yield backend
    backend.close()


# -- the contract ------------------------------------------------------------------
@pytest.mark.parametrize("loaded", BACKENDS, indirect=True)
def test_same_top1_as_torch_on_real_images(loaded: Backend, frames: list[np.ndarray], reference: list[int]) -> None:
    logits = classify(loaded, frames)
    top1 = [p.top1 for p in postprocess(logits, get_spec(MODEL).labels)]
    differ = [IMAGE_FILES[i].name for i, (a, b) in enumerate(zip(top1, reference)) if a != b]
    assert not differ, f"{loaded.name} disagrees with torch on {differ}"


@pytest.mark.parametrize("loaded", BACKENDS, indirect=True)
@pytest.mark.parametrize("n", [1, 2, BATCH])
def test_output_is_n_by_classes_float32(loaded: Backend, frames: list[np.ndarray], n: int) -> None:
    logits = loaded.infer(loaded.preprocess(frames[:n]))
    assert tuple(logits.shape) == (n, get_spec(MODEL).num_classes)
    assert logits.dtype == torch.float32
    assert bool(torch.isfinite(logits).all())


@pytest.mark.parametrize("loaded", BACKENDS, indirect=True)
def test_batch_larger_than_loaded_maximum_is_rejected(loaded: Backend, frames: list[np.ndarray]) -> None:
    with pytest.raises(BackendError, match="exceeds"):
        loaded.infer(loaded.preprocess(frames[: BATCH + 1]))
    assert loaded.infer(loaded.preprocess(frames[:1])).shape[0] == 1  # still usable afterwards


@pytest.mark.parametrize("name", BACKENDS)
def test_infer_before_load_raises(name: str, cache: Path, frames: list[np.ndarray]) -> None:
    backend = make(name, cache)
    assert not backend.is_loaded
    x = torch.zeros((1, *get_spec(MODEL).preprocess.input_shape))
    with pytest.raises(BackendError, match="before load"):
        backend.infer(x)


@pytest.mark.parametrize("name", BACKENDS)
def test_context_manager_loads_and_closes(name: str, cache: Path, frames: list[np.ndarray]) -> None:
    backend = make(name, cache)
    with backend as entered:
        assert entered is backend
        assert backend.is_loaded
        assert backend.load_seconds is not None and backend.load_seconds > 0
        assert name in backend.description
        backend.infer(backend.preprocess(frames[:1]))
    assert not backend.is_loaded


@pytest.mark.parametrize("name", BACKENDS)
def test_close_twice_is_safe_and_unloads(name: str, cache: Path, frames: list[np.ndarray]) -> None:
    backend = make(name, cache).load()
    backend.close()
    backend.close()
    assert not backend.is_loaded
    with pytest.raises(BackendError):
        backend.infer(backend.preprocess(frames[:1]))
    backend.load()  # and it can be loaded again
    assert backend.is_loaded
    assert backend.infer(backend.preprocess(frames[:1])).shape == (1, 1000)
    backend.close()


@pytest.mark.parametrize("name", BACKENDS)
def test_second_load_is_faster_where_a_cache_exists(name: str, tmp_path: Path) -> None:
    """Measured, not assumed: a backend that writes to its cache folder must profit from it."""
    first = make(name, tmp_path)
    start = time.perf_counter()
    first.load()
    first_s = time.perf_counter() - start
    first.close()
    written = [p for p in tmp_path.rglob("*") if p.is_file() and not p.name.endswith(".lock")]
    if not written:
        pytest.skip(f"{name} wrote nothing to its cache folder (first load {first_s:.2f} s): no cache to reuse")
    second = make(name, tmp_path)
    start = time.perf_counter()
    second.load()
    second_s = time.perf_counter() - start
    second.close()
    print(f"\n{name}: first load {first_s:.2f} s, second load {second_s:.2f} s ({len(written)} cache files)")
    assert second_s < first_s / 2, f"{name}: second load {second_s:.2f} s is not faster than the first {first_s:.2f} s"


@pytest.mark.parametrize("precision", ["fp16", "int8"])
@pytest.mark.parametrize("name", BACKENDS)
def test_precision_a_cpu_backend_cannot_run_is_a_config_error(name: str, precision: str, cache: Path) -> None:
    """A user's impossible request is a ConfigError (exit code 2), at construction or at load."""
    if _device(name) != "cpu":
        pytest.skip(f"{name} runs on a GPU only")
    with pytest.raises(ConfigError):
        make(name, cache, precision=precision).load()


@pytest.mark.parametrize("name", BACKENDS)
def test_artifact_is_typed_and_describes_the_cached_file(name: str, tmp_path: Path) -> None:
    """No probing: every backend has ``artifact``; those that cache something say what and where."""
    import hashlib

    phases: list[tuple[str, int, int]] = []
    backend = make(name, tmp_path)
    assert backend.artifact is None and backend.batch_bounds == (1, BATCH)
    backend.load(progress=lambda phase, done, total: phases.append((phase, done, total)))
    try:
        artifact = backend.artifact
        if name == "torch":
            assert artifact is None
            return
        assert isinstance(artifact, Artifact) and artifact.built and artifact.build_seconds is not None
        assert artifact.path.is_file() and tmp_path in artifact.path.parents
        assert artifact.size_bytes == artifact.path.stat().st_size
        assert artifact.sha256 == hashlib.sha256(artifact.path.read_bytes()).hexdigest()
    finally:
        backend.close()
    assert backend.artifact == artifact  # kept after close: a record of the last load
    with make(name, tmp_path) as again:
        assert again.artifact is not None and not again.artifact.built and again.artifact.path == artifact.path


@pytest.mark.parametrize("name", BACKEND_NAMES)
@pytest.mark.parametrize(
    "changes",
    [{"precision": "int8"}, {"precision": "fp16"}, {"cuda_graphs": True}, {"device": "cuda"}, {"device": "cuda", "precision": "int8"}],
    ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()),
)
def test_unsupported_is_what_load_refuses(name: str, changes: dict[str, object], tmp_path: Path) -> None:
    """``unsupported(options)`` (what the bench skips before starting a case) is exactly what ``load`` refuses."""
    if backend_installed(name):
        cls = backend_class(name)
    else:  # the GPU backends' modules import without their packages: unsupported() needs none
        from engines.backends.tensorrt import TensorRTBackend
        from engines.backends.torch2trt_backend import Torch2TRTBackend

        cls = {"tensorrt": TensorRTBackend, "torch2trt": Torch2TRTBackend}[name]
    opts = replace(BackendOptions(device="cpu", cache_dir=tmp_path), **changes)  # type: ignore[arg-type]
    reason = cls.unsupported(opts)
    if reason is None:
        return
    assert "\n" not in reason and name in reason
    with pytest.raises(ConfigError) as info:
        cls(get_spec(MODEL), WEIGHTS, opts).load()
    assert str(info.value) == reason


def test_the_dynamic_batch_rule_lives_in_one_place() -> None:
    assert not BackendOptions.for_batch(1).dynamic_batch
    assert BackendOptions.for_batch(1, dynamic=True).dynamic_batch
    assert BackendOptions.for_batch(4).dynamic_batch and BackendOptions.for_batch(4).batch == 4
    assert BackendOptions.for_batch(4, device="cpu", precision="fp16") == BackendOptions(
        device="cpu", precision="fp16", batch=4, dynamic_batch=True
    )
