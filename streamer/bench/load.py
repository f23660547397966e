"""Load time, measured apart from processing: a cold load, then a warm one.

*Cold* is the first :meth:`Backend.load` in a fresh process with an empty
engine cache: PyTorch builds the model, reads the weights and moves them to
the device; TensorRT exports ONNX and builds the engine; torch2trt converts.
*Warm* is a second load of the same configuration in the same process: the
engine comes from the cache that the cold load filled, and PyTorch reads its
weights again from local disk.

``load_seconds`` is what the backend's own ``load`` records (building or
loading, no inference); ``ready_seconds`` adds the one warm-up inference that
``load`` runs, i.e. the time until the first result could be produced.
On a GPU the CUDA context is created first and timed on its own, so it is in
neither figure.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable

from engines.backends.base import Backend, LoadProgress
from streamer.bench.memory import MemorySampler, engine_info
from streamer.bench.results import LoadFigures
from streamer.inference import InferenceWorker


def init_cuda_context(device: str) -> float:
    """Create the CUDA context on ``device`` and return how long that took (seconds)."""
    import torch

    start = time.perf_counter()
    torch.cuda.init()
    torch.cuda.set_device(device)
    torch.empty(1, device=device)
    torch.cuda.synchronize(device)
    return time.perf_counter() - start


def _release(backend: Backend) -> None:
    backend.close()
    gc.collect()
    if backend.device.startswith("cuda"):
        import torch

        torch.cuda.synchronize(backend.device)
        torch.cuda.empty_cache()


def measure_loads(
    make_backend: Callable[[], Backend],
    sampler: MemorySampler | None = None,
    progress: LoadProgress | None = None,
) -> tuple[LoadFigures, InferenceWorker]:
    """Cold load, release, warm load. Returns the figures and the warm (loaded) worker.

    The warm load is the :class:`InferenceWorker`'s own load, on its thread, so
    everything measured after it (network alone, pipeline runs) runs on the
    thread that loaded the backend, as ``streamer run`` does.  Its owner closes it.
    """
    out = LoadFigures()
    if sampler is not None:
        sampler.phase("cold_load")
    cold = make_backend()
    cold.load(progress=progress)  # TensorRT build phases, where the backend reports them
    out.cold_s = cold.load_seconds
    out.cold_ready_s = cold.ready_seconds
    cold_info = engine_info(cold)
    _release(cold)
    del cold
    if sampler is not None:
        sampler.phase("warm_load")
    warm = InferenceWorker(make_backend).start()
    try:
        loaded = warm.wait_loaded()
        warm_info = warm.call(engine_info).result()
    except BaseException:
        warm.close()
        raise
    out.warm_s = loaded.load_s
    out.warm_ready_s = loaded.ready_s
    out.cold_cache_hit = cold_info["cache_hit"]
    out.warm_cache_hit = warm_info["cache_hit"]
    out.engine_build_s = cold_info["engine_build_s"]
    out.engine_file_bytes = warm_info["engine_file_bytes"] or cold_info["engine_file_bytes"]
    out.engine_file = warm_info["engine_file"] or cold_info["engine_file"]
    out.trt_device_memory_bytes = warm_info["trt_device_memory_bytes"]
    return out, warm
