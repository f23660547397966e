"""mypy checks the TensorRT code against the TensorRT 10.13 stubs committed in typings/.

TensorRT cannot run on the project's machines, so this is the check that our
calls into its API exist: the engine modules must pass, and a snippet using
APIs TensorRT 10 removed must fail with the expected errors (which also proves
mypy is reading the stubs rather than treating ``tensorrt`` as ``Any``).
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHECKED = (
    "engines/cache/__init__.py",
    "engines/cache/key.py",
    "engines/cache/store.py",
    "engines/onnx_export.py",
    "engines/backends/base.py",
    "engines/backends/tensorrt/__init__.py",
    "engines/backends/tensorrt/util.py",
    "engines/backends/tensorrt/loader.py",
    "engines/backends/tensorrt/calibrator.py",
    "engines/backends/tensorrt/key.py",
    "engines/backends/torch2trt_backend.py",
    "engines/backends/torch2trt_converters.py",
    "tools/trt_rtx_check.py",
    "engines/backends/onnxruntime_backend.py",
    "streamer/cmd_engines.py",
    "engines/backends/triton_backend.py",
    "streamer/serve.py",
)

pytestmark = pytest.mark.skipif(importlib.util.find_spec("mypy") is None, reason="mypy is not installed")


def run_mypy(*paths: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", str(ROOT / "mypy.ini"), *map(str, paths)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_engine_modules_pass_mypy() -> None:
    result = run_mypy(*CHECKED)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"Success: no issues found in {len(CHECKED)} source files" in result.stdout



def test_whole_package_passes_mypy() -> None:
    """Every module of both packages and the tools, not only the engine code: the CLI, the
    pipeline, the bench and the tools are type-checked too (strict defs, see mypy.ini)."""
    result = run_mypy("streamer", "engines", "tools")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Success: no issues found" in result.stdout

GOOD = '''
def build(onnx: bytes) -> bytes:
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx):
        raise RuntimeError("; ".join(str(parser.get_error(i)) for i in range(parser.num_errors)))
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, 1 << 28)
    config.set_flag(trt.BuilderFlag.FP16)
    plan = builder.build_serialized_network(network, config)
    engine = trt.Runtime(logger).deserialize_cuda_engine(plan)
    context = engine.create_execution_context()
    context.set_input_shape("input", (1, 3, 224, 224))
    context.set_tensor_address("input", 0)
    context.execute_async_v3(0)
    return bytes(plan)
'''

BAD = '''
def build(network: object) -> None:
    import tensorrt as trt

    builder = trt.Builder(trt.Logger(trt.Logger.WARNING))
    config = builder.create_builder_config()
    config.max_workspace_size = 1 << 28
    builder.build_engine(network, config)
    context = builder.create_network(0)
    engine = trt.Runtime(trt.Logger()).deserialize_cuda_engine(b"")
    engine.create_execution_context().execute_async_v2([0, 0], 0)
    builder.max_batch_size = 8
'''


def test_good_tensorrt_snippet_passes(tmp_path: Path) -> None:
    path = tmp_path / "good_trt.py"
    path.write_text(textwrap.dedent(GOOD))
    result = run_mypy(path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_removed_tensorrt_apis_are_flagged(tmp_path: Path) -> None:
    path = tmp_path / "bad_trt.py"
    path.write_text(textwrap.dedent(BAD))
    result = run_mypy(path)
    out = result.stdout
    assert result.returncode == 1, out + result.stderr
    assert '"IBuilderConfig" has no attribute "max_workspace_size"' in out
    assert '"Builder" has no attribute "build_engine"' in out
    assert '"IExecutionContext" has no attribute "execute_async_v2"' in out
    assert '"Builder" has no attribute "max_batch_size"' in out
    assert "Found 4 errors in 1 file" in out


THROUGH_OUR_ACCESSOR = '''
from engines.backends.tensorrt.util import make_logger, trt


def build(network: object) -> None:
    builder = trt.Builder(make_logger())
    builder.build_engine(network, builder.create_builder_config())
'''


def test_our_tensorrt_accessor_is_checked_against_the_stubs(tmp_path: Path) -> None:
    """``util.trt`` (tensorrt or tensorrt_rtx, imported on first use) is the stubs' ``tensorrt`` to mypy."""
    path = tmp_path / "through_util.py"
    path.write_text(textwrap.dedent(THROUGH_OUR_ACCESSOR))
    result = run_mypy(path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert '"Builder" has no attribute "build_engine"' in result.stdout
