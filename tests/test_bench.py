"""``streamer bench``: the report's content and schema on a small CPU run, never its speed.

One real run (efficientnet_lite0, 6 frames, 2 photographs, 2 repeats, torch and
onnxruntime where it imports) feeds most tests; the rest check the pieces on
made-up numbers (statistics, output comparison, nvidia-smi parsing, the verdict,
a GPU-shaped report) and the command's errors.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import shutil
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from engines.errors import ConfigError, SinkError, SourceError
from streamer.bench import diff as diffmod
from streamer.bench.cli import config_from_args
from streamer.bench.config import RANDOM_NOTE, BenchConfig, Case, ModelChoice
from streamer.bench.memory import engine_info, parse_compute_apps
from streamer.bench.realtime import verdict
from streamer.cli import build_parser, main
from streamer.stats import Stats, across_repeats, interval_rate, summarize

REPO = Path(__file__).resolve().parents[1]
VIDEO = REPO / "samples" / "video" / "bigbuckbunny.mp4"
IMAGES = REPO / "samples" / "images"
HAS_ORT = importlib.util.find_spec("onnxruntime") is not None
BACKENDS = ["torch", "onnxruntime"] if HAS_ORT else ["torch"]
ROW_KEYS = {
    "backend", "precision", "device", "model", "batch", "load", "latency_ms", "throughput_fps", "memory",
    "diff_vs_reference", "realtime", "status", "reason", "first_frame", "variant", "weights",
}


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    root = tmp_path_factory.mktemp("bench")
    images = root / "images"
    images.mkdir()
    for name in ("cat.jpg", "coffee.jpg"):
        shutil.copy(IMAGES / name, images / name)
    shutil.copy(REPO / "samples" / "labels.json", root / "labels.json")
    report = root / "report"
    argv = [
        "bench", str(VIDEO),
        "--model", "efficientnet_lite0",
        "--backends", ",".join([*BACKENDS, "tensorrt", "torch2trt"]),
        "--precision", "fp32,fp16",
        "--device", "cpu",
        "--batch", "1,2",
        "--repeats", "2", "--warmup", "1", "--max-frames", "6",
        "--images", str(images),
        "--decode-encode-baseline",
        "--report", str(report),
        "--no-progress",
    ]
    assert main(argv) == 0
    data = json.loads((report / "report.json").read_text(encoding="utf-8"))
    return report, data


def _rows(data: dict[str, Any], **match: Any) -> list[dict[str, Any]]:
    return [r for r in data["results"] if all(r[k] == v for k, v in match.items())]


def _all_numbers(value: Any) -> list[float]:
    if isinstance(value, bool) or value is None:
        return []
    if isinstance(value, (int, float)):
        return [float(value)]
    if isinstance(value, dict):
        return [x for v in value.values() for x in _all_numbers(v)]
    if isinstance(value, list):
        return [x for v in value for x in _all_numbers(v)]
    return []


# -- the real run ------------------------------------------------------------------
def test_writes_every_file(bench: tuple[Path, dict[str, Any]]) -> None:
    report, _ = bench
    for name in ("report.md", "report.json", "report.csv", "samples.json", "bench.log"):
        assert (report / name).is_file(), name
    assert not (report / ".bench.lock").exists()
    assert "streamer bench log" in (report / "bench.log").read_text(encoding="utf-8")
    for name in ("latency.png", "stages.png", "diff_hist.png", "throughput.png"):
        head = (report / name).read_bytes()[:8]
        assert head == b"\x89PNG\r\n\x1a\n", name


def test_json_schema(bench: tuple[Path, dict[str, Any]]) -> None:
    _, data = bench
    env = data["environment"]
    for key in ("cpu_model", "cpu_cores_logical", "gpu_name", "driver", "cuda", "torch", "tensorrt", "onnxruntime", "opencv", "os", "python", "jetson_power_mode", "jetson_clocks"):
        assert key in env, key
    assert env["gpu_name"] is None and env["driver"] is None and env["jetson_power_mode"] is None
    assert data["results"], "no rows"
    for row in data["results"]:
        assert ROW_KEYS <= set(row), ROW_KEYS - set(row)
        assert {"cold_s", "warm_s"} <= set(row["load"])
        assert {"mean", "std", "p50", "p95", "p99"} <= set(row["latency_ms"])
        assert {"host_peak_mb", "gpu_process_mb", "torch_max_allocated_mb"} <= set(row["memory"])
        assert all(math.isfinite(x) for x in _all_numbers(row))
    # every backend x precision x batch is a row, measured or not
    assert len(data["results"]) == (len(BACKENDS) + 2) * 2 * 2


def test_measured_rows_are_complete_and_consistent(bench: tuple[Path, dict[str, Any]]) -> None:
    _, data = bench
    for backend in BACKENDS:
        for batch in (1, 2):
            (row,) = _rows(data, backend=backend, precision="fp32", batch=batch)
            assert row["status"] == "ok", row["reason"]
            assert row["device"] == "cpu" and row["model"] == "efficientnet_lite0"
            assert row["load"]["cold_s"] > 0 and row["load"]["warm_s"] > 0
            lat = row["latency_ms"]
            assert 0 < lat["p50"] <= lat["p95"] <= lat["p99"] and lat["mean"] > 0
            assert lat["n"] == 2 * (6 // batch)  # repeats x full batches of the 6 frames
            assert row["timer"] == "perf_counter+synchronize"
            assert row["throughput_fps"] > 0
            assert row["per_image_ms"] == pytest.approx(lat["mean"] / batch)
            stages = row["pipeline"]["stages_ms"]
            assert set(stages) == {"decode", "preprocess", "inference", "postprocess", "render", "write"}
            assert row["pipeline"]["frames_per_run"] == 6
            mem = row["memory"]
            assert mem["host_peak_mb"] > mem["host_baseline_mb"] > 0
            assert mem["gpu_process_mb"] is None and mem["torch_max_allocated_mb"] is None  # no GPU: null, not 0
            ff = row["first_frame"]
            assert ff["first_infer_ms"] > 0 and ff["source_open_to_first_frame_ms"] > 0
            assert "thread_warmup_ms" not in ff  # one worker per case: no run warms a new thread


def test_output_change_against_cpu_reference(bench: tuple[Path, dict[str, Any]]) -> None:
    _, data = bench
    for backend in BACKENDS:
        (row,) = _rows(data, backend=backend, precision="fp32", batch=1)
        d = row["diff_vs_reference"]
        assert set(d) >= {"max_abs", "mean_abs", "max_rel", "cosine", "top1_agreement", "top5_overlap"}
        assert d["images"] == 2
        assert d["max_abs"] < 1e-2 and d["cosine"] > 0.9999
        assert d["top1_agreement"] == 100.0 and d["top5_overlap"] == 100.0
        assert row["labelled_top1"] == {"correct": 2, "labelled": 2, "misses": []}
    assert data["reference"]["efficientnet_lite0"]["top1"]["cat.jpg"]


def test_realtime_only_for_batch_one(bench: tuple[Path, dict[str, Any]]) -> None:
    _, data = bench
    (row,) = _rows(data, backend="torch", precision="fp32", batch=1)
    rt = row["realtime"]
    assert rt["target_fps"] == pytest.approx(25.0)
    assert rt["frames_offered"] == 6 and 0 <= rt["dropped"] <= 6
    assert "last_frame_lost_at_end" not in rt and "dropped_before_end" not in rt  # the fossil of a bug fixed in 181a3b2 is gone
    assert rt["sustained_fps"] is None or rt["sustained_fps"] > 0
    assert rt["latency_p50_ms"] <= rt["latency_p99_ms"]
    assert isinstance(rt["capable"], bool) and set(rt["failed"]) <= {"replay", "headroom"} and rt["capable"] == (not rt["failed"])
    assert rt["verdict"].startswith("efficientnet_lite0 torch fp32 cpu b1: ")
    assert rt["slowest_stage"] in {"decode", "preprocess", "inference", "postprocess", "render", "write"}
    threads = row["pipeline"]["thread_ms_per_frame"]
    assert rt["busiest_thread"] == max(threads, key=threads.get) and f"busiest thread: {rt['busiest_thread']}" in rt["verdict"]
    assert _rows(data, backend="torch", precision="fp32", batch=2)[0]["realtime"] is None
    assert rt["verdict"] in data["verdicts"]


def test_skipped_rows_say_why_and_carry_no_numbers(bench: tuple[Path, dict[str, Any]]) -> None:
    _, data = bench
    expect = {
        ("torch", "fp16"): "fp16",
        ("tensorrt", "fp32"): "not installed",
        ("torch2trt", "fp32"): "not installed",
    }
    for (backend, precision), words in expect.items():
        for row in _rows(data, backend=backend, precision=precision):
            assert row["status"] == "skipped"
            assert words in row["reason"]
            assert _all_numbers({k: v for k, v in row.items() if k != "batch"}) == [], row


def test_markdown_opens_with_the_device_and_the_lab_table(bench: tuple[Path, dict[str, Any]]) -> None:
    report, data = bench
    text = (report / "report.md").read_text(encoding="utf-8")
    lines = text.splitlines()
    assert lines[0].startswith("# streamer bench")
    assert lines[2].startswith("**Measured on: CPU ") and "cores)" in lines[2]
    first_table = next(i for i, ln in enumerate(lines) if ln.startswith("| "))
    assert lines[first_table] == "| backend | load time | processing time per image | max memory |"
    assert lines[first_table - 2] == "## Summary (batch 1), in the columns of the lab's published table"
    assert "cold: build model, load weights, move to device" in text
    assert "606208" in text and "max_memory_allocated" in text
    assert "## Skipped and failed" in text and "tensorrt" in text.split("## Skipped and failed")[1]
    assert "2 real photographs" in text and "the lab's published set had 11" in text
    assert "## Real-time verdict" in text
    for heading in ("## Network alone", "## Pipeline, stage by stage", "## Output change", "## Memory", "## Environment", "## Reference script (one image at a time, as a naive script does)"):
        assert heading in text


def test_csv_has_one_line_per_row(bench: tuple[Path, dict[str, Any]]) -> None:
    report, data = bench
    with open(report / "report.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == len(data["results"])
    assert {"backend", "precision", "batch", "load.cold_s", "latency_ms.p99", "memory.host_peak_mb", "diff_vs_reference.cosine", "realtime.verdict"} <= set(rows[0])
    skipped = [r for r in rows if r["status"] == "skipped"]
    assert skipped and all(r["latency_ms.mean"] == "" for r in skipped)


def test_lab_method_and_codec_baseline(bench: tuple[Path, dict[str, Any]]) -> None:
    _, data = bench
    (lab,) = data["lab_method"]
    assert lab["status"] == "ok" and lab["device"] == "cpu"
    assert lab["lab"]["images"] == 2 and lab["pipeline"]["images"] == 2
    assert lab["lab"]["total_s"]["mean"] > 0 and lab["pipeline"]["total_s"]["mean"] > 0
    assert lab["speedup_total"] > 0 and lab["top1_agreement"] is not None
    codec = data["codec_baseline"]
    assert codec["decode_fps"]["mean"] > 0 and codec["encode_fps"]["mean"] > 0
    assert codec["bound_fps"] == pytest.approx(min(codec["decode_fps"]["p50"], codec["encode_fps"]["p50"]))
    assert codec["decode_fps"]["n"] >= 5 and codec["bound_statistic"] == f"median of {codec['decode_fps']['n']} passes"
    assert codec["comparison"]
    # The ceiling encodes with the pipeline sink's own threads; one encoder thread is measured beside it, for the record.
    assert codec["encoder_threads"] >= 1 and codec["encode_fps_1thread"]["mean"] > 0


def test_samples_back_the_percentiles(bench: tuple[Path, dict[str, Any]]) -> None:
    report, data = bench
    samples = json.loads((report / "samples.json").read_text(encoding="utf-8"))
    (row,) = _rows(data, backend="torch", precision="fp32", batch=1)
    net = samples[row["key"]]["network_ms"]
    assert len(net) == row["latency_ms"]["n"]
    assert np.percentile(net, 99) == pytest.approx(row["latency_ms"]["p99"])
    hist = samples[row["key"]]["diff_histogram"]
    assert sum(hist["counts"]) == 2 * 1000 and len(hist["edges"]) == len(hist["counts"]) + 1
    assert hist["max_abs"] == pytest.approx(row["diff_vs_reference"]["max_abs"], rel=1e-3)


def test_plots_can_be_redrawn_from_the_written_report(bench: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    report, data = bench
    copy = tmp_path / "copy"
    shutil.copytree(report, copy)
    for png in copy.glob("*.png"):
        png.unlink()
    before = (copy / "report.md").read_text(encoding="utf-8")
    assert main(["bench", "--replot", str(copy)]) == 0
    assert sorted(p.name for p in copy.glob("*.png")) == sorted(data["plots"])
    assert (copy / "report.md").read_text(encoding="utf-8") == before


# -- pieces, on made-up numbers ---------------------------------------------------
def test_statistics() -> None:
    s = summarize([1.0, 2.0, 3.0, 4.0])
    assert s["mean"] == 2.5 and s["p50"] == 2.5 and s["n"] == 4
    assert summarize([5.0])["std"] is None  # one value: no spread, not a spread of 0
    assert summarize([])["mean"] is None
    r = across_repeats([[1.0, 1.0], [3.0, 3.0]])
    assert r["mean"] == 2.0 and r["std"] == pytest.approx(math.sqrt(2.0)) and r["repeats"] == 2
    assert interval_rate([0.0, 0.5, 1.0]) == 2.0  # intervals, not samples
    assert interval_rate([1.0]) is None


def test_compare_logits() -> None:
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(4, 1000))
    same = diffmod.compare(ref.copy(), ref)
    assert same["max_abs"] == 0 and same["top1_agreement"] == 100 and same["cosine"] == pytest.approx(1.0)
    moved = ref.copy()
    moved[0, np.argmin(ref[0])] = ref[0].max() + 1.0  # image 0 gets a new top-1
    d = diffmod.compare(moved, ref)
    assert d["top1_agreement"] == 75.0 and d["top5_overlap"] == pytest.approx(95.0)
    with pytest.raises(ValueError):
        diffmod.compare(ref[:2], ref)
    assert diffmod.labelled_top1(ref, ["a.jpg", "b.jpg", "c.jpg", "d.jpg"], {"a.jpg": [int(np.argmax(ref[0]))], "b.jpg": [-1]}) == {
        "correct": 1, "labelled": 2, "misses": ["b.jpg"],
    }


def test_nvidia_smi_parsing_filters_our_pid() -> None:
    text = "1234, 812\n999, 100\n1234, 20\n77, [N/A]\n"
    assert parse_compute_apps(text, 1234) == 832.0
    assert parse_compute_apps(text, 5) is None
    assert parse_compute_apps("", 1) is None


def test_engine_info_reads_the_backends_artifact() -> None:
    from engines.backends.base import Artifact
    from engines.backends.torch_backend import TorchBackend
    from engines.models import WeightsChoice, get_spec

    backend = TorchBackend(get_spec("efficientnet_lite0"), WeightsChoice("random"))
    assert engine_info(backend) == {"engine_file_bytes": None, "engine_file": None, "trt_device_memory_bytes": None, "cache_hit": None, "engine_build_s": None}
    path = Path(__file__)
    backend.artifact = Artifact("tensorrt engine", path, 1234, "0" * 64, built=True, build_seconds=12.5, device_memory_bytes=4096)
    info = engine_info(backend)
    assert info["engine_file_bytes"] == 1234 and info["engine_file"] == path.name and info["cache_hit"] is False
    assert info["engine_build_s"] == 12.5 and info["trt_device_memory_bytes"] == 4096


def test_verdict() -> None:
    from streamer.bench.results import Replay

    def replay(dropped: int, fps: float) -> Replay:
        return Replay(25.0, 100, 100 - dropped, dropped, dropped / 100, fps, 10.0, 20.0, 30.0)

    busiest, slowest = ("writer thread (write)", 18.0), ("inference", 15.0)
    v = verdict("x", 25.0, replay(0, 25.0), 20.0, busiest, slowest)
    assert v.capable is True and v.failed == [] and v.headroom_p99 == pytest.approx(2.0) and "REAL-TIME" in v.verdict
    assert "busiest thread: writer thread" in v.verdict and "slowest stage: inference 15.0" in v.verdict
    v = verdict("x", 25.0, replay(30, 17.0), 20.0, busiest, slowest)
    assert v.capable is False and v.failed == ["replay"] and "NOT real-time" in v.verdict and "live replay FAILED" in v.verdict
    v = verdict("x", 25.0, replay(0, 25.0), 50.0, busiest, slowest)  # the replay held, but p99 headroom is 0.8
    assert v.capable is False and v.failed == ["headroom"] and "below 1: FAILED" in v.verdict
    v = verdict("x", 25.0, None, 20.0, busiest, slowest)
    assert v.capable is None and "no verdict" in v.verdict


def test_results_round_trip_through_json() -> None:
    from streamer.bench.results import (
        CaseResult,
        CaseSpec,
        LoadFigures,
        Parity,
        Replay,
        job_from_json,
        job_to_json,
    )

    spec = CaseSpec(key="k", label="l", model="m", weights="random", backend="torch", precision="fp32", device="cpu", batch=1,
                    source="s.mp4", work_dir="/tmp", repeats=2, warmup=1, sink="null", labels={"a.jpg": ["cat"]})
    assert job_from_json(json.loads(json.dumps(job_to_json(spec)))) == spec
    result = CaseResult(status="partial", reason="diff: x", errors={"diff": "x"}, load=LoadFigures(cold_s=1.5),
                        parity=Parity(metrics={"max_abs": 0.1}), replay=Replay(25.0, 10, 9, 1, 0.1, 24.0, 1.0, 2.0, 3.0))
    again = CaseResult.from_json(json.loads(json.dumps(result.to_json())))
    assert again == result and isinstance(again.load, LoadFigures) and isinstance(again.replay, Replay)


def test_require_realtime_names_the_slow_cases() -> None:
    from streamer.bench.cli import EXIT_NOT_REALTIME, realtime_failure

    def row(label: str, capable: bool | None, failed: list[str]) -> dict[str, Any]:
        return {"key": label, "label": label, "status": "ok", "realtime": {"capable": capable, "failed": failed}}

    assert EXIT_NOT_REALTIME == 3
    assert realtime_failure([row("a", True, []), row("b", None, [])]) is None
    problem = realtime_failure([row("a", True, []), row("b", False, ["headroom"])])
    assert problem is not None and "1 of 2" in problem and "b (headroom failed)" in problem
    assert realtime_failure([row("b", None, [])]) == "no case has a real-time verdict (batch 1 on a video file, without --no-realtime)"


def test_images_default_to_an_image_folder_source(tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    shutil.copy(IMAGES / "cat.jpg", folder / "cat.jpg")
    args = build_parser().parse_args(["bench", str(folder), "--model", "efficientnet_lite0", "--report", str(tmp_path / "r")])
    assert config_from_args(args).images == folder.resolve()
    args = build_parser().parse_args(["bench", str(VIDEO), "--model", "efficientnet_lite0", "--report", str(tmp_path / "r")])
    assert config_from_args(args).images == IMAGES.resolve()


def test_run_time_estimate_counts_cases_repeats_and_frames(tmp_path: Path) -> None:
    from streamer.bench.results import CaseSpec, Job
    from streamer.bench.runner import describe_estimate, estimate_seconds

    config = BenchConfig(source=VIDEO, images=IMAGES, report_dir=tmp_path, models=(ModelChoice("efficientnet_lite0", "imagenet"),),
                         backends=("torch",), precisions=("fp32",), devices=("cpu",), batches=(1,), repeats=2, max_frames=40)

    def job(repeats: int) -> Job:
        return Job("x", CaseSpec(key="k", label="x", model="m", weights="imagenet", backend="torch", precision="fp32", device="cpu",
                                 batch=1, source=str(VIDEO), work_dir="/tmp", repeats=repeats, warmup=1, sink="video", realtime=True, source_fps=25.0))

    source = {"frames": 132, "fps": 25.0}
    one, more = estimate_seconds(config, [job(2)], source, 2), estimate_seconds(config, [job(5)], source, 2)
    assert 0 < one < more and estimate_seconds(config, [job(2), job(2)], source, 2) == pytest.approx(2 * one)
    assert "1 jobs (1 cases); estimated run time about" in describe_estimate(one, [job(2)])


def test_only_disturbed_measured_cases_are_retried() -> None:
    from streamer.bench.results import CaseResult
    from streamer.bench.runner import _others

    assert _others(CaseResult(status="ok", machine_load={"other_processes": 0.5})) == 0.5
    assert _others(CaseResult(status="partial", machine_load={"other_processes": None})) == 0.0
    assert _others(CaseResult(status="skipped", reason="x")) == 0.0


def test_what_counts_as_a_skip() -> None:
    from engines.errors import BackendError, BackendUnavailable
    from streamer.bench.worker import classify

    missing = ModuleNotFoundError("No module named 'tensorrt'", name="tensorrt")
    ours = ModuleNotFoundError("No module named 'engines.nothing'", name="engines.nothing")
    wrapped = BackendError("load failed")
    wrapped.__cause__ = ConfigError("fp16 needs a CUDA device")
    assert classify(BackendUnavailable("no GPU"))[0] == "skipped"
    assert classify(wrapped) == ("skipped", "fp16 needs a CUDA device")
    assert classify(missing)[0] == "skipped"
    assert classify(ours)[0] == "failed"
    assert classify(ImportError("cannot import name 'x' from 'engines.preprocess'"))[0] == "failed"
    assert classify(RuntimeError("CUDA error"))[0] == "failed"


def test_one_bench_per_report_folder(tmp_path: Path) -> None:
    from streamer.bench.runner import lock_report_dir

    first = lock_report_dir(tmp_path)
    try:
        with pytest.raises(SinkError, match="another streamer bench"):
            lock_report_dir(tmp_path)
    finally:
        first.release()
    lock_report_dir(tmp_path).release()


def test_gpu_shaped_report_renders(tmp_path: Path) -> None:
    """A report with a CUDA row (driver memory), a random-weights model and a failure, rendered without a GPU."""
    from streamer.bench.assemble import assemble
    from streamer.bench.report import write_reports
    from streamer.bench.results import (
        CaseResult,
        CaseSpec,
        Job,
        LoadFigures,
        MemoryFigures,
        NetworkFigures,
    )

    alex = ModelChoice("alexnet", "random", note="its ImageNet weights are not on this machine")
    config = BenchConfig(
        source=VIDEO, images=IMAGES, report_dir=tmp_path, models=(alex,), backends=("torch", "tensorrt"),
        precisions=("fp16",), devices=("cuda:0",), batches=(1,), command="streamer bench --model alexnet",
    )
    lat: Stats = {"mean": 1.0, "std": 0.1, "p50": 1.0, "p95": 1.2, "p99": 1.5, "min": 0.9, "max": 1.6, "n": 10, "repeats": 2}
    ok = CaseResult(
        status="ok",
        load=LoadFigures(cold_s=2.5, warm_s=0.4, cuda_context_s=0.3),
        network=NetworkFigures(timer="cuda_events", per_call="one infer() call", latency_ms=lat, latency_wall_ms=lat, per_image_ms=1.0,
                               throughput_fps=1000.0, throughput_fps_std=None, first_infer_ms=3.0, first_infer_wall_ms=3.1,
                               calls_per_repeat=5, samples=[1.0] * 10),
        memory=MemoryFigures(host_peak_mb=3000.0, gpu_process_mb=900.0, gpu_process_by_phase_mb={"cold_load": 950.0}, gpu_method="nvidia-smi",
                             torch_max_allocated_mb=0.578125),
    )
    case_ok = Case(alex, "torch", "fp16", "eager", "cuda:0", 1)
    case_bad = Case(alex, "tensorrt", "fp16", "eager", "cuda:0", 1)

    def spec(case: Case) -> CaseSpec:
        return CaseSpec(key=case.key, label=case.label, model="alexnet", weights="random", backend=case.backend, precision="fp16",
                        device="cuda:0", batch=1, source=str(VIDEO), work_dir=str(tmp_path), repeats=2, warmup=1, sink="video")

    results: list[tuple[Job, CaseResult]] = [
        (Job(case_ok.label, spec(case_ok), case_ok), ok),
        (Job(case_bad.label, spec(case_bad), case_bad), CaseResult(status="failed", reason="EngineError: build failed")),
    ]
    env = {"cpu_model": "Test CPU", "cpu_cores_logical": 16, "gpu_name": "NVIDIA H100", "driver": "580.1", "cuda": "13.0"}
    source = {"path": str(VIDEO), "fps": 25.0, "video": True, "frames": 132, "frame_size": [1280, 720]}
    report = assemble(config, env, source, sorted(IMAGES.glob("*.jpg")), {}, list(results), [], tmp_path)
    write_reports(report, tmp_path)
    text = (tmp_path / "report.md").read_text(encoding="utf-8")
    assert "**Measured on: GPU NVIDIA H100 (driver 580.1, CUDA 13.0); host CPU Test CPU (16 cores)**" in text
    assert f"({RANDOM_NOTE})" in text
    assert "| 950 MB (GPU, driver) |" in text and "| 900 MB (GPU, driver) |" in text
    assert "EngineError: build failed" in text
    data = json.loads((tmp_path / "report.json").read_text(encoding="utf-8"))
    row = data["results"][0]
    assert row["diff_vs_reference"] is None and row["diff_note"] == RANDOM_NOTE
    assert row["memory"]["torch_max_allocated_mb"] == 0.578125
    assert data["results"][1]["status"] == "failed" and data["results"][1]["latency_ms"]["mean"] is None
    assert any("random weights: timing only" in n for n in data["notes"])


# -- the command's errors -----------------------------------------------------------
@pytest.mark.parametrize(
    "extra, words",
    [
        (["--backends", "torch,bogus"], "unknown backend 'bogus'"),
        (["--precision", "fp8"], "unknown precision"),
        (["--batch", "0"], "--batch"),
        (["--device", "gpu"], "device must be"),
        (["--variants", "turbo"], "unknown variant"),
        (["--retry-busy", "-1"], "--retry-busy"),
    ],
)
def test_bad_options_fail_in_one_line(extra: list[str], words: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["bench", str(VIDEO), "--model", "efficientnet_lite0", "--report", str(tmp_path / "r"), "--no-progress", *extra])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == ConfigError.exit_code
    assert len(err) == 1 and words in err[0]
    assert not (tmp_path / "r").exists()


def test_missing_source_and_existing_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["bench", str(tmp_path / "nope.mp4"), "--model", "efficientnet_lite0", "--report", str(tmp_path / "r"), "--no-progress"])
    assert code == SourceError.exit_code and "no such file" in capsys.readouterr().err
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "report.json").write_text("{}", encoding="utf-8")
    code = main(["bench", str(VIDEO), "--model", "efficientnet_lite0", "--report", str(tmp_path / "r"), "--no-progress", "--backends", "tensorrt"])
    assert code == SinkError.exit_code and "--overwrite" in capsys.readouterr().err


@pytest.mark.parametrize(
    "url, shown",
    [
        ("rtsp://admin:hunter2@cam.local:554/stream1", "rtsp://admin:***@cam.local:554/stream1"),
        ("HTTP://cam.local/video.mjpg?password=hunter2", "HTTP://cam.local/video.mjpg?password=***"),
    ],
)
def test_network_stream_source_is_refused_in_one_line(url: str, shown: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A URL is refused up front, not folded into a path and reported as a missing file; its password is not printed."""
    code = main(["bench", url, "--model", "efficientnet_lite0", "--report", str(tmp_path / "r"), "--no-progress"])
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert code == ConfigError.exit_code != 0
    assert len(err) == 1, captured.err
    assert err[0] == f"streamer: error: bench measures a video file or an image folder, not a network stream: {shown}"
    assert "no such file" not in err[0]
    assert "hunter2" not in captured.err + captured.out
    assert not (tmp_path / "r").exists()
    # The error itself carries no password (not only the CLI's last-resort redaction of what it prints).
    args = build_parser().parse_args(["bench", url, "--model", "efficientnet_lite0", "--report", str(tmp_path / "r")])
    with pytest.raises(ConfigError) as info:
        config_from_args(args)
    assert "hunter2" not in str(info.value) and shown in str(info.value)


def test_png_is_real_image(bench: tuple[Path, dict[str, Any]]) -> None:
    report, _ = bench
    data = (report / "stages.png").read_bytes()
    width, height = struct.unpack(">II", data[16:24])
    assert width > 300 and height > 200
