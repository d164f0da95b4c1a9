"""Labels in the two accepted layouts, behind one interface: dense ``[V, C]`` arrays (any real dtype,
``> 0`` is positive) or a sequence of V class-id arrays (set semantics), and the input checks shared by
every metric."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


class DenseLabels:
    """Dense label matrix ``[n, C]`` (any real dtype)."""

    def __init__(self, array: np.ndarray) -> None:
        self.array = array

    def __len__(self) -> int:
        return self.array.shape[0]

    def slice(self, lo: int, hi: int) -> DenseLabels:
        return DenseLabels(self.array[lo:hi])

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


class SparseLabels:
    """Positive (video, class) pairs of ``n`` videos, stored as sorted codes ``video * C + class``."""

    def __init__(self, codes: np.ndarray, n: int, num_classes: int) -> None:
        self.codes = codes
        self.n = n
        self.num_classes = num_classes

    @classmethod
    def from_lists(cls, labels: Sequence[Any], num_classes: int) -> SparseLabels:
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

    def slice(self, lo: int, hi: int) -> SparseLabels:
        c = self.num_classes
        a, b = np.searchsorted(self.codes, [lo * c, hi * c])
        return SparseLabels(self.codes[a:b] - lo * c, hi - lo, c)

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


Labels = DenseLabels | SparseLabels


def as_inputs(predictions: Any, labels: Any) -> tuple[np.ndarray, DenseLabels | SparseLabels]:
    pred = np.asarray(predictions)
    if pred.ndim != 2:
        raise ValueError(f"predictions must be [videos, classes], got shape {pred.shape}")
    if not (np.issubdtype(pred.dtype, np.floating) or np.issubdtype(pred.dtype, np.integer)):
        raise TypeError(f"predictions must be real numbers, got {pred.dtype}")
    if isinstance(labels, np.ndarray) and labels.ndim == 2:
        lab: DenseLabels | SparseLabels = DenseLabels(labels)
    elif isinstance(labels, np.ndarray) and labels.ndim == 1 and labels.dtype != object:
        raise ValueError("labels must be [videos, classes] or a sequence of class-id arrays")
    elif hasattr(labels, "shape") and len(labels.shape) == 2:  # torch tensors and the like
        lab = DenseLabels(np.asarray(labels))
    else:
        lab = SparseLabels.from_lists(list(labels), pred.shape[1])
    if isinstance(lab, DenseLabels) and lab.array.shape != pred.shape:
        raise ValueError(f"labels shape {lab.array.shape} != predictions shape {pred.shape}")
    if len(lab) != pred.shape[0]:
        raise ValueError(f"{len(lab)} label rows for {pred.shape[0]} prediction rows")
    return pred, lab
