"""Credentials, GStreamer pipelines, weights and engines: what a hostile or careless input must not do.

* A stream password never reaches stdout, stderr (at any verbosity), the JSON lines, file names
  or file contents.  Child processes, so that anything FFmpeg or OpenCV print is seen too.
* A GStreamer pipeline runs only with ``--gst``.
* Weights are code: a pickle that runs code on load is refused, and nothing runs.
* Engines and exported models are read only from the user's own cache folder, which others cannot
  write to; streamer changes the mode only of folders it created, and ``cache clear`` never leaves it.
* PyTorch older than 2.6 (whose ``weights_only`` loader is not safe) is refused.
"""

from __future__ import annotations

import os
import pickle
import stat
import sys
from importlib import metadata
from pathlib import Path

import pytest

from faults.fixtures import InProcessCli, cli, fault_env, restore_logging  # noqa: F401 - fixtures
from faults.fs import entries, running_as_root
from faults.media import SAMPLE_IMAGES, SAMPLE_VIDEO, sample_frames
from faults.mjpeg import MjpegCamera, closed_port
from faults.proc import MODEL_ARGS, LiveProcess, assert_one_clear_line, fake_streamer, run

PASSWORD = "s3cr3tPW"
RUN = ("--no-progress", *MODEL_ARGS, "--weights", "random")


def _assert_nowhere(folder: Path, *texts: str) -> None:
    """The password is in none of ``texts``, no name under ``folder``, and no file's bytes."""
    for text in texts:
        assert PASSWORD not in text, text
    for path in folder.rglob("*"):
        assert PASSWORD not in path.name, path
        if path.is_file():
            assert PASSWORD.encode() not in path.read_bytes(), f"{path} holds the password"


# -- 8. credentials ------------------------------------------------------------------------------------
@pytest.mark.parametrize("verbosity", [[], ["-v"], ["-vv"]], ids=["quiet", "-v", "-vv"])
def test_password_of_an_unreachable_rtsp_stream_is_never_shown(tmp_path: Path, verbosity: list[str]) -> None:
    url = f"rtsp://user:{PASSWORD}@127.0.0.1:{closed_port()}/x"
    result = run(fake_streamer("instant", *verbosity, "run", url, "-o", tmp_path / "out.mkv", "--timeout", "2", *RUN), tmp_path)
    line = assert_one_clear_line(result)
    assert "rtsp://user:***@127.0.0.1" in line
    _assert_nowhere(tmp_path, result.stdout, result.stderr)
    assert entries(tmp_path) == []


def test_password_of_a_live_http_stream_is_never_shown_or_stored(tmp_path: Path) -> None:
    """The camera hangs once, so the reconnect warnings (which name the stream) are printed too."""
    with MjpegCamera(sample_frames(30, (320, 240)), fps=25, max_frames=200, max_seconds=90, stall_after=20) as cam:
        url = cam.url.replace("http://", f"http://user:{PASSWORD}@")
        cmd = fake_streamer(
            "instant", "-vv", "run", url, "-o", tmp_path / "out.mkv", "--predictions", tmp_path / "p.jsonl",
            "--timeout", "2", "--reconnect", "20", "--max-frames", "40", *RUN,
        )  # fmt: skip
        with LiveProcess(cmd, tmp_path) as proc:
            proc.wait_for_line("stream lost; reconnecting", timeout=90)
            cam.restart()
            code = proc.wait(60)
    assert code == 0, proc.stderr
    assert "reconnected after" in proc.stderr and f"user:***@127.0.0.1:{cam.port}" in proc.stderr
    _assert_nowhere(tmp_path, proc.stdout, proc.stderr)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.mkv", "p.jsonl"]


def test_password_in_the_query_string_is_never_shown(cli: InProcessCli, tmp_path: Path) -> None:
    with MjpegCamera(sample_frames(10, (320, 240)), fps=25, max_frames=100, max_seconds=60) as cam:
        url = f"{cam.url}?user=admin&password={PASSWORD}"
        result = cli("run", url, "--headless", "--predictions", tmp_path / "p.jsonl", "--max-frames", "5", "--no-summary", *RUN)
    assert result.returncode == 0, result
    _assert_nowhere(tmp_path, result.stdout, result.stderr)


def test_bench_never_shows_a_stream_password(cli: InProcessCli, tmp_path: Path) -> None:
    pytest.importorskip("streamer.bench.cli", reason="no streamer bench in this checkout")
    url = f"rtsp://user:{PASSWORD}@127.0.0.1:{closed_port()}/x"
    result = cli("-vv", "bench", url, "--report", tmp_path / "report", "--device", "cpu", "--backends", "torch", *MODEL_ARGS, fake_model=False)
    assert_one_clear_line(result)
    _assert_nowhere(tmp_path, result.stdout, result.stderr)


# -- 9. GStreamer ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "pipeline",
    ["videotestsrc ! videoconvert ! appsink", "v4l2src device=/dev/video0 ! video/x-raw,width=640 ! videoconvert ! appsink"],
    ids=["videotestsrc", "v4l2src"],
)
def test_pipeline_without_gst_is_refused_with_a_hint(cli: InProcessCli, tmp_path: Path, pipeline: str) -> None:
    result = cli("run", pipeline, "-o", tmp_path / "out.mkv", *RUN)
    line = assert_one_clear_line(result)
    assert "GStreamer pipeline" in line and "--gst" in line
    assert entries(tmp_path) == []


def test_gst_without_gstreamer_in_opencv_is_a_clear_error(cli: InProcessCli, tmp_path: Path) -> None:
    from streamer.sources import opencv_has_gstreamer

    if opencv_has_gstreamer():
        pytest.skip("this OpenCV has GStreamer")
    for source in ("videotestsrc ! videoconvert ! appsink", str(SAMPLE_VIDEO)):  # --gst never falls back to FFmpeg
        result = cli("run", source, "--gst", "-o", tmp_path / "out.mkv", *RUN)
        line = assert_one_clear_line(result)
        assert "--gst needs an OpenCV built with GStreamer" in line
    assert entries(tmp_path) == []


# -- 10. weights are code -------------------------------------------------------------------------------
class _RunsCode:
    """Unpickling this runs a shell command: the classic malicious checkpoint."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


def _malicious_weights(folder: Path, fmt: str) -> tuple[Path, Path]:
    import torch

    marker = folder / "PWNED"
    path = folder / f"evil-{fmt}.pth"
    payload = {"features.0.weight": torch.zeros(1), "x": _RunsCode(marker)}
    if fmt == "torch-zip":
        torch.save(payload, path)
    else:
        with open(path, "wb") as fh:
            pickle.dump(payload, fh, protocol=2)
    assert not marker.exists()
    return path, marker


@pytest.mark.parametrize("fmt", ["torch-zip", "plain-pickle"])
def test_malicious_weights_are_refused_and_do_not_run(cli: InProcessCli, tmp_path: Path, fmt: str) -> None:
    weights, marker = _malicious_weights(tmp_path, fmt)
    result = cli(
        "run", SAMPLE_IMAGES / "cat.jpg", "--headless", "--weights", weights, "--backend", "torch", "--device", "cpu",
        *MODEL_ARGS, fake_model=False,
    )  # fmt: skip
    line = assert_one_clear_line(result)
    assert "refusing to load" in line and "weights_only" in line, line
    assert not marker.exists(), "the pickle ran code"


def test_malicious_weights_are_refused_by_build_too(cli: InProcessCli, tmp_path: Path) -> None:
    weights, marker = _malicious_weights(tmp_path, "torch-zip")
    result = cli("build", "--backend", "onnxruntime", "--weights", weights, "--cache-dir", tmp_path / "cache", *MODEL_ARGS, fake_model=False)
    assert "refusing to load" in assert_one_clear_line(result)
    assert not marker.exists()
    assert not list((tmp_path / "cache").rglob("*.onnx"))


# -- 10. engines come only from the user's private cache folder ------------------------------------------
def test_created_cache_folders_are_private(cli: InProcessCli, tmp_path: Path) -> None:
    folder = tmp_path / "new" / "cache"
    result = cli("build", "--backend", "onnxruntime", "--cache-dir", folder, *MODEL_ARGS, "--weights", "random")
    assert result.returncode == 0, result.stderr
    for created in (folder, folder / "onnx"):
        assert stat.S_IMODE(created.stat().st_mode) == 0o700, created


@pytest.mark.parametrize("mode", [0o2775, 0o777, 0o770, 0o757])
def test_an_existing_folder_others_can_write_is_refused_not_chmodded(cli: InProcessCli, tmp_path: Path, mode: int) -> None:
    """Issue #13: `cache list --cache-dir SHARED` changed a team folder's mode from 2775 to 700."""
    folder = tmp_path / "team-share"
    folder.mkdir()
    folder.chmod(mode)
    for argv in (("cache", "list"), ("cache", "clear"), ("build", "--backend", "onnxruntime", *MODEL_ARGS)):
        result = cli(*argv, "--cache-dir", folder)
        assert "writable by other users" in assert_one_clear_line(result), argv
        assert stat.S_IMODE(folder.stat().st_mode) == mode, f"{argv} changed the folder's mode"
    assert list(folder.iterdir()) == []


def test_an_existing_readable_folder_is_used_as_it_is(cli: InProcessCli, tmp_path: Path) -> None:
    folder = tmp_path / "mine"
    folder.mkdir()
    folder.chmod(0o755)
    assert cli("cache", "list", "--cache-dir", folder).returncode == 0
    assert stat.S_IMODE(folder.stat().st_mode) == 0o755
    sub = folder / "onnx"
    sub.mkdir()
    sub.chmod(0o775)
    result = cli("build", "--backend", "onnxruntime", "--cache-dir", folder, *MODEL_ARGS, "--weights", "random")
    assert "writable by other users" in assert_one_clear_line(result)
    assert stat.S_IMODE(sub.stat().st_mode) == 0o775


@pytest.mark.parametrize("model", ["../../victim", "../victim", "/etc", "victim", "resnet18/../..", ""])
def test_cache_clear_model_outside_the_registry_is_refused(cli: InProcessCli, tmp_path: Path, model: str) -> None:
    """Issue #13: `cache clear --model ../../victim` deleted files two folders above the cache."""
    cache = tmp_path / "a" / "b" / "cache"
    cache.mkdir(parents=True, mode=0o700)
    victims = [tmp_path / "victim-b1-opset18-0123456789abcdef.onnx", tmp_path / "a" / "victim.json", tmp_path / "victim"]
    victims[-1].mkdir()
    for path in victims[:-1]:
        path.write_text("not the cache's")
    (cache / "onnx").mkdir(mode=0o700)
    (cache / "onnx" / "victim-b1-opset18-0123456789abcdef.onnx").symlink_to(victims[0])
    result = cli("cache", "clear", "--model", model, "--cache-dir", cache)
    assert "unknown model" in assert_one_clear_line(result)
    assert all(p.exists() for p in victims) and (cache / "onnx").is_dir()


def test_cache_clear_never_follows_a_link_out_of_the_cache(cli: InProcessCli, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("not the cache's")
    target = tmp_path / "resnet18-b1-opset18-0123456789abcdef.onnx"
    target.write_text("not the cache's either")
    cache = tmp_path / "cache"
    (cache / "onnx").mkdir(parents=True, mode=0o700)
    cache.chmod(0o700)
    (cache / "onnx" / target.name).symlink_to(target)
    (cache / "ort-tensorrt").mkdir(mode=0o700)
    (cache / "ort-tensorrt" / "resnet18-fp16-b1-0123456789abcdef").symlink_to(outside, target_is_directory=True)
    result = cli("cache", "clear", "--model", "resnet18", "--cache-dir", cache)
    assert result.returncode == 0, result.stderr
    assert (outside / "keep.txt").exists() and target.exists()


def test_shared_sticky_folder_is_refused_not_taken_over(cli: InProcessCli, tmp_path: Path) -> None:
    shared = tmp_path / "shared-like-tmp"
    shared.mkdir()
    shared.chmod(0o1777)
    result = cli("cache", "list", "--cache-dir", shared)
    assert stat.S_IMODE(shared.stat().st_mode) == 0o1777, "a shared folder's mode was changed"
    assert "shared" in assert_one_clear_line(result)


OTHER_UID = 4242


@pytest.fixture()
def foreign_folder(tmp_path: Path) -> Path:
    """A cache folder that belongs to another user (os.chown, so root only), holding a planted model."""
    if not running_as_root():
        pytest.skip("simulating another user's folder needs os.chown, i.e. root")
    folder = tmp_path / "theirs"
    (folder / "onnx").mkdir(parents=True)
    (folder / "onnx" / "efficientnet_lite0-b1-00000000000000000000.onnx").write_bytes(b"planted")
    for path in (folder, folder / "onnx", *folder.rglob("*")):
        os.chown(path, OTHER_UID, OTHER_UID)
    folder.chmod(0o700)
    return folder


def test_cache_folder_of_another_user_is_refused(cli: InProcessCli, tmp_path: Path, foreign_folder: Path) -> None:
    for argv in (
        ("cache", "list", "--cache-dir", foreign_folder),
        ("cache", "clear", "--cache-dir", foreign_folder),
        ("build", "--backend", "onnxruntime", "--cache-dir", foreign_folder, *MODEL_ARGS),
        ("run", SAMPLE_IMAGES / "cat.jpg", "--headless", "--backend", "onnxruntime", "--device", "cpu", "--cache-dir", foreign_folder, *MODEL_ARGS),
    ):
        result = cli(*argv, fake_model=False)
        assert "belongs to another user" in assert_one_clear_line(result), argv
    assert (foreign_folder / "onnx" / "efficientnet_lite0-b1-00000000000000000000.onnx").read_bytes() == b"planted"
    assert foreign_folder.stat().st_uid == OTHER_UID and stat.S_IMODE(foreign_folder.stat().st_mode) == 0o700


def test_sub_folder_of_another_user_is_refused(tmp_path: Path, foreign_folder: Path) -> None:
    from engines.errors import CacheError
    from engines.models import WeightsChoice, get_spec
    from engines.onnx_export import cached_onnx

    mine = tmp_path / "mine"
    mine.mkdir(mode=0o700)
    os.rename(foreign_folder / "onnx", mine / "onnx")  # still another user's
    with pytest.raises(CacheError, match="belongs to another user"):
        cached_onnx(get_spec("efficientnet_lite0"), WeightsChoice("random"), cache_dir=mine)


def test_engine_cache_refuses_another_users_folder(foreign_folder: Path) -> None:
    """The TensorRT engine cache goes through the same check (no TensorRT needed to see it)."""
    from engines.cache import Store
    from engines.errors import CacheError

    with pytest.raises(CacheError, match="belongs to another user"):
        Store(foreign_folder)


# -- 10. torch older than 2.6 ------------------------------------------------------------------------------------------------
# torch 2.0-2.5 (JetPack 6's own 2.5.0a0+...nv24.08) is accepted; its unsafe torch.load is handled where weights load
# (tests/test_weights_safety.py). Only torch < 2.0 stops every command.
@pytest.mark.parametrize(
    "version, refused",
    [("2.5.1+cu121", False), ("1.13.1", True), ("2.5.0a0+872d972e41.nv24.08", False), ("2.6.0", False), ("2.10.1+cpu", False), ("3.0.0", False)],
)
def test_torch_version_gate(monkeypatch: pytest.MonkeyPatch, version: str, refused: bool) -> None:
    from engines.errors import ConfigError
    from streamer import cli as streamer_cli

    real = metadata.version
    monkeypatch.setattr(metadata, "version", lambda name: version if name == "torch" else real(name))
    if refused:
        with pytest.raises(ConfigError, match=rf"torch {version.replace('+', '[+]')} is too old: 2.0 or newer"):
            streamer_cli._check_torch_version()
    else:
        streamer_cli._check_torch_version()


def test_missing_torch_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    from engines.errors import ConfigError
    from streamer import cli as streamer_cli

    def version(name: str) -> str:
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "version", version)
    with pytest.raises(ConfigError, match="PyTorch is not installed"):
        streamer_cli._check_torch_version()


def test_old_torch_stops_every_command_with_one_line(cli: InProcessCli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = metadata.version
    monkeypatch.setattr(metadata, "version", lambda name: "1.13.1" if name == "torch" else real(name))
    for argv in (("run", SAMPLE_IMAGES / "cat.jpg", "--headless", *RUN), ("models",), ("cache", "list", "--cache-dir", tmp_path / "c")):
        result = cli(*argv)
        assert result.returncode == 2
        assert "torch 1.13.1 is too old" in assert_one_clear_line(result)
    assert not (tmp_path / "c").exists()
    assert sys.modules.get("streamer.cli") is not None
