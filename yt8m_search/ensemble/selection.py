"""Budgeted ensemble selection: the multiset of candidates whose weighted mean of sigmoid probabilities
maximises validation GAP@20 subject to the stored size of the distinct members being at most the
budget, and, when given, their forward FLOPs per video together at most the FLOPs budget (an
ensemble runs every member on every video). A repeat only changes a member's weight, it is neither
stored nor run twice. Moves are scored from the saved top-k predictions (``scoring``).

1. Greedy forward selection with replacement (Caruana et al. 2004): each step adds one unit of
   weight to the trial that improves GAP most, among members (free: no bytes) and non-members that
   fit in the remaining budget. When the candidates do not all fit together the space is tight and
   a second greedy run ranks moves by GAP gain per byte (free moves first), the knapsack greedy
   (with a FLOPs budget: per share of the tighter budget, bytes or FLOPs); the better of the two
   (after step 2) is kept.
2. Local improvement: repeatedly apply the best improving move among weight +1/-1 and removal of a
   member, or, when none improves, swapping a member for a non-member that fits (taking its weight)
   and adding a non-member that fits; stop when nothing improves GAP by more than ``min_gain``.

The curve records (stored bytes, GAP) after every greedy step of the chosen run.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from yt8m_search.ensemble.candidates import Candidate
from yt8m_search.ensemble.errors import BudgetError, EnsembleError
from yt8m_search.ensemble.scoring import TOP_K, Scorer

__all__ = ["DEFAULT_BUDGET", "Selection", "select"]

DEFAULT_BUDGET = 10**9  # the 2nd YouTube-8M challenge's 1 GB, budgeted as 10^9 bytes (spec §8)


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
    flops: int = 0  # forward FLOPs per video of the distinct members together
    budget_flops: int | None = None

    @property
    def mixing_weights(self) -> list[float]:
        total = sum(self.weights)
        return [w / total for w in self.weights]


@dataclass(frozen=True)
class _Limits:
    """The budgets over the candidates: the distinct members' stored bytes and (optionally) their
    forward FLOPs per video, each summed."""

    sizes: list[int]
    flops: list[int]
    budget: int
    budget_flops: int | None

    def fits(self, members: Iterable[int]) -> bool:
        chosen = set(members)
        return sum(self.sizes[j] for j in chosen) <= self.budget and (
            self.budget_flops is None or sum(self.flops[j] for j in chosen) <= self.budget_flops)

    def cost(self, j: int) -> float:
        """Candidate ``j``'s share of the tighter budget: the per-cost greedy's denominator."""
        share = self.sizes[j] / self.budget
        return max(share, self.flops[j] / self.budget_flops) if self.budget_flops else share

    def nothing_fits(self, candidates: Sequence[Candidate]) -> str | None:
        """Why no candidate fits on its own (None when one does)."""
        if any(self.fits([j]) for j in range(len(self.sizes))):
            return None
        smallest, cheapest = int(np.argmin(self.sizes)), int(np.argmin(self.flops))
        if self.sizes[smallest] > self.budget:
            return (f"the ensemble budget of {self.budget:,} bytes is smaller than every candidate: the smallest, "
                    f"trial {candidates[smallest].trial_id} ({candidates[smallest].model}), needs "
                    f"{self.sizes[smallest]:,} bytes")
        if self.budget_flops is not None and self.flops[cheapest] > self.budget_flops:
            return (f"the ensemble FLOPs budget of {self.budget_flops:,} FLOPs per video is smaller than every "
                    f"candidate: the cheapest, trial {candidates[cheapest].trial_id} ({candidates[cheapest].model}), "
                    f"needs {self.flops[cheapest]:,} FLOPs")
        return (f"no candidate fits both the ensemble budget of {self.budget:,} bytes and of {self.budget_flops:,} "
                f"FLOPs per video: the smallest, trial {candidates[smallest].trial_id}, needs "
                f"{self.flops[smallest]:,} FLOPs, the cheapest, trial {candidates[cheapest].trial_id}, "
                f"{self.sizes[cheapest]:,} bytes")


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
    budget_flops: int | None = None,
    top_k: int = TOP_K,
    max_steps: int = 50,
    local_search: bool = True,
    max_local_moves: int = 50,
    min_gain: float = 1e-7,
    workers: int | None = None,
    log: Callable[[str], None] | None = None,
) -> Selection:
    """The ensemble of ``candidates`` maximising validation GAP with distinct members' bytes <= budget
    (and their FLOPs per video <= ``budget_flops``, when given).

    See the module doc for the algorithm. Raises BudgetError when no candidate fits the budgets.
    """
    started = time.perf_counter()
    say = log or (lambda _: None)
    if not candidates:
        raise EnsembleError("no candidates: no trained trial with saved validation predictions")
    limits = _Limits([int(c.size_bytes) for c in candidates], [int(c.flops) for c in candidates], int(budget_bytes),
                     None if budget_flops is None else int(budget_flops))
    problem = limits.nothing_fits(candidates)
    if problem:
        raise BudgetError(problem)
    scorer = Scorer(candidates, top_k, workers or min(4, os.cpu_count() or 1))
    try:
        return _select(scorer, candidates, limits, max_steps, local_search, max_local_moves, min_gain, say, started)
    finally:
        scorer.close()


def _select(scorer: Scorer, candidates: Sequence[Candidate], limits: _Limits, max_steps: int,
            local_search: bool, max_local_moves: int, min_gain: float, say: Callable[[str], None],
            started: float) -> Selection:
    ids, sizes, budget = [c.trial_id for c in candidates], limits.sizes, limits.budget

    fitting = [j for j in range(len(candidates)) if limits.fits([j])]
    singles = dict(zip(fitting, scorer.gaps([(scorer.compose({}), [(j, 1)]) for j in fitting])))
    best = max(fitting, key=lambda j: (singles[j], -sizes[j]))
    best_single = (ids[best], float(singles[best]))
    say(f"{len(candidates)} candidates, {len(fitting)} fit the budget; best single: trial {ids[best]} "
        f"GAP {best_single[1]:.5f}")

    tight = not limits.fits(fitting)
    paths = []
    for strategy in ("gain", "per_byte") if tight else ("gain",):
        path = _greedy(scorer, limits, ids, strategy, max_steps, min_gain, singles)
        say(f"greedy ({strategy}): GAP {path.gap:.5f}, {path.used:,} bytes, {len(path.weights)} members")
        if local_search:
            _local_search(scorer, path, limits, ids, max_local_moves, min_gain)
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
        flops=sum(limits.flops[j] for j in order),
        budget_flops=limits.budget_flops,
    )


def _scored_moves(scorer: Scorer, base: np.ndarray, gap: float, moves: list[int], weights: Mapping[int, int],
                  strategy: str, min_gain: float) -> tuple[list[int], list[float]]:
    """The moves of a greedy step and their GAP gains. ``per_byte`` scores the free moves (members'
    weights +1) first, and the others only when no free move improves."""
    if strategy == "per_byte":
        free = [j for j in moves if j in weights]
        gains = [g - gap for g in scorer.gaps([(base, [(j, 1)]) for j in free])]
        if max(gains, default=0.0) > min_gain:
            return free, gains
        moves = [j for j in moves if j not in weights]
    return moves, [g - gap for g in scorer.gaps([(base, [(j, 1)]) for j in moves])]


def _move_rank(strategy: str, member: bool, cost: float, gain: float) -> tuple[float, ...]:
    """The greedy order of moves: by GAP gain, or (``per_byte``) free moves first, then gain per unit of
    cost (the candidate's share of the tighter budget, ``_Limits.cost``)."""
    if strategy == "gain":
        return (gain,)
    cost = 0 if member else cost
    return (1.0, gain) if cost == 0 else (0.0, gain / cost)


def _greedy(scorer: Scorer, limits: _Limits, ids: list[str], strategy: str, max_steps: int,
            min_gain: float, singles: Mapping[int, float]) -> _Path:
    """Forward selection with replacement; ``per_byte`` ranks moves by gain per cost (free moves first).

    ``singles``: every fitting candidate's GAP alone (the first step's scores)."""
    sizes = limits.sizes
    weights: dict[int, int] = {}
    used, gap = 0, 0.0
    curve: list[tuple[int, float]] = []
    steps: list[str] = []
    scorer.layout(())
    base = scorer.compose({})
    for step in range(max_steps):
        moves = [j for j in range(len(sizes)) if j in weights or limits.fits([*weights, j])]
        if step == 0:
            gains = [singles[j] for j in moves]
        else:
            moves, gains = _scored_moves(scorer, base, gap, moves, weights, strategy, min_gain)
        ranks = {i: _move_rank(strategy, moves[i] in weights, limits.cost(moves[i]), gains[i])
                 for i in range(len(moves)) if gains[i] > min_gain}  # fmt: skip
        if not ranks:
            break
        j = moves[max(ranks, key=ranks.__getitem__)]
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


def _local_search(scorer: Scorer, path: _Path, limits: _Limits, ids: list[str], max_moves: int,
                  min_gain: float) -> None:
    """Best-improvement local search from ``path`` (updated in place); see the module doc."""
    sizes = limits.sizes
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
            for b in range(len(sizes)):
                if b in weights:
                    continue
                if limits.fits([*members, b]):
                    moves.append((f"add {ids[b]}", {**weights, b: 1}))
                    jobs.append((full, [(b, 1)]))
                for a in members:
                    if limits.fits([*(m for m in members if m != a), b]):
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


def _best_move(scorer: Scorer, moves: list[tuple[str, dict[int, int]]],
               jobs: list[tuple[np.ndarray, list[tuple[int, float]]]], gap: float,
               min_gain: float) -> tuple[str, dict[int, int]] | None:
    if not moves:
        return None
    gaps = scorer.gaps(jobs)
    i = int(np.argmax(gaps))
    return moves[i] if gaps[i] > gap + min_gain else None
