"""The report's PNG plots, drawn with matplotlib's Agg backend (no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from streamer.bench.report import row_label as _label
from streamer.stats import STAGES

STAGE_COLOURS = {
    "decode": "#4c72b0",
    "preprocess": "#dd8452",
    "inference": "#c44e52",
    "postprocess": "#8172b3",
    "render": "#55a868",
    "write": "#937860",
}


def _boxplot(ax: Any, data: list[Any]) -> None:
    import matplotlib

    major, minor = (int(x) for x in matplotlib.__version__.split(".")[:2])
    orient: dict[str, Any] = {"orientation": "horizontal"} if (major, minor) >= (3, 10) else {"vert": False}
    ax.boxplot(data, whis=(1, 99), showfliers=True, flierprops={"markersize": 2}, **orient)


def _log_if_wide(ax: Any, data: list[Any]) -> None:
    """Log scale when the cases span more than 20x, so fast cases are not squashed against zero."""
    values = np.concatenate([np.asarray(d, dtype=np.float64) for d in data if len(d)]) if data else np.array([])
    values = values[values > 0]
    if values.size and values.max() / values.min() > 20:
        ax.set_xscale("log")


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def write_plots(report: dict[str, Any], work: Path, out_dir: Path) -> list[str]:
    """Write every plot there is data for; returns the file names (also stored in ``report['plots']``).

    Without matplotlib (it is the optional ``bench`` extra) the report says so and has no plots.
    """
    written: list[str] = []
    ok = [r for r in report["results"] if r["status"] in ("ok", "partial")]
    samples = report.get("samples") or {}
    try:
        plt = _pyplot()
    except ImportError:
        report["plots"] = []
        report.setdefault("notes", []).append("No plots: matplotlib is not installed (pip install 'streamer[bench]').")
        return written
    if any(samples.get(r["key"], {}).get("network_ms") for r in ok):
        written.append(_latency(plt, ok, samples, out_dir))
    if any(r.get("pipeline") for r in ok):
        written.append(_stages(plt, ok, out_dir))
    if any((samples.get(r["key"]) or {}).get("diff_histogram") for r in ok):
        written.append(_diff_hist(plt, ok, samples, out_dir))
    if len({r["batch"] for r in ok}) > 1:
        written.append(_throughput(plt, ok, out_dir))
    report["plots"] = written
    return written


def _latency(plt: Any, rows: list[dict[str, Any]], samples: dict[str, Any], out_dir: Path) -> str:
    net = [(r, np.asarray(samples[r["key"]]["network_ms"]) / r["batch"]) for r in rows if samples.get(r["key"], {}).get("network_ms")]
    pipe = [(r, np.asarray(samples[r["key"]]["frame_interval_ms"])) for r in rows if r["batch"] == 1 and samples.get(r["key"], {}).get("frame_interval_ms")]
    panels = 2 if pipe else 1
    height = max(3.0, 0.38 * max(len(net), len(pipe)) + 1.6)
    fig, axes = plt.subplots(1, panels, figsize=(7 * panels, height), squeeze=False)
    ax = axes[0][0]
    _boxplot(ax, [s for _, s in net])
    ax.set_yticks(range(1, len(net) + 1), [_label(r) for r, _ in net], fontsize=7)
    ax.invert_yaxis()  # first case on top, as in the tables
    _log_if_wide(ax, [s for _, s in net])
    ax.set_xlabel("network alone: ms per image (call time / batch)")
    ax.set_title("inference latency (whiskers p1-p99)", fontsize=9)
    ax.grid(axis="x", alpha=0.3)
    if pipe:
        ax2 = axes[0][1]
        _boxplot(ax2, [s for _, s in pipe])
        ax2.set_yticks(range(1, len(pipe) + 1), [_label(r) for r, _ in pipe], fontsize=7)
        ax2.invert_yaxis()
        _log_if_wide(ax2, [s for _, s in pipe])
        ax2.set_xlabel("pipeline: ms between frames leaving the render stage")
        ax2.set_title("pipeline time per frame, batch 1", fontsize=9)
        ax2.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    name = "latency.png"
    fig.savefig(out_dir / name, dpi=110)
    plt.close(fig)
    return name


def _stages(plt: Any, rows: list[dict[str, Any]], out_dir: Path) -> str:
    rows = [r for r in rows if r.get("pipeline")]
    fig, ax = plt.subplots(figsize=(9, max(3.0, 0.38 * len(rows) + 1.6)))
    left = np.zeros(len(rows))
    for stage in STAGES:
        values = np.array([((r["pipeline"]["stages_ms"].get(stage) or {}).get("mean") or 0.0) for r in rows])
        ax.barh(range(len(rows)), values, left=left, label=stage, color=STAGE_COLOURS[stage])
        left += values
    ax.set_yticks(range(len(rows)), [_label(r) for r in rows], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("ms per frame (mean), each stage")
    ax.set_title("pipeline time per frame by stage (stages overlap on three threads; the sum is the work per frame)", fontsize=9)
    ax.legend(fontsize=7, ncol=6, loc="lower right")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    name = "stages.png"
    fig.savefig(out_dir / name, dpi=110)
    plt.close(fig)
    return name


def _diff_hist(plt: Any, rows: list[dict[str, Any]], samples: dict[str, Any], out_dir: Path) -> str:
    data = [(r, samples[r["key"]]["diff_histogram"]) for r in rows if (samples.get(r["key"]) or {}).get("diff_histogram")]
    fig, ax = plt.subplots(figsize=(8, 4.2))
    if all(h["max_abs"] == 0.0 for _, h in data):
        ax.text(0.5, 0.5, "every backend's logits equal the reference exactly", ha="center", va="center", transform=ax.transAxes)
    else:
        for r, h in data:
            if h["max_abs"] == 0.0:
                ax.plot([], [], label=f"{_label(r)} (identical)")
                continue
            ax.stairs(np.asarray(h["counts"], dtype=float), np.asarray(h["edges"]), label=_label(r), linewidth=1.2)
        ax.set_yscale("log")
    ax.set_xlabel("logit - PyTorch fp32 CPU logit")
    ax.set_ylabel("count (logits of all images)")
    ax.set_title("output change against the reference, on identical preprocessed photographs", fontsize=9)
    ax.legend(fontsize=6)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    name = "diff_hist.png"
    fig.savefig(out_dir / name, dpi=110)
    plt.close(fig)
    return name


def _throughput(plt: Any, rows: list[dict[str, Any]], out_dir: Path) -> str:
    groups: dict[str, list[tuple[int, float]]] = {}
    for r in rows:
        if r.get("throughput_fps") is None:
            continue
        variant = "" if r["variant"] == "eager" else f"+{r['variant']}"
        key = f"{r['model']} {r['backend']}{variant} {r['precision']} {r['device']}"
        groups.setdefault(key, []).append((r["batch"], r["throughput_fps"]))
    fig, ax = plt.subplots(figsize=(7, 4))
    for key, points in groups.items():
        points.sort()
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=key)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("batch size")
    ax.set_ylabel("images / s (network alone, synchronised per call)")
    ax.set_title("throughput by batch size", fontsize=9)
    ax.legend(fontsize=6)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    name = "throughput.png"
    fig.savefig(out_dir / name, dpi=110)
    plt.close(fig)
    return name


def replot(report_dir: Path) -> list[str]:
    """Redraw a written report's plots from its report.json and samples.json, and re-render report.md.

    The figures are not re-measured: the same numbers are drawn again (after a
    matplotlib upgrade, or when PNGs went missing).
    """
    import json

    from engines.errors import SourceError
    from streamer.bench.report import atomic_write_text, render_markdown

    try:
        report = json.loads((report_dir / "report.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SourceError(f"{report_dir}/report.json: cannot read a bench report there ({getattr(exc, 'strerror', None) or exc})") from None
    samples_path = report_dir / "samples.json"
    report["samples"] = json.loads(samples_path.read_text(encoding="utf-8")) if samples_path.is_file() else {}
    wanted = set(report.get("plots") or [])
    written = write_plots(report, report_dir, report_dir)
    report.pop("samples", None)
    if any(r.get("realtime") and "failed" not in r["realtime"] for r in report.get("results") or []):
        note = ("Redrawn with a newer streamer: the verdicts above were judged when the report was measured, under that "
                "version's rule; the rule text printed is the current one.")
        if note not in report.setdefault("notes", []):
            report["notes"].append(note)
    lost = sorted(wanted - set(written))
    if lost:
        report.setdefault("notes", []).append(
            f"{', '.join(lost)} could not be redrawn from this report's stored data (older reports kept no "
            "histogram of the logit differences); rerun the command above to get it."
        )
    atomic_write_text(report_dir / "report.json", json.dumps(report, indent=2, allow_nan=False, default=str))
    atomic_write_text(report_dir / "report.md", render_markdown(report))
    return written
