"""The search space and the searcher: Optuna (TPE, seeded, define-by-run) behind Ray Tune.

``SearchSpace`` samples a configuration, computes its analytic stored size and forward FLOPs and
tells Optuna (``trial.set_constraint``, Optuna's standard constraints) whether it fits the per-model
budgets (bytes, FLOPs). The searcher never hands Tune an infeasible configuration: it ends that
Optuna trial at once (PRUNED, its constraints > 0: TPE ranks it below every feasible trial), records
it in ``FidelityAwareOptunaSearch.infeasible`` and asks again. So an infeasible configuration costs
no Tune trial (no ``num_samples`` slot, no W&B run) and ASHA never sees it. ``make_sampler`` is the
one place the sweep's sampler is built: the searcher and ``run --dry-run`` both use it.
"""

from __future__ import annotations

import pickle
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import optuna
from ray.tune.search.optuna import OptunaSearch

from yt8m_search import compat, models
from yt8m_search.config import Parameter, Spec
from yt8m_search.data import fs

# each objective of ``search.objectives``: the trial's reported metric and its direction
OBJECTIVE_METRICS = {"gap": ("gap_best", "max"), "size": ("size_bytes", "min"), "flops": ("flops", "min")}
# The keys the space adds to a trial's config besides its parameters. ``number`` is Optuna's trial
# number: consecutive from 0 in the order the searcher was asked, i.e. the order Tune created the
# trials; it lives in the trial's config, so a resumed sweep keeps it (Tune restores configs and the
# searcher's study, whose numbering goes on).
NUMBER = "number"
EXTRA_KEYS = ("size_bytes", "flops", "feasible", "infeasible_reason", NUMBER)
# consecutive infeasible draws after which the searcher gives up (the budget leaves too little room)
MAX_INFEASIBLE_DRAWS = 1000


def _suggest(trial: optuna.Trial, p: Parameter) -> Any:
    d = p.distribution
    assert d is not None
    if d.kind == "choice":
        return trial.suggest_categorical(p.name, list(d.choices))
    if d.kind == "int":
        return trial.suggest_int(p.name, int(d.low), int(d.high), step=int(d.step or 1), log=d.log)  # type: ignore[arg-type]
    return trial.suggest_float(p.name, float(d.low), float(d.high), step=d.step, log=d.log)  # type: ignore[arg-type]


def sample(trial: optuna.Trial, parameters: Sequence[Parameter]) -> dict[str, Any]:
    """Every active parameter's value: searched ones suggested, fixed ones as given."""
    values: dict[str, Any] = {}
    for p in parameters:
        if p.active(values):
            values[p.name] = _suggest(trial, p) if p.distribution else p.value
    return values


def model_of(values: dict[str, Any], parameters: Sequence[Parameter]) -> tuple[str, dict[str, Any]]:
    """(family, hyperparameters) of a trial's flat values."""
    sections = {p.name: p.section for p in parameters}
    return values["family"], {k: v for k, v in values.items() if sections.get(k) == "hparams"}


class SearchSpace:
    """Optuna define-by-run space built from the spec: importable and picklable (Tune pickles the
    searcher at every experiment checkpoint; lambdas and closures break that)."""

    def __init__(self, parameters: Sequence[Parameter], max_model_bytes: int | None, storage_dtype: str,
                 max_flops: int | None = None) -> None:
        self.parameters = tuple(parameters)
        self.max_model_bytes = max_model_bytes
        self.storage_dtype = storage_dtype
        self.max_flops = max_flops

    @classmethod
    def of(cls, spec: Spec) -> SearchSpace:
        """The space of ``spec`` under its per-model budgets."""
        budget = spec.budget
        return cls(spec.parameters, budget.max_model_bytes, budget.storage_dtype, budget.max_flops)

    def __call__(self, trial: optuna.Trial) -> dict[str, Any]:
        values = sample(trial, self.parameters)
        family, hparams = model_of(values, self.parameters)
        size, flops, reasons = -1, -1, []
        try:
            size = models.size_bytes(family, dtype=self.storage_dtype, **hparams)
            flops = models.flops(family, **hparams)
        except ValueError as err:  # an impossible combination (e.g. groups not dividing the input)
            reasons.append(str(err))
        if not reasons and self.max_model_bytes is not None and size > self.max_model_bytes:
            reasons.append(f"{size:,} bytes > budget {self.max_model_bytes:,}")
        if size >= 0 and self.max_flops is not None and flops > self.max_flops:
            reasons.append(f"{flops:,} FLOPs per video > budget {self.max_flops:,} FLOPs")
        # feasible iff <= 0; an invalid model counts as far over budget
        trial.set_constraint("size_over_budget", (size - (self.max_model_bytes or size)) if size >= 0 else 1e18)
        if self.max_flops is not None:
            trial.set_constraint("flops_over_budget", flops - self.max_flops if flops >= 0 else 1e18)
        fixed = {p.name: values[p.name] for p in self.parameters if p.distribution is None and p.name in values}
        return {**fixed, "size_bytes": size, "flops": flops, "feasible": not reasons,
                "infeasible_reason": "; ".join(reasons), NUMBER: trial.number}  # fmt: skip


@dataclass(frozen=True)
class InfeasibleConfig:
    """A configuration the searcher drew and rejected: its Optuna trial number (creation order, shared
    with the Tune trials' ``number``), its config (as ``SearchSpace`` returned it), analytic size and
    FLOPs (-1: not a valid model) and why it does not fit."""

    number: int
    config: dict[str, Any]
    size_bytes: int
    flops: int
    reason: str


class FidelityAwareOptunaSearch(OptunaSearch):
    """Optuna behind Tune, with two changes. ASHA-stopped trials reach Optuna as PRUNED, not COMPLETE
    with truncated metrics, so a partially trained trial never lands on the Pareto front nor poses as
    a finished one. And ``suggest`` only ever returns feasible configurations: an infeasible draw is
    told to Optuna (PRUNED, with the constraints ``SearchSpace`` set) and kept in ``infeasible``, a
    plain attribute, so Tune's searcher checkpoint (``save`` pickles ``__dict__``) keeps it."""

    def __init__(self, *args: Any, max_epochs: int, budget: str = "the per-model budget",
                 max_draws: int = MAX_INFEASIBLE_DRAWS, **kwargs: Any) -> None:  # fmt: skip
        super().__init__(*args, **kwargs)
        self.max_epochs, self.budget, self.max_draws = max_epochs, budget, max_draws
        self.infeasible: list[InfeasibleConfig] = []

    def suggest(self, trial_id: str) -> dict | None:
        for _ in range(self.max_draws):
            config = super().suggest(trial_id)
            if config is None or config.get("feasible", True):
                return config
            compat.reject_optuna_trial(self, trial_id)
            self.infeasible.append(InfeasibleConfig(
                number=config[NUMBER], config=config, size_bytes=config["size_bytes"], flops=config["flops"],
                reason=config["infeasible_reason"]))  # fmt: skip
        raise RuntimeError(f"{self.max_draws} configurations in a row were over {self.budget} (the last: "
                           f"{self.infeasible[-1].reason}); raise the budget or narrow the space")  # fmt: skip

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        stopped = result and not error and result.get("epoch", 0) < self.max_epochs
        if stopped and compat.tell_optuna_pruned(self, trial_id):
            return
        super().on_trial_complete(trial_id, result, error)

    @classmethod
    def saved_infeasible(cls, experiment_dir: str) -> list[InfeasibleConfig]:
        """The infeasible configurations in the newest searcher checkpoint Tune wrote in
        ``experiment_dir`` (local or s3://; Tune writes a last one when the sweep ends, and a resumed
        sweep's restored searcher carries the earlier ones); empty when there is none."""
        try:
            files = fs.list_files(experiment_dir, pattern=cls.CKPT_FILE_TMPL.format("*"))
        except FileNotFoundError:
            return []
        if not files:
            return []
        state = pickle.loads(fs.read_bytes(files[-1]))  # names end in the session's timestamp
        return list(state.get("infeasible", [])) if isinstance(state, dict) else []


class GridSampler(optuna.samplers.GridSampler):
    """Optuna's grid for Tune's ask-and-tell: trial n takes point n (Optuna's order, shuffled by the
    seed). Optuna's own ``after_trial`` stops the study once the grid is done, which only works
    inside ``study.optimize`` (elsewhere it raises); here ``search.num_samples`` ends the sweep."""

    def after_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial, state: optuna.trial.TrialState,
                    values: Sequence[float] | None) -> None:
        return None


def make_sampler(spec: Spec) -> optuna.samplers.BaseSampler:
    """The sweep's sampler: seeded TPE (multivariate, grouped, constant liar), random search, or the
    grid of the searched choices (each combination once)."""
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # group=True
    if spec.search.sampler == "random":
        return optuna.samplers.RandomSampler(seed=spec.search.seed)
    if spec.search.sampler == "grid":
        return GridSampler(spec.grid(), seed=spec.search.seed)
    return optuna.samplers.TPESampler(
        seed=spec.search.seed, n_startup_trials=spec.search.startup_trials, multivariate=True, group=True,
        constant_liar=True,  # concurrent trials: pending ones count as bad, so TPE spreads out
    )


def make_searcher(spec: Spec) -> FidelityAwareOptunaSearch:
    metrics = [OBJECTIVE_METRICS[o] for o in spec.search.objectives]
    return FidelityAwareOptunaSearch(
        space=SearchSpace.of(spec),
        metric=[m for m, _ in metrics] if spec.multi_objective else metrics[0][0],
        mode=[d for _, d in metrics] if spec.multi_objective else metrics[0][1],
        sampler=make_sampler(spec),
        study_name=spec.name,
        max_epochs=spec.trial.epochs,
        budget=budget_text(spec),
    )


def budget_text(spec: Spec) -> str:
    """The per-model budgets in words, for the error when nothing drawn fits."""
    budget = spec.budget
    parts = [f"budget.max_model_bytes={budget.max_model_bytes:,}"] if budget.max_model_bytes is not None else []
    if budget.max_flops is not None:
        parts.append(f"budget.max_flops={budget.max_flops:,}")
    return " / ".join(parts) or "the per-model budget (or not valid models)"
