"""The validation set's two parts: a selection part that chooses everything (each trial's best epoch,
TPE's objective, ASHA's rungs, the ensemble) and a holdout part that chooses nothing, so the figures
reported on it are not inflated by the choices made on the other.

A video belongs to the holdout when a hash of its id falls below ``fraction``: deterministic, the same
on every worker, across runs, resumes and machines, and independent of file order or sharding.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from yt8m_search.metrics.accumulator import MetricAccumulator

__all__ = ["DEFAULT_FRACTION", "PARTS", "holdout_mask", "id_hash", "in_holdout", "update_parts"]

DEFAULT_FRACTION = 0.2
PARTS = ("selection", "holdout")
_SCALE = float(2**64)


def id_hash(video_id: str, salt: bytes) -> int:
    """A 64-bit BLAKE2b hash of the id, salted (``salt``: at most 16 bytes) so that each use of it
    (this split, ``noise``'s groups) is independent of the others."""
    return int.from_bytes(hashlib.blake2b(video_id.encode(), digest_size=8, person=salt).digest(), "little")


def _unit(video_id: str) -> float:
    """A uniform number in [0, 1) from the id's hash."""
    return id_hash(video_id, b"yt8m-holdout") / _SCALE


def in_holdout(video_id: str, fraction: float = DEFAULT_FRACTION) -> bool:
    """Whether the video belongs to the holdout part (about ``fraction`` of all videos)."""
    return _unit(video_id) < fraction


def holdout_mask(video_ids: Sequence[str], fraction: float = DEFAULT_FRACTION) -> np.ndarray:
    """bool [N]: True for the videos of the holdout part; all False when ``fraction`` is 0."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"the holdout fraction must be in [0, 1), got {fraction}")
    return np.fromiter((_unit(v) < fraction for v in video_ids), dtype=bool, count=len(video_ids))


def update_parts(parts: Mapping[str, MetricAccumulator], held: np.ndarray, probs: np.ndarray, labels: np.ndarray,
                 loss: Any = None) -> None:  # fmt: skip
    """Add a batch's videos to their part's accumulator (``parts``: one per name of ``PARTS``; ``held``
    the batch's ``holdout_mask``); the batch's mean ``loss``, when given, to each part it feeds."""
    for name, rows in zip(PARTS, (~held, held)):
        if rows.all():
            parts[name].update(probs, labels, loss=loss)
        elif rows.any():
            parts[name].update(probs[rows], labels[rows], loss=loss)
