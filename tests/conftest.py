"""Fixtures: sample paths, short clips derived at test time, and a private cache for the session."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Callable, Iterator

import pytest

# Test modules import ``helpers`` by name, whether or not tests/ becomes a package.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from helpers import SAMPLE_IMAGES, SAMPLE_VIDEO, make_clip, stamp_index  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def private_caches(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    """Nothing in the suite may write to the real user cache: the engine cache and torch.hub
    (where a download attempt creates folders) point into the session's temp folder, for this
    process and every ``python -m streamer`` it starts."""
    root = tmp_path_factory.mktemp("caches")
    paths = {"STREAMER_CACHE_DIR": root / "streamer", "TORCH_HOME": root / "torch"}
    with pytest.MonkeyPatch.context() as mp:
        for key, value in paths.items():
            mp.setenv(key, str(value))
        mp.setenv("OPENCV_LOG_LEVEL", os.environ.get("OPENCV_LOG_LEVEL", "ERROR"))
        mp.setenv("OPENCV_FFMPEG_LOGLEVEL", os.environ.get("OPENCV_FFMPEG_LOGLEVEL", "-8"))
        mp.delenv("DISPLAY", raising=False)
        mp.delenv("WAYLAND_DISPLAY", raising=False)
        yield paths


@pytest.fixture(scope="session")
def sample_video() -> Path:
    assert SAMPLE_VIDEO.is_file()
    return SAMPLE_VIDEO


@pytest.fixture(scope="session")
def sample_images() -> Path:
    assert len(list(SAMPLE_IMAGES.glob("*.jpg"))) == 8
    return SAMPLE_IMAGES


@pytest.fixture(scope="session")
def clip_factory(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """``clip_factory(name, frames, size=(320, 180), fps=25.0, fourcc="mp4v", stamp=None)``:
    a clip re-encoded from the sample video, made once per session per name."""
    folder = tmp_path_factory.mktemp("clips")
    made: dict[str, Path] = {}

    def factory(name: str, frames: int, **kwargs: object) -> Path:
        if name not in made:
            made[name] = make_clip(folder / name, frames, **kwargs)  # type: ignore[arg-type]
        return made[name]

    return factory


@pytest.fixture(scope="session")
def short_clip(clip_factory: Callable[..., Path]) -> Path:
    """The first 20 frames of the sample at 320x180, 25 FPS, mp4v."""
    return clip_factory("short.mp4", 20)


@pytest.fixture(scope="session")
def stamped_clip(clip_factory: Callable[..., Path]) -> Path:
    """24 real frames at 320x180, each carrying its index as a block code (see helpers.read_stamp)."""
    return clip_factory("stamped.mp4", 24, stamp=stamp_index)
