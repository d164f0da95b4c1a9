"""The run summary (``summary.json``) of a finished sweep, from its trials table, and the class-prior
baseline beside it."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from yt8m_search import __version__
from yt8m_search.config import Spec
from yt8m_search.constants import NUM_CLASSES
from yt8m_search.data import fs
from yt8m_search.data.labels import read_labels
from yt8m_search.data.prepare import DataPaths
from yt8m_search.metrics.baseline import class_frequencies, class_prior_gap
from yt8m_search.metrics.holdout import holdout_mask
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
        data=DataSummary(train=data.train, validation=data.validation,
                         holdout_fraction=spec.data.holdout_fraction),
        best=BestTrial.of(best) if best is not None else None,
        pareto=[r.trial_id for r in pareto_front(rows, pareto_costs(spec.search.objectives))],
        baselines=class_prior_baselines(spec, data),
    )


def class_prior_baselines(spec: Spec, data: DataPaths) -> dict[str, float]:
    """The class-prior ranking's GAP (``metrics.baseline``: training-label frequencies as every
    video's scores) on the selection and the holdout parts of the validation videos (NaN for an
    empty part). Reads only the shards' id and labels columns."""
    _, train = read_labels(fs.list_files(data.train, pattern="*.parquet"))
    ids, validation = read_labels(fs.list_files(data.validation, pattern="*.parquet"))
    num_classes = spec.data.synthetic.num_classes if spec.data.synthetic else NUM_CLASSES
    seen = max((int(r.max()) + 1 for r in (*train, *validation) if len(r)), default=0)
    frequencies = class_frequencies(train, max(num_classes, seen))
    held = holdout_mask(ids, spec.data.holdout_fraction)
    part = {name: [validation[i] for i in np.flatnonzero(mask)] for name, mask in (("selection", ~held),
                                                                                   ("holdout", held))}
    return {f"class_prior_{name}_gap": class_prior_gap(frequencies, labels) if labels else math.nan
            for name, labels in part.items()}
