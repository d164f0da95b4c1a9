"""The sweep: Ray Tune trials proposed by Optuna (TPE, seeded, define-by-run), stopped by ASHA.

Layers: ``trial.run_trial`` is one Tune trial, which calls ``train.fit`` with ``tune.report``: a
one-worker trial trains in the trial's own process, a multi-worker one through a TorchTrainer whose
DDP workers each run ``train.train_loop_per_worker``; ``tuner.run_sweep`` builds the Tuner and
returns the trials table (``results.TrialRow``, in creation order).

- ``space``: the size-aware search space, the sampler and the searcher (ASHA-stopped trials PRUNED);
- ``trial``: one trial (``SweepContext``, ``run_trial``, ``trial_resources``);
- ``tuner``: the Tuner and the trials table (``run_sweep``, ``max_concurrent_trials``);
- ``live``: trial states and the live status line;
- ``study``: the live study's ``optuna.journal`` (where it is, its sync to s3://) and the
  parameter importances;
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
    GAP_BY_EPOCH,
    NUMBER,
    OBJECTIVE_METRICS,
    FidelityAwareOptunaSearch,
    InfeasibleConfig,
    SearchSpace,
    make_sampler,
    make_searcher,
    model_of,
    sample,
)
from yt8m_search.search.study import (
    JournalSync,
    fail_unfinished,
    importances,
    journal_path,
    prepare_journal,
    read_study,
)
from yt8m_search.search.summary import summarize
from yt8m_search.search.trial import SweepContext, run_trial, trial_resources, trial_seed
from yt8m_search.search.tuner import max_concurrent_trials, run_sweep, trial_row, trial_rows

__all__ = [
    "EXTRA_KEYS",
    "GAP_BY_EPOCH",
    "NUMBER",
    "OBJECTIVE_METRICS",
    "FidelityAwareOptunaSearch",
    "InfeasibleConfig",
    "JournalSync",
    "LiveView",
    "SearchSpace",
    "SweepContext",
    "fail_unfinished",
    "importances",
    "journal_path",
    "make_sampler",
    "make_searcher",
    "max_concurrent_trials",
    "model_of",
    "prepare_journal",
    "read_study",
    "run_sweep",
    "run_trial",
    "trial_resources",
    "sample",
    "summarize",
    "trial_row",
    "trial_rows",
    "trial_seed",
    "trial_state",
]
