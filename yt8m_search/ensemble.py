"""Budgeted ensemble selection: the sweep's deliverable for the 2nd YouTube-8M challenge (1 GB).

From a finished sweep (``RUN_DIR/trials.csv``), choose the multiset of trained trials whose weighted
mean of sigmoid probabilities maximises validation GAP@20 subject to the stored size of the distinct
members being at most the budget (10^9 bytes by default; members stored at the sweep's storage dtype,
bfloat16 unless the space says float32). A repeat only changes a member's weight, it is not stored
twice.

Scoring from the saved predictions. Each trial saved its top-k validation predictions (k = 20 by
default). A member's score for a class outside its top-k is taken as 0, so the ensemble's score of
(video, class) is ``sum_j w_j s_j`` over the members that ranked the class. This is exact for a
single member (its top-20 are its top-20) and a lower bound of the dense ensemble's scores
otherwise (its GAP is an approximation, not a bound: GAP depends on ranks). The bundle's own
validation GAP (dense, from the stored bf16 weights) is the number reported as ``gap``, the
approximation's as ``selection_gap``.

Checkpoint averaging: with ``average_last`` the trainer evaluates the mean of a trial's last epochs'
weights and, when that scores higher than every single epoch, saves the average as the trial's
model and predictions; the selection and the bundle then use it, and the entry notes it.

Fast GAP. Per video only the classes in the union of the current members' top-k (plus the
candidate being tried) can score above 0, so a move is scored on a dense ``[V, W]`` float32 matrix
over those "slots" (W = the widest union + k), not ``[V, C]``: each score and its label packed
into one uint32 key, per-row top-20 by ``np.partition``, one sort of the pooled keys (an exact
float32 tie between a positive and a negative ranks the negative first; the starter's tie-breaking
lives in ``metrics.gap``, which computes every reported number). Moves are scored on a thread pool.

Selection (``select``):

1. Greedy forward selection with replacement (Caruana et al. 2004): each step adds one unit of
   weight to the trial that improves GAP most, among members (free: no bytes) and non-members that
   fit in the remaining budget. When the candidates do not all fit together the space is tight and
   a second greedy run ranks moves by GAP gain per byte (free moves first), the knapsack greedy;
   the better of the two (after step 2) is kept.
2. Local improvement: repeatedly apply the best improving move among weight +1/-1 and removal of a
   member, or, when none improves, swapping a member for a non-member that fits (taking its weight)
   and adding a non-member that fits; stop when nothing improves GAP by more than ``min_gain``.

The curve records (stored bytes, GAP) after every greedy step of the chosen run.

Bundle (``export_bundle`` / ``load_bundle``): one ``torch.save`` file written atomically holding a
format version, the storage dtype, and per member its trial id, model name, hyperparameters, mixing
weight and state dict cast to the storage dtype (batch-norm statistics included). Its size on disk
is checked against the budget before it becomes visible; ``load_bundle`` casts the weights back to
float32 and mixes the members' probabilities in float32.

Usage::

    python -m yt8m_search.ensemble RUN_DIR [--budget BYTES]
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import csv
import io
import json
import math
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch import Tensor, nn

from yt8m_search import models
from yt8m_search.constants import NUM_CLASSES, RGB_DIM
from yt8m_search.data import fs

__all__ = [
    "BUNDLE_NAME",
    "DEFAULT_BUDGET",
    "FORMAT_VERSION",
    "Bundle",
    "BudgetError",
    "BundleTooLargeError",
    "Candidate",
    "EnsembleError",
    "Selection",
    "ensemble_gap",
    "export_bundle",
    "load_bundle",
    "load_candidates",
    "main",
    "run",
    "select",
]

DEFAULT_BUDGET = 10**9  # the 2nd YouTube-8M challenge's 1 GB, budgeted as 10^9 bytes (spec §8)
FORMAT = "yt8m_search.ensemble"
FORMAT_VERSION = 1
BUNDLE_NAME = "ensemble.pt"
TOP_K = 20
TRAINED_STATES = ("complete", "stopped")


class EnsembleError(ValueError):
    """The ensemble step cannot proceed (no candidates, inconsistent predictions, ...)."""


class BudgetError(EnsembleError):
    """The budget is smaller than every candidate."""


class BundleTooLargeError(EnsembleError):
    """The bundle file would exceed the budget; nothing was written."""

    def __init__(self, message: str, file_bytes: int, budget_bytes: int) -> None:
        super().__init__(message)
        self.file_bytes = file_bytes
        self.budget_bytes = budget_bytes


# ---------------------------------------------------------------------------------------------
# Candidates


@dataclass(eq=False)
class Candidate:
    """One trained trial and its validation predictions, aligned with the other candidates'.

    ``classes``/``scores`` ``[V, k]``: the trial's top-k classes (best first) and sigmoid
    probabilities for the videos ``video_ids`` (the same array, in the same order, for every
    candidate of a set); ``labels``: V arrays of true class ids (shared too).
    """

    trial_id: str
    model: str
    hparams: dict[str, Any]
    size_bytes: int
    video_ids: np.ndarray
    labels: Sequence[np.ndarray]
    classes: np.ndarray
    scores: np.ndarray
    gap: float = math.nan  # the sweep's validation GAP of the trial
    checkpoint: str = ""  # the <run>/best folder holding model.pt
    predictions: str = ""
    state: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        try:
            return int(models.resolve(self.model, **self.hparams).get("num_classes", NUM_CLASSES))
        except ValueError:
            return NUM_CLASSES


def _read_trials(run_dir: str) -> list[dict[str, str]]:
    path = fs.join(run_dir, "trials.csv")
    if not fs.exists(path):
        raise FileNotFoundError(f"{path} not found: is {run_dir} a finished sweep's run folder?")
    return list(csv.DictReader(io.StringIO(fs.read_bytes(path).decode())))


def _resolve_path(run_dir: str, path: str) -> str:
    """A path from trials.csv: as written, or relative to the run folder when that is where it is."""
    if not path or not fs.is_local(path) or os.path.isabs(path) or os.path.exists(path):
        return path
    return fs.join(run_dir, path)


def _number(text: str | None) -> float:
    try:
        return float(text) if text not in (None, "") else math.nan
    except ValueError:
        return math.nan


def _fixed_width(column: pa.ChunkedArray, dtype: type, name: str, path: str) -> np.ndarray:
    """A list column whose rows all have the same length -> ``[rows, width]``."""
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    offsets = array.offsets.to_numpy()
    lengths = np.diff(offsets)
    if lengths.size == 0:
        return np.zeros((0, 0), dtype)
    if np.any(lengths != lengths[0]) or lengths[0] == 0:
        raise EnsembleError(f"{path}: every row's {name} must have the same, non-zero length")
    values = array.flatten().to_numpy(zero_copy_only=False).astype(dtype, copy=False)
    return values.reshape(len(array), int(lengths[0]))


def _label_lists(column: pa.ChunkedArray) -> list[np.ndarray]:
    array = column.combine_chunks()
    offsets = array.offsets.to_numpy()
    values = array.flatten().to_numpy(zero_copy_only=False).astype(np.int32, copy=False)
    return np.split(values, offsets[1:-1] - offsets[0]) if len(array) else []


def _read_predictions(path: str) -> tuple[np.ndarray, list[np.ndarray], np.ndarray, np.ndarray]:
    """(ids [V] object, labels, classes [V, k] int32, scores [V, k] float32) of a predictions.parquet."""
    filesystem, inner = fs.resolve(path)
    table = pq.read_table(inner, filesystem=filesystem, columns=["id", "classes", "scores", "labels"])
    ids = np.asarray(table.column("id").to_pylist(), dtype=object)
    classes = _fixed_width(table.column("classes"), np.int32, "classes", path)
    scores = _fixed_width(table.column("scores"), np.float32, "scores", path)
    if classes.shape != scores.shape:
        raise EnsembleError(f"{path}: classes {classes.shape} and scores {scores.shape} differ in shape")
    return ids, _label_lists(table.column("labels")), classes, scores


def _averaging_note(trial_id: str, checkpoint: str) -> str | None:
    """A note when the trial's saved model is the average of its last epochs (see the module doc)."""
    try:
        meta = json.loads(fs.read_bytes(fs.join(checkpoint, "meta.json"))) if checkpoint else {}
    except (OSError, ValueError):
        return None
    epochs = meta.get("averaged_epochs", 0) if isinstance(meta, dict) else 0
    if epochs:
        return f"trial {trial_id}: exports the average of its last {epochs} epochs (it beat every single epoch)"
    return None


def load_candidates(run_dir: str, *, storage_dtype: str | None = None) -> list[Candidate]:
    """The trained trials of a finished sweep with their validation predictions, aligned by video id.

    Candidates are the rows of ``trials.csv`` in state complete or stopped whose predictions file and
    ``model.pt`` exist (others are skipped with a line on stderr). Videos are put in sorted-id order.
    Raises EnsembleError when the candidates were validated on different video sets (or disagree on a
    video's labels).
    """
    rows = _read_trials(run_dir)
    dtype = storage_dtype or _summary(run_dir).get("budget", {}).get("storage_dtype", "bfloat16")
    loaded: list[Candidate] = []
    reference: tuple[str, np.ndarray, list[np.ndarray]] | None = None
    for row in rows:
        if row.get("state") not in TRAINED_STATES or not row.get("predictions"):
            continue
        predictions = _resolve_path(run_dir, row["predictions"])
        checkpoint = _resolve_path(run_dir, row.get("checkpoint", ""))
        missing = [p for p in (predictions, fs.join(checkpoint, "model.pt") if checkpoint else "") if not p or
                   not fs.exists(p)]
        if missing:
            print(f"ensemble: skipping trial {row.get('trial_id')}: {missing[0] or 'no checkpoint'} not found",
                  file=sys.stderr)
            continue
        model = row["model"]
        hparams = json.loads(row.get("hparams") or "{}")
        size = _number(row.get("size_bytes"))
        if not (math.isfinite(size) and size > 0):
            size = models.size_bytes(model, dtype, **hparams)
        ids, labels, classes, scores = _read_predictions(predictions)
        order = np.argsort(ids, kind="stable")
        ids, classes, scores = ids[order], classes[order], scores[order]
        labels = [labels[i] for i in order]
        trial_id = str(row["trial_id"])
        if len(np.unique(ids)) != len(ids):
            raise EnsembleError(f"trial {trial_id}: {predictions} lists a video more than once")
        if reference is None:
            reference = (trial_id, ids, labels)
        else:
            _check_same_videos(reference, trial_id, ids, labels)
            ids, labels = reference[1], reference[2]  # one shared copy
        note = _averaging_note(trial_id, checkpoint)
        loaded.append(Candidate(
            trial_id=trial_id, model=model, hparams=hparams, size_bytes=int(size), video_ids=ids, labels=labels,
            classes=classes, scores=scores, gap=_number(row.get("gap")), checkpoint=checkpoint,
            predictions=predictions, state=row["state"], notes=[note] if note else [],
        ))  # fmt: skip
    return loaded


def _check_same_videos(reference: tuple[str, np.ndarray, list[np.ndarray]], trial_id: str, ids: np.ndarray,
                       labels: list[np.ndarray]) -> None:
    ref_id, ref_ids, ref_labels = reference
    if len(ids) != len(ref_ids) or not np.array_equal(ids, ref_ids):
        missing = np.setdiff1d(ref_ids, ids)
        extra = np.setdiff1d(ids, ref_ids)
        examples = ", ".join(repr(x) for x in [*missing[:3], *extra[:3]])
        raise EnsembleError(
            f"candidates were validated on different video sets: trial {ref_id} has {len(ref_ids)} videos, "
            f"trial {trial_id} has {len(ids)} ({len(missing)} missing, {len(extra)} extra; e.g. {examples}); "
            "ensemble trials of one sweep (one validation set)"
        )
    for i, (a, b) in enumerate(zip(ref_labels, labels)):
        if not np.array_equal(np.unique(a), np.unique(b)):
            raise EnsembleError(f"trials {ref_id} and {trial_id} disagree on the labels of video {ref_ids[i]!r}")


# ---------------------------------------------------------------------------------------------
# Fast GAP of a weighted sum of sparse top-k predictions


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


class _Scorer:
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
        self.workers = max(1, workers)
        self._local = threading.local()
        self._pool = cf.ThreadPoolExecutor(self.workers) if self.workers > 1 else None
        self.evaluations = 0
        self.layout(())

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
        for lo, hi in _chunks(n, num_classes):
            r = np.arange(hi - lo)[:, None]
            classes = [c.classes[lo:hi].astype(np.int64) for c in candidates]
            table = np.full((hi - lo, num_classes), -1, np.int32)
            used = np.zeros(hi - lo, np.int32)
            _number_new(table, classes, used)
            truth = np.zeros((hi - lo, num_classes), bool)
            truth[np.repeat(np.arange(hi - lo), lengths[lo:hi]), values[starts[lo]:starts[hi]]] = True
            total += int(np.count_nonzero(truth))
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
        if tuple(members) == getattr(self, "members", None):
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
    from yt8m_search import metrics

    scorer = _Scorer(candidates, top_k, 1)
    chosen = {j: w for j, w in enumerate(weights) if w}
    scorer.layout(chosen)
    dense = scorer.compose(chosen).astype(np.float64)
    labels = scorer.base_labels
    union_positives = float(np.count_nonzero(labels))
    if union_positives == 0:
        return 0.0
    # metrics.gap counts only the union's positives; rescale to all of the videos' positives.
    return metrics.gap(dense, labels, top_k=top_k) * union_positives / scorer.total_positives


# ---------------------------------------------------------------------------------------------
# Selection


@dataclass
class Selection:
    """The chosen ensemble: distinct ``members`` with integer ``weights`` (repeat counts)."""

    members: list[Candidate]
    weights: list[int]
    gap: float  # validation GAP of the ensemble from the saved top-k predictions
    size_bytes: int  # stored bytes of the distinct members
    budget_bytes: int
    curve: list[tuple[int, float]]  # (size_bytes, gap) after every greedy step
    strategy: str  # "gain" or "per_byte": the greedy run that led to the chosen ensemble
    best_single: tuple[str, float]  # the best single candidate that fits: (trial id, GAP)
    steps: list[str] = field(default_factory=list)  # trial added (or re-weighted) at each greedy step
    local_moves: list[str] = field(default_factory=list)
    evaluations: int = 0
    seconds: float = 0.0

    @property
    def mixing_weights(self) -> list[float]:
        total = sum(self.weights)
        return [w / total for w in self.weights]


@dataclass
class _Path:
    weights: dict[int, int]
    gap: float
    used: int
    curve: list[tuple[int, float]]
    steps: list[str]
    strategy: str
    local_moves: list[str] = field(default_factory=list)


def select(
    candidates: Sequence[Candidate],
    budget_bytes: int = DEFAULT_BUDGET,
    *,
    top_k: int = TOP_K,
    max_steps: int = 50,
    local_search: bool = True,
    max_local_moves: int = 50,
    min_gain: float = 1e-7,
    workers: int | None = None,
    log: Callable[[str], None] | None = None,
) -> Selection:
    """The ensemble of ``candidates`` maximising validation GAP with distinct members' bytes <= budget.

    See the module doc for the algorithm. Raises BudgetError when no candidate fits the budget.
    """
    started = time.perf_counter()
    say = log or (lambda _: None)
    if not candidates:
        raise EnsembleError("no candidates: no trained trial with saved validation predictions")
    budget = int(budget_bytes)
    sizes = [int(c.size_bytes) for c in candidates]
    if min(sizes) > budget:
        smallest = int(np.argmin(sizes))
        raise BudgetError(
            f"the ensemble budget of {budget:,} bytes is smaller than every candidate: the smallest, trial "
            f"{candidates[smallest].trial_id} ({candidates[smallest].model}), needs {sizes[smallest]:,} bytes"
        )
    scorer = _Scorer(candidates, top_k, workers or min(4, os.cpu_count() or 1))
    try:
        return _select(scorer, candidates, sizes, budget, max_steps, local_search, max_local_moves, min_gain,
                       say, started)
    finally:
        scorer.close()


def _select(scorer: _Scorer, candidates: Sequence[Candidate], sizes: list[int], budget: int, max_steps: int,
            local_search: bool, max_local_moves: int, min_gain: float, say: Callable[[str], None],
            started: float) -> Selection:
    ids = [c.trial_id for c in candidates]

    fitting = [j for j in range(len(candidates)) if sizes[j] <= budget]
    singles = dict(zip(fitting, scorer.gaps([(scorer.compose({}), [(j, 1)]) for j in fitting])))
    best = max(fitting, key=lambda j: (singles[j], -sizes[j]))
    best_single = (ids[best], float(singles[best]))
    say(f"{len(candidates)} candidates, {len(fitting)} fit the budget; best single: trial {ids[best]} "
        f"GAP {best_single[1]:.5f}")

    tight = sum(sizes[j] for j in fitting) > budget
    paths = []
    for strategy in ("gain", "per_byte") if tight else ("gain",):
        path = _greedy(scorer, sizes, ids, budget, strategy, max_steps, min_gain, singles)
        say(f"greedy ({strategy}): GAP {path.gap:.5f}, {path.used:,} bytes, {len(path.weights)} members")
        if local_search:
            _local_search(scorer, path, sizes, ids, budget, max_local_moves, min_gain)
            say(f"local search ({strategy}): GAP {path.gap:.5f}, {path.used:,} bytes, {len(path.local_moves)} moves")
        paths.append(path)
    chosen = max(paths, key=lambda p: (p.gap, -p.used))
    if chosen.gap < best_single[1]:  # cannot happen with exact arithmetic; a guard against float drift
        chosen = _Path({best: 1}, best_single[1], sizes[best], [(sizes[best], best_single[1])], [ids[best]], "gain")
    order = sorted(chosen.weights, key=lambda j: (-chosen.weights[j], ids[j]))
    return Selection(
        members=[candidates[j] for j in order],
        weights=[chosen.weights[j] for j in order],
        gap=chosen.gap,
        size_bytes=sum(sizes[j] for j in order),
        budget_bytes=budget,
        curve=chosen.curve,
        strategy=chosen.strategy,
        best_single=best_single,
        steps=chosen.steps,
        local_moves=chosen.local_moves,
        evaluations=scorer.evaluations,
        seconds=time.perf_counter() - started,
    )


def _greedy(scorer: _Scorer, sizes: list[int], ids: list[str], budget: int, strategy: str, max_steps: int,
            min_gain: float, singles: Mapping[int, float]) -> _Path:
    """Forward selection with replacement; ``per_byte`` ranks moves by gain per byte (free moves first).

    ``singles``: every fitting candidate's GAP alone (the first step's scores)."""
    weights: dict[int, int] = {}
    used, gap = 0, 0.0
    curve: list[tuple[int, float]] = []
    steps: list[str] = []
    scorer.layout(())
    base = scorer.compose({})
    for step in range(max_steps):
        moves = [j for j in range(len(sizes)) if j in weights or used + sizes[j] <= budget]
        if step == 0:
            gains = [singles[j] for j in moves]
        elif strategy == "per_byte":  # free moves rank first: score the others only when none improves
            free = [j for j in moves if j in weights]
            gains = [g - gap for g in scorer.gaps([(base, [(j, 1)]) for j in free])]
            if max(gains, default=0.0) <= min_gain:
                moves = [j for j in moves if j not in weights]
                gains = [g - gap for g in scorer.gaps([(base, [(j, 1)]) for j in moves])]
            else:
                moves = free
        else:
            gains = [g - gap for g in scorer.gaps([(base, [(j, 1)]) for j in moves])]

        def rank(i: int) -> tuple[float, ...]:
            j, gain = moves[i], gains[i]
            if strategy == "gain":
                return (gain,)
            cost = 0 if j in weights else sizes[j]
            return (1.0, gain) if cost == 0 else (0.0, gain / cost)

        improving = [i for i in range(len(moves)) if gains[i] > min_gain]
        if not improving:
            break
        j = moves[max(improving, key=rank)]
        if j not in weights:
            used += sizes[j]
        weights[j] = weights.get(j, 0) + 1
        new_gap, new_base = scorer.weighted_gap(weights)
        if new_gap <= gap:  # float drift between the move's score and the canonical one: stop here
            weights[j] -= 1
            if not weights[j]:
                del weights[j]
                used -= sizes[j]
            break
        gap, base = new_gap, new_base
        curve.append((used, gap))
        steps.append(ids[j])
    return _Path(weights, gap, used, curve, steps, strategy)


def _local_search(scorer: _Scorer, path: _Path, sizes: list[int], ids: list[str], budget: int, max_moves: int,
                  min_gain: float) -> None:
    """Best-improvement local search from ``path`` (updated in place); see the module doc."""
    while len(path.local_moves) < max_moves and path.weights:
        weights = path.weights
        scorer.layout(weights)
        full = scorer.compose(weights)
        members = sorted(weights)
        # Cheap moves first: weight +1 / -1 and removals (no new member, no bytes added).
        moves: list[tuple[str, dict[int, int]]] = []
        jobs: list[tuple[np.ndarray, list[tuple[int, float]]]] = []
        without: dict[int, np.ndarray] = {}
        for a in members:
            rest = {m: w for m, w in weights.items() if m != a}
            without[a] = scorer.compose(rest)
            moves.append((f"+1 {ids[a]}", {**weights, a: weights[a] + 1}))
            jobs.append((full, [(a, 1)]))
            if weights[a] > 1:
                moves.append((f"-1 {ids[a]}", {**weights, a: weights[a] - 1}))
                jobs.append((without[a], [(a, weights[a] - 1)]))
            elif len(members) > 1:
                moves.append((f"remove {ids[a]}", rest))
                jobs.append((without[a], []))
        best = _best_move(scorer, moves, jobs, path.gap, min_gain)
        if best is None:  # then swaps and additions
            moves, jobs = [], []
            used = sum(sizes[m] for m in members)
            for b in range(len(sizes)):
                if b in weights:
                    continue
                if used + sizes[b] <= budget:
                    moves.append((f"add {ids[b]}", {**weights, b: 1}))
                    jobs.append((full, [(b, 1)]))
                for a in members:
                    if used - sizes[a] + sizes[b] <= budget:
                        moves.append((f"swap {ids[a]} -> {ids[b]}",
                                      {**{m: w for m, w in weights.items() if m != a}, b: weights[a]}))
                        jobs.append((without[a], [(b, weights[a])]))
            best = _best_move(scorer, moves, jobs, path.gap, min_gain)
        if best is None:
            return
        name, new_weights = best
        new_gap, _ = scorer.weighted_gap(new_weights)
        if new_gap <= path.gap:  # float drift: the canonical score did not improve
            return
        path.weights, path.gap = new_weights, new_gap
        path.used = sum(sizes[m] for m in new_weights)
        path.local_moves.append(name)


def _best_move(scorer: _Scorer, moves: list[tuple[str, dict[int, int]]],
               jobs: list[tuple[np.ndarray, list[tuple[int, float]]]], gap: float,
               min_gain: float) -> tuple[str, dict[int, int]] | None:
    if not moves:
        return None
    gaps = scorer.gaps(jobs)
    i = int(np.argmax(gaps))
    return moves[i] if gaps[i] > gap + min_gain else None


# ---------------------------------------------------------------------------------------------
# The bundle


def _read_checkpoint(best_dir: str) -> dict[str, Any]:
    raw = io.BytesIO(fs.read_bytes(fs.join(best_dir, "model.pt")))  # S3 streams are not seekable
    return torch.load(raw, map_location="cpu", weights_only=False)  # our own trainer's file (has meta)


def _storage_state(state: Mapping[str, Tensor], dtype: torch.dtype) -> dict[str, Tensor]:
    """Floating tensors cast to the storage dtype (weights and batch-norm statistics); others as is."""
    return {k: (v.detach().to(dtype) if v.is_floating_point() else v.detach()).contiguous().clone()
            for k, v in state.items()}


def export_bundle(selection: Selection, path: str, dtype: str = "bfloat16", *,
                  budget_bytes: int | None = None) -> int:
    """Write the selected members into one file at ``path`` (atomically); returns its size in bytes.

    Raises BundleTooLargeError, writing nothing, when the file would exceed the budget
    (``selection.budget_bytes`` unless given).
    """
    budget = int(selection.budget_bytes if budget_bytes is None else budget_bytes)
    models.storage_itemsize(dtype)  # ValueError for anything but float32, bfloat16, float16
    dtype_name = str(dtype).removeprefix("torch.")
    torch_dtype = getattr(torch, dtype_name)
    members, num_classes = [], set()
    for candidate, weight in zip(selection.members, selection.weights):
        if not candidate.checkpoint:
            raise EnsembleError(f"trial {candidate.trial_id} has no checkpoint to export")
        blob = _read_checkpoint(candidate.checkpoint)
        hparams = models.resolve(blob["model"], **blob["hparams"])
        num_classes.add(int(hparams.get("num_classes", NUM_CLASSES)))
        members.append({
            "trial_id": candidate.trial_id,
            "model": blob["model"],
            "hparams": hparams,
            "weight": int(weight),
            "size_bytes": int(candidate.size_bytes),
            "state_dict": _storage_state(blob["state_dict"], torch_dtype),
        })
    if len(num_classes) != 1:
        raise EnsembleError(f"members predict different numbers of classes: {sorted(num_classes)}")
    bundle = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "dtype": dtype_name,
        "num_classes": num_classes.pop(),
        "members": members,
        "selection": {"gap": float(selection.gap), "size_bytes": int(selection.size_bytes), "budget_bytes": budget,
                      "strategy": selection.strategy},
    }
    with fs.atomic_output(path) as f:
        torch.save(bundle, f)
        written = f.tell()
        if written > budget:
            raise BundleTooLargeError(
                f"refusing to write {path}: the bundle would take {written:,} bytes on disk, over the budget of "
                f"{budget:,} bytes (members' tensors: {selection.size_bytes:,} bytes at {dtype_name}, file "
                f"overhead: {written - selection.size_bytes:,} bytes); choose a smaller ensemble or budget",
                written, budget,
            )
    return fs.file_size(path)


class Bundle(nn.Module):
    """The exported ensemble: ``predict(features [B, T, 1152], mask [B, T]) -> probabilities [B, C]``,
    the weighted mean of the members' sigmoid(logits), in float32."""

    def __init__(self, members: Sequence[models.VideoModel], weights: Sequence[int], info: dict[str, Any]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)
        total = float(sum(weights))
        self.register_buffer("mix", torch.tensor([w / total for w in weights], dtype=torch.float32))
        self.weights = [int(w) for w in weights]
        self.info = info
        self.num_classes = int(info["num_classes"])
        self.storage_dtype = str(info["dtype"])
        self.trial_ids = [m["trial_id"] for m in info["members"]]

    @torch.no_grad()
    def predict(self, features: Tensor, mask: Tensor | None = None) -> Tensor:
        out: Tensor | None = None
        for w, member in zip(self.mix, self.members):
            probs = torch.sigmoid(member.logits(member(features.float(), mask)).float())
            out = probs.mul_(w) if out is None else out.add_(probs, alpha=float(w))
        assert out is not None
        return out

    def forward(self, features: Tensor, mask: Tensor | None = None) -> Tensor:
        return self.predict(features, mask)


def _build_member(name: str, hparams: dict[str, Any]) -> models.VideoModel:
    """Build a member; a ``pca_eigenvals`` file is not needed: its scale buffer is in the state dict."""
    eigenvals = hparams.get("pca_eigenvals")
    if not isinstance(eigenvals, str):
        return models.build(name, **hparams)
    with tempfile.TemporaryDirectory() as tmp:
        placeholder = os.path.join(tmp, "eigenvals.npy")
        np.save(placeholder, np.ones(RGB_DIM, np.float32))
        return models.build(name, **{**hparams, "pca_eigenvals": placeholder})


def load_bundle(path: str, device: str | torch.device = "cpu") -> Bundle:
    """Load a bundle written by ``export_bundle``: weights cast back to float32, eval mode, on ``device``."""
    blob = torch.load(io.BytesIO(fs.read_bytes(path)), map_location="cpu", weights_only=True)
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise EnsembleError(f"{path} is not an ensemble bundle")
    if blob.get("format_version") != FORMAT_VERSION:
        raise EnsembleError(f"{path}: unsupported bundle format version {blob.get('format_version')} "
                            f"(this code reads version {FORMAT_VERSION})")
    built = []
    for member in blob["members"]:
        model = _build_member(member["model"], member["hparams"])
        state = {k: v.float() if v.is_floating_point() else v for k, v in member["state_dict"].items()}
        model.load_state_dict(state)
        built.append(model)
    info = {k: v for k, v in blob.items() if k != "members"}
    info["members"] = [{k: v for k, v in m.items() if k != "state_dict"} for m in blob["members"]]
    bundle = Bundle(built, [m["weight"] for m in blob["members"]], info)
    return bundle.to(device).eval()


# ---------------------------------------------------------------------------------------------
# The whole step on a finished sweep


def _summary(run_dir: str) -> dict[str, Any]:
    path = fs.join(run_dir, "summary.json")
    if not fs.exists(path):
        return {}
    return json.loads(fs.read_bytes(path))


def _write_json(obj: Any, path: str) -> None:
    with fs.atomic_output(path) as f:
        f.write((json.dumps(obj, indent=2, default=str) + "\n").encode())


def run(
    run_dir: str,
    budget: int | None = None,
    *,
    output: str | None = None,
    validation: str | None = None,
    device: str | None = None,
    batch_size: int | None = None,
    workers: int | None = None,
    local_search: bool = True,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Select, export and re-score the ensemble of a finished sweep; record it in summary.json.

    Returns the ``summary["ensemble"]`` entry: members, weights, models, gap (the bundle's validation
    GAP, from its stored weights), selection_gap, hit_at_one, perr, map, size_bytes, file_bytes,
    budget_bytes, storage_dtype, path, curve, notes.
    """
    from yt8m_search import evaluate as evaluation
    from yt8m_search import predict

    say = log or (lambda _: None)
    started = time.perf_counter()
    summary = _summary(run_dir)
    budget_cfg = summary.get("budget") or {}
    budget = int(budget if budget is not None else budget_cfg.get("ensemble_bytes") or DEFAULT_BUDGET)
    if budget <= 0:
        raise EnsembleError(f"the budget must be a positive number of bytes, got {budget}")
    dtype = str(budget_cfg.get("storage_dtype") or "bfloat16")
    validation = validation or (summary.get("data") or {}).get("validation")
    if not validation:
        raise EnsembleError(f"{fs.join(run_dir, 'summary.json')} names no validation data (data.validation), "
                            "needed to re-score the bundle")
    try:
        predict.data_files(validation)
    except FileNotFoundError as err:
        raise EnsembleError(f"cannot re-score the bundle: {err}") from err
    candidates = load_candidates(run_dir, storage_dtype=dtype)
    path = output or fs.join(run_dir, BUNDLE_NAME)

    # The file adds a little to the members' bytes (container, names): when that tips it over the
    # budget, select again under the budget minus that overhead.
    limit = budget
    for attempt in range(3):
        try:
            selection = select(candidates, limit, workers=workers, local_search=local_search, log=say)
        except BudgetError as err:
            if limit == budget:
                raise
            raise BudgetError(f"{err} (the budget of {budget:,} bytes less {budget - limit:,} bytes for the "
                              "bundle file's own overhead)") from err
        try:
            file_bytes = export_bundle(selection, path, dtype, budget_bytes=budget)
            break
        except BundleTooLargeError as err:
            if attempt == 2:
                raise
            limit -= err.file_bytes - budget + 4096
            say(f"{err}; selecting again under {limit:,} bytes")
    say(f"bundle: {path}, {file_bytes:,} bytes on disk (budget {budget:,})")

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    bundle = load_bundle(path, device)
    batches = predict.iter_batches(validation, batch_size=batch_size or predict.DEFAULT_BATCH_SIZE,
                                   num_classes=bundle.num_classes, progress=progress, desc="re-score",
                                   dequantize=torch.device(device).type == "cpu")
    metrics = evaluation.evaluate_bundle(bundle, batches)
    expected = len(candidates[0].video_ids)
    notes = [n for c in selection.members for n in c.notes]
    if metrics["videos"] != expected:
        notes.append(f"the validation data holds {metrics['videos']} videos, the trials' predictions {expected}")
    entry = {
        "members": [c.trial_id for c in selection.members],
        "weights": selection.weights,
        "models": [c.model for c in selection.members],
        "member_gaps": [_json_number(c.gap) for c in selection.members],
        "member_bytes": [c.size_bytes for c in selection.members],
        "gap": metrics["gap"],
        "selection_gap": selection.gap,
        "best_single": {"trial_id": selection.best_single[0], "gap": selection.best_single[1]},
        "hit_at_one": metrics["hit_at_one"],
        "perr": metrics["perr"],
        "map": _json_number(metrics["map"]),
        "validation_videos": metrics["videos"],
        "size_bytes": selection.size_bytes,
        "file_bytes": file_bytes,
        "budget_bytes": budget,
        "storage_dtype": dtype,
        "path": path,
        "format_version": FORMAT_VERSION,
        "strategy": selection.strategy,
        "curve": [[int(s), float(g)] for s, g in selection.curve],
        "steps": selection.steps,
        "local_moves": selection.local_moves,
        "candidates": len(candidates),
        "evaluations": selection.evaluations,
        "selection_seconds": round(selection.seconds, 3),
        "seconds": round(time.perf_counter() - started, 3),
        "notes": notes,
    }
    summary = _summary(run_dir)  # re-read: keep whatever else was written meanwhile
    summary["ensemble"] = entry
    _write_json(summary, fs.join(run_dir, "summary.json"))
    return entry


def _json_number(value: float) -> float | None:
    """NaN (no value) as JSON null."""
    return None if value is None or not math.isfinite(float(value)) else float(value)


def _parse_bytes(text: str) -> int:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of bytes: {text!r}") from None
    if not (math.isfinite(value) and value > 0 and value == int(value)):
        raise argparse.ArgumentTypeError(f"the budget must be a positive whole number of bytes, got {text!r}")
    return int(value)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m yt8m_search.ensemble",
        description="Choose, export and re-score the budgeted ensemble of a finished sweep.",
    )
    parser.add_argument("run_dir", help="the sweep's run folder (holding trials.csv and summary.json)")
    parser.add_argument("--budget", type=_parse_bytes, help="bytes (default: the sweep's budget, else 1e9)")
    parser.add_argument("--output", help=f"bundle path (default: RUN_DIR/{BUNDLE_NAME})")
    parser.add_argument("--validation", help="validation data to re-score with (default: from summary.json)")
    parser.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda when available")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--workers", type=int, default=None, help="threads scoring moves (default: up to 4)")
    parser.add_argument("--no-local-search", action="store_true")
    args = parser.parse_args(argv)
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    try:
        if not fs.exists(fs.join(args.run_dir, "trials.csv")):
            print(f"error: {args.run_dir} is not a finished sweep (no trials.csv)", file=sys.stderr)
            return 2
        entry = run(args.run_dir, args.budget, output=args.output, validation=args.validation, device=args.device,
                    batch_size=args.batch_size, workers=args.workers, local_search=not args.no_local_search,
                    progress=True, log=log)
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except Exception as err:  # noqa: BLE001 - a CLI: the message on the last line, exit 1
        print(f"error: {type(err).__name__}: {err}", file=sys.stderr)
        return 1
    print(f"{'trial':<24} {'model':<18} {'weight':>6} {'MB':>10} {'GAP':>8}")
    for trial, model, weight, size, gap in zip(entry["members"], entry["models"], entry["weights"],
                                               entry["member_bytes"], entry["member_gaps"]):
        print(f"{trial:<24} {model:<18} {weight:>6} {size / 1e6:>10.2f} {gap if gap is not None else math.nan:>8.4f}")
    print("curve (bytes, GAP): " + ", ".join(f"({s:,}, {g:.4f})" for s, g in entry["curve"]))
    for note in entry["notes"]:
        print(f"note: {note}")
    print(f"ensemble: {len(entry['members'])} members, validation GAP {entry['gap']:.5f} (selection "
          f"{entry['selection_gap']:.5f}), {entry['size_bytes']:,} bytes of members, {entry['file_bytes']:,} "
          f"bytes on disk, budget {entry['budget_bytes']:,} -> {entry['path']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
