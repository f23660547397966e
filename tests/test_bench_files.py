"""``python -m streamer.bench.files``: looped videos, one real run on the CPU, and the tables of a committed report.

The clip is made here from the bundled sample (real frames, made small so a CPU run is quick); the tables
are printed from the H200 report committed under docs/benchmarks/h200-files/.
"""

from __future__ import annotations

import json
from pathlib import Path

import av
import pytest

from streamer.bench.files import Video, loop_video, main, markdown, parse_video
from streamer.sinks.video import VideoFileSink, frames_in_video

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "samples" / "video" / "bigbuckbunny.mp4"
COMMITTED = REPO / "docs" / "benchmarks" / "h200-files" / "gpu.json"


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """16 real frames of the sample at 96x64, as H.264."""
    path = tmp_path_factory.mktemp("clip") / "clip.mp4"
    sink = VideoFileSink(path).open((96, 64), 25.0)
    with av.open(str(SAMPLE)) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if i == 16:
                break
            sink.write(frame.reformat(width=96, height=64, format="bgr24").to_ndarray(), f"f{i}")
    sink.finalize()
    return path


def test_parse_video() -> None:
    assert parse_video("a/b.mp4") == Video(Path("a/b.mp4"), 1)
    assert parse_video("a/b.mp4:4") == Video(Path("a/b.mp4"), 4)
    assert parse_video("a/b:c.mp4") == Video(Path("a/b:c.mp4"), 1)


def test_loop_video_repeats_every_frame(tmp_path: Path) -> None:
    out = tmp_path / "looped.mp4"
    assert loop_video(SAMPLE, out, 3) == 3 * 132
    assert frames_in_video(out) == 3 * 132
    with av.open(str(out)) as container:
        stream = container.streams.video[0]
        pts = [p.pts for p in container.demux(stream) if p.size > 0]
    with av.open(str(out)) as container:
        decoded = sum(1 for _ in container.decode(video=0))
    assert decoded == 3 * 132
    assert len(set(pts)) == len(pts), "each copy gets its own frame times"


def test_one_run_on_the_cpu(clip: Path, tmp_path: Path) -> None:
    out = tmp_path / "files.json"
    argv = [
        f"{clip}:2", "--model", "efficientnet_lite0", "--backend", "torch", "--device", "cpu", "--precision", "fp32",
        "--batch", "4", "--repeats", "1", "--warmup", "4", "--ceiling-repeats", "1", "--one-thread-passes", "1",
        "--network", "--json", str(out),
    ]  # fmt: skip
    assert main(argv) == 0
    report = json.loads(out.read_text(encoding="utf-8"))
    (entry,) = report["videos"]
    assert entry["loops"] == 2 and entry["frame_size"] == [96, 64]
    ceiling = entry["ceiling"]
    assert ceiling["frames"] == 32 and ceiling["bound_fps"] == min(ceiling["decode_fps"]["p50"], ceiling["encode_fps"]["p50"])
    (case,) = entry["cases"]
    assert case["model"] == "efficientnet_lite0" and case["batch"] == 4 and case["frames_per_run"] == 32
    assert case["pipeline_fps"] > 0 and case["ratio_to_ceiling"] == pytest.approx(case["pipeline_fps"] / ceiling["bound_fps"])
    assert case["network_fps"] > 0 and case["ratio_to_network"] > 0
    assert "writer thread (write)" in case["thread_ms_per_frame"]
    assert "| clip 96x64 (32 frames) |" in markdown(report)


def test_tables_of_the_committed_h200_report(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["unused", "--json", str(COMMITTED), "--markdown"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("|")][2:]
    assert len(rows) == 16, "4 videos x 2 models x 2 batches"
    assert rows[0].startswith("| carphone_pristine 176x144 (960 frames) | 1843 (encode) |")
