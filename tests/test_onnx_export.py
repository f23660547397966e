"""ONNX export: every registered model, ONNX Runtime against PyTorch on the sample photographs.

Each model is exported once per module (AlexNet's file is ~240 MB) into a
temporary cache folder, with a fixed batch of 1 and with a dynamic batch axis.
The errors measured are printed (run with ``-s`` to see them).
"""

from __future__ import annotations

import json
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
torch = pytest.importorskip("torch")
cv2 = pytest.importorskip("cv2")

import onnx  # noqa: E402

from engines import onnx_export  # noqa: E402
from engines.backends.base import BackendOptions  # noqa: E402
from engines.errors import BackendUnavailable, CacheError, ConfigError, EngineError  # noqa: E402
from engines.models import LoadedModel, WeightsChoice, build_model, get_spec, model_names  # noqa: E402
from engines.cache import Store, sha256_file  # noqa: E402
from engines.onnx_export import (  # noqa: E402
    cached_onnx,
    export_onnx,
    inspect_onnx,
    onnx_key,
)
from engines.preprocess import preprocess  # noqa: E402

SAMPLES = Path(__file__).resolve().parents[1] / "samples"
IMAGE_FILES = sorted((SAMPLES / "images").glob("*.jpg"))

REL_TOLERANCE = 1e-4
"""max |onnx - torch| / max |torch| over all logits of all images."""
ABS_TOLERANCE = 1e-3
"""max |onnx - torch| in logits (real-weights logits reach ~20)."""


def weights_for(model: str) -> WeightsChoice:
    """ImageNet weights where they ship offline, random ones for torchvision's models."""
    return WeightsChoice.parse("imagenet" if model == "efficientnet_lite0" else "random")


def session(path: Path) -> Any:
    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])


def run(sess: Any, x: np.ndarray) -> np.ndarray:
    (out,) = sess.run(["logits"], {"input": np.ascontiguousarray(x, dtype=np.float32)})
    return np.asarray(out)


def compare(model: str, what: str, got: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    """Assert parity; returns (max abs error, error relative to the logits' scale)."""
    assert got.shape == ref.shape and got.dtype == np.float32
    abs_err = float(np.abs(got - ref).max())
    scale = float(np.abs(ref).max())
    rel_err = abs_err / scale
    top1_got, top1_ref = got.argmax(1), ref.argmax(1)
    agree = float((top1_got == top1_ref).mean())
    print(f"\n{model:20s} {what:22s} max|err| {abs_err:.3e}  (logit scale {scale:.3e}, rel {rel_err:.2e})  top-1 agree {agree:.0%}")
    assert abs_err <= ABS_TOLERANCE, f"{model} {what}: max abs error {abs_err:.3e}"
    assert rel_err <= REL_TOLERANCE, f"{model} {what}: error {rel_err:.2e} of the logit scale {scale:.3e}"
    assert agree == 1.0, f"{model} {what}: top-1 differs on images {np.nonzero(top1_got != top1_ref)[0].tolist()}"
    return abs_err, rel_err


@dataclass
class Exported:
    loaded: LoadedModel
    reference: np.ndarray
    """PyTorch logits for every sample image, (8, 1000)."""
    inputs: np.ndarray
    fixed: Path
    fixed_sha: str
    dynamic: Path
    dynamic_sha: str
    seconds: float
    """Wall time of the first (uncached) dynamic export."""


@pytest.fixture(scope="module")
def frames() -> list[np.ndarray]:
    assert len(IMAGE_FILES) >= 8, f"sample images missing under {SAMPLES}"
    images = [cv2.imread(str(p)) for p in IMAGE_FILES]
    assert all(img is not None for img in images)
    return images


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("onnx-cache")


@pytest.fixture(scope="module")
def exported(frames: list[np.ndarray], cache: Path) -> Callable[[str], Exported]:
    """Export each model at most once per module, on first use."""
    done: dict[str, Exported] = {}

    def get(model: str) -> Exported:
        if model not in done:
            spec = get_spec(model)
            weights = weights_for(model)
            loaded = build_model(spec, weights)
            x = preprocess(frames, spec.preprocess)
            with torch.inference_mode():
                reference = loaded.module(x).float().numpy()
            start = time.perf_counter()
            dynamic = cached_onnx(spec, weights, batch=1, dynamic_batch=True, cache_dir=cache)
            seconds = time.perf_counter() - start
            fixed = cached_onnx(spec, weights, batch=1, dynamic_batch=False, cache_dir=cache)
            done[model] = Exported(
                loaded, reference, x.numpy(), fixed.value, fixed.sha256, dynamic.value, dynamic.sha256, seconds
            )
        return done[model]

    return get


# -- parity, every model --------------------------------------------------------------
@pytest.mark.parametrize("model", model_names())
def test_fixed_batch_export_matches_pytorch(model: str, exported: Callable[[str], Exported]) -> None:
    e = exported(model)
    info = inspect_onnx(e.fixed)
    assert info.input_shape == (1, *get_spec(model).preprocess.input_shape)
    assert info.output_shape == (1, 1000)
    sess = session(e.fixed)
    assert [i.name for i in sess.get_inputs()] == ["input"]
    assert [o.name for o in sess.get_outputs()] == ["logits"]
    got = np.concatenate([run(sess, e.inputs[i : i + 1]) for i in range(len(e.inputs))])
    compare(model, "fixed batch 1", got, e.reference)
    with pytest.raises(Exception, match="(?i)dimension|shape"):
        run(sess, e.inputs[:2])  # the batch really is fixed


@pytest.mark.parametrize("model", model_names())
def test_dynamic_batch_export_matches_pytorch(model: str, exported: Callable[[str], Exported]) -> None:
    e = exported(model)
    info = inspect_onnx(e.dynamic)
    assert info.input_shape == ("batch", *get_spec(model).preprocess.input_shape)
    assert info.output_shape == ("batch", 1000)
    sess = session(e.dynamic)
    one = np.concatenate([run(sess, e.inputs[i : i + 1]) for i in range(len(e.inputs))])
    compare(model, "dynamic, batches of 1", one, e.reference)
    three = np.concatenate([run(sess, e.inputs[i : i + 3]) for i in range(0, len(e.inputs), 3)])  # 3, 3, 2
    compare(model, "dynamic, batches of 3", three, e.reference)


@pytest.mark.parametrize("model", model_names())
def test_graph_does_not_read_runtime_shapes(model: str, exported: Callable[[str], Exported]) -> None:
    """SAME padding depends on H and W only: no Shape op may feed it (or anything) from the input."""
    for path in (exported(model).fixed, exported(model).dynamic):
        graph = onnx.load(str(path), load_external_data=False).graph
        ops = {n.op_type for n in graph.node}
        assert "Shape" not in ops, f"{path.name} computes something from the runtime input shape"
        external = [i.name for i in graph.initializer if i.data_location == onnx.TensorProto.EXTERNAL]
        assert not external, f"{path.name}: weights stored as external data"


def test_efficientnet_padding_is_folded_into_conv(exported: Callable[[str], Exported]) -> None:
    """The preferred (dynamo) exporter turns SameConv2d's F.pad into Conv pads: no Pad nodes."""
    for path in (exported("efficientnet_lite0").fixed, exported("efficientnet_lite0").dynamic):
        meta = json.loads(path.with_suffix(".json").read_text())
        graph = onnx.load(str(path), load_external_data=False).graph
        pads = sum(n.op_type == "Pad" for n in graph.node)
        if meta["info"]["exporter"] == "dynamo":
            assert pads == 0
        else:  # the TorchScript fallback keeps them, with constant sizes
            assert pads == 17


def test_cache_folder_holds_single_file_exports(exported: Callable[[str], Exported], cache: Path) -> None:
    exported("efficientnet_lite0")
    names = [p.name for p in (cache / "onnx").iterdir()]
    assert names
    assert all(n.endswith((".onnx", ".json", ".lock")) for n in names), names


# -- both exporters, quietly ------------------------------------------------------------
@pytest.mark.parametrize("exporter", ["dynamo", "torchscript"])
def test_each_exporter_is_correct_and_quiet(
    exporter: str,
    exported: Callable[[str], Exported],
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    e = exported("efficientnet_lite0")
    path = tmp_path / f"lite0-{exporter}.onnx"
    capfd.readouterr()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        export_onnx(e.loaded, path, batch=1, dynamic_batch=True, exporter=exporter)  # type: ignore[arg-type]
    out, err = capfd.readouterr()
    assert not [str(w.message)[:120] for w in caught], "warnings escaped the export"
    assert err == "" and out == "", f"export printed: {(out + err)[:500]}"
    noisy = [r for r in caplog.records if r.levelno >= 30 and not r.name.startswith("engines")]
    assert not noisy, [r.getMessage()[:120] for r in noisy]
    sess = session(path)
    compare("efficientnet_lite0", f"{exporter}, batch 1", run(sess, e.inputs[:1]), e.reference[:1])
    compare("efficientnet_lite0", f"{exporter}, batch 3", run(sess, e.inputs[:3]), e.reference[:3])
    assert inspect_onnx(path).opset == onnx_export.DEFAULT_OPSET
    assert not list(tmp_path.glob("*.tmp")), "temporary files left behind"


def test_auto_falls_back_and_reports_both_failures(
    exported: Callable[[str], Exported], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    e = exported("efficientnet_lite0")

    def broken(*_args: object) -> None:
        raise RuntimeError("simulated exporter failure")

    monkeypatch.setitem(onnx_export._EXPORTER_FUNCS, "dynamo", broken)
    path = export_onnx(e.loaded, tmp_path / "fallback.onnx", batch=1, dynamic_batch=True)
    compare("efficientnet_lite0", "fallback (torchscript)", run(session(path), e.inputs[:3]), e.reference[:3])
    monkeypatch.setitem(onnx_export._EXPORTER_FUNCS, "torchscript", broken)
    with pytest.raises(EngineError, match="dynamo: RuntimeError.*torchscript: RuntimeError"):
        export_onnx(e.loaded, tmp_path / "never.onnx", batch=1, dynamic_batch=True)
    assert not (tmp_path / "never.onnx").exists()
    assert not list(tmp_path.glob("*.tmp"))


def test_opset_below_dynamo_minimum_uses_torchscript(exported: Callable[[str], Exported], tmp_path: Path) -> None:
    assert onnx_export.exporter_order("auto", 17) == ["torchscript", "dynamo"]
    path = export_onnx(exported("efficientnet_lite0").loaded, tmp_path / "op17.onnx", opset=17)
    assert inspect_onnx(path).opset == 17


def test_export_rejects_a_model_not_on_the_cpu_in_fp32(exported: Callable[[str], Exported], tmp_path: Path) -> None:
    import copy

    loaded = copy.copy(exported("efficientnet_lite0").loaded)
    loaded.module = copy.deepcopy(loaded.module).half()
    with pytest.raises(ConfigError, match="float32"):
        export_onnx(loaded, tmp_path / "half.onnx")


# -- the cache ---------------------------------------------------------------------
def test_cached_export_is_reused(
    exported: Callable[[str], Exported], cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    e = exported("efficientnet_lite0")
    mtime = e.dynamic.stat().st_mtime_ns

    def no_rebuild(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("cache hit expected, but the model was built again")

    monkeypatch.setattr(onnx_export, "build_model", no_rebuild)
    start = time.perf_counter()
    hit_result = cached_onnx(get_spec("efficientnet_lite0"), weights_for("efficientnet_lite0"), 1, True, cache)
    path, sha = hit_result.value, hit_result.sha256
    hit = time.perf_counter() - start
    assert not hit_result.built
    print(f"\nefficientnet_lite0 dynamic export: first {e.seconds:.2f} s, cached {hit * 1e3:.1f} ms")
    assert (path, sha) == (e.dynamic, e.dynamic_sha)
    assert path.stat().st_mtime_ns == mtime
    assert sha == sha256_file(path)
    assert hit < e.seconds / 5
    # a dynamic graph does not depend on the largest batch: batch 8 shares the entry
    assert cached_onnx(get_spec("efficientnet_lite0"), weights_for("efficientnet_lite0"), 8, True, cache).value == path


def test_hash_follows_the_weights_bytes(exported: Callable[[str], Exported], cache: Path, tmp_path: Path) -> None:
    spec = get_spec("efficientnet_lite0")
    e = exported("efficientnet_lite0")
    state = {k: v.clone() for k, v in e.loaded.module.state_dict().items()}
    weights_file = tmp_path / "lite0.pth"
    torch.save(state, weights_file)
    choice = WeightsChoice.parse(str(weights_file))
    first = cached_onnx(spec, choice, 1, False, cache, exporter="torchscript")
    copy_path, copy_sha = first.value, first.sha256
    # the key follows the bytes of the weights file, not its path
    other = tmp_path / "elsewhere.pth"
    other.write_bytes(weights_file.read_bytes())
    same = cached_onnx(spec, WeightsChoice.parse(str(other)), 1, False, cache, exporter="torchscript")
    assert (same.value, same.sha256, same.built) == (copy_path, copy_sha, False)
    # retrained weights written over the same path: a new entry, a new hash, new logits
    state["_fc.bias"] += 1.0
    torch.save(state, weights_file)
    new = cached_onnx(spec, choice, 1, False, cache, exporter="torchscript")
    new_path, new_sha = new.value, new.sha256
    assert new_path != copy_path and new_sha != copy_sha
    old_out = run(session(copy_path), e.inputs[:1])
    new_out = run(session(new_path), e.inputs[:1])
    np.testing.assert_allclose(new_out - old_out, 1.0, atol=1e-3)


def test_key_covers_seed_batch_opset_and_torch() -> None:
    spec = get_spec("resnet18")
    rnd = WeightsChoice.parse("random")
    base = onnx_key(spec, rnd, 1, False)
    fields = base.to_json()
    assert fields["libraries"]["torch"] == torch.__version__ and fields["weights"] == "random-seed0"
    variants = [
        onnx_key(spec, rnd, 1, False, seed=1),
        onnx_key(spec, rnd, 2, False),
        onnx_key(spec, rnd, 1, True),
        onnx_key(spec, rnd, 1, False, opset=17),
    ]
    assert len({k.stem for k in [base, *variants]}) == 5
    assert onnx_key(spec, rnd, 1, True) == onnx_key(spec, rnd, 16, True)


def test_concurrent_callers_export_once(
    exported: Callable[[str], Exported], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    exported("efficientnet_lite0")  # imports and warms the exporter outside the timed part
    builds: list[str] = []
    real_build = onnx_export.build_model

    def counting_build(*args: Any, **kwargs: Any) -> LoadedModel:
        builds.append(threading.current_thread().name)
        time.sleep(0.3)  # widen the window in which the other caller arrives
        return real_build(*args, **kwargs)

    monkeypatch.setattr(onnx_export, "build_model", counting_build)
    spec, weights = get_spec("efficientnet_lite0"), weights_for("efficientnet_lite0")
    results: list[tuple[Path, str]] = []
    errors: list[BaseException] = []

    def call() -> None:
        try:
            result = cached_onnx(spec, weights, 2, False, tmp_path, exporter="torchscript")
            results.append((result.value, result.sha256))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=call, name=f"caller-{i}") for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    assert len(results) == 2 and results[0] == results[1]
    assert len(builds) == 1, f"exported {len(builds)} times"
    assert inspect_onnx(results[0][0]).input_shape[0] == 2


def test_lock_timeout_is_a_cache_error(tmp_path: Path) -> None:
    import filelock

    spec, weights = get_spec("resnet18"), WeightsChoice.parse("random")
    (tmp_path / "onnx").mkdir(mode=0o700)
    paths = Store(tmp_path).paths(onnx_key(spec, weights, 4, False))
    with filelock.FileLock(str(paths.lock)):
        with pytest.raises(CacheError, match="another process is exporting this model"):
            cached_onnx(spec, weights, 4, False, tmp_path, lock_timeout=0.2)
    assert not paths.payload.exists()


def _copy_entry(entry: Path, cache_dir: Path) -> Path:
    """Copy an export and its manifest into another cache folder (the key holds no path: it is reused there)."""
    import shutil

    folder = cache_dir / "onnx"
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    for suffix in (".onnx", ".json"):
        shutil.copy2(entry.with_suffix(suffix), folder / entry.with_suffix(suffix).name)
    return folder / entry.name


def test_clear_removes_idle_entries_only(exported: Callable[[str], Exported], tmp_path: Path) -> None:
    import filelock

    copied = _copy_entry(exported("efficientnet_lite0").fixed, tmp_path)
    store = Store(tmp_path)
    assert [e.path for e in store.entries()] == [copied]
    assert store.clear(model="resnet18").removed == []
    with filelock.FileLock(str(copied.with_suffix(".lock"))):  # an export in progress
        held = store.clear(model="efficientnet_lite0")
        assert held.removed == [] and held.kept == [copied]
    removed = store.clear(model="efficientnet_lite0").removed
    assert copied in removed and copied.with_suffix(".json") in removed
    assert list((tmp_path / "onnx").iterdir()) == []


def test_cache_dir_comes_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMER_CACHE_DIR", str(tmp_path / "env-cache"))
    assert Store().folder == tmp_path / "env-cache"
    assert (tmp_path / "env-cache").stat().st_mode & 0o077 == 0


def _invert_4k(path: Path) -> None:
    """Invert 4 KiB in the middle of a file, its size unchanged (a bad sector, a bit-rotted copy)."""
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 4096] = bytes(b ^ 0xFF for b in data[middle : middle + 4096])
    path.write_bytes(bytes(data))


def test_a_corrupt_export_is_rebuilt_with_one_warning(
    exported: Callable[[str], Exported],
    tmp_path: Path,
    frames: list[np.ndarray],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Issue #13: inverting 4 KB inside a cached export gave NaN labels and a manifest blessing the damage."""
    import logging

    from engines.backends.base import postprocess
    from engines.backends.onnxruntime_backend import OnnxRuntimeBackend

    spec = get_spec("efficientnet_lite0")
    path = _copy_entry(exported(spec.name).fixed, tmp_path)
    manifest = path.with_suffix(".json").read_text()
    options = BackendOptions(device="cpu", cache_dir=tmp_path)
    with OnnxRuntimeBackend(spec, weights_for(spec.name), options) as backend:
        assert backend.artifact is not None and not backend.artifact.built and backend.artifact.path == path
        good = [postprocess(backend.infer(backend.preprocess([f])), spec.labels, 1)[0] for f in frames]
    _invert_4k(path)
    with caplog.at_level(logging.WARNING, logger="engines.cache"):
        with OnnxRuntimeBackend(spec, weights_for(spec.name), options) as backend:
            assert backend.artifact is not None and backend.artifact.built and backend.artifact.path == path
            again = [postprocess(backend.infer(backend.preprocess([f])), spec.labels, 1)[0] for f in frames]
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "SHA-256 differs" in warnings[0] and "rebuilding" in warnings[0], warnings
    assert [p.labels for p in again] == [p.labels for p in good]
    assert all(np.isfinite(p.scores).all() for p in again)
    np.testing.assert_allclose([p.scores for p in again], [p.scores for p in good], atol=1e-4)
    rebuilt = json.loads(path.with_suffix(".json").read_text())
    assert rebuilt["sha256"] == sha256_file(path) and rebuilt["sha256"] == json.loads(manifest)["sha256"]


def test_a_corrupt_export_is_never_blessed(
    exported: Callable[[str], Exported], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The manifest is only written from freshly built bytes: loading a damaged file never rewrites it."""
    spec = get_spec("efficientnet_lite0")
    path = _copy_entry(exported(spec.name).fixed, tmp_path)
    manifest = path.with_suffix(".json").read_bytes()
    _invert_4k(path)

    def refuse(*_args: object, **_kwargs: object) -> None:
        raise EngineError("export refused for this test")

    monkeypatch.setattr(onnx_export, "build_model", refuse)
    for _attempt in range(2):  # the second call meets the damage again: nothing blessed it
        with pytest.raises(EngineError, match="export refused"):
            cached_onnx(spec, weights_for(spec.name), 1, False, tmp_path)
        assert path.with_suffix(".json").read_bytes() == manifest


# -- the onnxruntime backend built on the export ----------------------------------------------
def test_onnxruntime_backend_reports_its_provider(cache: Path, frames: list[np.ndarray]) -> None:
    from engines.backends.onnxruntime_backend import OnnxRuntimeBackend

    spec = get_spec("efficientnet_lite0")
    backend = OnnxRuntimeBackend(spec, weights_for(spec.name), BackendOptions(device="cpu", threads=1, cache_dir=cache))
    assert not backend.active_providers and backend.input_device == "cpu"
    with backend:
        assert backend.active_providers == ("CPUExecutionProvider",)
        assert "CPUExecutionProvider" in backend.description
        assert backend.onnx_path is not None and backend.onnx_path.parent == cache / "onnx"
        assert inspect_onnx(backend.onnx_path).input_shape[0] == 1  # batch 1, not dynamic: fixed graph
        out = backend.infer(backend.preprocess(frames[:1]))
        assert out.dtype == torch.float32 and out.device.type == "cpu"
    assert not backend.active_providers


def test_onnxruntime_threads_follow_a_restricted_affinity(cache: Path, exported: Callable[[str], Exported], monkeypatch: pytest.MonkeyPatch) -> None:
    """Pinned to fewer CPUs than the machine has, onnxruntime gets one intra-op thread per allowed CPU (its own
    default counts the machine's cores); unpinned, or with --threads, nothing changes."""
    from engines.backends import onnxruntime_backend
    from engines.backends.onnxruntime_backend import OnnxRuntimeBackend, allowed_cpus_if_restricted

    spec = get_spec("efficientnet_lite0")
    exported(spec.name)
    monkeypatch.setattr(onnxruntime_backend.os, "cpu_count", lambda: 64)
    monkeypatch.setattr(onnxruntime_backend.os, "sched_getaffinity", lambda _pid: {0})
    assert allowed_cpus_if_restricted() == 1
    for threads, expected in ((None, 1), (2, 2)):
        backend = OnnxRuntimeBackend(spec, weights_for(spec.name), BackendOptions(device="cpu", threads=threads, cache_dir=cache))
        with backend:
            assert backend._session.get_session_options().intra_op_num_threads == expected
    monkeypatch.setattr(onnxruntime_backend.os, "sched_getaffinity", lambda _pid: set(range(64)))
    assert allowed_cpus_if_restricted() is None


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_onnxruntime_rejects_cpu_precisions_it_cannot_run(precision: str) -> None:
    from engines.backends.onnxruntime_backend import OnnxRuntimeBackend

    with pytest.raises(ConfigError, match=precision):
        OnnxRuntimeBackend(
            get_spec("efficientnet_lite0"),
            weights_for("efficientnet_lite0"),
            BackendOptions(device="cpu", precision=precision),  # type: ignore[arg-type]
        )


def test_onnxruntime_on_cuda_without_a_gpu_provider_is_unavailable() -> None:
    from engines.backends.onnxruntime_backend import OnnxRuntimeBackend

    if "CUDAExecutionProvider" in ort.get_available_providers() and torch.cuda.is_available():
        pytest.skip("a GPU provider is present")
    backend = OnnxRuntimeBackend(
        get_spec("efficientnet_lite0"), weights_for("efficientnet_lite0"), BackendOptions(device="cuda")
    )
    with pytest.raises(BackendUnavailable):
        backend.load()
    assert not backend.is_loaded


def test_onnxruntime_recovers_from_a_corrupt_cache_entry(
    exported: Callable[[str], Exported], tmp_path: Path, frames: list[np.ndarray]
) -> None:
    from engines.backends.onnxruntime_backend import OnnxRuntimeBackend

    spec = get_spec("efficientnet_lite0")
    entry = exported(spec.name).fixed  # what a batch-1 backend loads: copy it rather than export again
    folder = _copy_entry(entry, tmp_path).parent
    options = BackendOptions(device="cpu", cache_dir=tmp_path)
    backend = OnnxRuntimeBackend(spec, weights_for(spec.name), options)
    with backend:
        good = backend.infer(backend.preprocess(frames[:1]))
        path = backend.onnx_path
    assert path == folder / entry.name
    path.write_bytes(b"not an onnx file")  # a damaged entry whose metadata no longer matches
    backend = OnnxRuntimeBackend(spec, weights_for(spec.name), options)
    with backend:
        again = backend.infer(backend.preprocess(frames[:1]))
        assert backend.onnx_path == path and path.stat().st_size > 1_000_000
    torch.testing.assert_close(again, good)


@pytest.mark.parametrize(
    ("available", "precision", "expected"),
    [
        (["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"], "fp16",
         ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")),
        (["CUDAExecutionProvider", "CPUExecutionProvider"], "fp32", ("CUDAExecutionProvider", "CPUExecutionProvider")),
        (["CUDAExecutionProvider", "CPUExecutionProvider"], "fp16", ConfigError),
        (["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"], "int8", ConfigError),
        (["AzureExecutionProvider", "CPUExecutionProvider"], "fp32", BackendUnavailable),
    ],
)
def test_onnxruntime_gpu_provider_choice(
    available: list[str], precision: str, expected: object, tmp_path: Path
) -> None:
    """The GPU configuration, checked without a GPU: which providers, with which options."""
    from engines.backends.onnxruntime_backend import OnnxRuntimeBackend

    options = BackendOptions.for_batch(4, device="cuda:1", precision=precision, cache_dir=tmp_path)
    backend = OnnxRuntimeBackend(get_spec("efficientnet_lite0"), weights_for("efficientnet_lite0"), options)
    assert backend.input_device == "cuda:1"
    if isinstance(expected, type):
        with pytest.raises(expected, match=precision if expected is ConfigError else "no GPU"):
            backend._choose_providers(available)
        return
    providers = backend._choose_providers(available)
    assert providers == expected
    configured = backend._provider_options(providers, "ab" * 32)
    assert configured[-1] == "CPUExecutionProvider"
    by_name = {p[0]: p[1] for p in configured if isinstance(p, tuple)}
    assert by_name["CUDAExecutionProvider"] == {"device_id": 1}
    if "TensorrtExecutionProvider" in by_name:
        trt = by_name["TensorrtExecutionProvider"]
        assert trt["device_id"] == 1 and trt["trt_fp16_enable"] is True and trt["trt_engine_cache_enable"] is True
        assert trt["trt_profile_min_shapes"] == "input:1x3x224x224"
        assert trt["trt_profile_max_shapes"] == trt["trt_profile_opt_shapes"] == "input:4x3x224x224"
        engine_dir = Path(trt["trt_engine_cache_path"])
        assert engine_dir.parent == tmp_path / "ort-tensorrt" and engine_dir.is_dir()
        from engines.cache import OrtFolderKey

        key = OrtFolderKey("efficientnet_lite0", "ab" * 32, "fp16", batch=4, dynamic=True)
        assert engine_dir == Store(tmp_path).folder_for(key) and engine_dir.name.startswith("efficientnet_lite0-fp16-dyn4-")
        other = backend._tensorrt_options(1, "cd" * 32)["trt_engine_cache_path"]
        assert Path(other) != engine_dir  # one folder per ONNX file: onnxruntime names engines after the graph
