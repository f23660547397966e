"""The end-of-run summary table."""

from __future__ import annotations

from streamer.pipeline import RunSummary
from streamer.stats import STAGES


def print_summary(summary: RunSummary, source_name: str) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    head = Table(title=f"streamer: {source_name}", show_header=False)
    head.add_column("what")
    head.add_column("value", justify="right")
    head.add_row("frames in / out / dropped", f"{summary.frames_in} / {summary.frames_out} / {summary.dropped}")
    if summary.skipped_during_load:
        head.add_row("live frames skipped during the model load (not in dropped)", str(summary.skipped_during_load))
    if summary.stale:
        head.add_row("live frames too old to classify (in dropped)", str(summary.stale))
    if summary.reconnects:
        head.add_row("reconnects", str(summary.reconnects))
    if summary.unreadable:
        head.add_row("unreadable images skipped", str(summary.unreadable))
    head.add_row("pipeline FPS (from first frame out)", f"{summary.pipeline_fps:.1f}" if summary.pipeline_fps else "--")
    if summary.load_s is not None:
        head.add_row("model load", f"{summary.load_s:.2f} s")
    if summary.ready_s is not None:
        head.add_row("start to model ready", f"{summary.ready_s:.2f} s")
    if summary.first_frame_s is not None:
        head.add_row("start to first labelled frame", f"{summary.first_frame_s:.2f} s")
    if summary.latency is not None:
        head.add_row(f"latency p50 / p95 {_latency_label(summary)}", f"{summary.latency.p50_ms:.1f} / {summary.latency.p95_ms:.1f} ms")
    head.add_row("backend", summary.backend)
    console.print(head)
    stages = Table(title="time per frame, by stage")
    for col in ("stage", "mean ms", "p95 ms"):
        stages.add_column(col, justify="right" if col != "stage" else "left")
    for stage in STAGES:
        s = summary.stages.get(stage)
        if s:
            stages.add_row(stage, f"{s['mean_ms']:.2f}", f"{s['p95_ms']:.2f}")
    console.print(stages)


def _latency_label(summary: RunSummary) -> str:
    """What the latency row measures, in words a user can check."""
    if summary.latency_basis == "ready->render":
        return "(ready->render, file)"  # from capture, or from model ready for frames read during the load
    return "(capture->render, live)"
