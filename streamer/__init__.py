"""streamer: label every frame of a camera, video, image folder or network stream.

The Python API (see the README)::

    import streamer

    with streamer.Classifier(model="efficientnet_lite0") as classifier:
        print(classifier.classify("cat.jpg").labels[0])
    summary = streamer.run("video.mp4", output="annotated.mp4")

The names below are imported on first use, so ``import streamer`` stays fast
(no PyTorch, OpenCV or ONNX Runtime until a model or a stream is asked for).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["Classifier", "Prediction", "RunSummary", "StreamerError", "__version__", "run"]

_LAZY = {
    "Classifier": ("streamer.api", "Classifier"),
    "run": ("streamer.api", "run"),
    "Prediction": ("streamer.api", "Prediction"),
    "RunSummary": ("streamer.api", "RunSummary"),
    "StreamerError": ("engines.errors", "StreamerError"),
}

if TYPE_CHECKING:
    from engines.errors import StreamerError
    from streamer.api import Classifier, Prediction, RunSummary, run


def __getattr__(name: str) -> Any:
    try:
        module_name, attr = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'streamer' has no attribute {name!r}") from None
    import importlib

    value = getattr(importlib.import_module(module_name), attr)
    globals()[name] = value  # once imported, a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
