"""``streamer bench``: load time, speed, memory, output change and real-time capability, reproducible.

For each model, backend, precision, variant, device and batch size it
measures load time (cold and warm), the network alone and the whole pipeline
stage by stage, memory as the OS and the GPU driver see it, the change in the
outputs against PyTorch fp32 on the CPU, and whether the system keeps up with
the source in real time; it writes report.md, report.json, report.csv and plots.

Modules, one job each: :mod:`.config` (what to run), :mod:`.runner` (runs each
case in a fresh process), :mod:`.worker` (the process side), :mod:`.load`,
:mod:`.latency`, :mod:`.memory`, :mod:`.diff`, :mod:`.realtime`, :mod:`.results` (typed jobs and results),
:mod:`.reference` (CPU reference and the reference script), :mod:`.codec`,
:mod:`.environment`, :mod:`.assemble`, :mod:`.report`, :mod:`.plots`,
:mod:`.progress`, :mod:`.cli`.
"""

from __future__ import annotations

from streamer.bench.config import BenchConfig, Case, ModelChoice

__all__ = ["BenchConfig", "Case", "ModelChoice"]
