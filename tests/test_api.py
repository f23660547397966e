"""The Python API (``streamer.Classifier``, ``streamer.run``) and the README's example of it."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np
import pytest
from PIL import Image

import streamer
from engines.errors import ConfigError, PipelineError, StreamerError
from helpers import MODEL, SAMPLE_IMAGES, SAMPLE_VIDEO, count_frames, read_jsonl

ROOT = Path(__file__).resolve().parents[1]
CAT = SAMPLE_IMAGES / "cat.jpg"


def _imread(path: Path) -> np.ndarray:
    image = cv2.imread(str(path))
    assert image is not None
    return image


@pytest.fixture(scope="module")
def classifier() -> "Iterator[streamer.Classifier]":
    with streamer.Classifier(model=MODEL, backend="torch", device="cpu", topk=3, batch=2) as c:
        yield c


def test_import_streamer_imports_no_heavy_library() -> None:
    code = (
        "import sys, streamer; heavy = [m for m in ('torch', 'cv2', 'numpy', 'onnxruntime', 'engines') if m in sys.modules];"
        "print(heavy); assert not heavy, heavy; assert callable(streamer.Classifier) and callable(streamer.run);"
        "assert 'torch' not in sys.modules, 'touching the API names loads no model'"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


def test_public_names() -> None:
    import streamer.api

    assert set(streamer.__all__) >= {"Classifier", "run", "Prediction", "RunSummary", "StreamerError"}
    assert set(streamer.api.__all__) >= {"Classifier", "run", "Prediction", "RunSummary"}
    assert {"Classifier", "run"} <= set(dir(streamer))
    assert streamer.StreamerError is StreamerError
    with pytest.raises(AttributeError):
        streamer.not_a_name  # noqa: B018


def test_classify_a_path_an_array_and_a_pil_image_alike(classifier: "streamer.Classifier") -> None:
    from_path = classifier.classify(CAT)
    from_str = classifier.classify(str(CAT))
    from_array = classifier.classify(_imread(CAT))
    from_pil = classifier.classify(Image.open(CAT))
    assert isinstance(from_path, streamer.Prediction)
    assert len(from_path.labels) == len(from_path.scores) == len(from_path.indices) == 3
    assert from_path.labels == from_str.labels == from_array.labels == from_pil.labels
    assert "cat" in from_path.labels[0]
    assert list(from_path.scores) == sorted(from_path.scores, reverse=True)
    assert from_path.scores == pytest.approx(from_array.scores, abs=1e-5)


def test_classify_batch_keeps_order_across_batches(classifier: "streamer.Classifier") -> None:
    paths = sorted(SAMPLE_IMAGES.glob("*.jpg"))[:5]  # batch=2: three calls, the last one partial
    batched = classifier.classify_batch(paths)
    one_by_one = [classifier.classify(p) for p in paths]
    assert [p.labels for p in batched] == [p.labels for p in one_by_one]
    assert classifier.classify_batch([]) == []
    grey = cv2.cvtColor(_imread(CAT), cv2.COLOR_BGR2GRAY)
    assert len(classifier.classify(grey).labels) == 3


def test_classifier_from_several_threads(classifier: "streamer.Classifier") -> None:
    expected = classifier.classify(CAT).labels
    results: list[tuple[str, ...]] = []
    threads = [threading.Thread(target=lambda: results.append(classifier.classify(CAT).labels)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results == [expected] * 4


@pytest.mark.parametrize(
    "image, words",
    [
        (np.zeros((8, 8, 3), np.float32), "uint8"),
        (np.zeros((8, 8, 2), np.uint8), "shape"),
        (np.zeros((0, 8, 3), np.uint8), "shape"),
        (Path("/nonexistent/cat.jpg"), "no such image"),
        (42, "path, a numpy"),
    ],
)
def test_bad_images_are_config_errors(classifier: "streamer.Classifier", image: object, words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        classifier.classify(image)  # type: ignore[arg-type]


def test_an_unreadable_image_file_is_a_config_error(classifier: "streamer.Classifier", tmp_path: Path) -> None:
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a jpeg")
    with pytest.raises(ConfigError, match="cannot read"):
        classifier.classify(bad)


@pytest.mark.parametrize(
    "kwargs, words",
    [({"backend": "nope"}, "backend"), ({"precision": "fp8"}, "precision"), ({"topk": 0}, "topk"), ({"batch": 0}, "batch"), ({"device": "tpu"}, "device")],
)
def test_bad_arguments_fail_before_any_load(kwargs: dict[str, object], words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        streamer.Classifier(model=MODEL, **kwargs)  # type: ignore[arg-type]


def test_a_closed_classifier_refuses_work() -> None:
    c = streamer.Classifier(model=MODEL, backend="torch", device="cpu")
    with c:
        info = c.load()
        assert MODEL in info.description and MODEL in repr(c)
    with pytest.raises(PipelineError, match="closed"):
        c.classify(CAT)
    c.close()  # idempotent


def test_run_with_a_loaded_classifier_returns_the_summary(classifier: "streamer.Classifier", tmp_path: Path) -> None:
    out, predictions = tmp_path / "out.mp4", tmp_path / "pred.jsonl"
    summary = streamer.run(SAMPLE_VIDEO, output=out, model=classifier, predictions=predictions, max_frames=6, stats=False)
    assert isinstance(summary, streamer.RunSummary)
    assert (summary.frames_in, summary.frames_out, summary.dropped) == (6, 6, 0)
    assert summary.latency_basis == "ready->render"
    assert count_frames(out) == 6
    records = read_jsonl(predictions)
    assert [r["frame"] for r in records] == list(range(6))
    assert all(len(r["topk"]) == 3 for r in records)  # the classifier's topk
    assert classifier.classify(CAT).labels  # the run did not close the classifier's model


def test_run_errors_are_streamer_errors(tmp_path: Path) -> None:
    with pytest.raises(StreamerError):
        streamer.run(tmp_path / "missing.mp4", model=MODEL, backend="torch", device="cpu")
    assert not list(tmp_path.iterdir())


def _readme_python_example() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Python API", 1)[1]
    return re.findall(r"```python\n(.*?)```", section, re.S)[0]


def test_readme_python_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    code = _readme_python_example()
    assert len([line for line in code.splitlines() if line.strip()]) <= 5
    monkeypatch.chdir(tmp_path)  # the example writes annotated.mp4 into the current folder
    code = code.replace('"samples/', json.dumps(str(ROOT / "samples"))[:-1] + "/")
    exec(compile(code, "README.md", "exec"), {})
    printed = capsys.readouterr().out.splitlines()
    assert "cat" in printed[0]
    assert printed[1].startswith("132 frames at")
    assert count_frames(tmp_path / "annotated.mp4") == 132
