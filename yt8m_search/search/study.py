"""The finished sweep as an Optuna study: ``optuna.journal`` for ``optuna-dashboard``, and the
parameter importances the report plots."""

from __future__ import annotations

import math
import os
import tempfile
import warnings
from collections.abc import Sequence

import optuna
from optuna.storages import InMemoryStorage, JournalStorage
from optuna.storages.journal import JournalFileBackend

from yt8m_search.config import Parameter, Spec
from yt8m_search.data import fs
from yt8m_search.results import COSTS, TrialRow, TrialState

JOURNAL_FILE = "optuna.journal"
_OPTUNA_STATES = {
    TrialState.COMPLETE: optuna.trial.TrialState.COMPLETE,
    TrialState.STOPPED: optuna.trial.TrialState.PRUNED,
    TrialState.INFEASIBLE: optuna.trial.TrialState.COMPLETE,
}


def _distribution(p: Parameter) -> optuna.distributions.BaseDistribution:
    d = p.distribution
    assert d is not None
    if d.kind == "choice":
        return optuna.distributions.CategoricalDistribution(list(d.choices))
    if d.kind == "int":
        return optuna.distributions.IntDistribution(int(d.low), int(d.high), log=d.log, step=int(d.step or 1))  # type: ignore[arg-type]
    return optuna.distributions.FloatDistribution(float(d.low), float(d.high), log=d.log, step=d.step)  # type: ignore[arg-type]


def _constraints(spec: Spec, row: TrialRow) -> dict[str, float]:
    """The per-model budgets' constraints (feasible iff <= 0), as ``SearchSpace`` set them; an
    infeasible trial violates at least one."""
    budget, found = spec.budget, {}
    budgets = (("size", row.size_bytes, budget.max_model_bytes), ("flops", row.flops, budget.max_flops))
    for name, used, limit in budgets:
        if name == "size" or limit is not None:
            found[f"constraints:{name}_over_budget"] = float(used - limit) if limit and used > 0 else 0.0
    if row.state is TrialState.INFEASIBLE and max(found.values()) <= 0:
        found["constraints:size_over_budget"] = 1.0
    return found


def _frozen_trial(spec: Spec, row: TrialRow) -> optuna.trial.FrozenTrial:
    """A row as an Optuna trial: searched parameters with their distributions, values of fully
    trained (and infeasible: GAP 0) trials, PRUNED for stopped ones, the budgets' constraints."""
    params, dists = {}, {}
    for p in spec.parameters:
        value = row.config.get(p.name)
        if p.distribution is None or value is None or (isinstance(value, float) and math.isnan(value)):
            continue
        params[p.name], dists[p.name] = value, _distribution(p)
    state = _OPTUNA_STATES.get(row.state, optuna.trial.TrialState.FAIL)
    values = None
    if state == optuna.trial.TrialState.COMPLETE:
        gap = 0.0 if row.state is TrialState.INFEASIBLE else float(row.gap)
        values = [gap, *(float(getattr(row, COSTS[o])) for o in spec.search.objectives[1:])]
    return optuna.trial.create_trial(
        params=params, distributions=dists, values=values, state=state,
        user_attrs={"trial_id": row.trial_id, "state": row.state.value, "model": row.model, "flops": row.flops,
                    "latency_ms": row.latency_ms if math.isfinite(row.latency_ms) else None},
        system_attrs=_constraints(spec, row),
    )  # fmt: skip


def write_study(spec: Spec, rows: Sequence[TrialRow], run_dir: str) -> tuple[optuna.Study, str]:
    """The sweep as an Optuna study in a journal file that ``optuna-dashboard`` opens.

    Rebuilt from the trials table (so it is identical after ``--resume``), in creation order: the
    study's trial numbers are the rows' numbers. Built in memory, copied into a journal in a temp
    folder, and that file written to the run folder in one piece (which may be on S3)."""
    directions = ["maximize"] + ["minimize"] * (len(spec.search.objectives) - 1)
    memory = InMemoryStorage()
    study = optuna.create_study(study_name=spec.name, directions=directions, storage=memory)
    study.set_metric_names(["gap", *(COSTS[o] for o in spec.search.objectives[1:])])
    for row in sorted(rows, key=lambda r: r.number):
        study.add_trial(_frozen_trial(spec, row))
    path = fs.join(run_dir, JOURNAL_FILE)
    with tempfile.TemporaryDirectory() as tmp:
        local = os.path.join(tmp, JOURNAL_FILE)
        optuna.copy_study(from_study_name=spec.name, from_storage=memory,
                          to_storage=JournalStorage(JournalFileBackend(local)))  # fmt: skip
        with fs.atomic_output(path) as f, open(local, "rb") as src:
            f.write(src.read())
    return study, path


def importances(study: optuna.Study) -> dict[str, float]:
    """Parameter importance for GAP over fully trained trials (empty when too few)."""
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE
                and t.user_attrs.get("state") == TrialState.COMPLETE.value]  # fmt: skip
    if len(complete) < 3:
        return {}
    sub = optuna.create_study(directions=study.directions)
    sub.add_trials(complete)
    # GAP negated: Optuna's default evaluator (PED-ANOVA) ranks parameters by how they reach *low*
    # target values, and warns that it does
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "PedAnova.*low `target`")
            return optuna.importance.get_param_importances(sub, target=lambda t: -t.values[0])
    except (RuntimeError, ValueError, ZeroDivisionError):
        return {}
