"""Models, preprocessing, inference backends and the engine cache.

Nothing is imported eagerly: PyTorch, ONNX Runtime and TensorRT are loaded only
by the modules that need them.
"""

from engines.errors import (
    BackendError,
    BackendUnavailable,
    CacheError,
    ConfigError,
    EngineError,
    ModelError,
    StreamerError,
    WeightsError,
)

__all__ = [
    "BackendError",
    "BackendUnavailable",
    "CacheError",
    "ConfigError",
    "EngineError",
    "ModelError",
    "StreamerError",
    "WeightsError",
]
