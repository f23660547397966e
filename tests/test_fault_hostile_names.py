"""Hostile inputs of issue 13, class 4 and 8: names that are not UTF-8, huge "images", dependencies' lines.

* A video whose file name is not UTF-8 (bytes from another system) is read, not a segfault in OpenCV.
* A 2 GiB sparse file named .jpg in a folder is skipped with one warning line, in bounded time and memory.
* A file over HTTP whose server closes at half, or a truncated file: one warning line with the counts, exit 0.
* A dependency's Python warning during a run is not shown (one line from streamer), and is under -v.
"""

from __future__ import annotations

import http.server
import json
import os
import re
import threading
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import helpers

from faults.fixtures import InProcessCli, cli, fault_env, restore_logging  # noqa: F401 - fixtures
from faults.media import SAMPLE_IMAGES, SAMPLE_VIDEO
from faults.proc import MODEL_ARGS, cli_env, fake_streamer, run

COMMON = ("--no-progress", "--no-summary", *MODEL_ARGS, "--weights", "random")


def test_a_video_name_that_is_not_utf8_is_read(tmp_path: Path) -> None:
    name = os.fsdecode(b"caf\xe9.mp4")
    shutil.copy(SAMPLE_VIDEO, tmp_path / name)
    result = run(fake_streamer("instant", "run", name, "--headless", "--predictions", "p.jsonl", "--max-frames", "4", *COMMON), tmp_path, errors="replace")
    assert result.returncode == 0, f"exit {result.returncode} (-11 is the segfault)\n{result.stderr}"
    assert len((tmp_path / "p.jsonl").read_text().splitlines()) == 4


def test_a_huge_file_named_jpg_is_skipped_with_one_line(cli: InProcessCli, tmp_path: Path) -> None:
    folder = tmp_path / "imgs"
    folder.mkdir()
    shutil.copy(SAMPLE_IMAGES / "cat.jpg", folder / "a.jpg")
    with open(folder / "b.jpg", "wb") as fh:
        fh.truncate(2 << 30)  # sparse: 2 GiB that take no disk
    shutil.copy(SAMPLE_IMAGES / "cat.jpg", folder / "c.jpg")
    result = cli("run", folder, "--headless", "--predictions", tmp_path / "p.jsonl", *COMMON)
    assert result.returncode == 0, result.stderr
    assert [line for line in result.stderr.splitlines() if "b.jpg" in line] == ["streamer: warning: skipping b.jpg: not a readable image"]
    assert [json.loads(line)["source"] for line in (tmp_path / "p.jsonl").read_text().splitlines()] == ["a.jpg", "c.jpg"]


_WARNS = """
import sys, warnings
import engines.backends
from dataclasses import replace
from faults.backends import from_spec
from streamer.cli import main

def create(name, spec, weights, options):
    warnings.warn_explicit("You are using torch.load with weights_only=False", UserWarning, "torch/serialization.py", 1417, module="torch.serialization")
    return from_spec("instant", replace(options, device="cpu"))

engines.backends.create_backend = create
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize("verbose", [False, True])
def test_a_dependency_warning_is_kept_under_verbose(tmp_path: Path, verbose: bool) -> None:
    cmd = [sys.executable, "-c", _WARNS, *(["-v"] if verbose else []), "run", str(SAMPLE_IMAGES / "cat.jpg"), "--headless", *COMMON]
    result = subprocess.run(cmd, cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    shown = [line for line in result.stderr.splitlines() if "weights_only" in line]
    if verbose:
        assert len(shown) == 1 and shown[0].startswith("streamer: warning: "), result.stderr
    else:
        assert shown == [] and [line for line in result.stderr.splitlines() if not line.startswith("streamer: ")] == [], result.stderr


class _HalfHandler(helpers._RangeHandler):
    """Closes the connection after the first half of the file (a server that dies mid-transfer);
    ranges that start past the half (FFmpeg looking for an index at the end) are served whole."""

    def do_GET(self) -> None:  # noqa: N802
        data = self.payload
        cut = len(data) // 2
        header = self.headers.get("Range")
        match = re.fullmatch(r"bytes=(\d*)-(\d*)", header.strip()) if header else None
        start = int(match.group(1)) if match and match.group(1) else 0
        end = len(data) - 1
        self.send_response(206 if match else 200)
        if match:
            self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Type", "video/mp4")
        self.send_header("Content-Length", str(end - start + 1))
        self.end_headers()
        stop = end + 1 if start >= cut else cut
        try:
            self.wfile.write(data[start:stop])
        except (BrokenPipeError, ConnectionResetError):
            pass
        self.close_connection = True


def test_an_http_file_cut_at_half_warns_with_the_counts(tmp_path: Path) -> None:
    payload = SAMPLE_VIDEO.read_bytes()
    handler = type("Handler", (_HalfHandler,), {"payload": payload})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/clip.mp4"
        result = run(fake_streamer("instant", "run", url, "--headless", "--predictions", "p.jsonl", "--timeout", "5", *COMMON), tmp_path)
    finally:
        server.shutdown()
        server.server_close()
    got = len((tmp_path / "p.jsonl").read_text().splitlines())
    lines = [line for line in result.stderr.splitlines() if "frames the container announced" in line]
    assert result.returncode == 0, result.stderr
    assert lines == [f"streamer: warning: clip.mp4: got {got} of {helpers.SAMPLE_VIDEO_FRAMES} frames the container announced (file truncated, or the server closed the connection early)"] or (
        len(lines) == 1 and f"got {got} of " in lines[0]
    ), result.stderr
    assert 0 < got < helpers.SAMPLE_VIDEO_FRAMES


def test_a_complete_file_gives_no_such_warning(tmp_path: Path) -> None:
    result = run(fake_streamer("instant", "run", SAMPLE_VIDEO, "--headless", *COMMON), tmp_path)
    assert result.returncode == 0 and "announced" not in result.stderr, result.stderr
