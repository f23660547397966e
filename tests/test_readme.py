"""The README's main command, run as written (from the repository root)."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import cv2

ROOT = Path(__file__).resolve().parents[1]


def _readme_run_command() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```sh\n(.*?)```", text, re.S)
    first = next(b for b in blocks if "streamer run" in b)
    command = first.strip().split("&&")[-1].strip()
    assert command.startswith(".venv/bin/streamer run"), command
    return shlex.split(command)[1:]  # drop the venv's console script: use this interpreter


def test_readme_main_command_annotates_the_bundled_video(tmp_path: Path) -> None:
    args = _readme_run_command()
    out = tmp_path / "annotated.mp4"
    args = [str(out) if a == "annotated.mp4" else a for a in args]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    result = subprocess.run(
        [sys.executable, "-m", "streamer", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    cap = cv2.VideoCapture(str(out))
    frames = 0
    while cap.read()[0]:
        frames += 1
    assert frames == 132  # every frame of the sample, none lost
