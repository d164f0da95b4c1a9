"""The class-prior ranking: every video gets the same scores, the classes' frequencies in the training
labels. It knows nothing about a video, so a model's GAP means little until it is set beside this one's
on the same videos (on the synthetic data, about 0.04 at 3,862 classes)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from yt8m_search.metrics.accumulator import MetricAccumulator

__all__ = ["class_frequencies", "class_prior_gap"]

_CHUNK = 512  # videos scored at once: 512 x 3,862 float32 is 8 MB


def class_frequencies(labels: Sequence[np.ndarray], num_classes: int) -> np.ndarray:
    """float64 [num_classes]: the share of videos labelled with each class."""
    counts = np.zeros(num_classes, np.float64)
    for row in labels:
        counts[np.asarray(row, dtype=np.int64)] += 1
    return counts / max(1, len(labels))


def class_prior_gap(frequencies: np.ndarray, labels: Sequence[np.ndarray], top_k: int = 20) -> float:
    """GAP@``top_k`` of ranking every one of ``labels``' videos by ``frequencies`` (the exact metric,
    the starter's tie-breaking included); NaN without videos."""
    if not len(labels):
        return float("nan")
    acc = MetricAccumulator(num_classes=len(frequencies), top_k=top_k)
    scores = frequencies.astype(np.float32)
    for start in range(0, len(labels), _CHUNK):
        chunk = list(labels[start:start + _CHUNK])
        acc.update(np.broadcast_to(scores, (len(chunk), len(scores))), chunk)
    return float(acc.result()["gap"])
