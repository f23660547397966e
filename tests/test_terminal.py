"""Labels on the terminal: one line per frame when headless, ``--predictions -`` on stdout, ``pts_s``."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
from helpers import JSONL_KEYS, MODEL, SAMPLE_IMAGES, read_jsonl, run_cli

from engines.backends.base import Prediction
from engines.errors import SinkError
from streamer.sinks.terminal import JsonLinesStdout, TerminalLabels, label_line
from streamer.sources import Frame

MODEL_ARGS = ["-m", MODEL, "--backend", "torch"]
LINE = re.compile(r"^frame (\d+)(?: \(([^)]+)\))?: (.+ \d\.\d\d)( \| .+ \d\.\d\d)*$")


def _frame(index: int, name: str = "clip.mp4") -> Frame:
    return Frame(index, np.zeros((2, 2, 3), np.uint8), 0.0, name, pts_s=index / 25)


def test_label_line_format() -> None:
    prediction = Prediction((281, 282), (0.4149, 0.2061), ("tabby", "tiger cat"))
    assert label_line(_frame(12), prediction) == "frame 12: tabby 0.41 | tiger cat 0.21"
    assert label_line(_frame(3, "cat.jpg"), prediction, with_name=True) == "frame 3 (cat.jpg): tabby 0.41 | tiger cat 0.21"


def test_observers_write_one_line_per_frame() -> None:
    prediction = Prediction((281,), (0.5,), ("tabby",))
    lines, records = io.StringIO(), io.StringIO()
    terminal, jsonl = TerminalLabels(lines), JsonLinesStdout(records)
    for index in range(3):
        terminal.write(_frame(index), prediction, 1.0)
        jsonl.write(_frame(index), prediction, 1.0)
    terminal.finalize()
    jsonl.abort()
    assert lines.getvalue().splitlines() == [f"frame {i}: tabby 0.50" for i in range(3)]
    parsed = [json.loads(line) for line in records.getvalue().splitlines()]
    assert [r["pts_s"] for r in parsed] == [0.0, 0.04, 0.08]


def test_a_closed_stdout_is_one_error() -> None:
    class Closed(io.StringIO):
        def write(self, text: str) -> int:
            raise BrokenPipeError(32, "Broken pipe")

    with pytest.raises(SinkError, match="broken pipe"):
        TerminalLabels(Closed()).write(_frame(0), Prediction((1,), (0.5,), ("goldfish",)), 1.0)


def test_a_headless_photo_prints_its_labels(tmp_path: Path) -> None:
    result = run_cli(["run", SAMPLE_IMAGES / "cat.jpg", "--topk", "2", "--no-summary", *MODEL_ARGS], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if line.startswith("frame ")]
    assert len(lines) == 1, result.stdout
    match = LINE.match(lines[0])
    assert match and match.group(1) == "0" and match.group(2) == "cat.jpg", lines[0]
    assert "cat" in lines[0]  # tiger cat / tabby / Egyptian cat: the sample is a cat
    assert list(tmp_path.iterdir()) == []


def test_predictions_dash_writes_json_lines_to_stdout_and_the_rest_to_stderr(tmp_path: Path) -> None:
    result = run_cli(["run", SAMPLE_IMAGES, "--predictions", "-", "--topk", "3", *MODEL_ARGS], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]  # every stdout line is JSON
    assert [r["source"] for r in records] == sorted(p.name for p in SAMPLE_IMAGES.glob("*.jpg"))
    assert all(set(r) == JSONL_KEYS and len(r["topk"]) == 3 and r["pts_s"] is None for r in records)
    assert "frames in / out / dropped" in result.stderr  # the summary went to stderr
    assert "frame 0 (" not in result.stderr  # and no per-frame lines
    assert not (tmp_path / "-").exists()


def test_pts_s_is_the_frames_time_in_a_video_file(tmp_path: Path, short_clip: Path) -> None:
    labels = tmp_path / "labels.jsonl"
    result = run_cli(["run", short_clip, "--predictions", labels, "--no-summary", *MODEL_ARGS], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    records = read_jsonl(labels)
    assert [r["frame"] for r in records] == list(range(20))
    assert [r["pts_s"] for r in records] == pytest.approx([i / 25 for i in range(20)], abs=1e-3)  # 25 FPS clip
    lines = [line for line in result.stdout.splitlines() if line.startswith("frame ")]
    assert [int(LINE.match(line).group(1)) for line in lines] == list(range(20))  # type: ignore[union-attr]
