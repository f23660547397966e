"""Fixtures shared by the ``test_fault_*`` modules (imported by name into each module).

They do not rely on ``tests/conftest.py``: the reliability suite sets up what it
needs (private caches, quiet FFmpeg) itself, and only where nothing has yet.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

from faults.media import make_clip


@pytest.fixture(scope="session", autouse=True)
def fault_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Never touch the real user cache or torch.hub; keep FFmpeg's own chatter off stderr."""
    root = tmp_path_factory.mktemp("fault-caches")
    with pytest.MonkeyPatch.context() as mp:
        defaults = {
            "STREAMER_CACHE_DIR": str(root / "streamer"),
            "TORCH_HOME": str(root / "torch"),
            "OPENCV_LOG_LEVEL": "ERROR",
            "OPENCV_FFMPEG_LOGLEVEL": "-8",
        }
        for key, value in defaults.items():
            if not os.environ.get(key):
                mp.setenv(key, value)
        mp.delenv("DISPLAY", raising=False)
        mp.delenv("WAYLAND_DISPLAY", raising=False)
        yield


@pytest.fixture()
def restore_logging() -> Iterator[None]:
    """``streamer.cli.main`` run in-process replaces the root logger's handlers: put them back."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    levels = {name: logging.getLogger(name).level for name in ("streamer", "engines")}
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, value in levels.items():
        logging.getLogger(name).setLevel(value)


@pytest.fixture(scope="session")
def long_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """24 s of real footage (the sample looped) at 640x360, 25 FPS, mp4v in .mp4, each frame stamped with its index."""
    return make_clip(tmp_path_factory.mktemp("fault-clips") / "long.mp4", 600, size=(640, 360))


class InProcessCli:
    """``streamer ARGS`` run in this process through :func:`streamer.cli.main`, with the backend replaced
    by a :mod:`faults.backends` fake.  Much cheaper than a child process (no interpreter and torch
    start-up) where process isolation is not what is being tested."""

    def __init__(self, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
        self.capsys = capsys
        self.monkeypatch = monkeypatch

    def __call__(self, *args: object, backend: str = "instant", fake_model: bool = True) -> "Outcome":
        import time
        from dataclasses import replace

        import engines.backends
        from faults.backends import from_spec
        from streamer.cli import main

        if fake_model:
            self.monkeypatch.setattr(
                engines.backends, "create_backend", lambda name, spec, weights, options: from_spec(backend, replace(options, device="cpu"))
            )
        self.capsys.readouterr()
        start = time.perf_counter()
        code = main([str(a) for a in args])
        seconds = time.perf_counter() - start
        captured = self.capsys.readouterr()
        return Outcome(code, captured.out, captured.err, seconds)


@dataclass(frozen=True)
class Outcome:
    """How an in-process run ended (the shape of a CompletedProcess, plus its duration)."""

    returncode: int
    stdout: str
    stderr: str
    seconds: float


@pytest.fixture()
def cli(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, restore_logging: None) -> InProcessCli:
    return InProcessCli(capsys, monkeypatch)
