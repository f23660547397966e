"""Eager PyTorch backend (CPU or CUDA, fp32 or fp16), optionally with CUDA graphs or, for AlexNet, fused."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from engines.backends.base import (
    Backend,
    BackendOptions,
    BatchRun,
    predictions_from_rows,
    resolve_device_name,
    restore_torch_threads,
    topk_rows,
)
from engines.backends.torch_tuning import fp16_depthwise_choice, use_native_depthwise
from engines.errors import BackendError, ConfigError
from engines.models import build_model

if TYPE_CHECKING:
    import torch

    from engines.backends.fused_alexnet import FusedAlexNet

log = logging.getLogger(__name__)

_GRAPH_SHAPES = 4
"""Frame sizes that get whole-batch CUDA graphs; frames of a further size take the eager path."""


@dataclass
class _BatchGraph:
    """Upload's target, the captured graph (preprocess, network, top-k) and its (bucket, 2k + 1) output."""

    frames: "torch.Tensor"
    graph: "torch.cuda.CUDAGraph"
    rows: "torch.Tensor"


class TorchBackend(Backend):
    """The reference backend: ``module(x)`` under ``torch.inference_mode``."""

    _module: Any
    """The network as it runs (``torch.nn.Module``, or what torch.compile made of it); unused when fused."""

    name = "torch"
    computes_with_torch = True

    @classmethod
    def unsupported(cls, options: BackendOptions) -> str | None:
        cpu = resolve_device_name(options.device) == "cpu"
        if options.precision == "int8":
            return "torch backend: int8 is not supported; use tensorrt or torch2trt"
        if options.precision == "fp16" and cpu:
            return "torch backend: fp16 needs a CUDA device (CPU fp16 convolutions are slow or missing)"
        if options.cuda_graphs and cpu:
            return "torch backend: --cuda-graphs needs a CUDA device"
        if options.fused and cpu:
            return "torch backend: --fused needs a CUDA device (its kernels are Triton and cuDNN's NHWC ones)"
        if options.fused and (options.channels_last or options.compile):
            return "torch backend: --fused is already channels-last and compiled by hand; drop --channels-last/--compile"
        return None

    def _load_impl(self) -> None:
        import torch

        if self.device == "cpu":
            restore_torch_threads(self.options.threads)
        t0 = time.perf_counter()
        self.model = build_model(self.spec, self.weights)
        t1 = time.perf_counter()
        log.info("torch backend: %s built with %s weights in %.2f s", self.spec.name, self.weights, t1 - t0)
        self._fused: "FusedAlexNet | None" = None
        self._graph: "torch.cuda.CUDAGraph | None" = None
        self._graph_batch = 0
        self._batch_graphs: dict[tuple[int, int, int, int], _BatchGraph] = {}
        self._graph_hosts: "dict[tuple[int, int], tuple[torch.Tensor, np.ndarray]]" = {}
        self._graph_pool: Any = None
        if self.options.fused:
            from engines.backends.fused_alexnet import FusedAlexNet

            if self.spec.name != "alexnet":
                raise ConfigError(f"torch backend: --fused rewrites alexnet only, not {self.spec.name}")
            fused_dtype = torch.float16 if self.precision == "fp16" else torch.float32
            self._fused = FusedAlexNet(self.model.module, self.device, fused_dtype, self.options.batch)
            log.info("torch backend: fused network set up and captured in %.2f s", time.perf_counter() - t1)
            return
        # straight to the device in the precision it runs in (fp16: half the bytes to copy)
        dtype = torch.float16 if self.precision == "fp16" else None
        module = self.model.module.to(self.device, dtype=dtype)
        if self.precision == "fp16" and fp16_depthwise_choice() == "native":
            log.info("torch backend: %d fp16 depthwise convolutions on the native kernel", use_native_depthwise(module))
        if self.options.channels_last:
            module = module.to(memory_format=torch.channels_last)
        if self.options.compile:
            module = torch.compile(module)  # type: ignore[assignment]
        self._module = module
        t2 = time.perf_counter()
        log.info("torch backend: moved to %s %s in %.2f s", self.device, self.precision, t2 - t1)
        if self.options.cuda_graphs:
            self._capture_graph(self.options.batch)
            log.info("torch backend: CUDA graph at batch %d captured in %.2f s", self.options.batch, time.perf_counter() - t2)

    @property
    def input_dtype_name(self) -> str:
        return "fp16" if self.precision == "fp16" else "fp32"

    def _capture_graph(self, batch: int) -> None:
        import torch

        dtype = torch.float16 if self.precision == "fp16" else torch.float32
        shape = (batch, *self.spec.preprocess.input_shape)
        self._static_in = torch.zeros(shape, device=self.device, dtype=dtype)
        if self.options.channels_last:
            self._static_in = self._static_in.contiguous(memory_format=torch.channels_last)
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream), torch.inference_mode():
            for _ in range(3):  # warm up cuDNN autotuning outside the capture
                self._module(self._static_in)
        torch.cuda.current_stream(self.device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph), torch.inference_mode():
            self._static_out = self._module(self._static_in)
        self._graph = graph
        self._graph_batch = batch

    # -- whole batches as one CUDA graph ----------------------------------------------------------
    def classify(self, frames: "Sequence[np.ndarray | torch.Tensor]", k: int = 1) -> BatchRun:
        """With ``--cuda-graphs``, a batch of host frames of one size runs as ONE CUDA graph: the resize,
        crop and normalisation, the network and the top-k, captured once per frame size and batch
        bucket (powers of two up to the loaded batch; a batch runs in the smallest that holds it).
        The thread then makes four CUDA calls a batch (upload, replay, one copy back) instead of
        ~40 (AlexNet) to ~200 (efficientnet_lite0), each of which releases Python's GIL and must take it
        back: with dozens of streams' threads beside it that wait is much of a batch's time (the host copy
        into pinned memory, still on this thread, is the rest; docs/benchmarks/h200-streams, step 9).
        Other batches (tensors from a GPU decoder, mixed sizes, a fifth frame size) take the three-step path."""
        size = self._graphable(frames)
        if size is None:
            return super().classify(frames, k)
        t0 = time.perf_counter()
        n = len(frames)
        k = max(1, min(k, len(self.spec.labels)))
        entry = self._batch_graph(size, min(1 << (n - 1).bit_length(), self.options.batch), k)
        host, view = self._graph_hosts[size]
        np.stack(frames, out=view[:n])
        entry.frames[:n].copy_(host[:n], non_blocking=True)
        t1 = time.perf_counter()
        entry.graph.replay()
        rows = entry.rows[:n].cpu().tolist()  # waits for the upload and the graph: the pinned buffer is free again
        t2 = time.perf_counter()
        predictions = predictions_from_rows(rows, self.spec.labels, k)
        return BatchRun(predictions, t1 - t0, t2 - t1, time.perf_counter() - t2)

    def _graphable(self, frames: "Sequence[np.ndarray | torch.Tensor]") -> tuple[int, int] | None:
        if self._graph is None or not frames or len(frames) > self.options.batch:
            return None
        first = frames[0]
        if not isinstance(first, np.ndarray) or first.dtype != np.uint8 or first.ndim != 3 or first.shape[2] != 3:
            return None
        if any(not isinstance(f, np.ndarray) or f.shape != first.shape or f.dtype != np.uint8 for f in frames):
            return None
        size = (int(first.shape[0]), int(first.shape[1]))
        if size not in self._graph_hosts and len(self._graph_hosts) >= _GRAPH_SHAPES:
            return None
        return size

    def _batch_graph(self, size: tuple[int, int], bucket: int, k: int) -> _BatchGraph:
        key = (*size, bucket, k)
        entry = self._batch_graphs.get(key)
        if entry is not None:
            return entry
        import torch

        from engines.preprocess import preprocess_device_batch

        t0 = time.perf_counter()
        height, width = size
        if size not in self._graph_hosts:
            host = torch.empty((self.options.batch, height, width, 3), dtype=torch.uint8).pin_memory()
            self._graph_hosts[size] = (host, host.numpy())
        if self._graph_pool is None:
            self._graph_pool = torch.cuda.graph_pool_handle()
        dtype = torch.float16 if self.precision == "fp16" else torch.float32
        frames = torch.zeros((bucket, height, width, 3), dtype=torch.uint8, device=self.device)

        def body() -> "torch.Tensor":
            x = preprocess_device_batch(frames, self.spec.preprocess, dtype)
            if self.options.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            return topk_rows(self._module(x).float(), k)

        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream), torch.inference_mode():
            for _ in range(3):  # cuDNN's choice of kernels for this shape, and the normalisation's constants, outside the capture
                body()
        torch.cuda.current_stream(self.device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        # One pool for every whole-batch graph: they run one at a time on this thread and each one's output
        # is copied out before the next replay, so one graph overwriting another's freed memory is harmless.
        # thread_local: a GPU decoder's thread may allocate meanwhile.
        with torch.cuda.graph(graph, pool=self._graph_pool, capture_error_mode="thread_local"), torch.inference_mode():
            rows = body()
        entry = _BatchGraph(frames, graph, rows)
        self._batch_graphs[key] = entry
        log.info("torch backend: CUDA graph of whole batches of %d %dx%d frames captured in %.2f s", bucket, width, height, time.perf_counter() - t0)
        return entry

    def _infer_impl(self, batch: "torch.Tensor") -> "torch.Tensor":
        import torch

        dtype = torch.float16 if self.precision == "fp16" else torch.float32
        x = batch.to(self.device, dtype=dtype, non_blocking=True)
        if self._fused is not None:
            return self._fused.infer(x)
        if self._graph is not None:
            n = int(x.shape[0])
            if n > self._graph_batch:
                raise BackendError(f"torch backend: batch {n} exceeds the captured graph's {self._graph_batch}")
            self._static_in[:n].copy_(x)
            self._graph.replay()
            return self._static_out[:n].float()
        n, full = int(x.shape[0]), self.options.batch
        if self.device != "cpu" and 1 < n < full:
            # A file's last partial batch: padded to the warmed-up shape, since a new shape
            # costs cuDNN a fresh plan search on the GPU (seconds in fp16, on the last frames).
            x = torch.cat([x, x.new_zeros((full - n, *x.shape[1:]))])
        if self.options.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            return self._module(x)[:n].float()

    def _close_impl(self) -> None:
        self._batch_graphs = {}
        self._graph_hosts = {}
        self._graph_pool = None
        self._graph = None
        self._fused = None
        self._module = None
        self.model = None  # type: ignore[assignment]
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.empty_cache()
