"""Sinks: atomic video files, image folders, refusal of unsafe destinations."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from engines.errors import ConfigError, SinkError
from helpers import FailingVideoSink, files_in, read_frames, read_stamp
from streamer.sinks import PredictionsWriter
from streamer.sinks import ImageFolderSink, NullSink, TeeSink, ThreadedSink, VideoFileSink, make_sink


@pytest.fixture(scope="module")
def clip_frames(stamped_clip: Path) -> list[np.ndarray]:
    """12 real 320x180 frames, each stamped with its index."""
    frames = read_frames(stamped_clip, limit=12)
    assert len(frames) == 12
    return frames


def _write_video(path: Path, frames: list[np.ndarray], fps: float = 25.0, **kwargs: object) -> VideoFileSink:
    sink = VideoFileSink(path, **kwargs)  # type: ignore[arg-type]
    h, w = frames[0].shape[:2]
    sink.open((w, h), fps)
    for frame in frames:
        sink.write(frame.copy(), path.name)
    return sink


# -- VideoFileSink: atomic output ---------------------------------------------------------
def test_video_is_written_under_a_hidden_name_and_renamed_on_finalize(tmp_path: Path, clip_frames: list[np.ndarray]) -> None:
    out = tmp_path / "out.mp4"
    sink = _write_video(out, clip_frames)
    temp = sink.temp_path
    assert temp.parent == tmp_path and temp.name.startswith(".") and temp.suffix == ".mp4"
    assert temp.exists()
    assert not out.exists(), "the final name must not exist before finalize"
    assert files_in(tmp_path) == sorted([temp.name, sink._lock.lock_path.name])  # the final path is locked for the run
    sink.finalize()
    assert files_in(tmp_path) == ["out.mp4"]
    frames = read_frames(out)
    assert len(frames) == len(clip_frames)
    assert [read_stamp(f) for f in frames] == list(range(len(clip_frames)))


def test_abort_leaves_no_file(tmp_path: Path, clip_frames: list[np.ndarray]) -> None:
    sink = _write_video(tmp_path / "out.mkv", clip_frames)
    sink.abort()
    assert files_in(tmp_path) == []
    sink.abort()  # twice is harmless


def test_finalize_without_frames_saves_nothing(tmp_path: Path) -> None:
    sink = VideoFileSink(tmp_path / "out.mp4")
    sink.open((320, 180), 25.0)
    with pytest.raises(SinkError, match="no frames"):
        sink.finalize()
    assert files_in(tmp_path) == []


def test_existing_file_is_refused_without_overwrite(tmp_path: Path, clip_frames: list[np.ndarray]) -> None:
    out = tmp_path / "out.mp4"
    out.write_bytes(b"precious")
    with pytest.raises(SinkError, match="--overwrite"):
        VideoFileSink(out)
    assert out.read_bytes() == b"precious"
    sink = _write_video(out, clip_frames[:5], overwrite=True)
    assert out.read_bytes() == b"precious", "replaced only on finalize"
    sink.finalize()
    assert len(read_frames(out)) == 5
    assert files_in(tmp_path) == ["out.mp4"]


def test_file_that_appears_while_writing_is_not_clobbered(tmp_path: Path, clip_frames: list[np.ndarray]) -> None:
    out = tmp_path / "out.mp4"
    sink = _write_video(out, clip_frames[:3])
    out.write_bytes(b"someone else's file")
    with pytest.raises(SinkError, match="appeared"):
        sink.finalize()
    assert out.read_bytes() == b"someone else's file"
    assert files_in(tmp_path) == ["out.mp4"]


def test_missing_folder_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SinkError, match="does not exist"):
        VideoFileSink(tmp_path / "no" / "such" / "out.mp4")
    assert files_in(tmp_path) == []


def test_file_used_as_folder_is_refused(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("x")
    with pytest.raises(SinkError):
        VideoFileSink(tmp_path / "afile" / "out.mp4")


def test_folder_as_destination_is_refused(tmp_path: Path) -> None:
    (tmp_path / "out.mp4").mkdir()
    with pytest.raises(SinkError, match="folder"):
        VideoFileSink(tmp_path / "out.mp4", overwrite=True)


@pytest.mark.parametrize("target_exists", [True, False], ids=["to-file", "dangling"])
@pytest.mark.parametrize("overwrite", [False, True])
def test_symlink_destination_is_refused(tmp_path: Path, target_exists: bool, overwrite: bool) -> None:
    victim = tmp_path / "victim.mp4"
    if target_exists:
        victim.write_bytes(b"do not touch")
    link = tmp_path / "out.mp4"
    link.symlink_to(victim)
    with pytest.raises(SinkError, match="symbolic link"):
        VideoFileSink(link, overwrite=overwrite)
    assert link.is_symlink()
    if target_exists:
        assert victim.read_bytes() == b"do not touch"
    else:
        assert not victim.exists()


def test_symlink_planted_while_writing_is_refused(tmp_path: Path, clip_frames: list[np.ndarray]) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("do not touch")
    out = tmp_path / "out.mp4"
    sink = _write_video(out, clip_frames[:3], overwrite=True)
    out.symlink_to(victim)
    with pytest.raises(SinkError, match="symbolic link"):
        sink.finalize()
    assert victim.read_text() == "do not touch"
    assert out.is_symlink()
    assert not sink.temp_path.exists()


def test_frames_of_another_size_are_resized(tmp_path: Path, clip_frames: list[np.ndarray]) -> None:
    out = tmp_path / "out.mp4"
    sink = VideoFileSink(out)
    sink.open((320, 180), 25.0)
    big = cv2.resize(clip_frames[0], (640, 360))
    small = cv2.resize(clip_frames[1], (161, 91))
    odd_aspect = cv2.resize(clip_frames[2], (300, 300))
    for frame in (big, small, odd_aspect, clip_frames[3]):
        sink.write(frame, "x")
    sink.finalize()
    frames = read_frames(out)
    assert len(frames) == 4
    assert {f.shape for f in frames} == {(180, 320, 3)}
    assert read_stamp(frames[0]) == 0 and read_stamp(frames[3]) == 3


def test_odd_frame_size_is_made_even(tmp_path: Path, clip_frames: list[np.ndarray]) -> None:
    odd = [cv2.resize(f, (321, 181)) for f in clip_frames[:4]]
    out = tmp_path / "odd.mp4"
    _write_video(out, odd).finalize()
    frames = read_frames(out)
    assert len(frames) == 4 and frames[0].shape == (180, 320, 3)


@pytest.mark.parametrize("ext", [".mp4", ".mkv", ".avi", ".mov"])
def test_each_container_gives_a_readable_file_with_every_frame(tmp_path: Path, clip_frames: list[np.ndarray], ext: str) -> None:
    out = tmp_path / f"out{ext}"
    _write_video(out, clip_frames, fps=25.0).finalize()
    frames = read_frames(out)
    assert len(frames) == len(clip_frames)
    assert frames[0].shape == clip_frames[0].shape
    assert [read_stamp(f) for f in frames] == list(range(len(clip_frames)))
    # the pictures themselves survive the codec (not just the count)
    diffs = [np.abs(a.astype(int) - b.astype(int)).mean() for a, b in zip(frames, clip_frames)]
    assert max(diffs) < 12.0
    cap = cv2.VideoCapture(str(out), cv2.CAP_FFMPEG)
    assert cap.get(cv2.CAP_PROP_FPS) == pytest.approx(25.0, rel=0.02)
    cap.release()


def test_unsupported_extension_and_fourcc(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="extension"):
        VideoFileSink(tmp_path / "out.gif")
    with pytest.raises(ConfigError, match="four"):
        VideoFileSink(tmp_path / "out.mp4", fourcc="h264x")


# -- ImageFolderSink ------------------------------------------------------------------
def test_image_folder_names_outputs_like_inputs(tmp_path: Path, sample_images: Path) -> None:
    folder = tmp_path / "new" / "annotated"
    sink = ImageFolderSink(folder)
    assert not folder.exists(), "nothing is created before open"
    sink.open((640, 480), 30.0)
    inputs = {"cat.jpg": cv2.imread(str(sample_images / "cat.jpg")), "coffee.png": cv2.imread(str(sample_images / "coffee.jpg"))}
    for name, image in inputs.items():
        sink.write(image, name)
    sink.finalize()
    assert files_in(folder) == ["cat.jpg", "coffee.png"]
    png = cv2.imread(str(folder / "coffee.png"))
    assert np.array_equal(png, inputs["coffee.png"]), "png is lossless"
    jpg = cv2.imread(str(folder / "cat.jpg"))
    assert jpg.shape == inputs["cat.jpg"].shape
    assert np.abs(jpg.astype(int) - inputs["cat.jpg"].astype(int)).mean() < 4.0


def test_image_folder_numbers_video_frames(tmp_path: Path, clip_frames: list[np.ndarray]) -> None:
    sink = ImageFolderSink(tmp_path / "frames")
    sink.open((320, 180), 25.0)
    for frame in clip_frames[:3]:
        sink.write(frame, "clip.mp4")
    assert files_in(tmp_path / "frames") == ["frame_000000.jpg", "frame_000001.jpg", "frame_000002.jpg"]
    for i in range(3):
        assert read_stamp(cv2.imread(str(tmp_path / "frames" / f"frame_{i:06d}.jpg"))) == i


def test_image_folder_refuses_to_replace_without_overwrite(tmp_path: Path, sample_images: Path) -> None:
    (tmp_path / "cat.jpg").write_bytes(b"old")
    sink = ImageFolderSink(tmp_path)
    sink.open((10, 10), 1.0)
    image = cv2.imread(str(sample_images / "cat.jpg"))
    with pytest.raises(SinkError, match="--overwrite"):
        sink.write(image, "cat.jpg")
    assert (tmp_path / "cat.jpg").read_bytes() == b"old"
    ImageFolderSink(tmp_path, overwrite=True).write(image, "cat.jpg")
    assert cv2.imread(str(tmp_path / "cat.jpg")).shape == image.shape
    assert files_in(tmp_path) == ["cat.jpg"], "no temporary file left"


def test_image_folder_refuses_a_file_or_symlink(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("x")
    with pytest.raises(SinkError):
        ImageFolderSink(tmp_path / "afile")
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    with pytest.raises(SinkError, match="symbolic link"):
        ImageFolderSink(tmp_path / "link")


def test_image_folder_abort_discards_what_this_run_wrote(tmp_path: Path, sample_images: Path) -> None:
    folder = tmp_path / "out"
    sink = ImageFolderSink(folder)
    sink.open((10, 10), 1.0)
    for name in ("cat.jpg", "coffee.jpg"):
        sink.write(cv2.imread(str(sample_images / name)), name)
    sink.abort()
    assert not folder.exists() or files_in(folder) == []


def test_image_folder_never_overwrites_its_own_output(tmp_path: Path, sample_images: Path) -> None:
    sink = ImageFolderSink(tmp_path / "out", overwrite=True)
    sink.open((10, 10), 1.0)
    sink.write(cv2.imread(str(sample_images / "cat.jpg")), "IMG_0001.jpg")  # e.g. 2023/IMG_0001.jpg
    sink.write(cv2.imread(str(sample_images / "rocket.jpg")), "IMG_0001.jpg")  # and 2024/IMG_0001.jpg
    assert len(files_in(tmp_path / "out")) == 2


# -- make_sink and the predictions file ---------------------------------------------------
def _innermost(sink: object) -> type:
    while isinstance(sink, ThreadedSink):
        sink = sink.inner
    return type(sink)


def test_make_sink_picks_by_output(tmp_path: Path) -> None:
    assert _innermost(make_sink(None, show=False)) is NullSink
    assert _innermost(make_sink(str(tmp_path / "a.mp4"), show=False)) is VideoFileSink
    assert _innermost(make_sink(str(tmp_path / "a.MKV"), show=False)) is VideoFileSink
    assert _innermost(make_sink(str(tmp_path / "frames"), show=False)) is ImageFolderSink
    assert _innermost(make_sink(str(tmp_path / "frames.d") + os.sep, show=False)) is ImageFolderSink
    with pytest.raises(ConfigError, match="output must be"):
        make_sink(str(tmp_path / "out.txt"), show=False)
    assert files_in(tmp_path) == []


# -- ThreadedSink: writes on a writer thread, same guarantees ------------------------------
def test_threaded_sink_keeps_order_and_atomicity(tmp_path: Path, clip_frames: list[np.ndarray]) -> None:
    out = tmp_path / "out.mkv"
    sink = ThreadedSink(VideoFileSink(out), queue_size=2)
    sink.open((320, 180), 25.0)
    for frame in clip_frames:
        sink.write(frame.copy(), "x")
    assert not out.exists()
    sink.finalize()
    assert files_in(tmp_path) == ["out.mkv"]
    assert [read_stamp(f) for f in read_frames(out)] == list(range(len(clip_frames)))
    assert sink.frames_written == len(clip_frames)
    # It times its own writes (on the writer thread); a tee of it and a window reports the same timing.
    assert sink.write_times.count == len(clip_frames) and sink.write_times.mean > 0
    assert TeeSink([NullSink(), sink]).write_times.count == len(clip_frames)
    assert NullSink().write_times is None


def test_threaded_sink_reports_a_write_error_and_cleans_up(tmp_path: Path, clip_frames: list[np.ndarray]) -> None:
    inner = FailingVideoSink(tmp_path / "out.mp4", fail_at=3)
    sink = ThreadedSink(inner, queue_size=2)
    sink.open((320, 180), 25.0)
    with pytest.raises(OSError, match="No space"):
        for frame in clip_frames * 4:  # the error surfaces on a later write, or at the latest on finalize
            sink.write(frame.copy(), "x")
        sink.finalize()
    sink.abort()
    assert inner.aborted
    assert files_in(tmp_path) == []


def test_threaded_sink_abort_discards_queued_frames(tmp_path: Path, clip_frames: list[np.ndarray]) -> None:
    sink = ThreadedSink(VideoFileSink(tmp_path / "out.mp4"), queue_size=16)
    sink.open((320, 180), 25.0)
    for frame in clip_frames:
        sink.write(frame.copy(), "x")
    sink.abort()
    assert files_in(tmp_path) == []


def test_predictions_file_is_atomic(tmp_path: Path) -> None:
    from engines.backends.base import Prediction
    from streamer.sources import Frame

    path = tmp_path / "p.jsonl"
    writer = PredictionsWriter(path)
    assert files_in(tmp_path) == [], "nothing is on disk before the first frame"
    writer.write(Frame(0, np.zeros((2, 2, 3), np.uint8), 0.0, "a.jpg"), Prediction((1,), (0.5,), ("goldfish",)), 1.0)
    assert not path.exists() and writer.temp_path.exists() and writer.temp_path.name.startswith(".")
    writer.finalize()
    assert files_in(tmp_path) == ["p.jsonl"]
    with pytest.raises(SinkError, match="--overwrite"):
        PredictionsWriter(path)
    second = PredictionsWriter(path, overwrite=True)
    second.abort()
    assert files_in(tmp_path) == ["p.jsonl"]
    assert path.read_text().count("\n") == 1


def test_predictions_of_a_run_that_labelled_nothing_is_an_empty_file(tmp_path: Path) -> None:
    writer = PredictionsWriter(tmp_path / "p.jsonl")
    writer.finalize()
    writer.finalize()  # once only
    assert files_in(tmp_path) == ["p.jsonl"] and (tmp_path / "p.jsonl").read_text() == ""


# -- ImageFolderSink with a pool of encode threads -------------------------------------------------
@pytest.fixture(scope="module")
def twenty_frames(stamped_clip: Path) -> list[np.ndarray]:
    """20 real 320x180 frames, each stamped with its index."""
    frames = read_frames(stamped_clip, limit=20)
    assert len(frames) == 20
    return frames


class _EncodeFailsAt:
    """``cv2.imencode`` that fails its ``n``-th call (counted across threads) by ``how``."""

    def __init__(self, n: int, how: str = "returns-false") -> None:
        import threading

        self.n = n
        self.how = how
        self.calls = 0
        self._lock = threading.Lock()
        self._real = cv2.imencode

    def __call__(self, ext: str, image: np.ndarray, *args: object) -> tuple[bool, np.ndarray]:
        with self._lock:
            self.calls += 1
            call = self.calls
        if call == self.n:
            if self.how == "raises":
                raise cv2.error("simulated encoder failure")
            return False, np.empty(0, np.uint8)
        return self._real(ext, image, *args)


def _write_all_until_error(sink: ImageFolderSink, frames: list[np.ndarray], names: list[str]) -> list[BaseException]:
    """Write every frame; a write that raises (the kept error, one call late) ends the run as the pipeline would."""
    raised: list[BaseException] = []
    for frame, name in zip(frames, names):
        try:
            sink.write(frame, name)
        except (SinkError, cv2.error) as exc:
            raised.append(exc)
            break
    return raised


def test_pooled_image_folder_writes_every_frame_named_in_order(tmp_path: Path, twenty_frames: list[np.ndarray]) -> None:
    folder = tmp_path / "annotated"
    sink = ImageFolderSink(folder, workers=4)
    sink.open((320, 180), 25.0)
    names = [f"shot_{i:02d}.png" if i % 3 == 0 else "clip.mp4" for i in range(20)]  # images and video frames
    for frame, name in zip(twenty_frames, names):
        sink.write(frame, name)
    sink.finalize()
    assert sink.frames_written == 20
    expected = [f"shot_{i:02d}.png" if i % 3 == 0 else f"frame_{i:06d}.jpg" for i in range(20)]
    assert files_in(folder) == sorted(expected), "20 files, no temporary file left"
    for i, name in enumerate(expected):
        image = cv2.imread(str(folder / name))
        assert image is not None and image.shape == (180, 320, 3), name
        assert read_stamp(image) == i, f"{name} holds frame {read_stamp(image)}, not frame {i}"
        if name.endswith(".png"):
            assert np.array_equal(image, twenty_frames[i]), "png is lossless"
    assert sorted(p.name for p in sink.written) == sorted(expected)


@pytest.mark.parametrize("folder_exists", [False, True])
def test_pooled_image_folder_encode_failure_leaves_nothing(
    tmp_path: Path, twenty_frames: list[np.ndarray], sample_images: Path, monkeypatch: pytest.MonkeyPatch, folder_exists: bool
) -> None:
    folder = tmp_path / "annotated"
    if folder_exists:
        folder.mkdir()
        (folder / "keep.jpg").write_bytes((sample_images / "cat.jpg").read_bytes())  # not this run's: kept
    failing = _EncodeFailsAt(5)
    monkeypatch.setattr(cv2, "imencode", failing)
    sink = ImageFolderSink(folder, workers=4)
    sink.open((320, 180), 25.0)
    raised = _write_all_until_error(sink, twenty_frames, ["clip.mp4"] * 20)
    assert all(isinstance(exc, SinkError) for exc in raised)
    with pytest.raises(SinkError, match="cannot encode"):
        sink.finalize()
    assert failing.calls >= 5
    if folder_exists:
        assert files_in(folder) == ["keep.jpg"]
    else:
        assert not folder.exists(), "the folder this run created is removed with its images"
    assert sink.written == []
    sink.abort()  # the pipeline may abort after a failed finalize: harmless
    assert folder.exists() == folder_exists


def test_pooled_image_folder_encoder_exception_leaves_nothing(
    tmp_path: Path, twenty_frames: list[np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An encoder that raises (cv2.error) instead of returning False, surfacing in finalize()."""
    import time

    failing = _EncodeFailsAt(5, how="raises")

    def slow_encode(ext: str, image: np.ndarray, *args: object) -> tuple[bool, np.ndarray]:
        time.sleep(0.02)  # keep the failed write in flight until finalize()
        return failing(ext, image, *args)

    monkeypatch.setattr(cv2, "imencode", slow_encode)
    folder = tmp_path / "annotated"
    sink = ImageFolderSink(folder, workers=4)
    sink.open((320, 180), 25.0)
    for frame in twenty_frames[:7]:
        sink.write(frame, "clip.mp4")
    with pytest.raises((SinkError, cv2.error)):
        sink.finalize()
    time.sleep(0.1)
    left = files_in(folder) if folder.exists() else []
    assert left == [], left
    sink.abort()
    assert not folder.exists()


def test_pooled_image_folder_abort_after_writes_leaves_nothing(tmp_path: Path, twenty_frames: list[np.ndarray]) -> None:
    folder = tmp_path / "annotated"
    sink = ImageFolderSink(folder, workers=4)
    sink.open((320, 180), 25.0)
    for frame in twenty_frames[:10]:
        sink.write(frame, "clip.mp4")
    sink.abort()
    assert not folder.exists()
    assert sink.written == []

    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("not this run's")
    sink = ImageFolderSink(tmp_path / "mine", workers=4)
    sink.open((320, 180), 25.0)
    for frame in twenty_frames[:10]:
        sink.write(frame, "clip.mp4")
    sink.abort()
    sink.abort()  # twice is harmless
    assert files_in(tmp_path / "mine") == ["notes.txt"]


def test_the_window_opens_at_the_frame_size_or_fits_the_screen() -> None:
    from streamer.sinks.window import window_size

    assert window_size((1280, 720), None) == (1280, 720)
    assert window_size((1280, 720), (1920, 1080)) == (1280, 720)
    w, h = window_size((3840, 2160), (1920, 1080))
    assert w <= 1920 * 0.9 and h <= 1080 * 0.9 and abs(w / h - 16 / 9) < 0.01
    w, h = window_size((1000, 4000), (1920, 1080))
    assert h <= 972 and abs(w / h - 0.25) < 0.01
