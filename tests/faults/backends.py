"""Fake backends: real :class:`~engines.backends.base.Backend` subclasses, driven by the pipeline
exactly as the torch backend is, whose "network" is instant, slow, or fails on purpose.

``from_spec("sleep:0.2")`` builds one from a short text, for :mod:`faults.fakecli`:

* ``instant`` - logits from the frame's mean brightness, no delay (:class:`helpers.FakeBackend`);
* ``sleep:S`` - sleeps S seconds per inference call, a model slower than the source
  (:class:`helpers.SlowBackend`);
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
from helpers import MODEL  # noqa: F401 - re-exported
from helpers import FakeBackend as InstantBackend
from helpers import RaisingBackend
from helpers import SlowBackend as SleepingBackend

FAILED_AT_ENV = "FAULTS_FAILED_AT"


def mark_failed_at(at: float, keep_first: bool = False) -> None:
    """Write ``at`` to the file ``$FAULTS_FAILED_AT`` names, when that is set (with ``keep_first``,
    only where no earlier failure wrote it)."""
    marker = os.environ.get(FAILED_AT_ENV)
    if marker and not (keep_first and os.path.exists(marker)):
        with open(marker, "w", encoding="ascii") as fh:
            fh.write(repr(at))


class FailingBackend(RaisingBackend):
    """Raises ``error`` on inference call ``fail_on`` (1-based); records when, in ``$FAULTS_FAILED_AT`` too."""

    name = "failing-fake"

    def _on_failure(self, at: float) -> None:
        mark_failed_at(at)


class HangingBackend(InstantBackend):
    """Inference call ``hang_on`` (1-based) blocks for an hour: a wedged driver or device."""

    name = "hanging-fake"

    def __init__(self, hang_on: int, options: BackendOptions | None = None) -> None:
        super().__init__(options)
        self.hang_on = hang_on

    def _infer_impl(self, batch: torch.Tensor) -> torch.Tensor:
        if self.infer_calls + 1 >= self.hang_on:
            mark_failed_at(time.monotonic())
            time.sleep(3600)
        return super()._infer_impl(batch)


class NativeBusyBackend(InstantBackend):
    """From inference call ``busy_from`` (1-based) on, each call computes in libtorch for 8 s."""

    name = "busy-fake"

    def __init__(self, busy_from: int, options: BackendOptions | None = None) -> None:
        super().__init__(options)
        self.busy_from = busy_from

    def _infer_impl(self, batch: torch.Tensor) -> torch.Tensor:
        if self.infer_calls + 1 >= self.busy_from:
            mark_failed_at(time.monotonic(), keep_first=True)
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
