"""The search space and the searcher: Optuna (TPE, seeded, define-by-run) behind Ray Tune.

``SearchSpace`` samples a configuration, computes its analytic stored size and forward FLOPs and
tells Optuna (Optuna's standard constraints, see ``set_constraints``) whether it fits the per-model
budgets (bytes, FLOPs). The searcher never hands Tune an infeasible configuration: it ends that
Optuna trial at once (PRUNED, its constraints > 0: TPE ranks it below every feasible trial), records
it in ``FidelityAwareOptunaSearch.infeasible`` and asks again. So an infeasible configuration costs
no Tune trial (no ``num_samples`` slot, no W&B run) and ASHA never sees it. ``make_sampler`` is the
one place the sweep's sampler is built: the searcher and ``run --dry-run`` both use it.

The searcher's study is the sweep's live study (``study.py``: ``optuna.journal``): each trial
carries its per-epoch GAP, its constraints and the user attributes ``trial_id`` (Tune's; for a
rejected draw ``infeasible-<number>``, as in ``trials.csv``), ``model``, ``size_bytes``, ``flops``
and ``state`` (``results.TrialState``: complete / stopped / error / infeasible).
"""

from __future__ import annotations

import math
import pickle
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import optuna
from ray.tune.search.optuna import OptunaSearch

from yt8m_search import compat, models
from yt8m_search.config import Parameter, Spec
from yt8m_search.data import fs
from yt8m_search.results import TrialState
from yt8m_search.search.live import trial_state
from yt8m_search.search.study import journal_storage

# each objective of ``search.objectives``: the trial's reported metric and its direction
OBJECTIVE_METRICS = {"gap": ("gap_best", "max"), "size": ("size_bytes", "min"), "flops": ("flops", "min")}
# The keys the space adds to a trial's config besides its parameters. ``number`` is Optuna's trial
# number: consecutive from 0 in the order the searcher was asked, i.e. the order Tune created the
# trials; it lives in the trial's config, so a resumed sweep keeps it (Tune restores configs and the
# searcher's study, whose numbering goes on).
NUMBER = "number"
EXTRA_KEYS = ("size_bytes", "flops", "feasible", "infeasible_reason", NUMBER)
# the user attribute that holds a multi-objective trial's per-epoch GAP ({"<epoch>": gap})
GAP_BY_EPOCH = "gap_by_epoch"
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


def set_constraints(trial: optuna.Trial, constraints: dict[str, float]) -> None:
    """Optuna's standard constraints (feasible iff all <= 0), in both of the forms Optuna reads: each by
    name (``trial.set_constraint``: system attrs ``constraints:<name>``, what Optuna 5's samplers
    use) and, in the same order, the list in system attr ``constraints`` (the older form, which
    ``constraints_func`` writes and optuna-dashboard 0.21 reads to show a trial's feasibility)."""
    for key, value in constraints.items():
        trial.set_constraint(key, value)
    trial.storage.set_trial_system_attr(_storage_id(trial), "constraints", [float(v) for v in constraints.values()])


def _storage_id(trial: optuna.Trial) -> int:
    """The storage's id of ``trial`` (through the storage's public interface: ``Trial`` keeps it private)."""
    storage = trial.storage
    return storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name(trial.study.study_name),
                                                           trial.number)  # fmt: skip


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
        constraints = {"size_over_budget": (size - (self.max_model_bytes or size)) if size >= 0 else 1e18}
        if self.max_flops is not None:
            constraints["flops_over_budget"] = flops - self.max_flops if flops >= 0 else 1e18
        set_constraints(trial, constraints)
        for key, value in (("model", family), ("size_bytes", size), ("flops", flops)):
            trial.set_user_attr(key, value)
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
    """Optuna behind Tune, with these changes. ASHA-stopped trials reach Optuna as PRUNED, not COMPLETE
    with truncated metrics, so a partially trained trial never lands on the Pareto front nor poses as
    a finished one. ``suggest`` only ever returns feasible configurations: an infeasible draw is
    told to Optuna (PRUNED, with the constraints ``SearchSpace`` set) and kept in ``infeasible``, a
    plain attribute, so Tune's searcher checkpoint (``save`` pickles ``__dict__``) keeps it. Each
    epoch's GAP reaches the study at step = epoch (``on_trial_result``), and every trial carries the
    user attributes the module docstring lists.

    With a ``JournalStorage`` (``make_searcher(spec, journal)``) the study is written as the sweep
    runs. The storage pickles with the searcher (Optuna's ``JournalStorage`` keeps only its file and
    replays it when next used), so a searcher Tune restores goes on appending to the same file, with
    trial numbers that continue. ``before_save`` (picklable: it is saved with the searcher) runs
    before each searcher checkpoint: ``JournalSync.flush`` for a remote run folder."""

    def __init__(self, *args: Any, max_epochs: int, budget: str = "the per-model budget",
                 max_draws: int = MAX_INFEASIBLE_DRAWS, metric_names: Sequence[str] | None = None,
                 before_save: Callable[[], None] | None = None, **kwargs: Any) -> None:  # fmt: skip
        super().__init__(*args, **kwargs)
        self.max_epochs, self.budget, self.max_draws = max_epochs, budget, max_draws
        self.before_save = before_save
        self.infeasible: list[InfeasibleConfig] = []
        study = compat.optuna_study(self)
        if metric_names and study is not None and study.metric_names is None:  # a continued study has them
            study.set_metric_names(list(metric_names))

    def suggest(self, trial_id: str) -> dict | None:
        for _ in range(self.max_draws):
            config = super().suggest(trial_id)
            if config is None:
                return config
            trial = compat.optuna_trial(self, trial_id)
            if config.get("feasible", True):
                trial.set_user_attr("trial_id", trial_id)
                return config
            trial.set_user_attr("trial_id", f"infeasible-{config[NUMBER]}")
            trial.set_user_attr("state", TrialState.INFEASIBLE.value)
            compat.reject_optuna_trial(self, trial_id)
            self.infeasible.append(InfeasibleConfig(
                number=config[NUMBER], config=config, size_bytes=config["size_bytes"], flops=config["flops"],
                reason=config["infeasible_reason"]))  # fmt: skip
        raise RuntimeError(f"{self.max_draws} configurations in a row were over {self.budget} (the last: "
                           f"{self.infeasible[-1].reason}); raise the budget or narrow the space")  # fmt: skip

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        """The epoch's GAP (``gap``) as the trial's intermediate value at step = ``epoch``: its learning
        curve, as optuna-dashboard plots it. Ray's own reports the searcher's metric (``gap_best``,
        the best so far) at Tune's iteration count, which restarts after a resume. A multi-objective
        study takes no intermediate values (Optuna refuses ``trial.report`` there): its trials keep
        the per-epoch GAP in the user attribute ``gap_by_epoch`` ({"<epoch>": gap}) instead."""
        trial = self._live_trial(trial_id)
        gap, epoch = result.get("gap"), result.get("epoch")
        if trial is None or gap is None or epoch is None or not math.isfinite(gap):
            return
        if isinstance(self.metric, list):
            trial.set_user_attr(GAP_BY_EPOCH, {**trial.user_attrs.get(GAP_BY_EPOCH, {}), str(int(epoch)): float(gap)})
        else:
            trial.report(float(gap), int(epoch))

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        trial = self._live_trial(trial_id)
        if trial is None:
            return
        state = trial_state("ERROR" if error else "TERMINATED", result, error, self.max_epochs)
        trial.set_user_attr("state", state.value)  # before the tell: a finished Optuna trial takes no attribute
        stopped = result and not error and result.get("epoch", 0) < self.max_epochs
        if stopped and compat.tell_optuna_pruned(self, trial_id):
            return
        super().on_trial_complete(trial_id, result, error)

    def _live_trial(self, trial_id: str) -> optuna.Trial | None:
        """The Optuna trial of Tune trial ``trial_id`` while it can still be written to; None once told.
        Told by this searcher, or, in a resumed sweep, by the sweep before it after the searcher
        checkpoint Tune restored: the journal is ahead of that checkpoint, Tune runs the trial again
        from its last epoch checkpoint, and the first tell stands."""
        trial = compat.optuna_trial(self, trial_id)
        if trial is not None and trial.storage.get_trial(_storage_id(trial)).state.is_finished():
            compat.mark_optuna_told(self, trial_id)
            return None
        return trial

    def save(self, checkpoint_path: str) -> None:
        if self.before_save is not None:
            self.before_save()
        super().save(checkpoint_path)

    def restore(self, checkpoint_path: str) -> None:
        super().restore(checkpoint_path)
        self._fail_orphans()

    def _fail_orphans(self) -> None:
        """Tell FAIL the study's running trials that no restored Tune trial holds: asked after the
        searcher checkpoint Tune restored (the sweep died before the next one), so nothing will ever
        tell them. Without this the journal shows them running for ever, and TPE's constant liar
        keeps counting them as pending."""
        study = compat.optuna_study(self)
        if study is None:
            return
        held = compat.optuna_trial_numbers(self)
        for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            if trial.number not in held:
                study.tell(trial.number, state=optuna.trial.TrialState.FAIL)

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


def make_searcher(spec: Spec, journal: str | None = None,
                  before_save: Callable[[], None] | None = None) -> FidelityAwareOptunaSearch:  # fmt: skip
    """The sweep's searcher; its study is written to the journal file ``journal`` as trials progress
    (see ``study.py``), or kept in memory without one. ``before_save``: see the searcher."""
    metrics = [OBJECTIVE_METRICS[o] for o in spec.search.objectives]
    return FidelityAwareOptunaSearch(
        space=SearchSpace.of(spec),
        metric=[m for m, _ in metrics] if spec.multi_objective else metrics[0][0],
        mode=[d for _, d in metrics] if spec.multi_objective else metrics[0][1],
        sampler=make_sampler(spec),
        study_name=spec.name,
        storage=journal_storage(journal) if journal else None,
        metric_names=["gap", *(m for m, _ in metrics[1:])],
        max_epochs=spec.trial.epochs,
        budget=budget_text(spec),
        before_save=before_save,
    )


def budget_text(spec: Spec) -> str:
    """The per-model budgets in words, for the error when nothing drawn fits."""
    budget = spec.budget
    parts = [f"budget.max_model_bytes={budget.max_model_bytes:,}"] if budget.max_model_bytes is not None else []
    if budget.max_flops is not None:
        parts.append(f"budget.max_flops={budget.max_flops:,}")
    return " / ".join(parts) or "the per-model budget (or not valid models)"
