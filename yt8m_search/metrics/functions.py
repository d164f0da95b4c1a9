"""The one-call metrics on a whole ``[V, C]`` prediction matrix: GAP, mAP, Hit@1 and PERR."""

from __future__ import annotations

from typing import Any

import numpy as np

from yt8m_search.metrics.accumulator import MetricAccumulator
from yt8m_search.metrics.labels import as_inputs
from yt8m_search.metrics.topk import chunk_rows, perr_rows, scan_rows


def gap(predictions: Any, labels: Any, top_k: int = 20) -> float:
    """Global average precision at ``top_k`` (``eval_util.calculate_gap``).

    Args:
      predictions: ``[V, C]`` scores, any real dtype (float32 is not upcast before top-k selection).
      labels: ``[V, C]`` multi-hot (bool/int/float) or a sequence of V class-id arrays.
      top_k: predictions kept per video (``min(top_k, C)`` are used).

    Returns:
      GAP as a float; 0.0 when there is no positive label.
    """
    pred, _ = as_inputs(predictions, labels)
    acc = MetricAccumulator(max(pred.shape[1], 1), top_k)
    if pred.shape[1] == 0:
        return 0.0
    acc.update(pred, labels, _rank_only=True)
    return acc.gap()


def mean_average_precision(predictions: Any, labels: Any, top_k: int = 20) -> float:
    """Sparse mAP of the starter's ``eval.py`` (per-class AP over pooled top-k entries).

    Args/shapes as :func:`gap`. Returns NaN when no class has a positive label.
    """
    pred, _ = as_inputs(predictions, labels)
    acc = MetricAccumulator(pred.shape[1], top_k)
    acc.update(pred, labels, _rank_only=True)
    return acc.mean_average_precision()


def hit_at_one(predictions: Any, labels: Any) -> float:
    """Mean over videos of the label of the top-scored class (``calculate_hit_at_one``).

    Args: ``predictions`` ``[V, C]``, ``labels`` ``[V, C]`` or V class-id arrays. V must be > 0.
    """
    pred, lab = as_inputs(predictions, labels)
    if pred.shape[0] == 0:
        raise ValueError("no videos")
    top = np.argmax(pred, axis=1)
    return float(lab.gather(np.arange(pred.shape[0]), top).mean())


def perr(predictions: Any, labels: Any) -> float:
    """Precision at equal recall rate (``calculate_precision_at_equal_recall_rate``), mean over videos.

    Args: ``predictions`` ``[V, C]``, ``labels`` ``[V, C]`` or V class-id arrays. V must be > 0.
    """
    pred, lab = as_inputs(predictions, labels)
    n, num_classes = pred.shape
    if n == 0:
        raise ValueError("no videos")
    k = min(20, num_classes)
    total = 0.0
    step = chunk_rows(num_classes)
    for lo in range(0, n, step):
        hi = min(n, lo + step)
        x = pred[lo:hi]
        total += float(perr_rows(x, lab.slice(lo, hi), scan_rows(x, k)).sum())
    return total / n
