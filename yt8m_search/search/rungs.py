"""Asynchronous successive halving (ASHA, Li et al. 2018) that stops a trial only on signal.

Rungs sit at epochs ``grace_period · reduction_factor^k`` below ``trial.epochs``. A trial reaching a
rung is compared with the GAPs the rung has recorded: as in ASHA it is stopped when it falls below the
top ``1/reduction_factor`` of them, but only when it falls below by more than ``noise_margin`` standard
errors of a GAP difference (``√2 · gap_se``, the trial's own ``gap_se``: ``metrics.noise``). Early in
training GAPs differ by less than the noise of the validation videos they are measured on (the issue
measured epoch-1 GAPs of 1e-5 to 5e-3 beside a random ranking's 0.001), and ASHA's plain cutoff then
ranks noise; with the margin no trial is stopped until the differences are real, and rungs where they
never are stop nothing.

With cost objectives (``size``, ``flops``), a trial is compared only with trials of its own cost
stratum (the octave of each cost: ``floor(log2(cost))``), so GAP-only halving cannot cut away the small,
cheap end of the Pareto front, whose GAPs are lower by design.

Tune's ``FIFOScheduler`` runs the trials; this class only decides stops. Like Ray's ASHA, the rungs'
records live in memory: a resumed sweep starts with empty rungs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from ray.tune.schedulers import FIFOScheduler, TrialScheduler

__all__ = ["SignalHalving", "milestones"]


def milestones(grace_period: int, reduction_factor: int, max_epochs: int) -> list[int]:
    """The rung epochs: ``grace_period · reduction_factor^k`` below ``max_epochs`` (a trial's last
    epoch is no decision point: it has finished)."""
    out, epoch = [], grace_period
    while epoch < max_epochs:
        out.append(epoch)
        epoch *= reduction_factor
    return out


class SignalHalving(FIFOScheduler):
    """ASHA on ``gap`` at ``epoch`` rungs, with a noise margin and cost strata (module doc)."""

    def __init__(self, *, max_epochs: int, grace_period: int, reduction_factor: int, noise_margin: float = 2.0,
                 costs: Sequence[str] = ()) -> None:  # fmt: skip
        super().__init__()
        self.rungs = milestones(grace_period, reduction_factor, max_epochs)
        self.reduction_factor = reduction_factor
        self.noise_margin = noise_margin
        self.costs = tuple(costs)  # reported metrics to stratify by, e.g. ("size_bytes",)
        self.recorded: dict[tuple[Any, ...], dict[str, float]] = {}  # (rung, stratum) -> trial id -> GAP
        self.stopped: list[tuple[str, int, float, float]] = []  # (trial id, rung, GAP, cutoff)

    def stratum(self, result: dict[str, Any]) -> tuple[int, ...]:
        """The octave of each cost the search minimises (trials compete within one)."""
        return tuple(int(math.floor(math.log2(max(float(result.get(c) or 1), 1.0)))) for c in self.costs)

    def decide(self, trial_id: str, result: dict[str, Any]) -> str:
        """CONTINUE or STOP for a trial's epoch result; records the GAP of a trial reaching a rung."""
        epoch, gap = result.get("epoch"), result.get("gap")
        if epoch not in self.rungs or gap is None or not math.isfinite(gap):
            return TrialScheduler.CONTINUE
        rung = self.recorded.setdefault((epoch, *self.stratum(result)), {})
        if trial_id in rung:  # a retried trial reporting this epoch again
            return TrialScheduler.CONTINUE
        action = TrialScheduler.CONTINUE
        if rung:
            cutoff = float(np.percentile(list(rung.values()), 100 * (1 - 1 / self.reduction_factor)))
            se = result.get("gap_se")
            margin = self.noise_margin * math.sqrt(2) * se if se is not None and math.isfinite(se) else 0.0
            if gap + margin < cutoff:
                action = TrialScheduler.STOP
                self.stopped.append((trial_id, int(epoch), float(gap), cutoff))
        rung[trial_id] = float(gap)
        return action

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict[str, Any]) -> str:
        return self.decide(trial.trial_id, result)

    def debug_string(self) -> str:
        return f"SignalHalving: rungs at epochs {self.rungs}, {len(self.stopped)} stopped"
