"""Successive halving on signal (issue #15, item 4): rungs, the noise margin, cost strata."""

from __future__ import annotations

from ray.tune.schedulers import TrialScheduler

from yt8m_search import config
from yt8m_search.search.rungs import SignalHalving, milestones
from yt8m_search.search.tuner import make_scheduler

CONTINUE, STOP = TrialScheduler.CONTINUE, TrialScheduler.STOP


def test_rungs_sit_below_the_last_epoch() -> None:
    assert milestones(1, 2, 3) == [1, 2]
    assert milestones(1, 3, 9) == [1, 3]
    assert milestones(2, 2, 16) == [2, 4, 8]
    assert milestones(3, 2, 3) == []


def test_a_trial_is_stopped_only_below_the_cutoff_by_more_than_the_noise() -> None:
    rungs = SignalHalving(max_epochs=4, grace_period=1, reduction_factor=2, noise_margin=2.0)
    assert rungs.decide("a", {"epoch": 1, "gap": 0.30, "gap_se": 0.01}) == CONTINUE  # the first: nothing to beat
    assert rungs.decide("b", {"epoch": 1, "gap": 0.40, "gap_se": 0.01}) == CONTINUE
    # cutoff: the median of 0.30 and 0.40 = 0.35; the margin 2 * sqrt(2) * 0.01 = 0.028
    assert rungs.decide("c", {"epoch": 1, "gap": 0.33, "gap_se": 0.01}) == CONTINUE  # within the noise
    assert rungs.decide("d", {"epoch": 1, "gap": 0.30, "gap_se": 0.01}) == STOP  # 0.33 < 0.3458: below it
    assert rungs.decide("e", {"epoch": 1, "gap": 0.20, "gap_se": 0.10}) == CONTINUE  # a noisy GAP says little
    assert [s[0] for s in rungs.stopped] == ["d"]
    assert rungs.decide("d", {"epoch": 1, "gap": 0.30, "gap_se": 0.01}) == CONTINUE  # reported again (a retry)
    assert rungs.decide("b", {"epoch": 3, "gap": 0.10}) == CONTINUE  # epoch 3 is no rung


def test_without_a_standard_error_it_is_plain_asha() -> None:
    rungs = SignalHalving(max_epochs=3, grace_period=1, reduction_factor=2, noise_margin=2.0)
    rungs.decide("a", {"epoch": 1, "gap": 0.4})
    assert rungs.decide("b", {"epoch": 1, "gap": 0.399}) == STOP
    margin_off = SignalHalving(max_epochs=3, grace_period=1, reduction_factor=2, noise_margin=0.0)
    margin_off.decide("a", {"epoch": 1, "gap": 0.4, "gap_se": 0.1})
    assert margin_off.decide("b", {"epoch": 1, "gap": 0.399, "gap_se": 0.1}) == STOP


def test_with_a_cost_objective_trials_compete_within_their_cost_octave() -> None:
    rungs = SignalHalving(max_epochs=3, grace_period=1, reduction_factor=2, noise_margin=0.0, costs=["size_bytes"])
    rungs.decide("large", {"epoch": 1, "gap": 0.5, "size_bytes": 8_000_000})
    # a model a quarter the size, far below the large one's GAP, is not cut: it is the front's small end
    assert rungs.decide("small", {"epoch": 1, "gap": 0.1, "size_bytes": 1_500_000}) == CONTINUE
    assert rungs.decide("small2", {"epoch": 1, "gap": 0.05, "size_bytes": 1_900_000}) == STOP
    assert rungs.decide("large2", {"epoch": 1, "gap": 0.45, "size_bytes": 7_000_000}) == STOP


def test_the_sweep_uses_the_space_s_rungs_and_margin() -> None:
    spec = config.load("search_spaces/smoke.yaml", ["search.asha.noise_margin=1.5", "search.objectives=[gap, size]"])
    scheduler = make_scheduler(spec)
    assert isinstance(scheduler, SignalHalving)
    assert scheduler.rungs == milestones(spec.search.asha.grace_period, spec.search.asha.reduction_factor,
                                         spec.trial.epochs)  # fmt: skip
    assert scheduler.noise_margin == 1.5 and scheduler.costs == ("size_bytes",)
    assert make_scheduler(config.load("search_spaces/smoke.yaml", ["search.asha=null"])) is None
