"""The validation set's two parts: a selection part that chooses everything (each trial's best epoch,
TPE's objective, ASHA's rungs, the ensemble) and a holdout part that chooses nothing, so the figures
reported on it are not inflated by the choices made on the other.

A video belongs to the holdout when a hash of its id falls below ``fraction``: deterministic, the same
on every worker, across runs, resumes and machines, and independent of file order or sharding.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

__all__ = ["DEFAULT_FRACTION", "holdout_mask", "in_holdout"]

DEFAULT_FRACTION = 0.2
_SCALE = float(2**64)


def _unit(video_id: str) -> float:
    """A uniform number in [0, 1) from the id's BLAKE2b hash (salted: no other use of the id's hash
    lines up with this split)."""
    digest = hashlib.blake2b(video_id.encode(), digest_size=8, person=b"yt8m-holdout").digest()
    return int.from_bytes(digest, "little") / _SCALE


def in_holdout(video_id: str, fraction: float = DEFAULT_FRACTION) -> bool:
    """Whether the video belongs to the holdout part (about ``fraction`` of all videos)."""
    return _unit(video_id) < fraction


def holdout_mask(video_ids: Sequence[str], fraction: float = DEFAULT_FRACTION) -> np.ndarray:
    """bool [N]: True for the videos of the holdout part; all False when ``fraction`` is 0."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"the holdout fraction must be in [0, 1), got {fraction}")
    return np.fromiter((_unit(v) < fraction for v in video_ids), dtype=bool, count=len(video_ids))
