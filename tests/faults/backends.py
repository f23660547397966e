"""Fake backends: real :class:`~engines.backends.base.Backend` subclasses, driven by the pipeline
exactly as the torch backend is, whose "network" is instant, slow, or fails on purpose.

``from_spec("sleep:0.2")`` builds one from a short text, for :mod:`faults.fakecli`:

* ``instant`` - logits from the frame's mean brightness, no delay;
* ``sleep:S`` - sleeps S seconds per inference call (a model slower than the source);
* ``raise:N`` - ``RuntimeError`` on inference call N (1-based);
* ``oom:N`` - ``torch.cuda.OutOfMemoryError`` (CUDA's own wording) on call N;
* ``oomtext:N`` - ``RuntimeError("CUDA out of memory. ...")`` on call N (older torch);
* ``hang:N`` - inference call N never returns (a wedged driver or device);
* ``busy:N`` - inference calls from N on each spend 8 s computing in libtorch (a big model on a
  small CPU): native code, not a Python sleep.

A failing backend writes ``time.monotonic()`` of the failure to ``$FAULTS_FAILED_AT``
when that is set, so a test can time the process's exit from the failure.
"""

from __future__ import annotations

import os
import time

import torch

from engines.backends.base import Backend, BackendOptions
from engines.models import WeightsChoice, get_spec

MODEL = "efficientnet_lite0"
FAILED_AT_ENV = "FAULTS_FAILED_AT"


class InstantBackend(Backend):
    """Deterministic, frame-dependent logits at no cost: the class is the frame's mean brightness."""

    name = "instant-fake"

    def __init__(self, options: BackendOptions | None = None) -> None:
        super().__init__(get_spec(MODEL), WeightsChoice("random"), options or BackendOptions(device="cpu", batch=64))
        self.calls = 0

    def _load_impl(self) -> None:
        pass

    def _warmup(self) -> None:
        # No network to warm up; warm the preprocessing instead (torch's first resize is slow).
        import numpy as np

        self.preprocess([np.zeros((240, 320, 3), dtype=np.uint8)])

    def _infer_impl(self, batch: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        n = int(batch.shape[0])
        logits = torch.zeros((n, 1000))
        idx = ((batch.reshape(n, -1).mean(dim=1) + 3.0) * 150.0).long().clamp(0, 999)
        logits[torch.arange(n), idx] = 10.0
        return logits

    def _close_impl(self) -> None:
        pass


class SleepingBackend(InstantBackend):
    """Sleeps ``delay`` seconds per inference call: a model slower than its source."""

    name = "sleeping-fake"

    def __init__(self, delay: float, options: BackendOptions | None = None) -> None:
        super().__init__(options)
        self.delay = delay

    def _infer_impl(self, batch: torch.Tensor) -> torch.Tensor:
        time.sleep(self.delay)
        return super()._infer_impl(batch)


class FailingBackend(InstantBackend):
    """Raises ``error`` on inference call ``fail_on`` (1-based); records when."""

    name = "failing-fake"

    def __init__(self, fail_on: int, error: BaseException, options: BackendOptions | None = None) -> None:
        super().__init__(options)
        self.fail_on = fail_on
        self.error = error
        self.failed_at: float | None = None

    def _infer_impl(self, batch: torch.Tensor) -> torch.Tensor:
        if self.calls + 1 >= self.fail_on:
            self.calls += 1
            self.failed_at = time.monotonic()
            marker = os.environ.get(FAILED_AT_ENV)
            if marker:
                with open(marker, "w", encoding="ascii") as fh:
                    fh.write(repr(self.failed_at))
            raise self.error
        return super()._infer_impl(batch)


class HangingBackend(InstantBackend):
    """Inference call ``hang_on`` (1-based) blocks for an hour: a wedged driver or device."""

    name = "hanging-fake"

    def __init__(self, hang_on: int, options: BackendOptions | None = None) -> None:
        super().__init__(options)
        self.hang_on = hang_on

    def _infer_impl(self, batch: torch.Tensor) -> torch.Tensor:
        if self.calls + 1 >= self.hang_on:
            marker = os.environ.get(FAILED_AT_ENV)
            if marker:
                with open(marker, "w", encoding="ascii") as fh:
                    fh.write(repr(time.monotonic()))
            time.sleep(3600)
        return super()._infer_impl(batch)


class NativeBusyBackend(InstantBackend):
    """From inference call ``busy_from`` (1-based) on, each call computes in libtorch for 8 s."""

    name = "busy-fake"

    def __init__(self, busy_from: int, options: BackendOptions | None = None) -> None:
        super().__init__(options)
        self.busy_from = busy_from

    def _infer_impl(self, batch: torch.Tensor) -> torch.Tensor:
        if self.calls + 1 >= self.busy_from:
            marker = os.environ.get(FAILED_AT_ENV)
            if marker and not os.path.exists(marker):
                with open(marker, "w", encoding="ascii") as fh:
                    fh.write(repr(time.monotonic()))
            a = torch.randn(1024, 1024)
            start = time.monotonic()
            while time.monotonic() - start < 8.0:
                a = torch.tanh(a @ a / 1024)
        return super()._infer_impl(batch)


CUDA_OOM_TEXT = (
    "CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 7.79 GiB "
    "of which 1.12 GiB is free."
)


def cuda_oom() -> BaseException:
    """What torch raises when the GPU runs out of memory (constructible without a GPU)."""
    return torch.cuda.OutOfMemoryError(CUDA_OOM_TEXT)


def from_spec(text: str, options: BackendOptions | None = None) -> Backend:
    kind, _, arg = text.partition(":")
    if kind == "instant":
        return InstantBackend(options)
    if kind == "sleep":
        return SleepingBackend(float(arg), options)
    if kind == "raise":
        return FailingBackend(int(arg), RuntimeError("simulated failure inside the model"), options)
    if kind == "oom":
        return FailingBackend(int(arg), cuda_oom(), options)
    if kind == "oomtext":
        return FailingBackend(int(arg), RuntimeError(CUDA_OOM_TEXT), options)
    if kind == "hang":
        return HangingBackend(int(arg), options)
    if kind == "busy":
        return NativeBusyBackend(int(arg), options)
    raise ValueError(f"unknown fake backend {text!r}")
