"""YouTube-8M evaluation metrics: GAP@k, Hit@1, PERR and the sparse mAP of the starter's ``eval.py``.

NumPy only. Every metric reproduces the official starter code (google/youtube-8m ``eval_util.py``,
``average_precision_calculator.py``, ``mean_average_precision_calculator.py``) to floating-point
round-off (|diff| < 1e-12 in practice, 1e-9 is tested), on any finite input, *including exact ties*:

Top-k selection (``top_k_by_class``)
    Per video the starter keeps ``np.argpartition(row, -k)[-k:]`` with ``k = min(top_k, C)``. The set of
    kept classes is unique unless the k-th largest score is tied with a score outside the top k; for such
    rows (and rows with more than 256 scores above our bound) we call exactly that 1-D
    ``np.argpartition`` on the row, so the kept classes are the starter's. All other rows go through a
    vectorized bound-and-filter (the k-th largest of 128 interleaved column-group maxima bounds the k-th
    largest score from below; only the ~k entries above it are gathered and sorted); float32 inputs are
    never upcast before the selection.

Pooled-list order and tie-breaking (``AveragePrecisionCalculator``, ``top_n=None``)
    The starter pushes the (score, label) tuples of a batch class-major (class 0's entries in video
    order, then class 1's, ...; ``flatten(top_k_by_class(...))``) onto a ``heapq`` heap that persists
    across batches, then in ``ap_at_n`` reads the heap *array*, permutes it with
    ``random.seed(0); random.sample(range(N), N)`` (Python's Mersenne Twister, ``_randbelow`` rejection
    sampling and the pool-swap algorithm of ``random.sample``), and stable-sorts it by score descending
    (``sorted(..., reverse=True)``). Exact ties are therefore broken by the shuffled heap position. We keep
    the pooled entries in the same push order; when no tie group mixes positive and negative entries the
    order inside tie groups cannot change the AP and a plain sort is used; otherwise the heap array is
    rebuilt by replaying the pushes with integer keys that order exactly like the (score, label) tuples,
    and the ``random.sample`` permutation is regenerated in vectorized NumPy from the same MT19937 stream
    (checked against ``random.sample`` in the tests). The per-class calculators of the sparse mAP are
    treated the same way (their own heaps, fed in video order batch after batch, each shuffled with seed 0).

Hit@1 (``calculate_hit_at_one``)
    ``labels[v, argmax(pred[v])]`` with the first index on ties; unlabeled videos count as 0.

PERR (``calculate_precision_at_equal_recall_rate``)
    ``m = int(sum(labels[v]))``; the top m are ``np.argpartition(row, -m)[-m:]`` (the same call is made
    whenever the m-th score is tied with the (m+1)-th); only strictly positive scores count. For m = 0 the
    starter's ``[-0:]`` slice keeps all C classes, so an unlabeled video contributes 0 and is not skipped.

Sparse mAP (``EvaluationMetrics.map_calculator``, ``filter_empty_classes=True``)
    Per class, AP over the (video, class) entries that reached some video's top k, denominator = all
    positives of the class in the labels; classes without positives are dropped; mAP = mean of the rest
    (a class with positives but no top-k entry has AP 0). NaN when no class has a positive.

Differences that remain: arithmetic is float64 throughout (the starter computes in float32 when it is
fed float32 label matrices under NumPy >= 2, about 4e-6 off); summation order of the AP terms may differ
by round-off; NaN scores are rejected (ValueError). Labels may be dense ``[V, C]`` arrays (bool, int or
float; values are used as given, ``> 0`` is positive; pass an array or tensor, not nested lists) or a
sequence of V class-id arrays (set semantics). Pure Python/NumPy: ``random`` must be CPython's (3.11+).

API: :func:`gap`, :func:`hit_at_one`, :func:`perr`, :func:`mean_average_precision` (one call on
``[V, C]``), :class:`MetricAccumulator` (streaming, ``state()`` / ``from_states`` / ``merge`` for
distributed evaluation), :func:`shuffle_permutation` (the starter's seed-0 shuffle).
"""

from __future__ import annotations

import heapq
import random
import threading
from collections import deque
from collections.abc import Mapping, Sequence
from functools import lru_cache
from itertools import repeat
from typing import Any

import numpy as np

__all__ = [
    "MetricAccumulator",
    "gap",
    "hit_at_one",
    "mean_average_precision",
    "perr",
    "shuffle_permutation",
]

_NUM_LANES = 128  # interleaved column groups whose maxima bound the k-th largest score from below
_MAX_CANDIDATES = 256  # rows with more candidates than this take the per-row argpartition path
_CHUNK_ELEMENTS = 1 << 23  # rows are processed in chunks of about this many scores
_STATE_VERSION = 1


# ----------------------------------------------------------------------------------------------------
# Labels: dense [V, C] or a list of class-id arrays.
# ----------------------------------------------------------------------------------------------------


class _DenseLabels:
    """Dense label matrix ``[n, C]`` (any real dtype)."""

    def __init__(self, array: np.ndarray) -> None:
        self.array = array

    def __len__(self) -> int:
        return self.array.shape[0]

    def slice(self, lo: int, hi: int) -> _DenseLabels:
        return _DenseLabels(self.array[lo:hi])

    def gather(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """Label values at ``(rows, cols)`` as float64; ``cols < 0`` (padding) gives 0."""
        values = self.array[rows, np.maximum(cols, 0)].astype(np.float64)
        return np.where(cols >= 0, values, 0.0)

    def row_sums(self) -> np.ndarray:
        return self.array.sum(axis=1, dtype=np.float64)

    def row_nonzero(self) -> np.ndarray:
        return np.count_nonzero(self.array, axis=1)

    def class_sums(self) -> np.ndarray:
        if self.array.dtype == bool:
            return self.array.view(np.uint8).sum(axis=0, dtype=np.uint32).astype(np.float64)
        return self.array.sum(axis=0, dtype=np.float64)

    def row(self, i: int) -> np.ndarray:
        return self.array[i].astype(np.float64)


class _SparseLabels:
    """Positive (video, class) pairs of ``n`` videos, stored as sorted codes ``video * C + class``."""

    def __init__(self, codes: np.ndarray, n: int, num_classes: int) -> None:
        self.codes = codes
        self.n = n
        self.num_classes = num_classes

    @classmethod
    def from_lists(cls, labels: Sequence[Any], num_classes: int) -> _SparseLabels:
        parts = []
        for v, ids in enumerate(labels):
            ids = np.asarray(ids, dtype=np.int64).reshape(-1)
            if ids.size and (ids.min() < 0 or ids.max() >= num_classes):
                raise ValueError(f"label ids of video {v} must lie in [0, {num_classes})")
            parts.append(ids + v * num_classes)
        codes = np.unique(np.concatenate(parts)) if parts else np.zeros(0, np.int64)
        return cls(codes, len(labels), num_classes)

    def __len__(self) -> int:
        return self.n

    def slice(self, lo: int, hi: int) -> _SparseLabels:
        c = self.num_classes
        a, b = np.searchsorted(self.codes, [lo * c, hi * c])
        return _SparseLabels(self.codes[a:b] - lo * c, hi - lo, c)

    def gather(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        query = rows.astype(np.int64) * self.num_classes + cols
        pos = np.minimum(np.searchsorted(self.codes, query), max(self.codes.size - 1, 0))
        found = (cols >= 0) & (self.codes.size > 0)
        if self.codes.size:
            found &= self.codes[pos] == query
        return found.astype(np.float64)

    def row_sums(self) -> np.ndarray:
        return np.bincount(self.codes // self.num_classes, minlength=self.n).astype(np.float64)

    def row_nonzero(self) -> np.ndarray:
        return np.bincount(self.codes // self.num_classes, minlength=self.n)

    def class_sums(self) -> np.ndarray:
        counts = np.bincount(self.codes % self.num_classes, minlength=self.num_classes)
        return counts.astype(np.float64)

    def row(self, i: int) -> np.ndarray:
        out = np.zeros(self.num_classes, np.float64)
        c = self.num_classes
        a, b = np.searchsorted(self.codes, [i * c, (i + 1) * c])
        out[self.codes[a:b] - i * c] = 1.0
        return out


def _as_inputs(predictions: Any, labels: Any) -> tuple[np.ndarray, _DenseLabels | _SparseLabels]:
    pred = np.asarray(predictions)
    if pred.ndim != 2:
        raise ValueError(f"predictions must be [videos, classes], got shape {pred.shape}")
    if not (np.issubdtype(pred.dtype, np.floating) or np.issubdtype(pred.dtype, np.integer)):
        raise TypeError(f"predictions must be real numbers, got {pred.dtype}")
    if isinstance(labels, np.ndarray) and labels.ndim == 2:
        lab: _DenseLabels | _SparseLabels = _DenseLabels(labels)
    elif isinstance(labels, np.ndarray) and labels.ndim == 1 and labels.dtype != object:
        raise ValueError("labels must be [videos, classes] or a sequence of class-id arrays")
    elif hasattr(labels, "shape") and len(getattr(labels, "shape")) == 2:  # torch tensors and the like
        lab = _DenseLabels(np.asarray(labels))
    else:
        lab = _SparseLabels.from_lists(list(labels), pred.shape[1])
    if isinstance(lab, _DenseLabels) and lab.array.shape != pred.shape:
        raise ValueError(f"labels shape {lab.array.shape} != predictions shape {pred.shape}")
    if len(lab) != pred.shape[0]:
        raise ValueError(f"{len(lab)} label rows for {pred.shape[0]} prediction rows")
    return pred, lab


# ----------------------------------------------------------------------------------------------------
# Per-row selection: top-k, argmax and the sorted head of every row.
# ----------------------------------------------------------------------------------------------------


class _RowScan:
    """Sorted head of each row of a chunk ``[n, C]``.

    ``values``/``classes`` ``[n, W]``: the ``count[v]`` largest scores of row v (all scores >= a lower
    bound of the k-th largest), sorted by (score desc, class asc), float64, padded with -inf / -1.
    ``exact[v]`` is False for rows whose head was not collected (too many candidates).
    ``top_classes``/``top_values`` ``[n, k]``: the starter's top-k selection. ``argmax`` ``[n]``.
    """

    __slots__ = ("values", "classes", "count", "exact", "top_classes", "top_values", "argmax")

    def __init__(self, **kw: np.ndarray) -> None:
        for key, val in kw.items():
            setattr(self, key, val)


_scratch = threading.local()


def _scratch_bool(shape: tuple[int, int]) -> np.ndarray:
    """A reused per-thread bool buffer (fresh large allocations cost page faults on every chunk)."""
    size = shape[0] * shape[1]
    buf = getattr(_scratch, "bool", None)
    if buf is None or buf.size < size:
        buf = np.empty(size, bool)
        _scratch.bool = buf
    return buf[:size].reshape(shape)


def _check_finite_order(block: np.ndarray) -> None:
    if np.issubdtype(block.dtype, np.floating) and np.isnan(block).any():
        raise ValueError("predictions contain NaN")


def _scan_rows(x: np.ndarray, k: int) -> _RowScan:
    """Top-k selection of every row of ``x`` ``[n, C]`` (C >= k >= 1), as the starter makes it."""
    n, num_classes = x.shape
    lanes = max(_NUM_LANES, 2 * k)
    if num_classes < 2 * lanes:
        xf = x.astype(np.float64)
        _check_finite_order(xf)
        order = np.argsort(-xf, axis=1, kind="stable")
        values = np.take_along_axis(xf, order, axis=1)
        classes = order.astype(np.int64)
        count = np.full(n, num_classes, np.int64)
        exact = np.ones(n, bool)
    else:
        x = np.ascontiguousarray(x)
        depth = num_classes // lanes
        # Lane j holds columns j, j + lanes, ...: the max over the depth axis is an elementwise
        # maximum of contiguous vectors (fast), and lanes are disjoint column sets.
        lane_max = x[:, : depth * lanes].reshape(n, depth, lanes).max(axis=1)
        _check_finite_order(lane_max)
        _check_finite_order(x[:, depth * lanes :])
        # k lanes have a maximum >= bound, so at least k scores of the row are >= bound.
        bound = np.partition(lane_max, lanes - k, axis=1)[:, lanes - k]
        mask = np.greater_equal(x, bound[:, None], out=_scratch_bool(x.shape))
        rows, cols = np.divmod(np.flatnonzero(mask), num_classes)
        count = np.bincount(rows, minlength=n)
        exact = count <= _MAX_CANDIDATES
        slot = np.arange(rows.size) - (np.cumsum(count) - count)[rows]
        keep = exact[rows]
        rows, cols, slot = rows[keep], cols[keep], slot[keep]
        w = int(count[exact].max()) if exact.any() else k
        values = np.full((n, w), -np.inf)
        classes = np.full((n, w), -1, np.int64)
        values[rows, slot] = x[rows, cols]
        classes[rows, slot] = cols
        # flatnonzero lists classes in increasing order: a stable sort keeps ties class-ascending.
        order = np.argsort(-values, axis=1, kind="stable")
        values = np.take_along_axis(values, order, axis=1)
        classes = np.take_along_axis(classes, order, axis=1)
    top_classes = classes[:, :k].copy()
    top_values = values[:, :k].copy()
    argmax = classes[:, 0].copy()
    # Rows whose k-th score ties with the (k+1)-th: the kept subset is argpartition's choice.
    redo = ~exact
    if values.shape[1] > k:
        redo |= exact & (values[:, k] == values[:, k - 1])
    for v in np.flatnonzero(redo):
        row = x[v]
        sel = np.argpartition(row, -k)[-k:]
        top_classes[v] = sel
        top_values[v] = row[sel]
        if not exact[v]:
            argmax[v] = int(np.argmax(row))
    return _RowScan(
        values=values,
        classes=classes,
        count=count,
        exact=exact,
        top_classes=top_classes,
        top_values=top_values,
        argmax=argmax,
    )


def _perr_row(row: np.ndarray, labels_row: np.ndarray) -> float:
    """The starter's PERR of one video (including its argpartition and m = 0 behaviour)."""
    m = int(np.sum(labels_row))
    top = np.argpartition(row, -m)[-m:]
    chosen = top[row[top] > 0]
    return float(labels_row[chosen].sum()) / top.size


def _perr_rows(x: np.ndarray, labels: _DenseLabels | _SparseLabels, scan: _RowScan) -> np.ndarray:
    """PERR of every row ``[n]`` (float64)."""
    n = x.shape[0]
    sums = labels.row_sums()
    m = np.trunc(sums).astype(np.int64)
    out = np.zeros(n, np.float64)
    w = scan.values.shape[1]
    fast = scan.exact & (m >= 1) & (m < scan.count)
    rows = np.flatnonzero(fast)
    if rows.size:
        mr = m[rows]
        at = scan.values[rows, mr - 1]
        nxt = scan.values[rows, np.minimum(mr, w - 1)]
        tied = nxt == at
        rows, mr = rows[~tied], mr[~tied]
        fast[:] = False
        fast[rows] = True
    if rows.size:
        width = int(mr.max())
        vals = scan.values[rows, :width]
        cls = scan.classes[rows, :width]
        lab = labels.gather(np.repeat(rows, width), cls.reshape(-1)).reshape(rows.size, width)
        take = (np.arange(width)[None, :] < mr[:, None]) & (vals > 0)
        out[rows] = np.where(take, lab, 0.0).sum(axis=1) / mr
    # Everything else: unlabeled all-zero rows give exactly 0; the rest replays the starter per row.
    zero = labels.row_nonzero() == 0
    for v in np.flatnonzero(~fast & ~zero):
        out[v] = _perr_row(x[v], labels.row(v))
    return out


# ----------------------------------------------------------------------------------------------------
# The starter's seed-0 shuffle and heap order.
# ----------------------------------------------------------------------------------------------------


def _mt_seed0() -> np.random.MT19937:
    """A NumPy MT19937 in the state of ``random.seed(0)`` (same 32-bit output stream)."""
    state = random.Random(0).getstate()[1]
    gen = np.random.MT19937()
    gen.state = {
        "bit_generator": "MT19937",
        "state": {"key": np.array(state[:624], dtype=np.uint32), "pos": int(state[624])},
    }
    return gen


def _randbelow_sequence(n: int) -> np.ndarray:
    """``[_randbelow(n - i) for i in range(n)]`` of ``random.Random(0)``, vectorized.

    ``_randbelow(m)`` draws ``getrandbits(m.bit_length())`` (one 32-bit word shifted right) until the
    value is < m. Draws are consumed in chunks: a draw is surely accepted when it is below m minus the
    number of draws before it in the chunk, surely rejected when >= m; the first undecided draw ends
    the chunk and is decided exactly.
    """
    gen = _mt_seed0()
    buf = gen.random_raw(n + n // 2 + 64).astype(np.int64)
    p = 0
    out = np.empty(n, np.int64)
    i = 0
    while i < n:
        m = n - i
        bits = m.bit_length()
        low = 1 << (bits - 1)
        size = min(m - low + 1, max(8, int((1 << bits) ** 0.5)))
        if p + size > buf.size:
            more = gen.random_raw(max(size, n // 4 + 64)).astype(np.int64)
            buf = np.concatenate([buf[p:], more])
            p = 0
        draws = buf[p : p + size] >> (32 - bits)
        sure_accept = draws < m - np.arange(size)
        undecided = ~sure_accept & (draws < m)
        first = int(undecided.argmax()) if undecided.any() else size
        accepted = draws[:first][sure_accept[:first]]
        out[i : i + accepted.size] = accepted
        i += accepted.size
        p += first
        if first < size:
            if draws[first] < n - i:
                out[i] = draws[first]
                i += 1
            p += 1
    return out


def _permutation_from_draws(js: np.ndarray) -> np.ndarray:
    """``random.sample``'s pool algorithm for ``range(n)`` given its draws, vectorized.

    Step i picks ``result[i] = pool[j_i]`` and moves ``pool[n-1-i]`` into slot ``j_i``. The value in a
    slot is the one written by the latest earlier step that picked that slot (or the slot's own index);
    the value written at step i is the content of slot ``n-1-i`` at that time, which resolves along a
    chain of earlier steps (pointer jumping).
    """
    n = js.size
    idx = np.arange(n, dtype=np.int64)
    order = np.argsort(js, kind="stable")
    sj = js[order]
    same_as_prev = np.zeros(n, bool)
    same_as_prev[1:] = sj[1:] == sj[:-1]
    prev_same = np.full(n, -1, np.int64)  # latest earlier step with the same draw
    prev_same[order[1:]] = np.where(same_as_prev[1:], order[:-1], -1)
    is_last = np.ones(n, bool)
    is_last[:-1] = sj[:-1] != sj[1:]
    last = np.full(n, -1, np.int64)  # latest step drawing value x (all such steps are <= n-1-x)
    last[sj[is_last]] = order[is_last]
    second = np.full(n, -1, np.int64)
    ends = np.flatnonzero(is_last)
    two = same_as_prev[ends]
    second[sj[ends[two]]] = order[ends[two] - 1]
    tail = n - 1 - idx
    writer = last[tail]
    writer = np.where(writer == idx, second[tail], writer)  # a step does not write before itself
    root = np.where(writer >= 0, writer, idx)
    while True:
        nxt = root[root]
        if np.array_equal(nxt, root):
            break
        root = nxt
    content = n - 1 - root
    return np.where(prev_same >= 0, content[np.maximum(prev_same, 0)], js)


def _make_permutation(n: int) -> np.ndarray:
    if n <= 4096 or n >= 1 << 31:  # small: Python is faster; >= 2**31: getrandbits(> 32 bits)
        perm = np.array(random.Random(0).sample(range(n), n), dtype=np.int64)
    else:
        perm = _permutation_from_draws(_randbelow_sequence(n))
    perm.setflags(write=False)
    return perm


_small_permutation = lru_cache(maxsize=4096)(_make_permutation)
_large_permutation = lru_cache(maxsize=2)(_make_permutation)


def shuffle_permutation(n: int) -> np.ndarray:
    """``random.seed(0); random.sample(range(n), n)`` as an int64 array ``[n]`` (read-only, cached)."""
    n = int(n)
    if n < 0:
        raise ValueError("n must be >= 0")
    return _small_permutation(n) if n <= 1 << 16 else _large_permutation(n)


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


def _small_ints(values: np.ndarray, bound: int) -> np.ndarray:
    """``values`` (all in [0, bound)) as uint16 when they fit: NumPy radix-sorts 16-bit keys."""
    return values.astype(np.uint16) if bound <= 1 << 16 else values


def _ap_from_ranked(positive: np.ndarray, total_positives: float) -> float:
    if total_positives == 0 or positive.size == 0:
        return 0.0
    ranks = np.flatnonzero(positive) + 1.0
    hits = np.arange(1, ranks.size + 1, dtype=np.float64)
    return float(np.sum(hits / ranks * (1.0 / total_positives)))


def _global_ap(scores: np.ndarray, labels: np.ndarray, total_positives: float) -> float:
    if total_positives == 0 or scores.size == 0:
        return 0.0
    return _ap_from_ranked(_ranked_positives(scores, labels), total_positives)


def _class_aps(
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
        by_class = np.argsort(_small_ints(classes, num_classes), kind="stable")
        for cls in heavy:
            if class_positives[cls] == 0:
                continue
            sel = by_class[starts[cls] : starts[cls] + counts[cls]]
            aps[cls] = _ap_from_ranked(
                _ranked_positives(scores[sel], labels[sel]), float(class_positives[cls])
            )
    return aps


# ----------------------------------------------------------------------------------------------------
# Accumulator.
# ----------------------------------------------------------------------------------------------------


def _chunk_rows(num_classes: int) -> int:
    return max(1, _CHUNK_ELEMENTS // max(num_classes, 1))


class MetricAccumulator:
    """Streaming GAP / Hit@1 / PERR / sparse mAP / loss, equal to the starter's ``EvaluationMetrics``.

    Feeding the same batches in the same order as to ``EvaluationMetrics.accumulate`` gives the same
    ``get()`` values (ties included: the heap push order is kept). Without exact score ties the values
    do not depend on how the videos are split into batches, so they equal the one-call functions.

    Memory: per video only its ``top_k`` entries (score float64, label float64, class int32: 20 bytes
    each) plus ``[C]`` per-class positive counts -- O(videos * top_k), never O(videos * classes).

    Distributed use: ``state()`` exports the accumulator as arrays; ``from_states([s0, s1, ...])`` (or
    ``merge``) rebuilds the accumulator of all workers, as if worker 0's batches had been accumulated
    first, then worker 1's, and so on (the order only matters for exact ties).
    """

    def __init__(self, num_classes: int, top_k: int = 20) -> None:
        if int(num_classes) < 1:
            raise ValueError("num_classes must be >= 1")
        if int(top_k) < 1:
            raise ValueError("top_k must be a positive integer")
        self.num_classes = int(num_classes)
        self.top_k = int(top_k)
        self.reset()

    # -- accumulation ------------------------------------------------------------------------------

    def reset(self) -> None:
        """Forget everything accumulated."""
        self._scores: list[np.ndarray] = []
        self._labels: list[np.ndarray] = []
        self._classes: list[np.ndarray] = []
        self._class_positives = np.zeros(self.num_classes, np.float64)
        self._num_videos = 0
        self._hit_sum = 0.0
        self._perr_sum = 0.0
        self._loss_sum = 0.0
        self._loss_count = 0

    @property
    def num_videos(self) -> int:
        return self._num_videos

    def update(
        self, predictions: Any, labels: Any, loss: Any = None, *, _rank_only: bool = False
    ) -> dict[str, float]:
        """Accumulate one batch.

        Args:
          predictions: ``[B, C]`` scores (float32/float64/...; not upcast before the top-k selection).
          labels: ``[B, C]`` multi-hot (bool/int/float) or a sequence of B class-id arrays.
          loss: optional scalar or ``[B]`` per-video losses; its mean is weighted by B.

        Returns:
          The batch's ``hit_at_one`` and ``perr`` (and ``loss``), like ``EvaluationMetrics.accumulate``.
        """
        pred, lab = _as_inputs(predictions, labels)
        n, num_classes = pred.shape
        if num_classes != self.num_classes:
            raise ValueError(f"expected {self.num_classes} classes, got {num_classes}")
        k = min(self.top_k, num_classes)
        out: dict[str, float] = {}
        if n == 0:
            return out
        step = _chunk_rows(num_classes)
        top_scores = np.empty((n, k), np.float64)
        top_classes = np.empty((n, k), np.int64)
        top_labels = np.empty((n, k), np.float64)
        hit = perr_sum = 0.0
        for lo in range(0, n, step):
            hi = min(n, lo + step)
            x = pred[lo:hi]
            part = lab.slice(lo, hi)
            scan = _scan_rows(x, k)
            top_scores[lo:hi] = scan.top_values
            top_classes[lo:hi] = scan.top_classes
            rows = np.repeat(np.arange(hi - lo), k)
            top_labels[lo:hi] = part.gather(rows, scan.top_classes.reshape(-1)).reshape(hi - lo, k)
            if not _rank_only:
                hit += float(part.gather(np.arange(hi - lo), scan.argmax).sum())
                perr_sum += float(_perr_rows(x, part, scan).sum())
        # The starter's pooled order for a batch: class-major, videos in order inside a class.
        flat_classes = top_classes.reshape(-1)
        push = np.argsort(_small_ints(flat_classes, num_classes), kind="stable")
        self._scores.append(top_scores.reshape(-1)[push])
        self._labels.append(top_labels.reshape(-1)[push])
        self._classes.append(flat_classes[push].astype(np.int32))
        self._class_positives += lab.class_sums()
        self._num_videos += n
        self._hit_sum += hit
        self._perr_sum += perr_sum
        if not _rank_only:
            out = {"hit_at_one": hit / n, "perr": perr_sum / n}
        if loss is not None:
            mean_loss = float(np.mean(np.asarray(loss, dtype=np.float64)))
            self._loss_sum += mean_loss * n
            self._loss_count += n
            out["loss"] = mean_loss
        return out

    def _entries(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if len(self._scores) != 1:
            if self._scores:
                self._scores = [np.concatenate(self._scores)]
                self._labels = [np.concatenate(self._labels)]
                self._classes = [np.concatenate(self._classes)]
            else:
                self._scores = [np.zeros(0, np.float64)]
                self._labels = [np.zeros(0, np.float64)]
                self._classes = [np.zeros(0, np.int32)]
        return self._scores[0], self._labels[0], self._classes[0]

    # -- results -----------------------------------------------------------------------------------

    def gap(self) -> float:
        """GAP@top_k of everything accumulated (0.0 when there are no positives)."""
        scores, labels, _ = self._entries()
        return _global_ap(scores, labels, float(self._class_positives.sum()))

    def class_average_precisions(self) -> np.ndarray:
        """Sparse per-class AP ``[C]`` (NaN for classes without positives, which mAP drops)."""
        scores, labels, classes = self._entries()
        aps = _class_aps(scores, labels, classes.astype(np.int64), self._class_positives)
        return np.where(self._class_positives > 0, aps, np.nan)

    def mean_average_precision(self) -> float:
        """Mean of the sparse per-class APs over classes with positives (NaN if there are none)."""
        aps = self.class_average_precisions()
        kept = aps[self._class_positives > 0]
        return float(kept.mean()) if kept.size else float("nan")

    def result(self) -> dict[str, float]:
        """``{"gap", "hit_at_one", "perr", "map"}`` (+ ``"loss"`` if losses were given).

        Raises ValueError when no video was accumulated (as the starter's ``get``).
        """
        if self._num_videos <= 0:
            raise ValueError("no videos accumulated")
        out = {
            "gap": self.gap(),
            "hit_at_one": self._hit_sum / self._num_videos,
            "perr": self._perr_sum / self._num_videos,
            "map": self.mean_average_precision(),
        }
        if self._loss_count:
            out["loss"] = self._loss_sum / self._loss_count
        return out

    # -- state export / merge ----------------------------------------------------------------------

    def state(self) -> dict[str, np.ndarray]:
        """The accumulator as arrays (pickle- and gather-friendly).

        ``scores``/``labels`` float64 ``[N]`` and ``classes`` int32 ``[N]``: pooled top-k entries in push
        order (N = videos * min(top_k, C)); ``class_positives`` float64 ``[C]``; 0-d ``num_classes``,
        ``top_k``, ``num_videos``, ``loss_count`` (int64) and ``hit_sum``, ``perr_sum``, ``loss_sum``
        (float64); ``version``.
        """
        scores, labels, classes = self._entries()
        return {
            "version": np.array(_STATE_VERSION, np.int64),
            "num_classes": np.array(self.num_classes, np.int64),
            "top_k": np.array(self.top_k, np.int64),
            "scores": scores.copy(),
            "labels": labels.copy(),
            "classes": classes.copy(),
            "class_positives": self._class_positives.copy(),
            "num_videos": np.array(self._num_videos, np.int64),
            "hit_sum": np.array(self._hit_sum, np.float64),
            "perr_sum": np.array(self._perr_sum, np.float64),
            "loss_sum": np.array(self._loss_sum, np.float64),
            "loss_count": np.array(self._loss_count, np.int64),
        }

    def merge(self, *others: MetricAccumulator | Mapping[str, np.ndarray]) -> MetricAccumulator:
        """Append other accumulators (or their ``state()``), in the given order; returns self."""
        for other in others:
            st = other.state() if isinstance(other, MetricAccumulator) else other
            if int(st["version"]) != _STATE_VERSION:
                raise ValueError(f"unsupported state version {int(st['version'])}")
            if int(st["num_classes"]) != self.num_classes or int(st["top_k"]) != self.top_k:
                raise ValueError("states differ in num_classes or top_k")
            scores = np.asarray(st["scores"], np.float64)
            labels = np.asarray(st["labels"], np.float64)
            classes = np.asarray(st["classes"], np.int32)
            if not (scores.shape == labels.shape == classes.shape and scores.ndim == 1):
                raise ValueError("malformed state: scores/labels/classes must be equal 1-D arrays")
            self._scores.append(scores)
            self._labels.append(labels)
            self._classes.append(classes)
            self._class_positives += np.asarray(st["class_positives"], np.float64)
            self._num_videos += int(st["num_videos"])
            self._hit_sum += float(st["hit_sum"])
            self._perr_sum += float(st["perr_sum"])
            self._loss_sum += float(st["loss_sum"])
            self._loss_count += int(st["loss_count"])
        return self

    @classmethod
    def from_states(cls, states: Sequence[Mapping[str, np.ndarray]]) -> MetricAccumulator:
        """Accumulator of several workers' ``state()`` dicts, concatenated in the given (worker) order."""
        if not states:
            raise ValueError("no states given")
        acc = cls(int(states[0]["num_classes"]), int(states[0]["top_k"]))
        return acc.merge(*states)


# ----------------------------------------------------------------------------------------------------
# One-call functions.
# ----------------------------------------------------------------------------------------------------


def gap(predictions: Any, labels: Any, top_k: int = 20) -> float:
    """Global average precision at ``top_k`` (``eval_util.calculate_gap``).

    Args:
      predictions: ``[V, C]`` scores, any real dtype (float32 is not upcast before top-k selection).
      labels: ``[V, C]`` multi-hot (bool/int/float) or a sequence of V class-id arrays.
      top_k: predictions kept per video (``min(top_k, C)`` are used).

    Returns:
      GAP as a float; 0.0 when there is no positive label.
    """
    pred, _ = _as_inputs(predictions, labels)
    acc = MetricAccumulator(max(pred.shape[1], 1), top_k)
    if pred.shape[1] == 0:
        return 0.0
    acc.update(pred, labels, _rank_only=True)
    return acc.gap()


def mean_average_precision(predictions: Any, labels: Any, top_k: int = 20) -> float:
    """Sparse mAP of the starter's ``eval.py`` (per-class AP over pooled top-k entries).

    Args/shapes as :func:`gap`. Returns NaN when no class has a positive label.
    """
    pred, _ = _as_inputs(predictions, labels)
    acc = MetricAccumulator(pred.shape[1], top_k)
    acc.update(pred, labels, _rank_only=True)
    return acc.mean_average_precision()


def hit_at_one(predictions: Any, labels: Any) -> float:
    """Mean over videos of the label of the top-scored class (``calculate_hit_at_one``).

    Args: ``predictions`` ``[V, C]``, ``labels`` ``[V, C]`` or V class-id arrays. V must be > 0.
    """
    pred, lab = _as_inputs(predictions, labels)
    if pred.shape[0] == 0:
        raise ValueError("no videos")
    top = np.argmax(pred, axis=1)
    return float(lab.gather(np.arange(pred.shape[0]), top).mean())


def perr(predictions: Any, labels: Any) -> float:
    """Precision at equal recall rate (``calculate_precision_at_equal_recall_rate``), mean over videos.

    Args: ``predictions`` ``[V, C]``, ``labels`` ``[V, C]`` or V class-id arrays. V must be > 0.
    """
    pred, lab = _as_inputs(predictions, labels)
    n, num_classes = pred.shape
    if n == 0:
        raise ValueError("no videos")
    k = min(20, num_classes)
    total = 0.0
    step = _chunk_rows(num_classes)
    for lo in range(0, n, step):
        hi = min(n, lo + step)
        x = pred[lo:hi]
        total += float(_perr_rows(x, lab.slice(lo, hi), _scan_rows(x, k)).sum())
    return total / n
