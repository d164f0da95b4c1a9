"""The noise of a selection step: a paired bootstrap over videos of its GAP gain.

A greedy step that adds weight to a candidate raises the selection part's GAP by some amount; part of
that is the candidate's merit and part is the luck of which videos the selection part holds. The
step is accepted only when its gain exceeds ``z`` times the standard deviation of the gain over
``resamples`` bootstrap resamples of the selection videos (with replacement, the same resample for
the ensemble before and after the step: paired, so the noise shared by both cancels). ``z = 1.2816``
is the one-sided 10% normal quantile; the sd, not the bootstrap's own 10% quantile, because with
100 resamples that quantile rests on 10 values while the sd uses all of them.

GAP pools the top-k entries of every video, so a resample that draws video v ``m_v`` times holds
``m_v`` copies of each of its entries (and of its positives in the denominator). The copies of one
entry are adjacent in the ranking, so the entries keep their order and entry i of weight ``w`` (hits
``h`` and entries ``c`` ranked above it) contributes ``sum_{t=1..w} (h + t) / (c + t)`` =
``w - (c - h) * (H(c + w) - H(c))`` (H the harmonic numbers) when positive: exact, and equal to the
plain GAP for unit weights (``weighted_gap``).

Cost: one resample is O(k * V) per ranked list; with more than ``max_videos`` selection videos the
resamples draw from a fixed seeded subset of that many and the sd is scaled by
``sqrt(subset / V)`` (the sd of a GAP difference shrinks like one over the square root of the videos).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["DEFAULT_RESAMPLES", "DEFAULT_Z", "Bootstrap", "NoiseTest", "weighted_gap"]

DEFAULT_RESAMPLES = 100
DEFAULT_Z = 1.2816  # one-sided 10%: a pure-noise gain passes about one test in ten
DEFAULT_MAX_VIDEOS = 50_000
_CELLS = 1 << 22  # resamples x entries per chunk (memory ~ 100 MB of int64 temporaries)


def _harmonic(n: int) -> np.ndarray:
    """``H[i] = sum_{t=1..i} 1/t`` for i in [0, n]."""
    return np.concatenate([[0.0], np.cumsum(1.0 / np.arange(1, n + 1, dtype=np.float64))])


def weighted_gap(rows: np.ndarray, positive: np.ndarray, multiplicity: np.ndarray,
                 video_positives: np.ndarray) -> np.ndarray:
    """GAP of pooled entries, each video counted ``multiplicity`` times.

    ``rows``/``positive`` ``[N]``: the video and positivity of the pooled top-k entries, best first;
    ``multiplicity`` ``[B, V]`` (or ``[V]``) non-negative integers; ``video_positives`` ``[V]``: each
    video's positives (all of its labels). Returns ``[B]`` (or a 0-d array).
    """
    m = np.atleast_2d(np.asarray(multiplicity)).astype(np.int32)
    totals = m @ np.asarray(video_positives, np.float64)
    out = np.zeros(m.shape[0], np.float64)
    hits_at = np.flatnonzero(positive)
    if hits_at.size:
        harmonic = _harmonic(int(m.sum(axis=1, dtype=np.int64).max(initial=0)) * _entries_per_video(rows))
        rows, hit_rows = rows[: hits_at[-1] + 1], rows[hits_at]
        step = max(1, _CELLS // max(rows.size, 1))
        for lo in range(0, m.shape[0], step):
            out[lo:lo + step] = _positive_terms(m[lo:lo + step], rows, hit_rows, hits_at, harmonic)
    with np.errstate(divide="ignore", invalid="ignore"):
        gaps = np.where(totals > 0, out / np.where(totals > 0, totals, 1.0), 0.0)
    return gaps if np.ndim(multiplicity) == 2 else gaps[0]


def _positive_terms(m: np.ndarray, rows: np.ndarray, hit_rows: np.ndarray, hits_at: np.ndarray,
                    harmonic: np.ndarray) -> np.ndarray:
    """Per resample, the sum over positive entries of their copies' precisions (module doc). The
    entries between two positives only count by their total weight: one ``reduceat`` over them."""
    w = m[:, hit_rows].astype(np.int64)  # the positives' weights [B, P]
    between = np.add.reduceat(m[:, rows], hits_at, axis=1, dtype=np.int64)  # [q_i, q_i+1): P segments
    above = np.empty_like(w)
    above[:, 0] = m[:, rows[: hits_at[0]]].sum(axis=1, dtype=np.int64)
    np.cumsum(between[:, :-1], axis=1, out=above[:, 1:])
    above[:, 1:] += above[:, :1]
    hits = np.cumsum(w, axis=1) - w
    terms = w - (above - hits) * (harmonic[above + w] - harmonic[above])
    return terms.sum(axis=1)


def _entries_per_video(rows: np.ndarray) -> int:
    return int(np.bincount(rows).max(initial=0)) if rows.size else 0


@dataclass(frozen=True)
class NoiseTest:
    """One step's test: its gain, the bootstrap sd of the gain, the threshold ``z * sd``."""

    gain: float
    sd: float
    threshold: float

    @property
    def accepted(self) -> bool:
        return self.gain > self.threshold and self.gain > 0


class Bootstrap:
    """Fixed seeded resamples of the selection videos and the paired test of a step (module doc)."""

    def __init__(self, video_positives: np.ndarray, resamples: int = DEFAULT_RESAMPLES, z: float = DEFAULT_Z,
                 seed: int = 0, max_videos: int = DEFAULT_MAX_VIDEOS) -> None:
        rng = np.random.default_rng(seed)
        n = len(video_positives)
        self.video_positives = np.asarray(video_positives, np.float64)
        self.z, self.resamples = float(z), int(resamples)
        self.subset = None if n <= max_videos else np.sort(rng.choice(n, max_videos, replace=False))
        drawn = n if self.subset is None else max_videos
        self.scale = math.sqrt(drawn / n) if n else 1.0
        picks = rng.integers(0, max(drawn, 1), size=(self.resamples, drawn))
        counts = np.zeros((self.resamples, max(drawn, 1)), np.int64)
        np.add.at(counts, (np.arange(self.resamples)[:, None], picks), 1)
        self.counts = counts[:, :drawn]
        self.tests: list[NoiseTest] = []

    def gaps(self, rows: np.ndarray, positive: np.ndarray) -> np.ndarray:
        """``[resamples]``: the GAP of the ranked entries (``Scorer.ranked``) on every resample."""
        positives = self.video_positives
        if self.subset is not None:
            local = np.full(len(self.video_positives), -1, np.int64)
            local[self.subset] = np.arange(self.subset.size)
            keep = local[rows] >= 0
            rows, positive, positives = local[rows[keep]], positive[keep], positives[self.subset]
        return weighted_gap(rows, positive, self.counts, positives)

    def test(self, gain: float, before: np.ndarray,
             after: tuple[np.ndarray, np.ndarray]) -> tuple[NoiseTest, np.ndarray]:
        """The paired test of a step of observed ``gain``: ``before`` the resampled GAPs of the
        ensemble before it (``gaps``), ``after`` the ranked entries after it. Returns the test
        (also recorded in ``tests``) and the resampled GAPs after the step."""
        resampled = self.gaps(*after)
        differences = resampled - before
        sd = float(np.std(differences, ddof=1)) * self.scale if self.resamples > 1 else 0.0
        result = NoiseTest(float(gain), sd, self.z * sd)
        self.tests.append(result)
        return result, resampled
