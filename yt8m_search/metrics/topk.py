"""Per-row selection: the starter's top-k of every row, its argmax, the sorted head of each row, and
PERR from them (package docstring: "Top-k selection", "Hit@1", "PERR").

Rows are scanned in chunks of about ``CHUNK_ELEMENTS`` scores. Narrow rows are fully sorted; wide rows
go through a vectorized bound-and-filter (the k-th largest of ``NUM_LANES`` interleaved column-group
maxima bounds the k-th largest score from below, so only the ~k entries above it are gathered and
sorted). Rows whose kept set is ambiguous (a tie at the k-th score) or that have more than
``MAX_CANDIDATES`` candidates replay the starter's own ``np.argpartition``.
"""

from __future__ import annotations

import threading

import numpy as np

from yt8m_search.metrics.labels import Labels

NUM_LANES = 128  # interleaved column groups whose maxima bound the k-th largest score from below
MAX_CANDIDATES = 256  # rows with more candidates than this take the per-row argpartition path
CHUNK_ELEMENTS = 1 << 23  # rows are processed in chunks of about this many scores


def chunk_rows(num_classes: int) -> int:
    """Rows per chunk for rows of ``num_classes`` scores."""
    return max(1, CHUNK_ELEMENTS // max(num_classes, 1))


class RowScan:
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


Heads = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # values, classes, count, exact


def _sorted_rows(x: np.ndarray) -> Heads:
    """Narrow rows: every score of every row, sorted (score desc, class asc)."""
    n, num_classes = x.shape
    xf = x.astype(np.float64)
    _check_finite_order(xf)
    order = np.argsort(-xf, axis=1, kind="stable")
    values = np.take_along_axis(xf, order, axis=1)
    classes = order.astype(np.int64)
    return values, classes, np.full(n, num_classes, np.int64), np.ones(n, bool)


def _bounded_heads(x: np.ndarray, k: int, lanes: int) -> Heads:
    """Wide rows: only the scores >= a lower bound of the k-th largest, sorted (score desc, class asc)."""
    n, num_classes = x.shape
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
    exact = count <= MAX_CANDIDATES
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
    return np.take_along_axis(values, order, axis=1), np.take_along_axis(classes, order, axis=1), count, exact


def scan_rows(x: np.ndarray, k: int) -> RowScan:
    """Top-k selection of every row of ``x`` ``[n, C]`` (C >= k >= 1), as the starter makes it."""
    lanes = max(NUM_LANES, 2 * k)
    if x.shape[1] < 2 * lanes:
        values, classes, count, exact = _sorted_rows(x)
    else:
        values, classes, count, exact = _bounded_heads(x, k, lanes)
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
    return RowScan(
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


def perr_rows(x: np.ndarray, labels: Labels, scan: RowScan) -> np.ndarray:
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
