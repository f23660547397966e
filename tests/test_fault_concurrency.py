"""Several processes, one cache: one builds, the others wait and load the same entry; nothing
half-written is ever loaded, and a builder killed mid-build blocks no one.

* ONNX export: ``streamer build --backend onnxruntime`` x3 started at once, real export.
* TensorRT engines: four processes through ``get_engine`` with FakeTensorRT (the test double of
  ``tests/fakes/fake_tensorrt.py``, as in test_engine_cache.py, which covers two processes and the
  damaged-entry cases; no TensorRT runs here).
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import re
import signal
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from faults.fixtures import fault_env  # noqa: F401 - fixture
from faults.proc import MODEL_ARGS, LiveProcess, cli_env, streamer, wait_until

try:
    from fakes import fake_tensorrt
except ImportError:  # pragma: no cover - tests imported as a package
    from tests.fakes import fake_tensorrt  # type: ignore[no-redef]

BUILDERS = 3
TRT_PROCESSES = 4


def _find(pattern: str, text: str) -> str:
    match = re.search(pattern, text, re.M)
    assert match, f"no {pattern!r} in:\n{text}"
    return match.group(1)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# -- ONNX export through the command line ---------------------------------------------------------------
def test_concurrent_onnx_builds_share_one_export(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cmd = streamer("-v", "build", "--backend", "onnxruntime", "--cache-dir", cache, *MODEL_ARGS)
    procs = [LiveProcess(cmd, tmp_path).start() for _ in range(BUILDERS)]
    try:
        codes = [p.wait(300) for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert codes == [0] * BUILDERS, [p.stderr for p in procs]
    exported = [p for p in procs if "exported efficientnet_lite0 to ONNX" in p.stderr]
    assert len(exported) == 1, f"{len(exported)} processes exported: {[p.stderr for p in procs]}"
    paths = {_find(r"^onnx: (.+)$", p.stdout) for p in procs}
    shas = {_find(r"sha256 ([0-9a-f]{16})", p.stdout) for p in procs}
    assert len(paths) == 1 and len(shas) == 1, (paths, shas)
    onnx_path = Path(paths.pop())
    # What everyone was told to load is whole: its hash, its metadata, a model that runs.
    assert _sha(onnx_path).startswith(shas.pop())
    meta = json.loads(onnx_path.with_suffix(".json").read_text())
    assert meta["sha256"] == _sha(onnx_path) and meta["size"] == onnx_path.stat().st_size
    import onnx
    import onnxruntime

    onnx.checker.check_model(str(onnx_path))
    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, {"input": np.zeros((1, 3, 224, 224), dtype=np.float32)})
    assert logits.shape == (1, 1000) and np.isfinite(logits).all()
    leftovers = [p.name for p in onnx_path.parent.iterdir() if p.name.endswith(".tmp")]
    assert not leftovers, leftovers


# -- TensorRT engines through the cache, with FakeTensorRT ------------------------------------------------
def _engine_in_child(cache: str, onnx_path: str, build_log: str, delay: str) -> tuple[bool, str, str]:
    """Runs in a spawned process: FakeTensorRT as ``tensorrt``, a slow build, the shared cache."""
    sys.modules["tensorrt"] = fake_tensorrt
    os.environ["FAKE_TRT_BUILD_LOG"] = build_log
    os.environ["FAKE_TRT_BUILD_DELAY"] = delay
    from engines.backends.base import BackendOptions
    from engines.backends.tensorrt import DeviceInfo, get_engine
    from engines.cache import Store
    from engines.models import get_spec

    options = BackendOptions(device="cpu", precision="fp16", batch=4, cache_dir=Path(cache))
    data = Path(onnx_path).read_bytes()
    result = get_engine(
        get_spec("efficientnet_lite0"), options, Path(onnx_path), hashlib.sha256(data).hexdigest(),
        DeviceInfo("Fake GPU 9000", (8, 6), "12.4", "cpu"), cache=Store(Path(cache)),
    )  # fmt: skip
    io = ",".join(str(t) for t in (*result.value.inputs, *result.value.outputs))
    return result.built, str(result.paths.payload), io


def _lock_held(cache: Path) -> bool:
    import filelock

    for path in cache.glob("*.lock"):
        lock = filelock.FileLock(str(path), timeout=0)
        try:
            lock.acquire()
        except filelock.Timeout:
            return True
        except OSError:
            continue
        lock.release()
    return False


@pytest.fixture()
def tiny_onnx(tmp_path: Path) -> Path:
    from test_engine_cache import make_onnx  # the tiny classifier the engine-cache tests build from

    return make_onnx(tmp_path / "tiny.onnx", batch=4)


def test_four_processes_build_one_engine(tmp_path: Path, tiny_onnx: Path) -> None:
    cache, build_log = tmp_path / "cache", tmp_path / "builds.log"
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=TRT_PROCESSES, mp_context=ctx) as pool:
        futures = [pool.submit(_engine_in_child, str(cache), str(tiny_onnx), str(build_log), "1.5") for _ in range(TRT_PROCESSES)]
        results = [f.result(timeout=180) for f in futures]
    assert sorted(built for built, _, _ in results) == [False] * (TRT_PROCESSES - 1) + [True]
    assert len(build_log.read_text().splitlines()) == 1, "built more than once"
    assert len({payload for _, payload, _ in results}) == 1
    assert {io for _, _, io in results} == {"input[4x3x224x224] float32,logits[4x1000] float32"}
    payload = Path(results[0][1])
    manifest = json.loads(payload.with_suffix(".json").read_text())
    assert manifest["sha256"] == _sha(payload) and manifest["size"] == payload.stat().st_size
    assert fake_tensorrt.parse_blob(payload.read_bytes()) is not None
    assert not list(cache.glob(".*.tmp"))


def test_builder_killed_mid_build_blocks_no_one_and_leaves_nothing_loadable(tmp_path: Path, tiny_onnx: Path) -> None:
    """SIGKILL while holding the build lock: the lock dies with the process (no 30-minute wait), no
    engine or manifest was written, and the next process builds a sound one."""
    cache, build_log = tmp_path / "cache", tmp_path / "builds.log"
    code = (
        "import sys; sys.argv = ['x']; "
        "from test_fault_concurrency import _engine_in_child; "
        f"_engine_in_child({str(cache)!r}, {str(tiny_onnx)!r}, {str(build_log)!r}, '60')"
    )
    env = cli_env(PYTHONPATH=os.pathsep.join([str(Path(__file__).resolve().parent), cli_env()["PYTHONPATH"]]))
    with LiveProcess([sys.executable, "-c", code], tmp_path, env=env) as victim:
        wait_until(lambda: _lock_held(cache) or victim.poll() is not None, timeout=120, what="the build holding its lock")
        assert victim.poll() is None, victim.stderr
        victim.signal(signal.SIGKILL)
        victim.wait(10)
    assert not list(cache.glob("*.engine")) and not list(cache.glob("*.json"))
    start = time.monotonic()
    built, payload, _io = _engine_in_child(str(cache), str(tiny_onnx), str(build_log), "0")
    assert built and time.monotonic() - start < 30
    manifest = json.loads(Path(payload).with_suffix(".json").read_text())
    assert manifest["sha256"] == _sha(Path(payload))
