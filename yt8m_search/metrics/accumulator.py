"""``MetricAccumulator``: the streaming evaluation (GAP, Hit@1, PERR, sparse mAP, loss) with state
export and merge for distributed evaluation."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from yt8m_search.metrics.labels import as_inputs
from yt8m_search.metrics.ranking import class_aps, global_ap, small_ints
from yt8m_search.metrics.topk import chunk_rows, perr_rows, scan_rows

_STATE_VERSION = 1


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
        pred, lab = as_inputs(predictions, labels)
        n, num_classes = pred.shape
        if num_classes != self.num_classes:
            raise ValueError(f"expected {self.num_classes} classes, got {num_classes}")
        k = min(self.top_k, num_classes)
        out: dict[str, float] = {}
        if n == 0:
            return out
        step = chunk_rows(num_classes)
        top_scores = np.empty((n, k), np.float64)
        top_classes = np.empty((n, k), np.int64)
        top_labels = np.empty((n, k), np.float64)
        hit = perr_sum = 0.0
        for lo in range(0, n, step):
            hi = min(n, lo + step)
            x = pred[lo:hi]
            part = lab.slice(lo, hi)
            scan = scan_rows(x, k)
            top_scores[lo:hi] = scan.top_values
            top_classes[lo:hi] = scan.top_classes
            rows = np.repeat(np.arange(hi - lo), k)
            top_labels[lo:hi] = part.gather(rows, scan.top_classes.reshape(-1)).reshape(hi - lo, k)
            if not _rank_only:
                hit += float(part.gather(np.arange(hi - lo), scan.argmax).sum())
                perr_sum += float(perr_rows(x, part, scan).sum())
        # The starter's pooled order for a batch: class-major, videos in order inside a class.
        flat_classes = top_classes.reshape(-1)
        push = np.argsort(small_ints(flat_classes, num_classes), kind="stable")
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
        return global_ap(scores, labels, float(self._class_positives.sum()))

    def class_average_precisions(self) -> np.ndarray:
        """Sparse per-class AP ``[C]`` (NaN for classes without positives, which mAP drops)."""
        scores, labels, classes = self._entries()
        aps = class_aps(scores, labels, classes.astype(np.int64), self._class_positives)
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
