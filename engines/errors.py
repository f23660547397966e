"""Exception hierarchy shared by the engines and the streamer packages.

Every error a user can cause is one of these, so the CLI can print one clear
line for it and exit non-zero instead of showing a traceback.
"""

from __future__ import annotations


class StreamerError(Exception):
    """Base class of every error this project raises on purpose."""

    exit_code: int = 1


class ConfigError(StreamerError, ValueError):
    """A configuration value or command-line option is invalid."""

    exit_code = 2


class ModelError(StreamerError):
    """An unknown model, or a model that cannot be built."""

    exit_code = 2


class NonFiniteOutput(ModelError):
    """The network produced NaN or infinity (broken or overflowing weights): never shown as a label."""


class WeightsError(ModelError):
    """Weights cannot be found, downloaded or safely loaded."""


class BackendError(StreamerError):
    """A backend failed to load or to run."""


class BackendUnavailable(BackendError):
    """A backend's optional dependency or hardware is missing."""

    exit_code = 2


class EngineError(BackendError):
    """A serialized engine could not be built, loaded or verified."""


class CacheError(EngineError):
    """The engine cache is unusable (permissions, corrupt entry, lock timeout)."""


class SourceError(StreamerError):
    """A frame source cannot be opened or read."""


class SourceTimeout(SourceError, TimeoutError):
    """A source did not deliver a frame within its time limit."""


class SourceLost(SourceError):
    """A live source went away and did not come back within the reconnect window."""


class SinkError(StreamerError):
    """An output cannot be opened or written."""


class PipelineError(StreamerError):
    """A pipeline thread failed; the cause is chained."""


class ModelHung(PipelineError):
    """A model call did not return within the watchdog's limit.

    The call cannot be cancelled; the run stops around it, and the frames
    labelled before it are kept and finalised.
    """
