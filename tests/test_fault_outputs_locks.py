"""Outputs clobbered or lost (issue 13, class 3) and the crashes of class 4 around outputs and options.

* Two outputs of one run never share a file (same path, a symlink, a hard link): one line, nothing written.
* Each final path is locked for the run: a second run writing the same --predictions fails with one line
  and the first run's output is intact.
* SIGINT once, twice within a few ms, a burst of them, SIGTERM and SIGHUP all finalise the outputs.
* Nothing that is not a regular file is ever replaced: predictions to ``/dev/null`` or a FIFO are written
  in place (no temporary file, no rename); a video to a FIFO or device is refused with one line.
* A legal 250-character output name works (hidden names are shortened with a hash).
* A closed stderr (``2>&-``) still saves the outputs; bad --threads / --timeout / --show are one line.
* A network that produces NaN is an error with one line, never a label; the JSON lines stay valid JSON.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from faults.fixtures import InProcessCli, cli, fault_env, long_clip, restore_logging  # noqa: F401 - fixtures
from faults.fs import entries
from faults.media import SAMPLE_IMAGES, SAMPLE_VIDEO, read_frames
from faults.proc import MODEL_ARGS, LiveProcess, assert_one_clear_line, cli_env, fake_streamer, run, wait_until

COMMON = ("--no-progress", "--no-summary", *MODEL_ARGS, "--weights", "random")


@pytest.fixture()
def work(tmp_path: Path) -> Path:
    folder = tmp_path / "work"
    folder.mkdir()
    return folder


# -- two outputs on one file ---------------------------------------------------------------------
def test_video_and_predictions_on_one_path_are_refused(cli: InProcessCli, work: Path) -> None:
    result = cli("run", SAMPLE_VIDEO, "-o", work / "x.mkv", "--predictions", work / "x.mkv", "--max-frames", "5", *COMMON)
    line = assert_one_clear_line(result)
    assert "given as both -o and --predictions" in line
    assert entries(work) == []


def test_one_path_through_a_symlink_is_refused(cli: InProcessCli, work: Path) -> None:
    (work / "sub").mkdir()
    (work / "link").symlink_to(work / "sub")
    result = cli("run", SAMPLE_VIDEO, "-o", work / "sub" / "x.mkv", "--predictions", work / "link" / "x.mkv", "--max-frames", "5", *COMMON)
    assert "given as both" in assert_one_clear_line(result)
    assert entries(work) == ["link", "sub"]


def test_one_file_through_a_hard_link_is_refused(cli: InProcessCli, work: Path) -> None:
    (work / "x.mkv").write_bytes(b"old")
    os.link(work / "x.mkv", work / "x.jsonl")
    result = cli("run", SAMPLE_VIDEO, "-o", work / "x.mkv", "--predictions", work / "x.jsonl", "--overwrite", "--max-frames", "5", *COMMON)
    assert "given as both" in assert_one_clear_line(result)
    assert (work / "x.mkv").read_bytes() == b"old"


# -- a lock per final path -------------------------------------------------------------------------
def test_a_locked_predictions_file_fails_with_one_line(cli: InProcessCli, work: Path) -> None:
    from streamer.outputs import OutputLock

    target = work / "run.jsonl"
    target.write_text("the other run's\n")
    lock = OutputLock(target).acquire()  # another run holds it (flock: per open file, so this process counts)
    try:
        result = cli("run", SAMPLE_VIDEO, "--predictions", target, "--overwrite", "--headless", "--max-frames", "5", *COMMON)
    finally:
        lock.release()
    assert "another streamer run is writing this output" in assert_one_clear_line(result)
    assert target.read_text() == "the other run's\n"
    assert entries(work) == ["run.jsonl"], "no partial and no lock file left"


def test_two_real_runs_on_one_predictions_file(work: Path, long_clip: Path) -> None:
    target = work / "run.jsonl"
    first = LiveProcess(fake_streamer("instant", "run", long_clip, "--realtime", "--headless", "--predictions", target, *COMMON), work).start()
    try:
        wait_until(lambda: any(".run.jsonl.partial-" in n for n in entries(work)) or first.poll() is not None, timeout=120, what="first run writing")
        second = run(fake_streamer("instant", "run", SAMPLE_VIDEO, "--headless", "--predictions", target, "--overwrite", "--max-frames", "5", *COMMON), work)
        assert "another streamer run is writing this output" in assert_one_clear_line(second)
        first.signal(signal.SIGINT)
        assert first.wait(60) == 130, first.stderr
    finally:
        first.kill()
    records = [json.loads(line) for line in target.read_text().splitlines()]
    assert records and {r["source"] for r in records} == {long_clip.name}, "the first run's output, not the second's"
    assert entries(work) == ["run.jsonl"]


# -- signals ---------------------------------------------------------------------------------------
def _signalled(work: Path, long_clip: Path, signals: list[int], gap_s: float) -> tuple[LiveProcess, int]:
    out = work / "run.mkv"
    proc = LiveProcess(
        fake_streamer("instant", "run", long_clip, "--realtime", "-o", out, "--predictions", work / "run.jsonl", *COMMON), work
    ).start()
    try:
        proc.wait_for_line(" -> ", timeout=120, stream="out")
        wait_until(lambda: any(n.startswith(".run.jsonl.partial") for n in entries(work)) and os.path.getsize(work / next(n for n in entries(work) if n.startswith(".run.jsonl.partial"))) > 2000, timeout=60, what="some frames labelled")
        for signum in signals:
            os.kill(proc.pid, signum)
            time.sleep(gap_s)
        code = proc.wait(60)
    finally:
        proc.kill()
    return proc, code


@pytest.mark.parametrize(
    "signals, gap_s",
    [([signal.SIGINT, signal.SIGINT], 0.02), ([signal.SIGINT] * 6, 0.005), ([signal.SIGHUP], 0), ([signal.SIGTERM, signal.SIGHUP, signal.SIGINT], 0.01)],
    ids=["SIGINT-twice-20ms", "SIGINT-burst", "SIGHUP", "TERM-HUP-INT"],
)
def test_repeated_signals_still_finalise(work: Path, long_clip: Path, signals: list[int], gap_s: float) -> None:
    proc, code = _signalled(work, long_clip, signals, gap_s)
    assert code == 130, proc.stderr
    assert "Traceback" not in proc.stderr
    assert entries(work) == ["run.jsonl", "run.mkv"], "both outputs under their final names, no partial or lock file"
    records = [json.loads(line) for line in (work / "run.jsonl").read_text().splitlines()]
    assert len(read_frames(work / "run.mkv")) == len(records) > 0


# -- never replace what is not a regular file -------------------------------------------------------
def test_predictions_to_dev_null_are_written_in_place(cli: InProcessCli) -> None:
    before = os.stat(os.devnull)
    result = cli("run", SAMPLE_VIDEO, "--predictions", os.devnull, "--overwrite", "--headless", "--max-frames", "5", *COMMON)
    assert result.returncode == 0, result.stderr
    after = os.stat(os.devnull)
    assert (after.st_ino, after.st_mode) == (before.st_ino, before.st_mode), "still the character device"


def test_predictions_to_a_fifo_are_streamed(cli: InProcessCli, work: Path) -> None:
    fifo = work / "labels.fifo"
    os.mkfifo(fifo)
    got: list[str] = []
    reader = threading.Thread(target=lambda: got.extend(open(fifo, encoding="utf-8").read().splitlines()), daemon=True)
    reader.start()
    result = cli("run", SAMPLE_VIDEO, "--predictions", fifo, "--headless", "--max-frames", "7", *COMMON)
    reader.join(30)
    assert result.returncode == 0, result.stderr
    assert [json.loads(line)["frame"] for line in got] == list(range(7))
    assert entries(work) == ["labels.fifo"], "no temporary file, no lock, the FIFO not replaced"


def test_a_video_onto_a_fifo_is_refused(cli: InProcessCli, work: Path) -> None:
    os.mkfifo(work / "x.mkv")
    result = cli("run", SAMPLE_VIDEO, "-o", work / "x.mkv", "--overwrite", "--max-frames", "5", *COMMON)
    assert "not a regular file" in assert_one_clear_line(result)
    assert entries(work) == ["x.mkv"]


# -- names and streams ------------------------------------------------------------------------------
def test_a_250_character_predictions_name_works(cli: InProcessCli, work: Path) -> None:
    name = "p" * 244 + ".jsonl"
    assert len(name) == 250
    result = cli("run", SAMPLE_VIDEO, "--predictions", work / name, "--headless", "--max-frames", "5", *COMMON)
    assert result.returncode == 0, result.stderr
    assert entries(work) == [name]
    assert len((work / name).read_text().splitlines()) == 5


def test_closed_stderr_still_saves_the_outputs(work: Path) -> None:
    cmd = fake_streamer("instant", "run", SAMPLE_VIDEO, "-o", work / "out.mkv", "--predictions", work / "out.jsonl", "--max-frames", "20", *COMMON)
    result = subprocess.run(["bash", "-c", '"$@" 2>&-', "bash", *cmd], cwd=work, env=cli_env(), capture_output=False, stdout=subprocess.PIPE, text=True, timeout=120)
    assert result.returncode == 0
    assert entries(work) == ["out.jsonl", "out.mkv"]
    lines = (work / "out.jsonl").read_text().splitlines()
    assert len(lines) == 20 and all(json.loads(line) for line in lines), "no log line landed in an output"
    assert len(read_frames(work / "out.mkv")) == 20


@pytest.mark.parametrize("option", [("--threads", "100000"), ("--threads", "0"), ("--timeout", "0.0001"), ("--timeout", "0")])
def test_out_of_range_options_are_one_line(cli: InProcessCli, work: Path, option: tuple[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli("run", SAMPLE_VIDEO, "--headless", *option, *COMMON)
    err = capsys.readouterr().err
    assert info.value.code == 2
    assert [line for line in err.splitlines() if "error" in line] == [line for line in err.splitlines() if option[0] in line and "error" in line]
    assert "Traceback" not in err


def test_show_without_a_display_is_one_line(cli: InProcessCli, work: Path) -> None:
    result = cli("run", SAMPLE_VIDEO, "--show", "--max-frames", "3", *COMMON)
    assert "--show needs a display" in assert_one_clear_line(result)
    assert result.returncode == 2


def test_the_threads_limit_is_documented() -> None:
    from streamer.cli import max_threads

    assert max_threads() >= 256


# -- a network that produces NaN ----------------------------------------------------------------------
def test_nan_weights_are_an_error_never_a_label(cli: InProcessCli, work: Path) -> None:
    import torch

    from engines.models import WeightsChoice, build_model, get_spec

    state = build_model(get_spec(MODEL_ARGS[1]), WeightsChoice("imagenet")).module.state_dict()
    bias = next(k for k in state if k.endswith("bias") and state[k].shape == (1000,))
    state[bias] = torch.full((1000,), float("nan"))
    torch.save(state, work / "nan.pt")
    result = cli(
        "run", SAMPLE_IMAGES / "cat.jpg", "--predictions", work / "out.jsonl", "--headless", "--backend", "torch",
        "--no-progress", "--no-summary", *MODEL_ARGS, "--weights", work / "nan.pt", fake_model=False,
    )  # fmt: skip
    assert "NaN or infinite scores" in assert_one_clear_line(result)
    assert entries(work) == ["nan.pt"], "no predictions file with a NaN score"


def test_json_lines_refuse_nan() -> None:
    from engines.backends.base import Prediction
    from engines.errors import SinkError
    from streamer.sinks import PredictionsWriter
    from streamer.sources import Frame

    import numpy as np

    path = Path(os.environ.get("TMPDIR", "/tmp")) / f"nan-{os.getpid()}.jsonl"
    writer = PredictionsWriter(path, overwrite=True)
    frame = Frame(0, np.zeros((2, 2, 3), np.uint8), 0.0, "x")
    with pytest.raises(SinkError, match="not a number"):
        writer.write(frame, Prediction((1,), (float("nan"),), ("goldfish",)), 1.0)
    writer.abort()
    assert not path.exists()
