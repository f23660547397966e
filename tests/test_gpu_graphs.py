"""TorchBackend.classify with --cuda-graphs: whole batches of host frames as one CUDA graph (preprocess,
network, top-k) give the labels of the three-step path, on real frames; other batches fall back.
The graph path needs a CUDA GPU (skipped here, run on the device machine); the fallback's rule runs anywhere."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from engines.backends.base import BackendOptions
from engines.backends.torch_backend import TorchBackend
from engines.models import WeightsChoice, get_spec
from helpers import MODEL, SAMPLE_VIDEO

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (runs on the device machine)")


def _video_frames(count: int, step: int = 5) -> list[np.ndarray]:
    capture = cv2.VideoCapture(str(SAMPLE_VIDEO))
    frames = []
    index = 0
    while len(frames) < count:
        ok, frame = capture.read()
        if not ok:
            break
        if index % step == 0:
            frames.append(frame)
        index += 1
    capture.release()
    assert len(frames) == count
    return frames


def _backend(precision: str, graphs: bool, batch: int = 8) -> TorchBackend:
    options = BackendOptions.for_batch(batch, device="cuda", precision=precision, cuda_graphs=graphs)
    return TorchBackend(get_spec(MODEL), WeightsChoice("imagenet"), options)


def test_without_graphs_classify_is_the_three_steps() -> None:
    """On the CPU (no graph) classify is preprocess, infer and postprocess, whatever the frames."""
    frames = _video_frames(3)
    backend = TorchBackend(get_spec(MODEL), WeightsChoice("imagenet"), BackendOptions.for_batch(4, device="cpu")).load()
    try:
        assert backend._graphable(frames) is None
        from engines.backends.base import postprocess

        expected = postprocess(backend.infer(backend.preprocess(frames)), backend.spec.labels, 5)
        run = backend.classify(frames, 5)
        assert [p.indices for p in run.predictions] == [p.indices for p in expected]
        assert np.allclose([p.scores for p in run.predictions], [p.scores for p in expected], atol=1e-6)
        assert run.preprocess_s > 0 and run.inference_s > 0 and run.postprocess_s >= 0
    finally:
        backend.close()


@needs_cuda
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_whole_batch_graphs_label_real_frames_as_the_three_steps_do(precision: str) -> None:
    frames = _video_frames(13)
    eager = _backend(precision, graphs=False).load()
    graphs = _backend(precision, graphs=True).load()
    try:
        for batch in (frames[:1], frames[1:4], frames[4:12], frames[12:13]):
            want = eager.classify(batch, 5).predictions
            got = graphs.classify(batch, 5).predictions
            assert [p.top1 for p in got] == [p.top1 for p in want]
            assert np.allclose([p.scores[0] for p in got], [p.scores[0] for p in want], atol=2e-3 if precision == "fp16" else 1e-4)
        height, width = frames[0].shape[:2]
        # buckets 1, 4 and 8 for batches of 1, 3, 8 and 1: three graphs of one frame size
        assert sorted(graphs._batch_graphs) == [(height, width, b, 5) for b in (1, 4, 8)]
        # tensors (a GPU decoder's frames) and mixed sizes take the three-step path, no new graph
        small = cv2.resize(frames[0], (320, 180))
        mixed = graphs.classify([frames[0], small], 1).predictions
        assert [p.top1 for p in mixed] == [p.top1 for p in eager.classify([frames[0], small], 1).predictions]
        on_gpu = [torch.from_numpy(f).cuda() for f in frames[:2]]
        assert [p.top1 for p in graphs.classify(on_gpu, 1).predictions] == [p.top1 for p in eager.classify(frames[:2], 1).predictions]
        assert len(graphs._batch_graphs) == 3
    finally:
        eager.close()
        graphs.close()


@needs_cuda
def test_a_fifth_frame_size_takes_the_three_step_path() -> None:
    frame = _video_frames(1)[0]
    backend = _backend("fp16", graphs=True, batch=2).load()
    try:
        sizes = [(360, 640), (288, 512), (240, 426), (180, 320), (144, 256)]
        tops = [backend.classify([cv2.resize(frame, (w, h))], 1).predictions[0].top1 for h, w in sizes]
        assert len({(h, w) for h, w, _, _ in backend._batch_graphs}) == 4
        assert len(tops) == 5
    finally:
        backend.close()
