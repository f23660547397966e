"""Output change: a backend's logits against PyTorch fp32 on the CPU, on identical inputs.

The inputs are real photographs preprocessed once, on the CPU, with
:func:`engines.preprocess.preprocess`; every backend is fed those same
tensors (cast to its input precision), so what differs is the engine alone.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

_EPS = 1e-6


def compare(logits: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """max/mean absolute error, max relative error, mean cosine similarity, top-1 agreement %, top-5 overlap %."""
    a = np.asarray(logits, dtype=np.float64)
    r = np.asarray(reference, dtype=np.float64)
    if a.shape != r.shape or a.ndim != 2:
        raise ValueError(f"logits {a.shape} and reference {r.shape} must be the same (N, classes) shape")
    diff = np.abs(a - r)
    # Relative to the reference's magnitude, with a floor so logits near zero don't explode the ratio.
    floor = max(_EPS, float(np.abs(r).max()) * 1e-3)
    rel = diff / np.maximum(np.abs(r), floor)
    cos = np.sum(a * r, axis=1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(r, axis=1), _EPS)
    top1 = np.argmax(a, axis=1) == np.argmax(r, axis=1)
    k = min(5, a.shape[1])
    top5_a = np.argsort(-a, axis=1)[:, :k]
    top5_r = np.argsort(-r, axis=1)[:, :k]
    overlap = [len(set(x.tolist()) & set(y.tolist())) / k for x, y in zip(top5_a, top5_r)]
    return {
        "max_abs": float(diff.max()),
        "mean_abs": float(diff.mean()),
        "max_rel": float(rel.max()),
        "rel_floor": floor,
        "cosine": float(cos.mean()),
        "cosine_min": float(cos.min()),
        "top1_agreement": float(top1.mean() * 100.0),
        "top5_overlap": float(np.mean(overlap) * 100.0),
        "images": int(a.shape[0]),
    }


def labelled_top1(logits: np.ndarray, names: Sequence[str], labels: Mapping[str, Any]) -> dict[str, Any] | None:
    """Top-1 hits on the images that ``labels.json`` labels (several accepted indices per image)."""
    hits = 0
    total = 0
    misses: list[str] = []
    top1 = np.argmax(np.asarray(logits), axis=1)
    for name, pred in zip(names, top1.tolist()):
        accepted = labels.get(name)
        if not isinstance(accepted, list) or not accepted:
            continue
        total += 1
        if pred in accepted:
            hits += 1
        else:
            misses.append(name)
    if total == 0:
        return None
    return {"correct": hits, "labelled": total, "misses": misses}
