"""Hostile and broken inputs: truncated and byte-corrupted copies of the real sample video, a real
mp4v/Matroska clip and real photographs, from a fixed seed (the same cases every run).

Each case runs ``streamer run CASE -o out.mkv --predictions p.jsonl`` in its own child process
(the real command line, an instant fake model: :mod:`faults.fakecli`), two at a time, each under
a time limit.  Every case must end in one of two ways:

* exit 0 with every frame the decoder can get out of the file (output frames = JSON lines = the
  frames OpenCV decodes from the same bytes), or
* exit > 0 with one clear ``streamer: error:`` line and nothing left behind (no output, no
  hidden partial file);

and never a hang (the time limit), a crash (killed by a signal: negative exit code) or a traceback.

"One clear line" here means one line from streamer.  Libraries print lines of their own on some
of these files (OpenCV's ``[ERROR:...]`` log, libpng's ``libpng error: ...``); the two tests at the
end pin that down as bugs of their own.
"""

from __future__ import annotations

import json
import random
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import cv2
import pytest

from faults.fixtures import fault_env  # noqa: F401 - fixture
from faults.media import SAMPLE_IMAGES, SAMPLE_VIDEO, count_frames, imread, make_clip
from faults.proc import MODEL_ARGS, cli_env, fake_streamer

SEED = 20260611
CASE_TIMEOUT_S = 90.0
TOTAL_BUDGET_S = 240.0
WORKERS = 2


@dataclass(frozen=True)
class Case:
    name: str
    source: str
    """Key into the originals: mp4, mkv, jpg, png."""
    mutation: str
    apply: Callable[[bytes], bytes]


def _truncate(frac: float) -> Callable[[bytes], bytes]:
    return lambda data: data[: max(1, int(len(data) * frac))]


def _flip(positions: list[float], masks: list[int]) -> Callable[[bytes], bytes]:
    def apply(data: bytes) -> bytes:
        out = bytearray(data)
        for pos, mask in zip(positions, masks):
            out[int(pos * (len(out) - 1))] ^= mask
        return bytes(out)

    return apply


def _block(start: float, length: int, fill: bytes | None) -> Callable[[bytes], bytes]:
    def apply(data: bytes) -> bytes:
        out = bytearray(data)
        at = int(start * len(out))
        chunk = fill * length if fill is not None else random.Random(length).randbytes(length)
        out[at : at + length] = chunk[: max(0, len(out) - at)]
        return bytes(out)

    return apply


def _cases() -> list[Case]:
    rng = random.Random(SEED)
    plan = [("mp4", 6), ("mkv", 5), ("jpg", 5), ("png", 2)]
    cases = []
    for source, count in plan:
        for i in range(count):
            kind = rng.choice(["truncate", "flip", "zeros", "noise", "header"])
            if kind == "truncate":
                frac = rng.choice([rng.uniform(0.0005, 0.02), rng.uniform(0.05, 0.95)])
                case = Case(f"{source}-{i}-truncate-{frac:.4f}", source, kind, _truncate(frac))
            elif kind == "flip":
                n = rng.randint(1, 300)
                case = Case(f"{source}-{i}-flip-{n}", source, kind, _flip([rng.random() for _ in range(n)], [rng.randint(1, 255) for _ in range(n)]))
            elif kind in ("zeros", "noise"):
                start, length = rng.uniform(0.0, 0.9), rng.randint(16, 64 * 1024)
                fill = b"\x00" if kind == "zeros" else None
                case = Case(f"{source}-{i}-{kind}-{start:.3f}+{length}", source, kind, _block(start, length, fill))
            else:
                length = rng.randint(4, 512)
                case = Case(f"{source}-{i}-header-{length}", source, kind, _block(0.0, length, None))
            cases.append(case)
    cases.append(Case("mp4-empty", "mp4", "empty", lambda data: b""))
    cases.append(Case("mp4-all-noise", "mp4", "noise", lambda data: random.Random(SEED).randbytes(200_000)))
    return cases


CASES = _cases()
EXT = {"mp4": ".mp4", "mkv": ".mkv", "jpg": ".jpg", "png": ".png"}


@dataclass
class Outcome:
    case: Case
    folder: Path
    input: Path
    returncode: int | None
    stderr: str
    seconds: float


def _originals(folder: Path) -> dict[str, bytes]:
    folder.mkdir()
    mkv = make_clip(folder / "clip.mkv", 60, size=(320, 180))
    png = folder / "palace.png"
    cv2.imwrite(str(png), imread(SAMPLE_IMAGES / "palace.jpg"))
    return {
        "mp4": SAMPLE_VIDEO.read_bytes(),
        "mkv": mkv.read_bytes(),
        "jpg": (SAMPLE_IMAGES / "flower.jpg").read_bytes(),
        "png": png.read_bytes(),
    }


def _run_case(case: Case, root: Path, original: bytes) -> Outcome:
    folder = root / case.name
    folder.mkdir()
    path = folder / f"input{EXT[case.source]}"
    path.write_bytes(case.apply(original))
    cmd = fake_streamer(
        "instant", "run", path, "-o", folder / "out.mkv", "--predictions", folder / "p.jsonl",
        "--no-progress", "--no-summary", *MODEL_ARGS, "--weights", "random",
    )  # fmt: skip
    start = time.monotonic()
    try:
        done = subprocess.run(cmd, cwd=folder, env=cli_env(), capture_output=True, text=True, timeout=CASE_TIMEOUT_S)
        code, stderr = done.returncode, done.stderr
    except subprocess.TimeoutExpired as exc:
        code, stderr = None, str(exc.stderr or "")
    return Outcome(case, folder, path, code, stderr, time.monotonic() - start)


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Outcome]:
    root = tmp_path_factory.mktemp("hostile")
    originals = _originals(root / "originals")
    start = time.monotonic()
    with ThreadPoolExecutor(max_workers=WORKERS) as pool:
        results = list(pool.map(lambda c: _run_case(c, root, originals[c.source]), CASES))
    total = time.monotonic() - start
    assert total < TOTAL_BUDGET_S, f"{len(CASES)} hostile cases took {total:.0f} s"
    ok = sum(1 for o in results if o.returncode == 0)
    print(f"MEASURED hostile: {len(CASES)} cases in {total:.0f} s: {ok} exit 0 with their decodable frames, {len(CASES) - ok} clean errors")
    return {o.case.name: o for o in results}


def test_the_case_list_is_fixed_and_bounded() -> None:
    assert len(CASES) == 20 and len({c.name for c in CASES}) == 20
    assert [c.name for c in CASES] == [c.name for c in _cases()], "same seed, same cases"
    assert {c.source for c in CASES} == {"mp4", "mkv", "jpg", "png"}


@pytest.mark.parametrize("name", [c.name for c in CASES])
def test_hostile_input_ends_cleanly(outcomes: dict[str, Outcome], name: str) -> None:
    outcome = outcomes[name]
    assert outcome.returncode is not None, f"hang: still running after {CASE_TIMEOUT_S} s"
    assert outcome.returncode >= 0, f"crashed: killed by signal {-outcome.returncode}\n{outcome.stderr}"
    assert "Traceback" not in outcome.stderr, outcome.stderr
    left = sorted(p.name for p in outcome.folder.iterdir() if p != outcome.input)
    if outcome.returncode == 0:
        # Every decodable frame, no more, no fewer.
        expected = 1 if outcome.case.source in ("jpg", "png") else count_frames(outcome.input)
        assert left == ["out.mkv", "p.jsonl"], left
        records = [json.loads(line) for line in (outcome.folder / "p.jsonl").read_text().splitlines()]
        assert count_frames(outcome.folder / "out.mkv") == len(records) == expected > 0
    else:
        ours = [line for line in outcome.stderr.splitlines() if line.startswith("streamer:")]
        assert len(ours) == 1 and ours[0].startswith("streamer: error: "), outcome.stderr
        assert left == [], f"a failed run left {left}"


# -- what libraries add to stderr -------------------------------------------------------------------
def _stderr_of(path: Path) -> subprocess.CompletedProcess[str]:
    cmd = fake_streamer("instant", "run", path, "--headless", "--no-progress", *MODEL_ARGS, "--weights", "random")
    return subprocess.run(cmd, cwd=path.parent, env=cli_env(), capture_output=True, text=True, timeout=CASE_TIMEOUT_S)


def test_undecodable_video_gives_only_our_line(tmp_path: Path) -> None:
    flipped = next(c for c in CASES if c.name == "mp4-4-flip-78")  # bits flipped in the codec description
    path = tmp_path / "broken.mp4"
    path.write_bytes(flipped.apply(SAMPLE_VIDEO.read_bytes()))
    result = _stderr_of(path)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [f"streamer: error: {path.name}: cannot open video file"], result.stderr


def test_corrupt_png_gives_only_our_line(tmp_path: Path) -> None:
    ok, png = cv2.imencode(".png", imread(SAMPLE_IMAGES / "palace.jpg"))
    assert ok
    data = bytearray(png.tobytes())
    data[len(data) // 3 : len(data) // 3 + 4096] = random.Random(SEED).randbytes(4096)  # inside the image data
    path = tmp_path / "broken.png"
    path.write_bytes(bytes(data))
    result = _stderr_of(path)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [f"streamer: error: {path}: not a readable image"], result.stderr
