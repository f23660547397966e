"""Outputs that cannot or must not be written, and inputs whose frames change size or format.

Every refusal is one clear line and a non-zero exit, before a frame is processed; a write that
fails during the run is reported and the partial output removed.  Never an empty or truncated
file under the name asked for.

Runs are the real command line with an instant fake model: in this process (the ``cli`` fixture)
where nothing needs a process of its own, in a child (:mod:`faults.fakecli`) where the child's
resource limits are the fault.  The paths, sinks and pipeline are the product's either way.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from faults.fixtures import InProcessCli, cli, fault_env, restore_logging  # noqa: F401 - fixtures
from faults.fs import entries, file_size_limit, running_as_root, tmpfs
from faults.media import SAMPLE_IMAGES, SAMPLE_VIDEO, count_frames, imread, is_blank, read_frames, video_size
from faults.proc import MODEL_ARGS, assert_one_clear_line, fake_streamer, run


COMMON = ("--no-progress", "--no-summary", *MODEL_ARGS, "--weights", "random")


def _child(cwd: Path, *args: object, **popen: Any) -> subprocess.CompletedProcess[str]:
    return run(fake_streamer("instant", "run", *map(str, args), *COMMON), cwd, timeout=120, **popen)


@pytest.fixture()
def work(tmp_path: Path) -> Path:
    folder = tmp_path / "work"
    folder.mkdir()
    return folder


# -- destinations that are refused up front -----------------------------------------------------
@pytest.mark.parametrize("which", ["video", "predictions"])
def test_existing_file_is_kept_without_overwrite(cli: InProcessCli, work: Path, which: str) -> None:
    target = work / ("out.mkv" if which == "video" else "out.jsonl")
    target.write_bytes(b"precious bytes")
    result = cli("run", SAMPLE_VIDEO, "-o", work / "out.mkv", "--predictions", work / "out.jsonl", "--max-frames", "5", *COMMON)
    line = assert_one_clear_line(result)
    assert f"{target} exists; pass --overwrite" in line
    assert target.read_bytes() == b"precious bytes"
    assert entries(work) == [target.name], "nothing else written, no partial file"


def test_existing_predictions_file_is_refused_before_the_model_is_fetched(cli: InProcessCli, work: Path) -> None:
    (work / "out.jsonl").write_text("precious")
    # alexnet's weights are not on disk here: resolving the model would try to download them.
    result = cli("run", SAMPLE_IMAGES / "cat.jpg", "--predictions", work / "out.jsonl", "--model", "alexnet", "--headless", fake_model=False)
    assert "exists; pass --overwrite" in assert_one_clear_line(result)


def test_missing_folder_is_refused_and_not_created(cli: InProcessCli, work: Path) -> None:
    result = cli("run", SAMPLE_VIDEO, "-o", work / "missing" / "out.mkv", "--max-frames", "5", *COMMON)
    assert "output folder does not exist" in assert_one_clear_line(result)
    result = cli("run", SAMPLE_VIDEO, "--headless", "--predictions", work / "missing" / "p.jsonl", "--max-frames", "5", *COMMON)
    assert "does not exist" in assert_one_clear_line(result)
    assert entries(work) == []


@pytest.mark.skipif(running_as_root(), reason="root ignores permission bits; the read-only mount and "
                    "file-as-folder tests below cover read-only destinations as root")  # fmt: skip
def test_read_only_folder_by_permissions(cli: InProcessCli, work: Path) -> None:
    locked = work / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        result = cli("run", SAMPLE_VIDEO, "-o", locked / "out.mkv", "--max-frames", "5", *COMMON)
        assert "not writable" in assert_one_clear_line(result)
        assert list(locked.iterdir()) == []
    finally:
        locked.chmod(0o755)


def test_read_only_folder_by_read_only_mount(cli: InProcessCli, work: Path, tmp_path: Path) -> None:
    """A read-only file system refuses root too."""
    with tmpfs(tmp_path / "ro", 1024, read_only=True) as ro:
        for args in (("-o", ro / "out.mkv"), ("--headless", "--predictions", ro / "p.jsonl")):
            result = cli("run", SAMPLE_VIDEO, *args, "--max-frames", "5", *COMMON)
            assert "not writable" in assert_one_clear_line(result)
        assert entries(ro) == []


def test_output_under_a_regular_file_is_refused(cli: InProcessCli, work: Path) -> None:
    """A destination whose folder is a file: unwritable for everyone, root included."""
    (work / "afile").write_text("not a folder")
    for args in (("-o", work / "afile" / "out.mkv"), ("--headless", "--predictions", work / "afile" / "p.jsonl"), ("-o", work / "afile" / "frames/")):
        result = cli("run", SAMPLE_VIDEO, *args, "--max-frames", "5", *COMMON)
        assert_one_clear_line(result)
    assert entries(work) == ["afile"] and (work / "afile").read_text() == "not a folder"


@pytest.mark.parametrize("dangling", [False, True], ids=["to-a-file", "dangling"])
@pytest.mark.parametrize("which", ["video", "predictions"])
def test_symlink_at_the_destination_is_refused_even_with_overwrite(
    cli: InProcessCli, work: Path, tmp_path: Path, which: str, dangling: bool
) -> None:
    victim = tmp_path / "victim.txt"
    if not dangling:
        victim.write_bytes(b"someone else's file")
    link = work / ("out.mkv" if which == "video" else "out.jsonl")
    link.symlink_to(victim)
    result = cli("run", SAMPLE_VIDEO, "-o", work / "out.mkv", "--predictions", work / "out.jsonl", "--overwrite", "--max-frames", "5", *COMMON)
    assert "symbolic link" in assert_one_clear_line(result)
    assert link.is_symlink() and entries(work) == [link.name]
    if dangling:
        assert not victim.exists()
    else:
        assert victim.read_bytes() == b"someone else's file"


# -- writes that fail during the run ----------------------------------------------------------------
def test_full_disk_is_reported_and_nothing_is_left(cli: InProcessCli, tmp_path: Path) -> None:
    """A 512 KiB file system; the 720p sample needs about 1.1 MB of H.264 (crf 23)."""
    with tmpfs(tmp_path / "small", 512) as small:
        result = cli("run", SAMPLE_VIDEO, "-o", small / "out.mkv", "--predictions", small / "p.jsonl", *COMMON)
        line = assert_one_clear_line(result)
        assert "disk full" in line or "No space" in line, line
        assert entries(small) == [], "no file under the final name, no partial file"


def test_file_size_limit_on_the_video_is_reported(work: Path) -> None:
    result = _child(work, SAMPLE_VIDEO, "-o", work / "out.mkv", preexec_fn=file_size_limit(512 * 1024))
    try:
        line = assert_one_clear_line(result)
        assert "write" in line or "too large" in line.lower() or "disk" in line, line
        assert entries(work) == []
    finally:
        if (work / "out.mkv").exists():  # what the bug leaves: a truncated file, for the record
            print(f"out.mkv: {count_frames(work / 'out.mkv')} of 132 frames")


def test_file_size_limit_on_the_predictions_is_reported(work: Path) -> None:
    """The JSON lines outgrow the limit mid-run (a buffered write fails)."""
    result = _child(work, SAMPLE_VIDEO, "--headless", "--predictions", work / "p.jsonl", "--topk", "5", preexec_fn=file_size_limit(20_000))
    line = assert_one_clear_line(result)
    assert "internal error" not in line and "write failed" in line, line
    assert entries(work) == []


def test_predictions_whose_last_write_fails_are_reported(work: Path) -> None:
    """Five lines stay in the 8 KB write buffer until the end: the only write that fails is the final flush."""
    result = _child(work, SAMPLE_VIDEO, "--headless", "--predictions", work / "p.jsonl", "--max-frames", "5", preexec_fn=file_size_limit(100))
    line = assert_one_clear_line(result)
    assert "internal error" not in line and "write failed" in line, line
    assert entries(work) == []


# -- 6. frames that change size or format ----------------------------------------------------------
def _mixed_folder(folder: Path) -> list[str]:
    """Real photographs in every size and pixel format a folder can hold, in name order."""
    folder.mkdir()
    photo = {name: imread(SAMPLE_IMAGES / f"{name}.jpg") for name in ("cat", "coffee", "cameraman", "rocket", "astronaut", "grace_hopper")}
    cv2.imwrite(str(folder / "a_cat_451x300.jpg"), photo["cat"])  # first: sets the output size (odd width)
    cv2.imwrite(str(folder / "b_coffee_600x400.jpg"), photo["coffee"])
    cv2.imwrite(str(folder / "c_gray.png"), cv2.cvtColor(photo["cameraman"], cv2.COLOR_BGR2GRAY))
    bgra = cv2.cvtColor(photo["rocket"], cv2.COLOR_BGR2BGRA)
    bgra[:, : bgra.shape[1] // 2, 3] = 0  # half transparent
    cv2.imwrite(str(folder / "d_alpha.png"), bgra)
    cv2.imwrite(str(folder / "e_16bit.png"), photo["astronaut"].astype(np.uint16) * 257)
    cv2.imwrite(str(folder / "f_tiny_7x5.png"), cv2.resize(photo["coffee"], (7, 5), interpolation=cv2.INTER_AREA))
    cv2.imwrite(str(folder / "g_portrait.jpg"), cv2.rotate(photo["grace_hopper"], cv2.ROTATE_90_CLOCKWISE))
    cv2.imwrite(str(folder / "h_gray.jpg"), cv2.cvtColor(photo["cat"], cv2.COLOR_BGR2GRAY))
    names = sorted(p.name for p in folder.iterdir())
    assert imread(folder / "c_gray.png", cv2.IMREAD_UNCHANGED).ndim == 2
    assert imread(folder / "d_alpha.png", cv2.IMREAD_UNCHANGED).shape[2] == 4
    assert imread(folder / "e_16bit.png", cv2.IMREAD_UNCHANGED).dtype == np.uint16
    return names


@pytest.mark.parametrize("ext", [".mkv", ".avi"])
def test_mixed_sizes_and_formats_are_resized_to_the_first_frame(cli: InProcessCli, work: Path, tmp_path: Path, ext: str) -> None:
    names = _mixed_folder(tmp_path / "mixed")
    out = work / f"out{ext}"
    result = cli("run", tmp_path / "mixed", "-o", out, "--predictions", work / "p.jsonl", *COMMON)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert video_size(out) == (450, 300), "the first image's size, made even"
    frames = read_frames(out)
    assert len(frames) == count_frames(out) == len(names)
    assert not [n for n, f in zip(names, frames) if is_blank(f)]
    records = [json.loads(line) for line in (work / "p.jsonl").read_text().splitlines()]
    assert [r["source"] for r in records] == names
    assert sorted(os.listdir(work)) == sorted([out.name, "p.jsonl"])


# -- low bitrates (issue #13 item 1) -------------------------------------------------------------------
@pytest.mark.parametrize("ext", [".mkv", ".mp4", ".mov", ".webm", ".avi"])
@pytest.mark.parametrize("kind", ["176x144", "still image", "3000 tiny images"])
def test_low_bitrate_runs_are_kept_in_every_container(cli: InProcessCli, work: Path, tmp_path: Path, clip_factory: Any, ext: str, kind: str) -> None:
    """What used to end in "nothing reaches the disk (disk full?)" and no output: a few KB of video is a complete file."""
    if kind == "176x144":
        source, frames = clip_factory("qcif.mp4", 120, size=(176, 144)), 120
    elif kind == "still image":
        source, frames = clip_factory("still.mp4", 120, size=(176, 144), stamp=lambda image, i: image.fill(90)), 120
    else:
        folder = tmp_path / "tiny"
        if not folder.exists():
            folder.mkdir()
            tile = cv2.resize(imread(sorted(Path(SAMPLE_IMAGES).iterdir())[0]), (16, 12))
            for i in range(3000):
                cv2.imwrite(str(folder / f"{i:05d}.png"), tile)
        source, frames = folder, 3000
    out = work / f"out{ext}"
    result = cli("run", source, "-o", out, *COMMON)
    assert result.returncode == 0, result.stderr
    assert count_frames(out) == frames
    assert entries(work) == [out.name]
