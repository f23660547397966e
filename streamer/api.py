"""The Python API: :class:`Classifier` for one's own images, :func:`run` for a whole stream.

This module is the public surface (``import streamer``; everything else,
``engines`` included, is internal and may change)::

    import streamer

    with streamer.Classifier(model="efficientnet_lite0") as classifier:
        prediction = classifier.classify("samples/images/cat.jpg")
        print(prediction.labels[0], prediction.scores[0])

    summary = streamer.run("samples/video/bigbuckbunny.mp4", output="annotated.mp4")

A :class:`Classifier` runs its model on an :class:`~streamer.inference.InferenceWorker`
(one thread that builds, owns and serves the backend) rather than calling the
backend directly: CUDA contexts, cuDNN/cuBLAS handles and TensorRT execution
contexts belong to the thread that made them, so a classifier used from a web
server's request threads, or handed to :func:`run` (``model=classifier``: the
loaded model serves the stream, no second load), is safe from any thread.
Requests are served one at a time, in order.
"""

from __future__ import annotations

import threading
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Union

from engines.backends.base import Prediction
from engines.errors import ConfigError, PipelineError, SourceError
from streamer.pipeline import RunSummary

if TYPE_CHECKING:
    import numpy as np
    from PIL.Image import Image as PILImage

    from streamer.inference import InferenceWorker, LoadInfo

    ImageInput = Union[str, Path, np.ndarray, PILImage]
    """A path to an image file, a BGR uint8 array (H, W, 3) or (H, W), or a PIL image."""

__all__ = ["Classifier", "ConfigError", "Prediction", "RunSummary", "SourceError", "run"]


class Classifier:
    """An ImageNet classifier, loaded once, for images from one's own code.

    ``model``: a name from ``streamer models`` (default: alexnet, or efficientnet_lite0
    when AlexNet's weights cannot be fetched); ``backend``: auto | torch | onnxruntime |
    tensorrt | torch2trt; ``device``: auto | cpu | cuda | cuda:N; ``precision``: fp32 |
    fp16 | int8; ``weights``: imagenet | random | a state-dict path; ``topk``: labels per
    prediction; ``batch``: the largest batch :meth:`classify_batch` runs at once.

    The model loads on first use (or on :meth:`load`); close it with :meth:`close` or
    use the classifier as a context manager.  Errors are :class:`engines.errors.StreamerError`
    subclasses (e.g. :class:`ConfigError` for a bad argument or image).
    """

    def __init__(
        self,
        model: str | None = None,
        *,
        backend: str = "auto",
        device: str = "auto",
        precision: str = "fp32",
        weights: str = "imagenet",
        topk: int = 1,
        batch: int = 1,
        cache_dir: str | Path | None = None,
        threads: int | None = None,
    ) -> None:
        from engines.backends import BACKEND_NAMES, choose_auto_backend
        from engines.backends.base import BackendOptions, resolve_device_name
        from streamer.cli import resolve_model
        from streamer.inference import InferenceWorker

        if backend != "auto" and backend not in BACKEND_NAMES:
            raise ConfigError(f"backend must be auto or one of {', '.join(BACKEND_NAMES)}, got {backend!r}")
        if precision not in ("fp32", "fp16", "int8"):
            raise ConfigError(f"precision must be fp32, fp16 or int8, got {precision!r}")
        if not 1 <= topk <= 1000:
            raise ConfigError(f"topk must be between 1 and 1000, got {topk}")
        if batch < 1:
            raise ConfigError(f"batch must be >= 1, got {batch}")
        spec, weights_choice, _ = resolve_model(model, weights)
        options = BackendOptions.for_batch(
            batch, device=device, precision=precision, cache_dir=Path(cache_dir) if cache_dir else None, threads=threads
        )
        if backend == "auto":
            backend, resolved = choose_auto_backend(options.device)
        else:
            resolved = resolve_device_name(options.device)
        options = replace(options, device=resolved)
        self.model = spec.name
        self.backend = backend
        self.device = resolved
        self.precision = precision
        self.topk = topk
        self.batch = batch

        def recipe() -> Any:
            from engines.backends import create_backend

            return create_backend(backend, spec, weights_choice, options)

        self._worker: InferenceWorker = InferenceWorker(recipe, topk)
        self._closed = False
        self._lock = threading.Lock()

    # -- life ----------------------------------------------------------------
    def load(self, timeout: float | None = None) -> "LoadInfo":
        """Load the model now (else the first call does); re-raises the load's error."""
        self._check_open()
        return self._worker.wait_loaded(timeout)

    @property
    def description(self) -> str:
        """Model, backend, precision and device, once loaded (else the names asked for)."""
        info = self._worker.loaded
        return info.description if info else f"{self.model} {self.backend} {self.precision} {self.device}"

    def close(self) -> None:
        """Release the model (its thread, GPU memory); later calls raise :class:`PipelineError`."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._worker.close()

    def __enter__(self) -> "Classifier":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Classifier({self.description!r})"

    # -- work ----------------------------------------------------------------
    def classify(self, image: "ImageInput") -> Prediction:
        """The top-k :class:`Prediction` for one image (a path, a BGR array or a PIL image)."""
        return self.classify_batch([image])[0]

    def classify_batch(self, images: "Iterable[ImageInput]") -> list[Prediction]:
        """One :class:`Prediction` per image, in order; runs at most ``batch`` images at a time."""
        arrays = [to_bgr(image) for image in images]
        self._check_open()
        predictions: list[Prediction] = []
        for i in range(0, len(arrays), self.batch):
            result = self._worker.submit(arrays[i : i + self.batch]).result()
            predictions.extend(result.predictions)
        return predictions

    @property
    def worker(self) -> "InferenceWorker":
        """The worker serving this classifier (for :func:`run`; internal otherwise)."""
        self._check_open()
        return self._worker

    def _check_open(self) -> None:
        if self._closed:
            raise PipelineError("the classifier is closed")


def to_bgr(image: "ImageInput") -> "np.ndarray":
    """A path, array or PIL image as the contiguous BGR uint8 (H, W, 3) array the models take."""
    import numpy as np

    if isinstance(image, (str, Path)):
        from streamer.imageio import UnreadableImage, decode_image_bytes, read_file_bytes

        path = Path(image)
        if not path.is_file():
            raise ConfigError(f"{path}: no such image file")
        try:
            return decode_image_bytes(read_file_bytes(path), path.name)
        except (UnreadableImage, OSError) as exc:
            raise ConfigError(f"{path}: cannot read the image ({exc})") from exc
    if isinstance(image, np.ndarray):
        array = image
        if array.dtype != np.uint8:
            raise ConfigError(f"an image array must be uint8 (BGR), got {array.dtype}")
        if array.ndim == 2:
            array = np.repeat(array[:, :, None], 3, axis=2)
        elif array.ndim == 3 and array.shape[2] == 4:
            array = array[:, :, :3]
        if array.ndim != 3 or array.shape[2] != 3 or array.shape[0] < 1 or array.shape[1] < 1:
            raise ConfigError(f"an image array must be (H, W, 3) BGR or (H, W) grey, got shape {image.shape}")
        return np.ascontiguousarray(array)
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - Pillow is a dependency
        Image = None  # type: ignore[assignment]
    if Image is not None and isinstance(image, Image.Image):
        rgb = np.asarray(image.convert("RGB"))
        return np.ascontiguousarray(rgb[:, :, ::-1])
    raise ConfigError(f"an image must be a path, a numpy BGR array or a PIL image, got {type(image).__name__}")


def run(
    source: str | Path | int,
    output: str | Path | None = None,
    *,
    model: "str | Classifier | None" = None,
    backend: str = "auto",
    device: str = "auto",
    precision: str = "fp32",
    weights: str = "imagenet",
    topk: int = 1,
    batch: int = 1,
    predictions: str | Path | None = None,
    show: bool = False,
    overwrite: bool = False,
    max_frames: int | None = None,
    realtime: bool = False,
    timeout_s: float = 10.0,
    labels: bool = True,
    stats: bool = True,
) -> "RunSummary":
    """Label every frame of ``source`` (as ``streamer run`` does) and return the :class:`RunSummary`.

    ``source``: a camera index, a video, an image, a folder or glob of images, a stream URL;
    ``output``: an annotated video or image folder (None: nothing written); ``predictions``:
    a JSON-lines file, one line per frame.  ``model`` is a model name, or a :class:`Classifier`
    whose loaded model then serves the stream (``backend``, ``device``, ``precision``, ``weights``,
    ``topk`` and ``batch`` are then the classifier's).  ``labels`` / ``stats`` draw the overlay's
    parts.  Nothing is printed; errors raise :class:`engines.errors.StreamerError` subclasses;
    Ctrl-C finalises the outputs and raises ``KeyboardInterrupt``.
    """
    import contextlib

    from streamer.overlay import Annotator, LabelAnnotator, StatsAnnotator
    from streamer.pipeline import Pipeline, PipelineConfig
    from streamer.sinks import PredictionsWriter, ResultSink, make_sink
    from streamer.sources import SourceOptions, open_source

    owned: Classifier | None = None
    if isinstance(model, Classifier):
        classifier = model
        topk = classifier.topk
        batch = classifier.batch
    else:
        classifier = owned = Classifier(
            model, backend=backend, device=device, precision=precision, weights=weights, topk=topk, batch=batch
        )
    try:
        config = PipelineConfig(batch=batch, topk=topk, max_frames=max_frames, stall_timeout_s=max(timeout_s, 1.0))
        sink = make_sink(str(output) if output is not None else None, show, overwrite=overwrite)
        observers: list[ResultSink] = []
        if predictions is not None:
            observers.append(PredictionsWriter(Path(predictions), overwrite=overwrite))
        annotators: list[Annotator] = []
        if labels:
            annotators.append(LabelAnnotator(topk))
        if stats:
            annotators.append(StatsAnnotator())
        options = SourceOptions(open_timeout_s=timeout_s, read_timeout_s=timeout_s, realtime=realtime)
        with contextlib.ExitStack() as until_the_pipeline_owns_it:
            opened = open_source(str(source), options)
            until_the_pipeline_owns_it.callback(opened.close)
            warning = "RANDOM WEIGHTS - for timing only, labels are meaningless" if weights == "random" and owned else None
            pipeline = Pipeline(
                opened, sink, classifier.worker, config, observers=observers, annotators=annotators, warning=warning
            )
            until_the_pipeline_owns_it.pop_all()
        return pipeline.run()
    finally:
        if owned is not None:
            owned.close()
