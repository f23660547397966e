"""The threaded pipeline through its API: lossless files, live drops, batching, and every error path."""

from __future__ import annotations

import queue
import time
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import pytest

from engines.backends.base import Backend, BackendOptions, Prediction, postprocess
from engines.backends.torch_backend import TorchBackend
from engines.errors import BackendError, PipelineError, SinkError, SourceError, SourceTimeout, StreamerError
from engines.models import WeightsChoice, get_spec, imagenet_labels
from helpers import (
    MODEL,
    SAMPLE_VIDEO,
    SAMPLE_VIDEO_FRAMES,
    FailingSource,
    FailingVideoSink,
    FakeBackend,
    FrameCounter,
    RaisingBackend,
    SlowBackend,
    StallingSource,
    count_frames,
    files_in,
    http_file_server,
    read_frames,
    read_jsonl,
    read_stamp,
    run_with_deadline,
)
from streamer.overlay import LabelAnnotator, Result
from streamer.pipeline import Pipeline, PipelineConfig
from streamer.queues import EOS, LatestSlot
from streamer.sinks import ImageFolderSink, NullSink, PredictionsWriter, ThreadedSink, VideoFileSink
from streamer.sources import Frame, Source, SourceOptions, open_source
from streamer.stats import FpsMeter, LatencyStats, StageTimes

ERROR_DEADLINE_S = 8.0  # a failing run must stop within a few seconds, never hang (generous: CI shares 2 cores)


class RecordingTorchBackend(TorchBackend):
    """The real torch backend, recording the batch sizes it is given."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.batch_sizes: list[int] = []

    def infer(self, batch):  # type: ignore[no-untyped-def]
        self.batch_sizes.append(int(batch.shape[0]))
        return super().infer(batch)


@pytest.fixture(scope="module", autouse=True)
def labels_imported() -> None:
    """The pipeline reads the labels (importing torchvision: 1-2 s on 2 busy cores) when its backend
    is ready; import them once up front so live-mode tests measure the drop policy, not that import."""
    assert len(imagenet_labels()) == 1000


def lite0(batch: int = 1) -> RecordingTorchBackend:
    options = BackendOptions.for_batch(batch, device="cpu")
    return RecordingTorchBackend(get_spec(MODEL), WeightsChoice("imagenet"), options)


def _outputs(tmp_path: Path, name: str = "out.mp4") -> tuple[VideoFileSink, PredictionsWriter]:
    return VideoFileSink(tmp_path / name), PredictionsWriter(tmp_path / "pred.jsonl")


# -- lossless file mode ----------------------------------------------------------------
@pytest.fixture(scope="module")
def batch1_run(tmp_path_factory: pytest.TempPathFactory, stamped_clip: Path) -> dict:
    """The stamped clip through the real model at batch 1, into a video and a JSONL file."""
    out = tmp_path_factory.mktemp("batch1")
    source = open_source(str(stamped_clip))
    sink, predictions = _outputs(out)
    seen = FrameCounter()
    backends: list[RecordingTorchBackend] = []

    def factory() -> Backend:
        backends.append(lite0())
        return backends[-1]

    summary = Pipeline(source, sink, factory, PipelineConfig(topk=3, queue_size=4), observers=[predictions, seen]).run()
    return {"dir": out, "summary": summary, "seen": seen, "backend": backends[0], "records": read_jsonl(out / "pred.jsonl")}


def test_file_mode_is_lossless_and_in_order(batch1_run: dict, stamped_clip: Path) -> None:
    summary, out, records = batch1_run["summary"], batch1_run["dir"], batch1_run["records"]
    n = count_frames(stamped_clip)
    assert n == 24
    assert (summary.frames_in, summary.frames_out, summary.dropped) == (n, n, 0)
    assert batch1_run["seen"] == list(range(1, n + 1))
    assert files_in(out) == ["out.mp4", "pred.jsonl"]
    # order, by the index carried inside each picture
    assert [read_stamp(f) for f in read_frames(out / "out.mp4")] == list(range(n))
    # order, by the JSONL
    assert [r["frame"] for r in records] == list(range(n))
    assert batch1_run["backend"].batch_sizes == [1] * n
    assert not batch1_run["backend"].is_loaded, "the pipeline closes the backend it built"
    # every stage was timed, once per frame
    for stage in ("decode", "preprocess", "inference", "postprocess", "render", "write"):
        assert summary.stages[stage]["count"] == n


def test_each_jsonl_line_holds_its_own_frames_prediction(batch1_run: dict, stamped_clip: Path) -> None:
    records = batch1_run["records"]
    frames = read_frames(stamped_clip)
    with lite0() as backend:
        for i in (0, 11, 23):
            expected = postprocess(backend.infer(backend.preprocess([frames[i]])), backend.spec.labels, 3)[0]
            assert [t["index"] for t in records[i]["topk"]] == list(expected.indices)
            assert [t["score"] for t in records[i]["topk"]] == pytest.approx(list(expected.scores), abs=1e-4)


def test_each_frame_carries_its_own_label_and_stats(tmp_path: Path, stamped_clip: Path) -> None:
    source = open_source(str(stamped_clip))
    sink = ImageFolderSink(tmp_path / "frames")
    predictions = PredictionsWriter(tmp_path / "pred.jsonl")
    Pipeline(source, sink, FakeBackend, PipelineConfig(max_frames=4), observers=[predictions]).run()
    records = read_jsonl(tmp_path / "pred.jsonl")
    assert len({r["topk"][0]["index"] for r in records}) > 1, "the fake model gives frame-dependent labels"
    for i, original in enumerate(read_frames(stamped_clip, limit=4)):
        written = cv2.imread(str(tmp_path / "frames" / f"frame_{i:06d}.jpg")).astype(int)
        top = records[i]["topk"][0]
        prediction = Prediction((top["index"],), (top["score"],), (top["label"],))
        expected = LabelAnnotator(1).annotate(original.copy(), Result(prediction)).astype(int)
        band = np.nonzero((expected != original).any(axis=(1, 2)))[0]
        assert band.size and band[0] == 0
        rows = slice(0, int(band[-1]) + 1)
        # the top band shows this frame's label: close to drawing it ourselves, far from the bare frame
        assert np.abs(written[rows] - expected[rows]).mean() < 0.5 * np.abs(written[rows] - original[rows]).mean()
        assert np.abs(written[-10:] - original[-10:]).mean() > 10, "stats band at the bottom"
        assert np.abs(written[80:100] - original[80:100]).mean() < 8, "the middle of the picture is untouched"
        assert read_stamp(written.astype(np.uint8)) == i


@pytest.mark.parametrize("batch", [3, 4])
def test_batching_gives_the_same_predictions_as_batch_1(tmp_path: Path, stamped_clip: Path, batch1_run: dict, batch: int) -> None:
    source = open_source(str(stamped_clip))
    built: list[RecordingTorchBackend] = []

    def factory() -> Backend:
        built.append(lite0(batch))
        return built[-1]

    predictions = PredictionsWriter(tmp_path / "pred.jsonl")
    summary = Pipeline(source, NullSink(), factory, PipelineConfig(batch=batch, topk=3), observers=[predictions]).run()
    assert summary.frames_out == 24
    sizes = built[0].batch_sizes
    assert sum(sizes) == 24 and max(sizes) == batch, f"batching did not happen: {sizes}"
    records = read_jsonl(tmp_path / "pred.jsonl")
    reference = batch1_run["records"]
    assert [r["frame"] for r in records] == list(range(24))
    assert [[t["index"] for t in r["topk"]] for r in records] == [[t["index"] for t in r["topk"]] for r in reference]
    for record, expected in zip(records, reference):
        assert [t["score"] for t in record["topk"]] == pytest.approx([t["score"] for t in expected["topk"]], abs=1e-4)


def test_max_frames_stops_early(tmp_path: Path, short_clip: Path) -> None:
    source = open_source(str(short_clip))
    sink, predictions = _outputs(tmp_path)
    summary = Pipeline(source, sink, FakeBackend, PipelineConfig(max_frames=7), observers=[predictions]).run()
    assert (summary.frames_in, summary.frames_out) == (7, 7)
    assert count_frames(tmp_path / "out.mp4") == 7
    assert [r["frame"] for r in read_jsonl(tmp_path / "pred.jsonl")] == list(range(7))


# -- live mode ---------------------------------------------------------------------------
def test_realtime_source_with_a_slow_model_drops_frames_and_keeps_latency_bounded(tmp_path: Path, clip_factory: Callable[..., Path]) -> None:
    clip = clip_factory("live40.mp4", 40)  # 1.6 s at 25 FPS
    source = open_source(str(clip), SourceOptions(realtime=True))
    assert source.live
    sink, predictions = _outputs(tmp_path)
    summary = Pipeline(source, sink, lambda: SlowBackend(0.2), PipelineConfig(), observers=[predictions]).run()
    assert summary.frames_in == 40
    assert summary.dropped > 0
    assert summary.frames_out >= 2
    assert summary.frames_out + summary.dropped == summary.frames_in, "every frame is either shown or counted as dropped"
    indices = [r["frame"] for r in read_jsonl(tmp_path / "pred.jsonl")]
    assert len(indices) == summary.frames_out == count_frames(tmp_path / "out.mp4")
    assert all(a < b for a, b in zip(indices, indices[1:])), "newest-frame-wins keeps order"
    assert indices[-1] - indices[0] > summary.frames_out, "frames were skipped, not queued"
    # The queue does not grow: latency stays near one inference, far below the run time.
    assert summary.latency is not None
    assert summary.elapsed_s >= 1.5
    assert summary.latency.p95_ms / 1000.0 < summary.elapsed_s / 2


def test_lossless_mode_with_the_same_slow_model_drops_nothing(short_clip: Path) -> None:
    source = open_source(str(short_clip))
    summary = Pipeline(source, NullSink(), lambda: SlowBackend(0.02), PipelineConfig(max_frames=12)).run()
    assert (summary.frames_out, summary.dropped) == (12, 0)


def test_network_stream_of_a_file_is_lossless(sample_video: Path) -> None:
    """A video file served over HTTP says how long it is: every frame is labelled, none dropped."""
    with http_file_server(sample_video.read_bytes()) as port:
        source = open_source(f"http://127.0.0.1:{port}/clip.mp4", SourceOptions(open_timeout_s=5, read_timeout_s=5))
        assert not source.live
        summary = Pipeline(source, NullSink(), lambda: SlowBackend(0.01), PipelineConfig()).run()
    assert summary.frames_in == summary.frames_out == SAMPLE_VIDEO_FRAMES
    assert summary.dropped == 0


def test_network_stream_of_a_finite_file_ends(sample_video: Path) -> None:
    with http_file_server(sample_video.read_bytes()) as port:
        source = open_source(f"http://127.0.0.1:{port}/clip.mp4", SourceOptions(open_timeout_s=5, read_timeout_s=5))
        # max_frames only bounds the test: the file has 132 frames, so 300 means it was replayed
        summary = Pipeline(source, NullSink(), FakeBackend, PipelineConfig(max_frames=300)).run()
    assert summary.frames_in == SAMPLE_VIDEO_FRAMES
    assert summary.reconnects == 0


def test_latest_slot_keeps_the_newest_and_counts_drops() -> None:
    slot = LatestSlot()
    for item in ("a", "b", "c"):
        slot.put(item)
    assert slot.get(0.1) == "c" and slot.dropped == 2
    with pytest.raises(queue.Empty):
        slot.get(0.05)
    slot.put("d")
    slot.put(EOS)  # the end does not replace the unread last frame: it comes after it
    slot.put("late")  # nothing arrives after the end
    assert slot.get(0.1) == "d" and slot.dropped == 2
    assert slot.get(0.1) is EOS
    assert slot.get(0.1) is EOS  # and stays the end


# -- error paths: each must raise a StreamerError promptly and leave no output --------------
def _assert_fails_cleanly(pipeline: Pipeline, tmp_path: Path, error_type: type[BaseException]) -> BaseException:
    _result, error, seconds = run_with_deadline(pipeline.run, deadline_s=ERROR_DEADLINE_S + 10)
    assert isinstance(error, error_type), f"expected {error_type.__name__}, got {error!r}"
    assert isinstance(error, StreamerError)
    assert seconds < ERROR_DEADLINE_S
    assert files_in(tmp_path) == [], "a failed run leaves nothing behind, not even hidden partial files"
    return error


def test_backend_that_raises_stops_the_run(tmp_path: Path, sample_video: Path) -> None:
    """The reader is blocked on a full queue (132 frames, queue of 2) when the worker fails."""
    source = open_source(str(sample_video))
    sink, predictions = _outputs(tmp_path)
    backend = RaisingBackend(fail_on=3)
    pipeline = Pipeline(source, sink, lambda: backend, PipelineConfig(queue_size=2), observers=[predictions])
    error = _assert_fails_cleanly(pipeline, tmp_path, PipelineError)
    assert "simulated inference failure" in str(error)
    assert isinstance(error.__cause__, RuntimeError)
    assert backend.closed
    assert pipeline.summary.frames_in < SAMPLE_VIDEO_FRAMES


def test_backend_that_fails_to_load_stops_the_run(tmp_path: Path, short_clip: Path) -> None:
    class BrokenLoad(FakeBackend):
        def _load_impl(self) -> None:
            raise FileNotFoundError("engine file vanished")

    source = open_source(str(short_clip))
    sink, predictions = _outputs(tmp_path)
    error = _assert_fails_cleanly(Pipeline(source, sink, BrokenLoad, PipelineConfig(), observers=[predictions]), tmp_path, BackendError)
    assert "engine file vanished" in str(error)


def test_backend_factory_that_raises_stops_the_run(tmp_path: Path, short_clip: Path) -> None:
    def factory() -> Backend:
        raise MemoryError

    source = open_source(str(short_clip))
    sink, predictions = _outputs(tmp_path)
    error = _assert_fails_cleanly(Pipeline(source, sink, factory, PipelineConfig(), observers=[predictions]), tmp_path, PipelineError)
    assert "memory" in str(error)


@pytest.mark.parametrize(
    "raised, expected",
    [(OSError(5, "Input/output error"), PipelineError), (SourceError("camera unplugged"), SourceError)],
    ids=["oserror", "sourceerror"],
)
def test_source_that_raises_mid_stream_stops_the_run(tmp_path: Path, sample_video: Path, raised: BaseException, expected: type) -> None:
    source = FailingSource(open_source(str(sample_video)), fail_at=10, error=raised).open()
    sink, predictions = _outputs(tmp_path)
    pipeline = Pipeline(source, sink, FakeBackend, PipelineConfig(queue_size=2), observers=[predictions])
    error = _assert_fails_cleanly(pipeline, tmp_path, expected)
    assert error is raised or error.__cause__ is raised
    assert source.closed


@pytest.mark.parametrize("threaded", [False, True], ids=["direct", "writer-thread"])
@pytest.mark.parametrize("fail_at", [0, 4])
def test_sink_that_raises_stops_the_run(tmp_path: Path, sample_video: Path, threaded: bool, fail_at: int) -> None:
    """As make_sink builds it (behind a writer thread) and bare; failing on the first frame or a later one."""
    source = open_source(str(sample_video))
    inner = FailingVideoSink(tmp_path / "out.mp4", fail_at=fail_at, error=SinkError("out.mp4: disk full"))
    sink = ThreadedSink(inner, queue_size=2) if threaded else inner
    predictions = PredictionsWriter(tmp_path / "pred.jsonl")
    pipeline = Pipeline(source, sink, FakeBackend, PipelineConfig(queue_size=2), observers=[predictions])
    error = _assert_fails_cleanly(pipeline, tmp_path, SinkError)
    assert "disk full" in str(error)
    assert inner.aborted
    assert pipeline.summary.frames_in < SAMPLE_VIDEO_FRAMES


def test_sink_raising_a_plain_oserror_becomes_a_streamer_error(tmp_path: Path, sample_video: Path) -> None:
    source = open_source(str(sample_video))
    sink = FailingVideoSink(tmp_path / "out.mp4", fail_at=4)
    predictions = PredictionsWriter(tmp_path / "pred.jsonl")
    error = _assert_fails_cleanly(Pipeline(source, sink, FakeBackend, PipelineConfig(queue_size=2), observers=[predictions]), tmp_path, PipelineError)
    assert "No space left" in str(error)


def test_source_that_stalls_is_caught_by_the_watchdog(tmp_path: Path, sample_images: Path) -> None:
    source = StallingSource(cv2.imread(str(sample_images / "cat.jpg")), frames=3, stall_s=30.0).open()
    sink, predictions = _outputs(tmp_path)
    pipeline = Pipeline(source, sink, FakeBackend, PipelineConfig(stall_timeout_s=1.0, join_timeout_s=0.5), observers=[predictions])
    error = _assert_fails_cleanly(pipeline, tmp_path, SourceTimeout)
    assert "no frame" in str(error)
    assert pipeline.summary.frames_out == 3


def test_a_slow_model_on_a_healthy_file_is_not_a_source_stall(short_clip: Path) -> None:
    source = open_source(str(short_clip))
    config = PipelineConfig(stall_timeout_s=0.3, queue_size=2, max_frames=8)
    summary = Pipeline(source, NullSink(), lambda: SlowBackend(0.5), config).run()
    assert summary.frames_out == 8


class _SlowLoadBackend(FakeBackend):
    def _load_impl(self) -> None:
        time.sleep(1.0)  # an engine build; TensorRT takes minutes


class _SlowDecodeSource(FailingSource):
    """A real video whose frames take 0.15 s each to decode (a 4K stream on a small board)."""

    def _read_impl(self):  # type: ignore[no-untyped-def]
        time.sleep(0.15)
        return super()._read_impl()


def test_a_slow_model_load_is_not_a_source_stall(short_clip: Path) -> None:
    source = _SlowDecodeSource(open_source(str(short_clip)), fail_at=10**6).open()
    config = PipelineConfig(stall_timeout_s=0.5, queue_size=2, max_frames=8)
    summary = Pipeline(source, NullSink(), _SlowLoadBackend, config).run()
    assert summary.frames_out == 8


# -- Ctrl-C inside run() -------------------------------------------------------------------------
class _InterruptingSink(VideoFileSink):
    """Delivers a KeyboardInterrupt (as Ctrl-C does on the main thread) when frame ``at`` arrives."""

    def __init__(self, path: Path, at: int) -> None:
        super().__init__(path)
        self.at = at

    def write(self, image: np.ndarray, name: str) -> None:
        if self.frames_written == self.at:
            raise KeyboardInterrupt
        super().write(image, name)


def test_interrupt_finalises_what_was_written(tmp_path: Path, short_clip: Path) -> None:
    source = open_source(str(short_clip))
    sink = _InterruptingSink(tmp_path / "out.mkv", at=5)
    predictions = PredictionsWriter(tmp_path / "pred.jsonl")
    pipeline = Pipeline(source, sink, FakeBackend, PipelineConfig(), observers=[predictions])
    with pytest.raises(KeyboardInterrupt):
        pipeline.run()
    assert pipeline.summary.interrupted
    assert files_in(tmp_path) == ["out.mkv", "pred.jsonl"]
    assert count_frames(tmp_path / "out.mkv") == 5 == len(read_jsonl(tmp_path / "pred.jsonl"))


def test_interrupt_before_the_first_frame_is_still_an_interrupt(tmp_path: Path, short_clip: Path) -> None:
    source = open_source(str(short_clip))
    sink = _InterruptingSink(tmp_path / "out.mkv", at=0)
    predictions = PredictionsWriter(tmp_path / "pred.jsonl")
    with pytest.raises(KeyboardInterrupt):
        Pipeline(source, sink, FakeBackend, PipelineConfig(), observers=[predictions]).run()
    assert files_in(tmp_path) == []


# -- config and timing helpers --------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs", [{"batch": 0}, {"topk": 0}, {"topk": 1001}, {"queue_size": 0}, {"max_frames": 0}, {"stall_timeout_s": 0}]
)
def test_invalid_pipeline_config(kwargs: dict) -> None:
    with pytest.raises(StreamerError):
        PipelineConfig(**kwargs)


def test_fps_meter_counts_intervals_not_samples() -> None:
    meter = FpsMeter(window=30)
    assert meter.fps is None
    for t in (10.0, 10.5, 11.0, 11.5, 12.0):
        meter.tick(t)
    assert meter.fps == pytest.approx(2.0)  # 4 intervals over 2 s; samples/elapsed would say 2.5


def test_fps_meter_window_slides() -> None:
    meter = FpsMeter(window=2)
    for t in (0.0, 10.0, 10.1, 10.2):
        meter.tick(t)
    assert meter.fps == pytest.approx(10.0)


def test_stage_times_split_batches_and_latency_stats() -> None:
    times = StageTimes()
    times.add("inference", 0.4, count=4)
    times.add("inference", 0.1)
    summary = times.summary()
    assert summary["inference"]["count"] == 5
    assert summary["inference"]["mean_ms"] == pytest.approx(100.0)
    assert "render" not in summary
    stats = LatencyStats.of([0.01 * i for i in range(1, 101)])
    assert stats is not None
    assert stats.max_ms == pytest.approx(1000.0)
    assert stats.p50_ms == pytest.approx(505.0, rel=0.02)  # histogram buckets: within 1% of a sample at that rank
    assert stats.p95_ms < stats.p99_ms < stats.max_ms
    assert LatencyStats.of([]) is None


# -- one inference worker for several runs ----------------------------------------------------------
class _ThreadRecordingBackend(FakeBackend):
    """Records the thread of every load, preprocess and inference call."""

    def __init__(self) -> None:
        super().__init__()
        self.threads: set[str] = set()
        self.loads = 0

    def _load_impl(self) -> None:
        import threading

        self.loads += 1
        self.threads.add(threading.current_thread().name)

    def _infer_impl(self, batch):  # type: ignore[no-untyped-def]
        import threading

        self.threads.add(threading.current_thread().name)
        return super()._infer_impl(batch)


def test_one_worker_serves_several_runs_on_one_thread(tmp_path: Path, short_clip: Path) -> None:
    """The worker loads once, on its own thread, and outlives the pipelines it is handed; its owner closes it."""
    from streamer.inference import InferenceWorker

    backend = _ThreadRecordingBackend()
    with InferenceWorker(lambda: backend) as worker:
        info = worker.wait_loaded()
        assert info.description == backend.description
        for run in range(3):
            predictions = PredictionsWriter(tmp_path / f"pred{run}.jsonl")
            summary = Pipeline(open_source(str(short_clip)), NullSink(), worker, PipelineConfig(), observers=[predictions]).run()
            assert summary.frames_out == len(read_jsonl(tmp_path / f"pred{run}.jsonl")) > 0
            assert summary.backend == info.description and summary.stages["inference"]["count"] == summary.frames_out
            assert backend.is_loaded and worker.alive, "a pipeline does not close a worker it was handed"
        assert backend.loads == 1 and backend.threads == {"inference"}
        assert worker.call(lambda b: b.infer_calls).result() == 3 * summary.frames_out
    assert backend.closed and not worker.alive


def test_worker_batches_requests_from_several_callers_up_to_max_batch(sample_images: Path) -> None:
    """With ``max_batch``, requests waiting together run as one batch and each caller gets its own predictions."""
    from streamer.inference import InferenceWorker

    images = [cv2.imread(str(p)) for p in sorted(sample_images.glob("*.jpg"))[:4]]
    alone = InferenceWorker(FakeBackend).start()
    expected = [alone.submit([image]).result(30).predictions[0] for image in images]
    alone.close()
    backend = FakeBackend()
    worker = InferenceWorker(lambda: backend, max_batch=4, max_wait_s=5.0)
    worker.wait_loaded()
    gate = worker.call(lambda b: time.sleep(0.5))  # hold the thread so the four requests queue up behind it
    futures = [worker.submit([image]) for image in images]
    gate.result(30)
    results = [f.result(30) for f in futures]
    worker.close()
    assert [r.predictions[0].indices for r in results] == [p.indices for p in expected]
    assert {r.batch_size for r in results} == {4} and backend.infer_calls == 1


def test_a_closed_worker_refuses_work_and_a_run_on_it_fails_cleanly(tmp_path: Path, short_clip: Path) -> None:
    from streamer.inference import InferenceWorker

    worker = InferenceWorker(FakeBackend).start()
    worker.wait_loaded()
    assert worker.close(5)
    with pytest.raises(PipelineError):
        worker.submit([])
    sink, predictions = _outputs(tmp_path)
    error = _assert_fails_cleanly(Pipeline(open_source(str(short_clip)), sink, worker, PipelineConfig(), observers=[predictions]), tmp_path, PipelineError)
    assert "closed" in str(error)


# -- honest numbers: latency basis, live sources start after the load ------------------------
class _SlowLoad:
    """A recipe whose backend takes ``seconds`` to build (a cold engine, a big download)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def __call__(self) -> Backend:
        time.sleep(self.seconds)
        return FakeBackend()


class _LatencyRecorder:
    """A run observer keeping (frame index, t_capture, latency_ms, perf_counter at write)."""

    def __init__(self) -> None:
        self.rows: list[tuple[int, float, float, float]] = []

    def write(self, frame, prediction, latency_ms: float) -> None:  # type: ignore[no-untyped-def]
        self.rows.append((frame.index, frame.t_capture, latency_ms, time.perf_counter()))

    def finalize(self) -> None:
        pass

    def abort(self) -> None:
        pass


def test_file_latency_counts_from_model_ready_not_from_capture_during_the_load(short_clip: Path) -> None:
    recorder = _LatencyRecorder()
    pipeline = Pipeline(open_source(str(short_clip)), NullSink(), _SlowLoad(1.0), PipelineConfig(max_frames=4), observers=[recorder])
    summary = pipeline.run()
    assert summary.latency_basis == "ready->render"
    ready_at = pipeline._ready_at
    assert ready_at is not None and summary.ready_s is not None and summary.ready_s >= 1.0
    index, t_capture, latency_ms, written_at = recorder.rows[0]
    assert index == 0 and t_capture < ready_at, "frame 0 was read while the model loaded"
    for _, t_cap, lat_ms, at in recorder.rows:
        assert 0 <= lat_ms / 1000.0 <= at - max(t_cap, ready_at)
    # The second of load is not in frame 0's latency (it was before this change: ~1000 ms).
    assert latency_ms / 1000.0 < (written_at - t_capture) - 0.5


def test_live_source_opened_before_a_slow_load_is_read_only_once_the_model_is_ready(
    tmp_path: Path, clip_factory: Callable[..., Path]
) -> None:
    clip = clip_factory("live40.mp4", 40)  # 1.6 s at 25 FPS
    source = open_source(str(clip), SourceOptions(realtime=True))
    assert source.live
    recorder = _LatencyRecorder()
    pipeline = Pipeline(source, NullSink(), _SlowLoad(1.0), PipelineConfig(), observers=[recorder])
    summary = pipeline.run()
    assert summary.latency_basis == "capture->render"
    assert summary.frames_in == 40
    assert summary.frames_out + summary.dropped == summary.frames_in
    ready_at = pipeline._ready_at
    assert ready_at is not None
    # Nothing was captured during the load: the replay starts with the model ready, at frame 0
    # (before, its clock ran during the load and the first second of frames was lost).
    assert recorder.rows[0][0] == 0
    assert all(t_cap >= ready_at for _, t_cap, _, _ in recorder.rows)
    for _, t_cap, lat_ms, at in recorder.rows:
        assert 0 <= lat_ms / 1000.0 <= at - t_cap


class _Camera(Source):
    """A live source of the sample clip's frames, like a camera: ``open`` captures its first frame."""

    def __init__(self, frames: int) -> None:
        super().__init__("camera(test)")
        self.live = True
        self._images = read_frames(SAMPLE_VIDEO, frames)

    def _open_impl(self) -> None:
        pass

    def _read_impl(self) -> Frame | None:
        if self._index >= len(self._images):
            return None
        time.sleep(0.02)
        frame = Frame(self._index, self._images[self._index], time.perf_counter(), self.display_name)
        self._index += 1
        return frame

    def close(self) -> None:
        pass


def test_a_camera_frame_from_before_a_slow_load_is_skipped_during_load_not_dropped() -> None:
    camera = _Camera(20).open()  # frame 0 is captured now, before the model loads
    pipeline = Pipeline(camera, NullSink(), _SlowLoad(1.5), PipelineConfig(max_frame_age_s=1.0))
    summary = pipeline.run()
    assert summary.skipped_during_load == 1
    assert summary.frames_in == 20
    assert summary.frames_out + summary.dropped + summary.skipped_during_load == summary.frames_in


def test_on_loaded_runs_once_after_a_load_and_never_after_a_failed_one() -> None:
    """What the CLI hangs gc.freeze() on: called on the worker's thread once the backend is loaded (at once
    when it is already), not at all when the load fails."""
    import threading

    from streamer.inference import InferenceWorker

    seen: list[str] = []
    worker = InferenceWorker(FakeBackend)
    worker.on_loaded(lambda: seen.append(threading.current_thread().name))
    assert seen == [] and not worker.alive  # registering does not start the worker
    worker.wait_loaded(30)
    worker.on_loaded(lambda: seen.append("late"))
    worker.close(5)
    assert seen == ["inference", "late"]

    def failing_load() -> Backend:
        raise BackendError("no such engine")

    failed = InferenceWorker(failing_load)
    failed.on_loaded(lambda: seen.append("failed"))
    with pytest.raises(BackendError):
        failed.wait_loaded(30)
    failed.close(5)
    assert "failed" not in seen


def test_a_command_line_run_freezes_the_loaded_heap(tmp_path: Path, short_clip: Path) -> None:
    """``streamer run`` moves what is alive once its model is loaded out of the garbage collector's full
    passes (gc.freeze): checked inside a real run's process, through its Python entry point."""
    import subprocess
    import sys

    from helpers import cli_env

    script = (
        "import gc, sys\n"
        "from streamer.cli import main\n"
        "code = main(sys.argv[1:])\n"
        "print('frozen', gc.get_freeze_count())\n"
        "sys.exit(code)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, "run", str(short_clip), "--headless", "--no-summary", "-m", "efficientnet_lite0", "--device", "cpu", "--backend", "torch"],
        cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    frozen = int(result.stdout.strip().splitlines()[-1].split()[1])
    assert frozen > 10_000, result.stdout[-500:]
