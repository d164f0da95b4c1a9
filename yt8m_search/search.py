"""The sweep: Ray Tune trials proposed by Optuna (TPE, seeded, define-by-run), stopped by ASHA.

Layers (Ray Train V2 pattern): ``train.train_loop_per_worker`` runs on every DDP worker;
``run_trial`` is one Tune trial, the Train driver that builds a TorchTrainer through ``train.fit``
and relays its reports to Tune (``relay_to_tune``); ``run_sweep`` builds the Tuner. A trial's run
name is ``trial-<tune trial id>``: deterministic, so a retried or restored trial resumes from its
Train checkpoint.

Size awareness: ``SearchSpace`` computes each sampled configuration's analytic stored size and
tells Optuna (``trial.set_constraint``) whether it fits the per-model budget; an infeasible trial
reports at once and never starts a worker.

Everything a sweep writes lives under its run folder: ``tune/`` (Ray Tune's experiment, W&B
offline runs inside each trial folder), ``trials/`` (every trial's Train run: checkpoints,
``best/`` model and predictions), ``trials.csv``, ``optuna.journal``, ``summary.json``,
``report.html`` and the ensemble bundle.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import optuna
from ray import tune
from ray.train import UserCallback
from ray.tune.search.optuna import OptunaSearch

from yt8m_search import __version__, models, tracking
from yt8m_search.config import Parameter, Spec
from yt8m_search.data import fs
from yt8m_search.data.prepare import DataPaths

OBJECTIVE_METRICS = {"gap": ("gap_best", "max"), "size": ("size_bytes", "min")}
STATES = ("complete", "stopped", "infeasible", "error", "pending")


# ---------------------------------------------------------------------------------------------
# The search space


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

    def __init__(self, parameters: Sequence[Parameter], max_model_bytes: int | None, storage_dtype: str) -> None:
        self.parameters = tuple(parameters)
        self.max_model_bytes = max_model_bytes
        self.storage_dtype = storage_dtype

    def __call__(self, trial: optuna.Trial) -> dict[str, Any]:
        values = sample(trial, self.parameters)
        family, hparams = model_of(values, self.parameters)
        size, reason = -1, ""
        try:
            size = models.size_bytes(family, dtype=self.storage_dtype, **hparams)
        except ValueError as err:  # an impossible combination (e.g. groups not dividing the input)
            reason = str(err)
        if not reason and self.max_model_bytes is not None and size > self.max_model_bytes:
            reason = f"{size:,} bytes > budget {self.max_model_bytes:,}"
        # feasible iff <= 0; an invalid model counts as far over budget
        trial.set_constraint("size_over_budget", (size - (self.max_model_bytes or size)) if size >= 0 else 1e18)
        fixed = {p.name: values[p.name] for p in self.parameters if p.distribution is None and p.name in values}
        return {**fixed, "size_bytes": size, "feasible": not reason, "infeasible_reason": reason}


# ---------------------------------------------------------------------------------------------
# One trial


@dataclass(frozen=True)
class SweepContext:
    """What every trial needs besides its sampled values (passed with tune.with_parameters)."""

    spec: Spec
    data: DataPaths
    run_dir: str

    @property
    def trials_dir(self) -> str:
        return fs.join(self.run_dir, "trials")

    def train_config(self, values: dict[str, Any]) -> Any:
        from yt8m_search.train import TrainConfig

        family, hparams = model_of(values, self.spec.parameters)
        trial = dict(self.spec.trial or {})
        trial.update({k: v for k, v in values.items() if k in trial or k in _SEARCHABLE_TRIAL})
        trial["lr_decay_examples"] = int(trial["lr_decay_examples"])  # a searched value may be a float
        fields = {f.name for f in dataclasses.fields(TrainConfig)}  # TRIAL_FIELDS are TrainConfig fields
        return TrainConfig(
            model=family,
            hparams=hparams,
            storage_dtype=self.spec.budget.storage_dtype,
            seed=self.spec.search.seed,
            **{k: v for k, v in trial.items() if k in fields},
        )


_SEARCHABLE_TRIAL = ("learning_rate", "lr_decay", "lr_decay_examples", "l2", "clip_norm")


def run_trial(config: dict[str, Any], context: SweepContext) -> None:
    """One Tune trial: report an infeasible config at once, else train it with Ray Train."""
    from yt8m_search.train import fit

    epochs = (context.spec.trial or {}).get("epochs", 1)
    if not config["feasible"]:
        tune.report({"gap": 0.0, "gap_best": 0.0, "epoch": epochs, "infeasible": 1,
                     "size_bytes": max(config["size_bytes"], 0)})
        return
    trial_id = tune.get_context().get_trial_id()
    relay_to_tune(lambda callback: fit(
        context.train_config(config),
        context.data.train,
        context.data.validation,
        context.trials_dir,
        f"trial-{trial_id}",
        callbacks=[callback],
    ))


def relay_to_tune(run: Callable[[Any], Any]) -> None:
    """Run ``run(callback)`` (a Train ``fit``) in a thread and report each of its Train reports to
    Tune from this, the trial's own thread, in order; re-raise what ``run`` raised.

    Why not Ray's ``TuneReportCallback``: it hands reports to the trial actor's *main* thread, which
    puts them on the function session's one-slot result queue. When the driver is slow on one
    result (another trial finishing beside it, a loaded machine), the next report and the end of
    ``fit`` can both come first; the trainable's closing report then takes that slot and the main
    thread blocks on it for ever (Ray 2.60): the trial never ends and neither does the sweep. Here
    the trial's thread is the only one that reports, as Tune's function API expects.
    """
    from ray.util.queue import Queue

    reports: Queue = Queue(actor_options={"num_cpus": 0})
    failure: list[BaseException] = []

    def train() -> None:
        try:
            run(_ReportToQueue(reports))
        except BaseException as error:  # noqa: BLE001 - re-raised in the trial's thread
            failure.append(error)
        finally:
            reports.put(_END)  # after every report: each put returned before the controller went on

    thread = threading.Thread(target=train, name="train-fit", daemon=True)
    thread.start()
    while (metrics := reports.get()) != _END:
        tune.report(metrics)  # blocks until Tune asks for the next result
    thread.join()
    if failure:
        raise failure[0]


_END = "end of the Train run"


class _ReportToQueue(UserCallback):
    """Train controller callback: each report's metrics (rank 0's, the ones every rank agrees on)
    onto the trial's queue."""

    def __init__(self, reports: Any) -> None:
        self.reports = reports

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
        self.reports.put(dict(metrics[0]))


# ---------------------------------------------------------------------------------------------
# The searcher and the live view


class FidelityAwareOptunaSearch(OptunaSearch):
    """ASHA-stopped trials reach Optuna as PRUNED, not COMPLETE with truncated metrics, so a
    partially trained trial never lands on the Pareto front nor poses as a finished one."""

    def __init__(self, *args: Any, max_epochs: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.max_epochs = max_epochs

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        stopped = result and not error and not result.get("infeasible") and result.get("epoch", 0) < self.max_epochs
        if stopped and trial_id not in self._completed_trials:
            self._ot_study.tell(self._ot_trials[trial_id], state=optuna.trial.TrialState.PRUNED)
            self._completed_trials.add(trial_id)
            return
        super().on_trial_complete(trial_id, result, error)


def make_searcher(spec: Spec) -> FidelityAwareOptunaSearch:
    import warnings

    metrics = [OBJECTIVE_METRICS[o] for o in spec.search.objectives]
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # group=True
    sampler: optuna.samplers.BaseSampler
    if spec.search.sampler == "random":
        sampler = optuna.samplers.RandomSampler(seed=spec.search.seed)
    else:
        sampler = optuna.samplers.TPESampler(
            seed=spec.search.seed, n_startup_trials=spec.search.startup_trials, multivariate=True, group=True,
            constant_liar=True,  # concurrent trials: pending ones count as bad, so TPE spreads out
        )
    return FidelityAwareOptunaSearch(
        space=SearchSpace(spec.parameters, spec.budget.max_model_bytes, spec.budget.storage_dtype),
        metric=[m for m, _ in metrics] if spec.multi_objective else metrics[0][0],
        mode=[d for _, d in metrics] if spec.multi_objective else metrics[0][1],
        sampler=sampler,
        study_name=spec.name,
        max_epochs=(spec.trial or {}).get("epochs", 1),
    )


def trial_state(status: str, result: dict[str, Any] | None, error: bool, epochs: int) -> str:
    """complete / stopped (by ASHA) / infeasible / error / running / pending."""
    if result and result.get("infeasible"):
        return "infeasible"
    if error or status == "ERROR":
        return "error"
    if status in ("RUNNING", "PENDING", "PAUSED"):
        return "running" if result and "epoch" in result else "pending"
    if not result or "epoch" not in result:
        return "pending"
    return "complete" if result["epoch"] >= epochs else "stopped"


class LiveView(tune.Callback):
    """One status line whenever the picture changes (at most every 2 s): trials by state and the
    best GAP so far."""

    def __init__(self, epochs: int, stream: Any = None) -> None:
        self.epochs, self.stream = epochs, stream
        self.setup()

    def setup(self, **info: Any) -> None:
        # also called after ``--resume``, on the copy of this callback that Tune stored with the sweep
        self.last, self.printed_at, self.started = "", 0.0, time.monotonic()

    def line(self, trials: list[Any]) -> str:
        counts = {s: 0 for s in ("running", "complete", "stopped", "infeasible", "error", "pending")}
        best = None
        for t in trials:
            state = trial_state(t.status, t.last_result, t.status == "ERROR", self.epochs)
            counts[state] += 1
            gap = (t.last_result or {}).get("gap_best")
            if gap is not None and state != "infeasible":
                best = gap if best is None else max(best, gap)
        best_text = f"{best:.4f}" if best is not None else "-"
        return " | ".join(f"{k} {v}" for k, v in counts.items()) + f" | best GAP {best_text}"

    def on_step_end(self, iteration: int, trials: list[Any], **info: Any) -> None:
        self._show(trials, force=False)

    def on_experiment_end(self, trials: list[Any], **info: Any) -> None:
        self._show(trials, force=True)

    def _show(self, trials: list[Any], force: bool) -> None:
        text, now = self.line(trials), time.monotonic()
        if force or (text != self.last and now - self.printed_at >= 2.0):
            elapsed = int(now - self.started)
            print(f"[{elapsed // 60:02d}:{elapsed % 60:02d}] {text}", file=self.stream or sys.stdout, flush=True)
            self.last, self.printed_at = text, now


# ---------------------------------------------------------------------------------------------
# The sweep


def max_concurrent_trials(spec: Spec) -> int:
    """``search.max_concurrent`` when set (an autoscaling cluster grows to meet it: its workers do
    not exist yet when the sweep starts); else as many trials as the cluster's resources hold now.

    Half a CPU stays free for Ray Data's read tasks (``loading.READ_CPUS`` each): with every CPU
    held by training workers the loaders cannot run and the trials wait forever."""
    import ray

    if spec.search.max_concurrent:
        return spec.search.max_concurrent
    trial = spec.trial or {}
    resources = ray.cluster_resources()
    fits = [(resources.get("CPU", 1) - 0.5) // (trial["num_workers"] * trial["cpus_per_worker"])]
    if trial["gpus_per_worker"]:
        fits.append(resources.get("GPU", 0) // (trial["num_workers"] * trial["gpus_per_worker"]))
    return max(1, int(min(fits)))


def run_sweep(spec: Spec, data: DataPaths, run_dir: str, *, resume: bool = False) -> list[dict[str, Any]]:
    """Run (or resume) the sweep; return one row per trial. Ray must be initialised."""
    from ray.tune.schedulers import ASHAScheduler

    context = SweepContext(spec=spec, data=data, run_dir=run_dir)
    epochs = (spec.trial or {})["epochs"]
    trainable = tune.with_resources(tune.with_parameters(run_trial, context=context), {"cpu": 0.01})
    experiment = fs.join(run_dir, "tune")
    callbacks = [LiveView(epochs)]
    name = fs.basename(run_dir)
    group = spec.name if name == spec.name else f"{spec.name}-{name}"  # one W&B group per sweep
    wandb = tracking.wandb_callback(spec.wandb.project, spec.wandb.entity, spec.wandb.mode, group)
    if wandb is not None:
        callbacks.append(wandb)
    if resume and tune.Tuner.can_restore(experiment):
        tuner = tune.Tuner.restore(experiment, trainable=trainable, resume_unfinished=True, resume_errored=True)
    else:
        scheduler = None
        if spec.search.asha is not None:
            scheduler = ASHAScheduler(
                time_attr="epoch", metric="gap", mode="max", max_t=epochs,
                grace_period=spec.search.asha.grace_period, reduction_factor=spec.search.asha.reduction_factor,
            )  # fmt: skip
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(
                search_alg=make_searcher(spec),  # metric/mode only there: a TuneConfig metric would
                scheduler=scheduler,  # silently collapse a multi-objective study
                num_samples=spec.search.num_samples,
                max_concurrent_trials=max_concurrent_trials(spec),
            ),
            run_config=tune.RunConfig(
                name="tune",
                storage_path=run_dir,
                failure_config=tune.FailureConfig(max_failures=spec.search.max_failures),
                callbacks=callbacks,
                verbose=0,
            ),
        )
    results = tuner.fit()
    rows = []
    for result in results:
        config = dict(result.config or {})
        metrics = dict(result.metrics or {})
        state = trial_state("ERROR" if result.error else "TERMINATED", metrics, result.error is not None, epochs)
        rows.append(_row(spec, config, metrics, state, result.error))
    return sorted(rows, key=lambda r: r["trial_id"])


def _row(spec: Spec, config: dict[str, Any], metrics: dict[str, Any], state: str, error: Any) -> dict[str, Any]:
    family, hparams = model_of(config, spec.parameters) if "family" in config else ("", {})
    searched = {p.name: config.get(p.name) for p in spec.parameters if p.name in config}
    trained = state in ("complete", "stopped")
    return {
        "trial_id": metrics.get("trial_id", config.get("trial_id", "")),
        "state": state,
        "model": family,
        "hparams": json.dumps(hparams, sort_keys=True),
        **{f"config.{k}": v for k, v in searched.items()},
        "gap": metrics.get("gap_best", math.nan) if trained else math.nan,
        "gap_last": metrics.get("gap", math.nan) if trained else math.nan,
        "hit_at_one": metrics.get("hit_at_one", math.nan),
        "perr": metrics.get("perr", math.nan),
        "map": metrics.get("map", math.nan),
        "epochs": metrics.get("epoch", 0) if trained else 0,
        "best_epoch": metrics.get("best_epoch", 0),
        "params": metrics.get("params", 0),
        "size_bytes": metrics.get("size_bytes", config.get("size_bytes", 0)),
        "samples_per_s": metrics.get("samples_per_s", math.nan),
        "checkpoint": metrics.get("checkpoint", "") if trained else "",
        "predictions": metrics.get("predictions", "") if trained else "",
        "reason": config.get("infeasible_reason", "") or (str(error).splitlines()[0][:300] if error else ""),
    }


# ---------------------------------------------------------------------------------------------
# Outputs


def pareto_front(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Fully trained trials not dominated in (GAP up, size down); stopped trials never qualify."""
    done = [r for r in rows if r["state"] == "complete"]
    return [
        r for r in done
        if not any(o["gap"] >= r["gap"] and o["size_bytes"] <= r["size_bytes"]
                   and (o["gap"] > r["gap"] or o["size_bytes"] < r["size_bytes"]) for o in done)
    ]  # fmt: skip


def write_trials_table(rows: Sequence[dict[str, Any]], run_dir: str) -> str:
    import csv
    import io

    columns: list[str] = []
    for r in rows:
        columns.extend(k for k in r if k not in columns)
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    path = fs.join(run_dir, "trials.csv")
    with fs.atomic_output(path) as f:
        f.write(text.getvalue().encode())
    return path


def write_study(spec: Spec, rows: Sequence[dict[str, Any]], run_dir: str) -> tuple[optuna.Study, str]:
    """The sweep as an Optuna study in a journal file that ``optuna-dashboard`` opens.

    Rebuilt from the trials table (so it is identical after ``--resume``): parameters with their
    distributions, values of fully trained trials, PRUNED for stopped ones, constraints."""
    import tempfile

    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    directions = ["maximize", "minimize"] if spec.multi_objective else ["maximize"]
    study = optuna.create_study(study_name=spec.name, directions=directions)  # in memory, then copied
    study.set_metric_names(["gap", "size_bytes"][: len(directions)])
    for row in rows:
        params, dists = {}, {}
        for p in spec.parameters:
            value = row.get(f"config.{p.name}")
            if p.distribution is None or value is None or (isinstance(value, float) and math.isnan(value)):
                continue
            params[p.name], dists[p.name] = value, _distribution(p)
        state = {"complete": optuna.trial.TrialState.COMPLETE, "stopped": optuna.trial.TrialState.PRUNED,
                 "infeasible": optuna.trial.TrialState.COMPLETE}.get(row["state"], optuna.trial.TrialState.FAIL)
        values = None
        if state == optuna.trial.TrialState.COMPLETE:
            gap = 0.0 if row["state"] == "infeasible" else float(row["gap"])
            values = [gap, float(row["size_bytes"])][: len(directions)]
        over = spec.budget.max_model_bytes
        constraint = float(row["size_bytes"] - over) if over and row["size_bytes"] >= 0 else 0.0
        study.add_trial(optuna.trial.create_trial(
            params=params, distributions=dists, values=values, state=state,
            user_attrs={"trial_id": row["trial_id"], "state": row["state"], "model": row["model"]},
            system_attrs={"constraints:size_over_budget":
                          constraint if row["state"] != "infeasible" else max(constraint, 1.0)},
        ))  # fmt: skip
    path = fs.join(run_dir, "optuna.journal")
    with tempfile.TemporaryDirectory() as tmp:
        local = os.path.join(tmp, "optuna.journal")
        optuna.copy_study(from_study_name=spec.name, from_storage=study._storage,
                          to_storage=JournalStorage(JournalFileBackend(local)))
        with fs.atomic_output(path) as f, open(local, "rb") as src:
            f.write(src.read())
    return study, path


def _distribution(p: Parameter) -> optuna.distributions.BaseDistribution:
    d = p.distribution
    assert d is not None
    if d.kind == "choice":
        return optuna.distributions.CategoricalDistribution(list(d.choices))
    if d.kind == "int":
        return optuna.distributions.IntDistribution(int(d.low), int(d.high), log=d.log, step=int(d.step or 1))  # type: ignore[arg-type]
    return optuna.distributions.FloatDistribution(float(d.low), float(d.high), log=d.log, step=d.step)  # type: ignore[arg-type]


def importances(study: optuna.Study) -> dict[str, float]:
    """Parameter importance for GAP over fully trained trials (empty when too few)."""
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE
                and t.user_attrs.get("state") == "complete"]  # fmt: skip
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


def summarize(spec: Spec, rows: Sequence[dict[str, Any]], run_dir: str, data: DataPaths) -> dict[str, Any]:
    counts = {s: 0 for s in STATES}
    for r in rows:
        counts[r["state"]] = counts.get(r["state"], 0) + 1
    trained = [r for r in rows if r["state"] in ("complete", "stopped")]
    pool = [r for r in trained if r["state"] == "complete"] or trained
    best = max(pool, key=lambda r: r["gap"]) if pool else None
    summary: dict[str, Any] = {
        "space": spec.source,
        "space_hash": spec.digest(),
        "version": __version__,
        "run_dir": run_dir,
        "objectives": list(spec.search.objectives),
        "trials": counts,
        "budget": {"max_model_bytes": spec.budget.max_model_bytes, "ensemble_bytes": spec.budget.ensemble_bytes,
                   "storage_dtype": spec.budget.storage_dtype},
        "data": {"train": data.train, "validation": data.validation},
        "best": None,
        "pareto": [r["trial_id"] for r in pareto_front(rows)],
    }
    if best is not None:
        summary["best"] = {
            "trial_id": best["trial_id"],
            "config": {k.removeprefix("config."): v for k, v in best.items() if k.startswith("config.")},
            "model": best["model"],
            "hparams": json.loads(best["hparams"]),
            "gap": best["gap"],
            "epochs": best["epochs"],
            "params": best["params"],
            "size_bytes": best["size_bytes"],
            "checkpoint": best["checkpoint"],
            "predictions": best["predictions"],
        }
    return summary


def write_json(obj: Any, path: str) -> None:
    with fs.atomic_output(path) as f:
        f.write(json.dumps(obj, indent=2, default=str).encode())
