"""How much of a GAP is noise: its standard error over the videos it was measured on.

The videos are dealt into ``folds`` groups by a hash of their id; GAP is computed on each group from the
saved top-k predictions, and the standard error of the whole set's GAP is estimated as the groups' standard
deviation over sqrt(folds) (batch means). It costs one GAP's work in all, on any number of videos, and
the same videos fall into the same groups in every trial and epoch. Exact ties are ordered positive-last,
not by the starter's shuffle: this is a noise estimate, not a reported GAP.

The search uses it to stop trials only on differences that exceed it (``search.rungs``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from yt8m_search.metrics.holdout import id_hash

__all__ = ["DEFAULT_FOLDS", "gap_standard_error", "video_folds"]

DEFAULT_FOLDS = 10


def video_folds(video_ids: Sequence[str], folds: int = DEFAULT_FOLDS) -> np.ndarray:
    """int64 [N]: each video's group in 0..folds-1, from a salted BLAKE2b hash of its id."""
    return np.fromiter((id_hash(v, b"yt8m-folds") % folds for v in video_ids), np.int64, count=len(video_ids))


def _topk_gap(scores: np.ndarray, hits: np.ndarray, positives: int) -> float:
    """GAP of pooled top-k entries: ``scores`` and ``hits`` [N, k], ``positives`` the labels of the N videos."""
    if positives == 0:
        return float("nan")
    order = np.lexsort((hits.ravel(), -scores.ravel()))  # by score descending, a tied positive last
    ranked = hits.ravel()[order]
    precision = np.cumsum(ranked) / np.arange(1, len(ranked) + 1)
    return float(np.sum(precision[ranked]) / positives)


def gap_standard_error(classes: np.ndarray, scores: np.ndarray, labels: Sequence[np.ndarray],
                       video_ids: Sequence[str], folds: int = DEFAULT_FOLDS) -> float:
    """The standard error of the GAP of top-k predictions (``classes``/``scores`` [N, k], best first;
    ``labels`` N arrays of class ids); NaN with fewer than two groups holding labelled videos."""
    n = len(video_ids)
    if n == 0:
        return float("nan")
    hits = np.zeros(classes.shape, bool)
    for i in range(n):
        hits[i] = np.isin(classes[i], labels[i])
    positives = np.fromiter((len(x) for x in labels), np.int64, count=n)
    group = video_folds(video_ids, folds)
    gaps = [_topk_gap(scores[group == g], hits[group == g], int(positives[group == g].sum())) for g in range(folds)]
    gaps = [g for g in gaps if np.isfinite(g)]
    if len(gaps) < 2:
        return float("nan")
    return float(np.std(gaps, ddof=1) / np.sqrt(len(gaps)))
