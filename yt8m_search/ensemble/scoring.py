"""Fast GAP of a weighted sum of sparse top-k predictions: what every selection move is scored by.

Each trial saved its top-k validation predictions (k = 20 by default). A member's score for a class
outside its top-k is taken as 0, so the ensemble's score of (video, class) is ``sum_j w_j s_j`` over
the members that ranked the class. This is exact for a single member (its top-20 are its top-20)
and a lower bound of the dense ensemble's scores otherwise (its GAP is an approximation, not a
bound: GAP depends on ranks). The bundle's own validation GAP (dense, from the stored weights) is
the number the step reports as ``gap``, this approximation's as ``selection_gap``.

Per video only the classes in the union of the current members' top-k (plus the candidate being
tried) can score above 0, so a move is scored on a dense ``[V, W]`` float32 matrix over those
"slots" (W = the widest union + k), not ``[V, C]``: each score and its label packed into one uint32
key, per-row top-20 by ``np.partition``, one sort of the pooled keys (an exact float32 tie between a
positive and a negative ranks the negative first; the starter's tie-breaking lives in
``metrics.gap``, which computes every reported number). Moves are scored on a thread pool.
"""

from __future__ import annotations

import concurrent.futures as cf
import threading
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from yt8m_search import metrics
from yt8m_search.ensemble.candidates import Candidate
from yt8m_search.ensemble.errors import EnsembleError

__all__ = ["TOP_K", "Scorer", "ensemble_gap"]

TOP_K = 20


def _pooled_gap(scores: np.ndarray, labels: np.ndarray, k: int, total_positives: float) -> float:
    """GAP@k of ``scores`` ``[V, W]`` float32 (>= 0; 0 = not predicted) with ``labels`` ``[V, W]`` bool.

    Entries with score 0 are left out of the pooled list (a class no member ranked). Each entry is one
    uint32 key, ``float32 bits << 1 | is_negative`` (a float32 >= 0 has 31 significant bits, and its
    bits order like its values), so an exact score tie between a positive and a negative ranks the
    negative first, both inside a video's top k and in the pooled list.
    """
    if total_positives <= 0:
        return 0.0
    width = scores.shape[1]
    key = scores.view(np.uint32) << np.uint32(1)
    key |= (~labels).view(np.uint8)
    pooled = np.partition(key, width - k, axis=1)[:, width - k:] if width > k else key
    pooled = np.sort(pooled, axis=None)
    pooled = pooled[np.searchsorted(pooled, np.uint32(2)):]  # drop score 0
    positive = np.flatnonzero((pooled & np.uint32(1)) == 0)
    if positive.size == 0:
        return 0.0
    ranks = (pooled.size - positive)[::-1].astype(np.float64)  # 1-based ranks, best first
    return float(np.sum(np.arange(1, positive.size + 1, dtype=np.float64) / ranks) / total_positives)


def _ranked(scores: np.ndarray, labels: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``_pooled_gap``'s ranking with each entry's video: (rows, positive) ``[N]``, best first."""
    width = scores.shape[1]
    key = scores.view(np.uint32) << np.uint32(1)
    key |= (~labels).view(np.uint8)
    if width > k:
        key = np.take_along_axis(key, np.argpartition(key, width - k, axis=1)[:, width - k:], axis=1)
    rows = np.repeat(np.arange(key.shape[0], dtype=np.int64), key.shape[1])
    key = key.reshape(-1)
    order = np.argsort(key, kind="stable")
    key, rows = key[order], rows[order]
    start = int(np.searchsorted(key, np.uint32(2)))  # drop score 0
    return rows[start:][::-1].copy(), ((key[start:] & np.uint32(1)) == 0)[::-1].copy()


def _chunks(n: int, num_classes: int) -> Iterable[tuple[int, int]]:
    step = max(1, (1 << 22) // max(num_classes, 1))  # ~4M table cells per chunk
    for lo in range(0, n, step):
        yield lo, min(n, lo + step)


def _number_new(table: np.ndarray, ids: Sequence[np.ndarray], used: np.ndarray) -> None:
    """Number ids per row in first-seen order: ``table[v, id]`` gets the next free number of row v
    (``used[v]``) where it is still -1. ``ids``: arrays ``[n, k]`` of distinct ids per row."""
    r = np.arange(table.shape[0])[:, None]
    for block in ids:
        current = table[r, block]
        new = current < 0
        numbers = used[:, None] + np.cumsum(new, axis=1, dtype=np.int32) - 1
        table[r, block] = np.where(new, numbers, current)
        used += np.count_nonzero(new, axis=1).astype(used.dtype)


class Scorer:
    """Scores weighted multisets of candidates on the validation set (see the module doc)."""

    def __init__(self, candidates: Sequence[Candidate], top_k: int, workers: int) -> None:
        first = candidates[0]
        for c in candidates[1:]:
            if c.video_ids is not first.video_ids and not np.array_equal(c.video_ids, first.video_ids):
                raise EnsembleError(f"candidates {first.trial_id} and {c.trial_id} are not aligned on the same "
                                    "videos (use load_candidates)")
        self.num_videos = len(first.video_ids)
        max_class = max(int(c.classes.max(initial=-1)) for c in candidates)
        max_label = max((int(x.max()) for x in first.labels if len(x)), default=-1)
        self.num_classes = max(max_class, max_label, max(c.num_classes for c in candidates) - 1) + 1
        self.k = min(top_k, self.num_classes)
        for c in candidates:
            if c.classes.shape != (self.num_videos, c.classes.shape[1]) or c.classes.shape != c.scores.shape:
                raise EnsembleError(f"trial {c.trial_id}: predictions must be [{self.num_videos}, k]")
            if not np.all(np.isfinite(c.scores)) or np.any(c.scores < 0):
                raise EnsembleError(f"trial {c.trial_id}: scores must be finite probabilities >= 0")
            if c.classes.min(initial=0) < 0:
                raise EnsembleError(f"trial {c.trial_id}: negative class ids in its predictions")
            if np.any(np.diff(np.sort(c.classes, axis=1), axis=1) == 0):
                raise EnsembleError(f"trial {c.trial_id}: a video's top-k predictions repeat a class")
        self.scores = [np.ascontiguousarray(c.scores, dtype=np.float32).reshape(-1) for c in candidates]
        self.ranks = [c.classes.shape[1] for c in candidates]
        self.width_extra = max(self.ranks)
        self._index(candidates)
        self._start(workers)

    def _start(self, workers: int) -> None:
        self.workers = max(1, workers)
        self._local = threading.local()
        self._pool = cf.ThreadPoolExecutor(self.workers) if self.workers > 1 else None
        self.evaluations = 0
        self.members: tuple[int, ...] | None = None
        self.layout(())

    def resampled(self, rows: np.ndarray) -> Scorer:
        """This scorer on the videos ``rows`` (repeats allowed: a bootstrap resample), from its index
        (no candidate is read again). Close it after use."""
        new = object.__new__(Scorer)
        new.num_videos, new.num_classes, new.k = len(rows), self.num_classes, self.k
        new.scores = [s.reshape(self.num_videos, -1)[rows].reshape(-1) for s in self.scores]
        new.ranks, new.width_extra, new.global_width = self.ranks, self.width_extra, self.global_width
        new.gslots = [g[rows] for g in self.gslots]
        new.hits = [h[rows] for h in self.hits]
        new.video_positives = self.video_positives[rows]
        new.total_positives = float(new.video_positives.sum())
        new._start(self.workers)
        return new

    def _index(self, candidates: Sequence[Candidate]) -> None:
        """Global slots: per video, every class any candidate ranked gets a column (``gslots[j]``
        ``[V, k]``: the column of candidate j's classes, ``global_width`` columns); ``hits[j]``
        ``[V, k]``: is the class a true label; ``total_positives``: all (video, label) pairs."""
        n, num_classes = self.num_videos, self.num_classes
        labels = candidates[0].labels
        lengths = np.fromiter((len(x) for x in labels), np.int64, len(labels))
        values = np.concatenate([np.asarray(x, np.int64) for x in labels]) if len(labels) else np.zeros(0, np.int64)
        if values.size and (values.min() < 0 or values.max() >= num_classes):
            raise EnsembleError(f"label ids must lie in [0, {num_classes})")
        starts = np.concatenate([[0], np.cumsum(lengths)])
        gslots = [np.empty(c.classes.shape, np.int32) for c in candidates]
        self.hits = [np.empty(c.classes.shape, bool) for c in candidates]
        width, total = 0, 0
        self.video_positives = np.zeros(n, np.int64)
        for lo, hi in _chunks(n, num_classes):
            r = np.arange(hi - lo)[:, None]
            classes = [c.classes[lo:hi].astype(np.int64) for c in candidates]
            table = np.full((hi - lo, num_classes), -1, np.int32)
            used = np.zeros(hi - lo, np.int32)
            _number_new(table, classes, used)
            truth = np.zeros((hi - lo, num_classes), bool)
            truth[np.repeat(np.arange(hi - lo), lengths[lo:hi]), values[starts[lo]:starts[hi]]] = True
            total += int(np.count_nonzero(truth))
            self.video_positives[lo:hi] = np.count_nonzero(truth, axis=1)
            for j, cls in enumerate(classes):
                gslots[j][lo:hi] = table[r, cls]
                self.hits[j][lo:hi] = truth[r, cls]
            width = max(width, int(used.max(initial=0)))
        index = np.int16 if width < 2**15 else np.int32
        self.gslots = [g.astype(index) for g in gslots]
        self.global_width = width
        self.total_positives = float(total)

    def layout(self, members: Iterable[int]) -> None:
        """Slots for ``members``: per video the union of their classes (numbered in member order),
        then one extra column per rank of a candidate's classes outside that union."""
        members = sorted(set(members))
        if tuple(members) == self.members:
            return
        n = self.num_videos
        index = np.int16 if self.global_width < 2**15 else np.int32
        remap = np.full((n, max(self.global_width, 1)), -1, index)  # global column -> union slot
        used = np.zeros(n, np.int32)
        _number_new(remap, [self.gslots[m] for m in members], used)
        base = int(used.max(initial=0))  # the widest union
        self.width = max(base + self.width_extra, self.k)
        index = np.int16 if self.width < 2**15 else np.int32
        r = np.arange(n)[:, None]
        self.slots = []
        for g in self.gslots:
            slot = remap[r, g].astype(np.int32)
            missing = slot < 0
            slot = np.where(missing, base - 1 + np.cumsum(missing, axis=1, dtype=np.int32), slot)
            self.slots.append(slot.astype(index).reshape(-1))
        self._row_bases: dict[int, np.ndarray] = {}
        self.base_labels = np.zeros((n, self.width), bool)
        for m in members:
            self.base_labels.reshape(-1)[self._flat(m)] = self.hits[m].reshape(-1)
        self.members = tuple(members)

    def _flat(self, j: int) -> np.ndarray:
        k = self.ranks[j]
        rows = self._row_bases.get(k)
        if rows is None:
            rows = self._row_bases[k] = np.repeat(np.arange(self.num_videos, dtype=np.int64) * self.width, k)
        return rows + self.slots[j]

    def compose(self, weights: Mapping[int, float]) -> np.ndarray:
        """``sum_j w_j * scores_j`` on the slots, float32 ``[V, W]``, summed in candidate order."""
        out = np.zeros((self.num_videos, self.width), np.float32)
        flat = out.reshape(-1)
        for j in sorted(weights):
            if weights[j]:
                flat[self._flat(j)] += np.float32(weights[j]) * self.scores[j]
        return out

    def gap(self, base: np.ndarray, adds: Sequence[tuple[int, float]] = ()) -> float:
        """GAP of ``base`` plus ``w * scores_j`` for each ``(j, w)`` in adds (base is not modified)."""
        buffers = getattr(self._local, "buffers", None)
        if buffers is None or buffers[0].shape != base.shape:
            buffers = self._local.buffers = (np.empty(base.shape, np.float32), np.empty(base.shape, bool))
        scores, labels = buffers
        np.copyto(scores, base)
        np.copyto(labels, self.base_labels)
        for j, w in adds:
            flat = self._flat(j)
            scores.reshape(-1)[flat] += np.float32(w) * self.scores[j]
            labels.reshape(-1)[flat] = self.hits[j].reshape(-1)
        return _pooled_gap(scores, labels, self.k, self.total_positives)

    def ranked(self, base: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The video and positivity ``[N]`` of the pooled top-k entries of ``base`` (composed on the
        current layout), best first, ranked as ``gap`` ranks them (for ``bootstrap``)."""
        return _ranked(base, self.base_labels, self.k)

    def gaps(self, jobs: Sequence[tuple[np.ndarray, Sequence[tuple[int, float]]]]) -> list[float]:
        """``gap(base, adds)`` for every job, on the thread pool."""
        self.evaluations += len(jobs)
        if self._pool is None or len(jobs) < 2:
            return [self.gap(b, a) for b, a in jobs]
        return list(self._pool.map(lambda job: self.gap(*job), jobs))

    def weighted_gap(self, weights: Mapping[int, int]) -> tuple[float, np.ndarray]:
        """The canonical GAP of a multiset and its composed scores (its members laid out first)."""
        self.layout(j for j, w in weights.items() if w)
        self.evaluations += 1
        base = self.compose(weights)
        return self.gap(base), base

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None


def ensemble_gap(candidates: Sequence[Candidate], weights: Sequence[int], top_k: int = TOP_K) -> float:
    """GAP of the weighted ensemble of aligned candidates from their top-k predictions (0 outside).

    Computed with ``metrics.gap`` on the members' union of classes per video (every class outside
    it scores 0), so it equals the selection's GAP except for how exact float32 ties are broken.
    """
    scorer = Scorer(candidates, top_k, 1)
    chosen = {j: w for j, w in enumerate(weights) if w}
    scorer.layout(chosen)
    dense = scorer.compose(chosen).astype(np.float64)
    labels = scorer.base_labels
    union_positives = float(np.count_nonzero(labels))
    if union_positives == 0:
        return 0.0
    # metrics.gap counts only the union's positives; rescale to all of the videos' positives.
    return metrics.gap(dense, labels, top_k=top_k) * union_positives / scorer.total_positives
