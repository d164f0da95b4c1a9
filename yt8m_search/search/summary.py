"""The run summary (``summary.json``) of a finished sweep, from its trials table."""

from __future__ import annotations

from collections.abc import Sequence

from yt8m_search import __version__
from yt8m_search.config import Spec
from yt8m_search.data.prepare import DataPaths
from yt8m_search.results import (
    BestTrial,
    BudgetSummary,
    DataSummary,
    RunSummary,
    TrialRow,
    best_trial,
    count_states,
    pareto_costs,
    pareto_front,
)


def summarize(spec: Spec, rows: Sequence[TrialRow], run_dir: str, data: DataPaths) -> RunSummary:
    """The sweep's summary without the ensemble entry (the ensemble step adds it)."""
    best = best_trial(rows)
    budget = spec.budget
    return RunSummary(
        space=spec.source,
        space_hash=spec.digest(),
        version=__version__,
        run_dir=run_dir,
        objectives=list(spec.search.objectives),
        trials=count_states(rows),
        budget=BudgetSummary(max_model_bytes=budget.max_model_bytes, ensemble_bytes=budget.ensemble_bytes,
                             storage_dtype=budget.storage_dtype, max_flops=budget.max_flops,
                             ensemble_flops=budget.ensemble_flops),  # fmt: skip
        data=DataSummary(train=data.train, validation=data.validation),
        best=BestTrial.of(best) if best is not None else None,
        pareto=[r.trial_id for r in pareto_front(rows, pareto_costs(spec.search.objectives))],
    )
