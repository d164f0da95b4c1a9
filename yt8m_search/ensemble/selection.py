"""Budgeted ensemble selection that resists overfitting the selection set: the multiset of candidates
whose weighted mean of sigmoid probabilities maximises GAP@20 on the selection part of the validation
set (``metrics.holdout``: the holdout part chooses nothing), subject to the stored size of the
distinct members being at most the budget and, when given, their forward FLOPs per video together
at most the FLOPs budget (an ensemble runs every member on every video). A repeat only changes a
member's weight, it is neither stored nor run twice. Moves are scored from the saved top-k
predictions (``scoring``).

The remedies of Caruana et al. (2004, "Ensemble selection from libraries of models"):

1. Sorted initialisation: start from the best N candidates (by their own selection GAP, added in
   that order while they fit together), N the prefix with the highest selection GAP.
2. Greedy forward selection with replacement: each step adds one unit of weight to the candidate
   that improves GAP most, among members (free) and non-members that fit. When the candidates do
   not all fit together a second run ranks moves by gain per share of the tighter budget (free
   moves first; the knapsack greedy) and the better of the two is kept.
3. Bagged selection: ``bags`` runs of 1-2, each on a seeded bootstrap resample of the selection
   videos (drawn with replacement, as many as there are) with every candidate that fits alone; the
   bags' integer weights are summed. Each bag's ensemble fits the budgets; their union may not, so
   it is trimmed, lowest total weight per share of the budget first, until it fits (``_Limits.fits``
   decides, as for every move). Then a member whose removal loses no more than the noise (the same
   paired test) is dropped: bags split weight between near-equal candidates, and a member that
   adds nothing beyond the noise should not take bytes.
4. Every step (and a sorted initialisation longer than one) must beat the noise: its gain must
   exceed ``z`` standard deviations of a paired bootstrap over the selection videos (``bootstrap``),
   not a fixed 1e-7; the sds and thresholds tested are recorded.

Why bags of videos, not Caruana's bags of half the candidates, nor cross-fitting: the measured
failure is weights that flip with the selection videos ((1,1), (2,1), (1,2), (3,1) on random
halves), which averaging runs over resamples of those videos addresses directly. Half-candidate bags
target a library of thousands of models; with the tens of trials of a sweep, half the bags miss the
strong trials and their sum is diluted by weak ones: on synthetic sweeps (6 and 20 candidates, a
holdout of the same size as the selection part) their holdout GAP was 0.794 against 0.815 for one
run with 6 candidates, while video bags gave 0.818 (20 candidates: 0.961, 0.961, 0.964). Cross-fitting
would choose on half of an already small selection part and needs its own rule for merging the
folds' ensembles. The earlier local search (swaps, weight +-1) is gone: it hill-climbed the
selection GAP further, the overfitting removed here.

The result never scores below the best single candidate on the selection part (then it is that
candidate alone, the curve's last point). The curve records (stored bytes, GAP) after each greedy
step (one run) or after each bag is added to the sum (bagged), on the whole selection part.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from yt8m_search.ensemble.bootstrap import DEFAULT_RESAMPLES, DEFAULT_Z, Bootstrap
from yt8m_search.ensemble.candidates import Candidate, restrict
from yt8m_search.ensemble.errors import BudgetError, EnsembleError
from yt8m_search.ensemble.scoring import TOP_K, Scorer
from yt8m_search.metrics.holdout import holdout_mask

__all__ = ["DEFAULT_BAGS", "DEFAULT_BUDGET", "DEFAULT_SAMPLE_VIDEOS", "Selection", "select"]

DEFAULT_BUDGET = 10**9  # the 2nd YouTube-8M challenge's 1 GB, budgeted as 10^9 bytes (spec §8)
DEFAULT_BAGS = 10
# the ensemble step selects on a seeded subsample of this many selection videos when there are more
# (``candidates.load_sample``; its GAP's standard error is reported): the time of a selection grows
# with videos x candidates, and 64 candidates on 1.1M videos would take hours
DEFAULT_SAMPLE_VIDEOS = 20_000


@dataclass
class Selection:
    """The chosen ensemble: distinct ``members`` with integer ``weights`` (repeat counts), scored on
    the selection part (``videos`` of them; the holdout part, ``holdout_fraction``, is left out)."""

    members: list[Candidate]
    weights: list[int]
    gap: float  # selection-part GAP of the ensemble from the saved top-k predictions
    size_bytes: int  # stored bytes of the distinct members
    budget_bytes: int
    curve: list[tuple[int, float]]  # (size_bytes, gap) after every greedy step, or every bag
    strategy: str  # "gain", "per_byte" or both ("gain+per_byte"): the greedy runs behind the ensemble
    best_single: tuple[str, float]  # the best single candidate that fits: (trial id, selection GAP)
    steps: list[str] = field(default_factory=list)  # trials added per greedy step (per bag when bagged)
    evaluations: int = 0
    seconds: float = 0.0
    flops: int = 0  # forward FLOPs per video of the distinct members together
    budget_flops: int | None = None
    method: str = "greedy"  # "bagged": the sum of the runs on several resamples of the selection videos
    bags: int = 1
    videos: int = 0
    holdout_fraction: float = 0.0
    resamples: int = 0
    noise_z: float = math.nan
    noise_sd: float = math.nan  # median bootstrap sd of the gains tested
    min_gain: float = math.nan  # median threshold (z * sd) the gains were tested against
    noise_tests: int = 0
    noise_rejections: int = 0
    single: Candidate | None = None  # the best single candidate (best_single's)
    # the uncertainty of ``gap``: its bootstrap sd over the ``videos`` it was measured on, and its
    # standard error as an estimate of the sparse GAP on all ``population`` selection videos (those
    # ``videos`` a uniform subsample of them: the sd times the finite-population factor; 0 when all)
    gap_sd: float = math.nan
    gap_se: float = 0.0
    population: int = 0

    @property
    def mixing_weights(self) -> list[float]:
        total = sum(self.weights)
        return [w / total for w in self.weights]

    def as_best_single(self) -> Selection:
        """This selection with the best single candidate alone as the ensemble."""
        if self.single is None:
            raise EnsembleError("the selection records no best single candidate")
        c = self.single
        return Selection(**{**self.__dict__, "members": [c], "weights": [1], "gap": self.best_single[1],
                            "size_bytes": int(c.size_bytes), "flops": int(c.flops)})


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


@dataclass(frozen=True)
class _Context:
    scorer: Scorer
    limits: _Limits
    ids: list[str]
    singles: Mapping[int, float]
    noise: Bootstrap
    max_steps: int


def select(
    candidates: Sequence[Candidate],
    budget_bytes: int = DEFAULT_BUDGET,
    *,
    budget_flops: int | None = None,
    holdout_fraction: float = 0.0,
    bags: int = DEFAULT_BAGS,
    resamples: int = DEFAULT_RESAMPLES,
    z: float = DEFAULT_Z,
    seed: int = 0,
    top_k: int = TOP_K,
    max_steps: int = 50,
    workers: int | None = None,
    population: int | None = None,
    log: Callable[[str], None] | None = None,
) -> Selection:
    """The ensemble of ``candidates`` maximising selection-part GAP with distinct members' bytes <=
    budget (and their FLOPs per video <= ``budget_flops``, when given); deterministic for a ``seed``.

    ``holdout_fraction``: the videos ``metrics.holdout.holdout_mask`` puts in the holdout are left out.
    ``population``: the candidates' selection videos are a uniform subsample (without replacement) of
    this many (``candidates.load_sample``); the GAP's standard error (``gap_se``) then says how far
    it may be from the GAP on all of them. See the module doc for the algorithm. Raises BudgetError
    when no candidate fits the budgets.
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
    keep = ~holdout_mask(list(candidates[0].video_ids), holdout_fraction)
    if not keep.any():
        raise EnsembleError(f"the selection part is empty: all {keep.size} videos are in the holdout")
    part = restrict(candidates, keep) if not keep.all() else list(candidates)
    scorer = Scorer(part, top_k, workers or min(4, os.cpu_count() or 1))
    try:
        noise = Bootstrap(scorer.video_positives, resamples, z, seed)
        chosen = _select(scorer, candidates, limits, noise, bags, seed, max_steps, say)
        sd = _gap_sd(scorer, noise, candidates, chosen)
    finally:
        scorer.close()
    tests = noise.tests
    videos = int(keep.sum())
    population = max(int(population or 0), videos)
    return dataclasses.replace(
        chosen, gap_sd=sd, gap_se=sd * math.sqrt(1.0 - videos / population), population=population,
        evaluations=scorer.evaluations, seconds=time.perf_counter() - started, videos=videos,
        holdout_fraction=float(holdout_fraction), resamples=noise.resamples, noise_z=noise.z,
        noise_sd=float(np.median([t.sd for t in tests])) if tests else math.nan,
        min_gain=float(np.median([t.threshold for t in tests])) if tests else math.nan,
        noise_tests=len(tests), noise_rejections=sum(not t.accepted for t in tests),
    )  # fmt: skip


def _gap_sd(scorer: Scorer, noise: Bootstrap, candidates: Sequence[Candidate], chosen: Selection) -> float:
    """The bootstrap sd of the chosen ensemble's GAP over the selection videos (NaN: one resample)."""
    index = {id(c): j for j, c in enumerate(candidates)}
    weights = {index[id(c)]: w for c, w in zip(chosen.members, chosen.weights)}
    scorer.layout(weights)
    resampled = noise.gaps(*scorer.ranked(scorer.compose(weights)))
    return float(np.std(resampled, ddof=1)) * noise.scale if noise.resamples > 1 else math.nan


def _select(scorer: Scorer, candidates: Sequence[Candidate], limits: _Limits, noise: Bootstrap, bags: int,
            seed: int, max_steps: int, say: Callable[[str], None]) -> Selection:
    ids, sizes = [c.trial_id for c in candidates], limits.sizes
    fitting = [j for j in range(len(candidates)) if limits.fits([j])]
    singles = dict(zip(fitting, scorer.gaps([(scorer.compose({}), [(j, 1)]) for j in fitting])))
    best = max(fitting, key=lambda j: (singles[j], -sizes[j]))
    best_single = (ids[best], float(singles[best]))
    say(f"{len(candidates)} candidates, {len(fitting)} fit the budget; best single: trial {ids[best]} "
        f"selection GAP {best_single[1]:.5f}")
    ctx = _Context(scorer, limits, ids, singles, noise, max_steps)
    if bags <= 1 or len(fitting) < 2:
        paths = [_bag(ctx, fitting)]
    else:
        rng = np.random.default_rng(seed)
        paths = [_video_bag(ctx, fitting, rng, seed + 1 + b) for b in range(bags)]
    if len(paths) == 1:
        chosen = paths[0]
    else:
        chosen = _combine(ctx, paths)
        say(f"{len(paths)} bags: selection GAP {chosen.gap:.5f}, {chosen.used:,} bytes, {len(chosen.weights)} members")
    if chosen.gap < best_single[1]:  # the bags' sum (or float drift): the best single, as the curve's last point
        chosen = _Path({best: 1}, best_single[1], sizes[best], [*chosen.curve, (sizes[best], best_single[1])],
                       [*chosen.steps, f"best single {ids[best]}"], chosen.strategy)
    order = sorted(chosen.weights, key=lambda j: (-chosen.weights[j], ids[j]))
    return Selection(
        members=[candidates[j] for j in order], weights=[chosen.weights[j] for j in order], gap=chosen.gap,
        size_bytes=sum(sizes[j] for j in order), budget_bytes=limits.budget, curve=chosen.curve,
        strategy=chosen.strategy, best_single=best_single, steps=chosen.steps,
        flops=sum(limits.flops[j] for j in order), budget_flops=limits.budget_flops,
        method="bagged" if len(paths) > 1 else "greedy", bags=len(paths), single=candidates[best],
    )  # fmt: skip


def _video_bag(ctx: _Context, fitting: list[int], rng: np.random.Generator, seed: int) -> _Path:
    """One bag: a run (``_bag``) on a bootstrap resample of the selection videos, scored and
    noise-tested on that resample (its tests are added to ``ctx.noise.tests``)."""
    n = ctx.scorer.num_videos
    scorer = ctx.scorer.resampled(np.sort(rng.integers(0, n, n)))
    try:
        singles = dict(zip(fitting, scorer.gaps([(scorer.compose({}), [(j, 1)]) for j in fitting])))
        noise = Bootstrap(scorer.video_positives, ctx.noise.resamples, ctx.noise.z, seed)
        path = _bag(_Context(scorer, ctx.limits, ctx.ids, singles, noise, ctx.max_steps), fitting)
    finally:
        ctx.scorer.evaluations += scorer.evaluations
        scorer.close()
    ctx.noise.tests.extend(noise.tests)
    return path


def _bag(ctx: _Context, pool: list[int]) -> _Path:
    """One run on ``pool`` (scored by ``ctx.scorer``): sorted initialisation, then greedy; both greedy
    orders when the pool does not fit together, the better kept."""
    tight = not ctx.limits.fits(pool)
    start = _sorted_init(ctx, pool)
    paths = [_greedy(ctx, pool, start, strategy) for strategy in (("gain", "per_byte") if tight else ("gain",))]
    return max(paths, key=lambda p: (p.gap, -p.used))


def _sorted_init(ctx: _Context, pool: list[int]) -> dict[int, int]:
    """The best N of ``pool`` by their own GAP (added in that order while they fit), N the prefix with
    the highest GAP; longer than one only when its gain over the first passes the noise test."""
    prefix: list[int] = []
    prefixes: list[list[int]] = []
    for j in sorted(pool, key=lambda j: (-ctx.singles[j], ctx.limits.sizes[j], j)):
        if ctx.limits.fits([*prefix, j]):
            prefix = [*prefix, j]
            prefixes.append(prefix)
    ctx.scorer.layout(prefix)  # the longest prefix holds every other: one layout scores them all
    gaps = ctx.scorer.gaps([(ctx.scorer.compose(dict.fromkeys(p, 1)), []) for p in prefixes])
    n = int(np.argmax(gaps))
    if n == 0 or gaps[n] <= gaps[0]:
        return {prefixes[0][0]: 1}
    scorer = ctx.scorer
    before = ctx.noise.gaps(*scorer.ranked(scorer.weighted_gap({prefixes[0][0]: 1})[1]))
    after = scorer.ranked(scorer.weighted_gap(dict.fromkeys(prefixes[n], 1))[1])
    test, _ = ctx.noise.test(gaps[n] - gaps[0], before, after)
    return dict.fromkeys(prefixes[n] if test.accepted else prefixes[0][:1], 1)


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


def _greedy(ctx: _Context, pool: list[int], start: Mapping[int, int], strategy: str) -> _Path:
    """Forward selection with replacement from ``start``; ``per_byte`` ranks moves by gain per cost
    (free moves first). A step must pass the noise test (``bootstrap``); the first that does not ends it."""
    scorer, limits, sizes = ctx.scorer, ctx.limits, ctx.limits.sizes
    weights = dict(start)
    gap, base = scorer.weighted_gap(weights)
    resampled = ctx.noise.gaps(*scorer.ranked(base))
    used = sum(sizes[j] for j in weights)
    curve, steps = [(used, gap)], ["+".join(ctx.ids[j] for j in sorted(weights, key=ctx.ids.__getitem__))]
    for _ in range(ctx.max_steps):
        moves = [j for j in pool if j in weights or limits.fits([*weights, j])]
        moves, gains = _scored_moves(scorer, base, gap, moves, weights, strategy, 0.0)
        ranks = {i: _move_rank(strategy, moves[i] in weights, limits.cost(moves[i]), gains[i])
                 for i in range(len(moves)) if gains[i] > 0}  # fmt: skip
        if not ranks:
            break
        j = moves[max(ranks, key=ranks.__getitem__)]
        trial = {**weights, j: weights.get(j, 0) + 1}
        new_gap, new_base = scorer.weighted_gap(trial)
        if new_gap <= gap:  # float drift between the move's score and the canonical one: stop here
            break
        test, new_resampled = ctx.noise.test(new_gap - gap, resampled, scorer.ranked(new_base))
        if not test.accepted:
            break
        weights, gap, base, resampled = trial, new_gap, new_base, new_resampled
        used = sum(sizes[m] for m in weights)
        curve.append((used, gap))
        steps.append(ctx.ids[j])
    return _Path(weights, gap, used, curve, steps, strategy)


def _trim(weights: Mapping[int, int], limits: _Limits) -> dict[int, int]:
    """``weights`` less the members of lowest weight per share of the tighter budget (``_Limits.cost``)
    until the distinct members fit: a large member that a few bags chose goes before small ones that
    many chose."""
    kept = dict(weights)
    while not limits.fits(kept):
        del kept[min(kept, key=lambda j: (kept[j] / limits.cost(j), -limits.sizes[j], j))]
    return kept


def _combine(ctx: _Context, paths: list[_Path]) -> _Path:
    """The bags' summed weights, trimmed to fit; the curve after each bag is added (on the whole
    selection part)."""
    total: dict[int, int] = {}
    curve: list[tuple[int, float]] = []
    steps: list[str] = []
    kept: dict[int, int] = {}
    gap = 0.0
    for b, path in enumerate(paths, start=1):
        for j, w in path.weights.items():
            total[j] = total.get(j, 0) + w
        kept = _trim(total, ctx.limits)
        gap = ctx.scorer.weighted_gap(kept)[0]
        curve.append((sum(ctx.limits.sizes[j] for j in kept), gap))
        steps.append(f"bag {b}: " + ", ".join(path.steps))
    strategy = "+".join(sorted({p.strategy for p in paths}, key=["gain", "per_byte"].index))
    kept, gap, pruned = _prune(ctx, kept, gap)
    if pruned:
        curve.append((sum(ctx.limits.sizes[j] for j in kept), gap))
        steps.append("pruned " + ", ".join(pruned))
    return _Path(kept, gap, curve[-1][0], curve, steps, strategy)


def _prune(ctx: _Context, weights: dict[int, int], gap: float) -> tuple[dict[int, int], float, list[str]]:
    """Drop members whose loss is within the noise (the paired test of keeping them), lowest weight
    per share of the budget first: bags that chose between near-equal candidates leave each of them
    some weight, and a member that adds nothing beyond the noise should not cost bytes."""
    scorer, pruned = ctx.scorer, []
    while len(weights) > 1:
        full = ctx.noise.gaps(*scorer.ranked(scorer.weighted_gap(weights)[1]))
        for j in sorted(weights, key=lambda m: (weights[m] / ctx.limits.cost(m), ctx.ids[m])):
            rest = {m: w for m, w in weights.items() if m != j}
            rest_base = scorer.compose(rest)  # on the full ensemble's layout, which holds the rest's
            rest_gap = scorer.gap(rest_base)
            differences = full - ctx.noise.gaps(*scorer.ranked(rest_base))
            sd = float(np.std(differences, ddof=1)) * ctx.noise.scale if ctx.noise.resamples > 1 else 0.0
            if gap - rest_gap <= ctx.noise.z * sd:
                weights, gap = rest, rest_gap
                pruned.append(ctx.ids[j])
                break
        else:
            break
    return weights, gap, pruned
