"""The sweep: Ray Tune trials proposed by Optuna (TPE, seeded, define-by-run), stopped by ASHA.

Layers (Ray Train V2 pattern): ``train.train_loop_per_worker`` runs on every DDP worker;
``trial.run_trial`` is one Tune trial, the Train driver that builds a TorchTrainer through
``train.fit`` and relays its reports to Tune (``relay_to_tune``); ``tuner.run_sweep`` builds the
Tuner and returns the trials table (``results.TrialRow``, in creation order).

- ``space``: the size-aware search space, the sampler and the searcher (ASHA-stopped trials PRUNED);
- ``trial``: one trial (``SweepContext``, ``run_trial``, ``relay_to_tune``);
- ``tuner``: the Tuner and the trials table (``run_sweep``, ``max_concurrent_trials``);
- ``live``: trial states and the live status line;
- ``study``: ``optuna.journal`` and the parameter importances;
- ``summary``: the run summary.

Everything a sweep writes lives under its run folder: ``tune/`` (Ray Tune's experiment, W&B
offline runs inside each trial folder), ``trials/`` (every trial's Train run: checkpoints,
``best/`` model and predictions), ``trials.csv``, ``optuna.journal``, ``summary.json``,
``report.html`` and the ensemble bundle.
"""

from __future__ import annotations

from yt8m_search.search.live import LiveView, trial_state
from yt8m_search.search.space import (
    EXTRA_KEYS,
    NUMBER,
    OBJECTIVE_METRICS,
    FidelityAwareOptunaSearch,
    SearchSpace,
    make_sampler,
    make_searcher,
    model_of,
    sample,
)
from yt8m_search.search.study import importances, write_study
from yt8m_search.search.summary import summarize
from yt8m_search.search.trial import SweepContext, relay_to_tune, run_trial
from yt8m_search.search.tuner import max_concurrent_trials, run_sweep, trial_row, trial_rows

__all__ = [
    "EXTRA_KEYS",
    "NUMBER",
    "OBJECTIVE_METRICS",
    "FidelityAwareOptunaSearch",
    "LiveView",
    "SearchSpace",
    "SweepContext",
    "importances",
    "make_sampler",
    "make_searcher",
    "max_concurrent_trials",
    "model_of",
    "relay_to_tune",
    "run_sweep",
    "run_trial",
    "sample",
    "summarize",
    "trial_row",
    "trial_rows",
    "trial_state",
    "write_study",
]
