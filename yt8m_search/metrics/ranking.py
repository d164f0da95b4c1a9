"""Average precision over pooled top-k entries, ranked the way ``ap_at_n`` ranks them.

Entries come in push order. When no tie group mixes positive and negative entries the order inside
tie groups cannot change the AP and a plain sort is used; otherwise the starter's heap array is
rebuilt and shuffled (``permutation.shuffle_permutation``) to break ties exactly as it does.
"""

from __future__ import annotations

import heapq
from collections import deque
from itertools import repeat

import numpy as np

from yt8m_search.metrics.permutation import shuffle_permutation


def _ranked_positives(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Positivity ``[N]`` of the entries in the order ``ap_at_n`` ranks them (ties included).

    ``scores``/``labels`` ``[N]`` are the pooled entries in push order.
    """
    n = scores.size
    order = np.argsort(-scores, kind="stable")
    s = scores[order]
    ranked = labels[order] > 0
    new_group = np.ones(n, bool)
    new_group[1:] = s[1:] != s[:-1]
    mixed_pair = ~new_group[1:] & (ranked[1:] != ranked[:-1])
    if not mixed_pair.any():
        return ranked  # no tie group mixes positives and negatives: the tie order is irrelevant
    # Score groups, 0 = highest score. Only groups holding both positives and negatives need the
    # starter's order: by position in the seed-0 shuffle of the heap array.
    group_sorted = np.cumsum(new_group) - 1
    num_groups = int(group_sorted[-1]) + 1
    mixed_group = np.zeros(num_groups, bool)
    mixed_group[group_sorted[1:][mixed_pair]] = True
    group = np.empty(n, np.int64)
    group[order] = group_sorted
    # Integer keys ordered exactly like the starter's (score, label) tuples; equal tuples, equal keys.
    if np.all((labels == 0) | (labels == 1)):
        label_values = np.array([0.0, 1.0])
        label_code = (labels == 1).astype(np.int64)
    else:
        label_values, label_code = np.unique(labels, return_inverse=True)
    num_labels = label_values.size
    key = (num_groups - 1 - group) * num_labels + label_code.reshape(-1)
    heap: list[int] = []
    deque(map(heapq.heappush, repeat(heap, n), key.tolist()), maxlen=0)
    shuffled = np.array(heap, dtype=np.int64)[shuffle_permutation(n)]
    shuffled_group = num_groups - 1 - shuffled // num_labels
    picked = np.flatnonzero(mixed_group[shuffled_group])  # shuffle positions, ascending
    picked = picked[np.argsort(shuffled_group[picked], kind="stable")]
    ranked = ranked.copy()
    ranked[mixed_group[group_sorted]] = label_values[shuffled[picked] % num_labels] > 0
    return ranked


def small_ints(values: np.ndarray, bound: int) -> np.ndarray:
    """``values`` (all in [0, bound)) as uint16 when they fit: NumPy radix-sorts 16-bit keys."""
    return values.astype(np.uint16) if bound <= 1 << 16 else values


def _ap_from_ranked(positive: np.ndarray, total_positives: float) -> float:
    if total_positives == 0 or positive.size == 0:
        return 0.0
    ranks = np.flatnonzero(positive) + 1.0
    hits = np.arange(1, ranks.size + 1, dtype=np.float64)
    return float(np.sum(hits / ranks * (1.0 / total_positives)))


def global_ap(scores: np.ndarray, labels: np.ndarray, total_positives: float) -> float:
    if total_positives == 0 or scores.size == 0:
        return 0.0
    return _ap_from_ranked(_ranked_positives(scores, labels), total_positives)


def class_aps(
    scores: np.ndarray, labels: np.ndarray, classes: np.ndarray, class_positives: np.ndarray
) -> np.ndarray:
    """Per-class AP ``[C]`` of the sparse per-class calculators (entries in push order)."""
    num_classes = class_positives.size
    aps = np.zeros(num_classes, np.float64)
    if scores.size == 0:
        return aps
    positive = labels > 0
    order = np.lexsort((-scores, classes))  # stable: push order inside (class, score) ties
    c, s, p = classes[order], scores[order], positive[order]
    counts = np.bincount(c, minlength=num_classes)
    starts = np.cumsum(counts) - counts
    rank = np.arange(c.size) - starts[c] + 1.0
    pos_counts = np.bincount(c, weights=p, minlength=num_classes)
    hits = np.cumsum(p) - (np.cumsum(pos_counts) - pos_counts)[c]
    denom = class_positives[c]
    with np.errstate(divide="ignore", invalid="ignore"):
        term = np.where(p & (denom != 0), hits / rank * (1.0 / denom), 0.0)
    aps = np.bincount(c, weights=term, minlength=num_classes)
    mixed = (c[1:] == c[:-1]) & (s[1:] == s[:-1]) & (p[1:] != p[:-1])
    heavy = np.unique(c[1:][mixed])
    if heavy.size:
        by_class = np.argsort(small_ints(classes, num_classes), kind="stable")
        for cls in heavy:
            if class_positives[cls] == 0:
                continue
            sel = by_class[starts[cls] : starts[cls] + counts[cls]]
            aps[cls] = _ap_from_ranked(
                _ranked_positives(scores[sel], labels[sel]), float(class_positives[cls])
            )
    return aps
