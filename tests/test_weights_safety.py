"""Weights on a torch whose torch.load is not safe (< 2.6, CVE-2025-32434), e.g. JetPack 6's 2.5.0a0+...nv24.08.

A real old torch cannot be installed here, so the detected version is monkeypatched (importlib.metadata, which
is what streamer reads); the files, the hashes, safetensors and the README's conversion command are all real.
"""

from __future__ import annotations

import os
import pickle
import re
import shlex
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
import torch

from engines import models
from engines.errors import WeightsError
from engines.models import (
    LITE0_WEIGHTS_SHA256,
    TrustedPickle,
    WeightsChoice,
    build_model,
    get_spec,
    is_safetensors,
    load_state_dict,
    resolve_weights_file,
    torch_load_is_safe,
    trusted_pickle_for,
)
from engines.paths import sha256_file
from faults.fixtures import InProcessCli, cli, restore_logging  # noqa: F401 - fixtures
from faults.media import SAMPLE_IMAGES
from faults.proc import assert_one_clear_line

ROOT = Path(__file__).resolve().parents[1]
JETPACK_TORCH = "2.5.0a0+872d972e41.nv24.08"
LITE = "efficientnet_lite0"


@pytest.fixture()
def old_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    real = metadata.version
    monkeypatch.setattr(metadata, "version", lambda name: JETPACK_TORCH if name == "torch" else real(name))


@pytest.fixture()
def count_torch_load(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    calls: list[Path] = []
    real = torch.load

    def spy(path: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(Path(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    return calls


def _lite_state(tmp_path: Path) -> tuple[dict[str, torch.Tensor], Path]:
    state = build_model(get_spec(LITE), WeightsChoice("random"), seed=3).module.state_dict()
    path = tmp_path / "lite.pth"
    torch.save(state, path)
    return state, path


class _RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize(
    "version, safe",
    [(JETPACK_TORCH, False), ("2.5.1+cu121", False), ("2.1.0a0+41361538.nv23.06", False), ("2.6.0", True), ("2.10.1+cpu", True), ("garbage", False)],
)
def test_which_torch_has_a_safe_load(version: str, safe: bool) -> None:
    assert torch_load_is_safe(version) is safe


def test_this_torch_is_new_enough() -> None:
    assert torch_load_is_safe()  # the suite runs on torch >= 2.6; every old-torch test below patches the version


def test_jetpack_torch_passes_the_version_gate(old_torch: None) -> None:
    from streamer import cli as streamer_cli

    streamer_cli._check_torch_version()


def test_a_users_pickle_is_refused_on_old_torch_before_torch_load(old_torch: None, tmp_path: Path, count_torch_load: list[Path]) -> None:
    _, path = _lite_state(tmp_path)
    for call in (
        lambda: load_state_dict(path),
        lambda: resolve_weights_file(get_spec(LITE), WeightsChoice.parse(str(path))),
        lambda: build_model(get_spec(LITE), WeightsChoice.parse(str(path))),
    ):
        with pytest.raises(WeightsError) as info:
            call()
        text = str(info.value)
        assert f"refusing to load {path}" in text and f"torch {JETPACK_TORCH} is older than 2.6" in text
        assert "CVE-2025-32434" in text and "convert it to safetensors" in text and "Weights on torch older than 2.6" in text
        assert "\n" not in text
    assert count_torch_load == [], "torch.load must not even be tried"


@pytest.mark.parametrize("fmt", ["torch-zip", "plain-pickle"])
def test_a_pickle_that_runs_code_is_refused_on_old_torch(old_torch: None, tmp_path: Path, fmt: str) -> None:
    marker = tmp_path / "PWNED"
    path = tmp_path / f"evil-{fmt}.pth"
    payload = {"_fc.bias": torch.zeros(1000), "x": _RunsCode(marker)}
    if fmt == "torch-zip":
        torch.save(payload, path)
    else:
        with open(path, "wb") as fh:
            pickle.dump(payload, fh, protocol=2)
    with pytest.raises(WeightsError, match="CVE-2025-32434"):
        load_state_dict(path)
    assert not marker.exists()


def test_safetensors_load_on_old_torch_and_give_the_same_weights(old_torch: None, tmp_path: Path, count_torch_load: list[Path]) -> None:
    from safetensors.torch import save_file

    state, _ = _lite_state(tmp_path)
    path = tmp_path / "lite.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    loaded = build_model(get_spec(LITE), WeightsChoice.parse(str(path)))
    assert count_torch_load == []
    for key, value in loaded.module.state_dict().items():
        assert torch.equal(value, state[key]), key
    # recognised by content, not by name
    renamed = tmp_path / "lite.bin"
    path.rename(renamed)
    assert is_safetensors(renamed) and not is_safetensors(tmp_path / "lite.pth")
    assert set(load_state_dict(renamed)) == set(state)


def test_a_broken_safetensors_file_is_one_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "broken.safetensors"
    path.write_bytes((100).to_bytes(8, "little") + b'{"a": {"dtype": "F32", "shape": [9], "data_offsets": [0, 36]}}' + b" " * 40)
    with pytest.raises(WeightsError, match="not a readable safetensors file"):
        load_state_dict(path)


def test_packaged_lite0_weights_load_on_old_torch_only_with_the_pinned_hash(old_torch: None, count_torch_load: list[Path]) -> None:
    spec = get_spec(LITE)
    path = resolve_weights_file(spec, WeightsChoice("imagenet"))
    assert path is not None and sha256_file(path) == LITE0_WEIGHTS_SHA256
    assert models.hash_prefix(path.name) == LITE0_WEIGHTS_SHA256[:8]  # its name follows torch.hub's convention too
    assert trusted_pickle_for(spec, WeightsChoice("imagenet")) == TrustedPickle(sha256=LITE0_WEIGHTS_SHA256)
    loaded = build_model(spec, WeightsChoice("imagenet"))
    assert count_torch_load == [path] and not loaded.random_weights
    with pytest.raises(WeightsError, match=r"its SHA-256 579344248a93e230\.\.\. is not the pinned 0000000000000000\.\.\."):
        load_state_dict(path, TrustedPickle(sha256="0" * 64))


def test_torchvision_downloads_are_checked_by_their_hash_prefix(old_torch: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = get_spec("resnet18")
    assert trusted_pickle_for(spec, WeightsChoice("imagenet")) == TrustedPickle(hash_prefix="f37072fd")
    assert trusted_pickle_for(spec, WeightsChoice.parse(str(tmp_path / "x.pth"))) is None
    # a cached file under torchvision's name whose content is not the published one
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    cached = models.torch_hub_checkpoint(spec.weights_url or "")
    cached.parent.mkdir(parents=True)
    torch.save(build_model(spec, WeightsChoice("random")).module.state_dict(), cached)
    with pytest.raises(WeightsError, match=r"does not start with the f37072fd its name promises"):
        build_model(spec, WeightsChoice("imagenet"))
    # and a file whose content does carry the prefix its name states is loaded
    actual = sha256_file(cached)
    load_state_dict(cached, TrustedPickle(hash_prefix=actual[:8]))


def test_downloads_pass_the_hash_prefix_to_torch_hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    seen: dict[str, Any] = {}
    monkeypatch.setattr(torch.hub, "download_url_to_file", lambda url, dst, hash_prefix=None, progress=True: seen.update(url=url, hash_prefix=hash_prefix))
    models._download("https://download.pytorch.org/models/alexnet-owt-7be5be79.pth", tmp_path / "a.pth")
    assert seen["hash_prefix"] == "7be5be79"


def test_new_torch_keeps_todays_behaviour(tmp_path: Path, count_torch_load: list[Path]) -> None:
    state, path = _lite_state(tmp_path)
    loaded = load_state_dict(path)
    assert count_torch_load == [path] and set(loaded) == set(state)


def test_the_readme_conversion_command(tmp_path: Path) -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("### Weights on torch older than 2.6", 1)[1]
    command = re.search(r"```sh\n(.*?)```", section, re.S)
    assert command is not None
    argv = shlex.split(command.group(1).strip())
    assert argv[0] == "python" and argv[-2:] == ["model.pth", "model.safetensors"]
    state, _ = _lite_state(tmp_path)
    torch.save({"state_dict": state, "epoch": 3}, tmp_path / "model.pth")  # the common checkpoint shape
    done = subprocess.run([sys.executable, *argv[1:]], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    converted = load_state_dict(tmp_path / "model.safetensors")
    assert set(converted) == set(state) and all(torch.equal(converted[k], v) for k, v in state.items())  # type: ignore[arg-type]


def test_the_cli_refuses_a_pickle_and_runs_a_safetensors_file_on_old_torch(cli: InProcessCli, old_torch: None, tmp_path: Path) -> None:
    from safetensors.torch import save_file

    state, pth = _lite_state(tmp_path)
    common = ("--headless", "--backend", "torch", "--device", "cpu", "--model", LITE, "--no-progress", "--no-summary")
    result = cli("run", SAMPLE_IMAGES / "cat.jpg", "--weights", pth, *common, fake_model=False)
    line = assert_one_clear_line(result)
    assert result.returncode == 2 and "CVE-2025-32434" in line and "lite.pth" in line
    st = tmp_path / "lite.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(st))
    out = tmp_path / "p.jsonl"
    result = cli("run", SAMPLE_IMAGES / "cat.jpg", "--weights", st, "--predictions", out, *common, fake_model=False)
    assert result.returncode == 0, result.stderr
    assert out.read_text(encoding="utf-8").strip()
