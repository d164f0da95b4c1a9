"""The sweep: Ray Tune trials proposed by the searcher, stopped by ASHA, turned into the trials table.

``run_sweep`` builds (or restores) the Tuner, runs it and returns one ``results.TrialRow`` per trial
in creation order: the Tune trials and the infeasible configurations the searcher rejected (never
Tune trials; read back from its last checkpoint), merged by their Optuna number. The searcher's
study is the live ``optuna.journal`` (``study.py``), synced to a remote run folder as it grows.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import ray
from ray import tune

from yt8m_search import tracking
from yt8m_search.config import Spec
from yt8m_search.data import fs
from yt8m_search.data.prepare import DataPaths
from yt8m_search.results import TRAINED_STATES, TrialRow, TrialState
from yt8m_search.search.live import LiveView, trial_state
from yt8m_search.search.rungs import SignalHalving
from yt8m_search.search.space import (
    NUMBER,
    OBJECTIVE_METRICS,
    FidelityAwareOptunaSearch,
    InfeasibleConfig,
    make_searcher,
    model_of,
)
from yt8m_search.search.study import JournalSync, fail_unfinished, prepare_journal, upload_journal
from yt8m_search.search.trial import SweepContext, run_trial, trial_resources, trial_seed


def max_concurrent_trials(spec: Spec) -> int:
    """``search.max_concurrent`` when set (an autoscaling cluster grows to meet it: its workers do
    not exist yet when the sweep starts); else as many trials as the cluster's resources hold now.

    Half a CPU stays free for Ray Data's read tasks (``loading.READ_CPUS`` each): with every CPU
    held by training workers the loaders cannot run and the trials wait forever."""
    if spec.search.max_concurrent:
        return spec.search.max_concurrent
    trial = spec.trial
    resources = ray.cluster_resources()
    fits = [(resources.get("CPU", 1) - 0.5) // (trial.num_workers * trial.cpus_per_worker)]
    if trial.gpus_per_worker:
        fits.append(resources.get("GPU", 0) // (trial.num_workers * trial.gpus_per_worker))
    return max(1, int(min(fits)))


def reuse_actors(spec: Spec) -> bool:
    """Whether a finished trial's process runs the next trial. For one-worker trials, which train in
    the trial's own process: a fresh one pays its start, the torch import and torch's first-use
    imports (about 7 s of a 10 s trial on 2 cores, bench_trial_overhead); a reused one has them done.
    Not for TorchTrainer trials: ASHA stops a trial by ending its trainable's thread, which leaves
    the Train run it started going; only killing the process (no reuse) ends that run."""
    return spec.trial.num_workers == 1


def _callbacks(spec: Spec, run_dir: str, sync: JournalSync | None) -> list[Any]:
    """The live view, the journal's sync to a remote run folder, and W&B tracking (one group per
    sweep) unless disabled."""
    callbacks: list[Any] = [LiveView(spec.trial.epochs)]
    if sync is not None:
        callbacks.append(sync)
    name = fs.basename(run_dir)
    group = spec.name if name == spec.name else f"{spec.name}-{name}"
    wandb = tracking.wandb_callback(spec.wandb.project, spec.wandb.entity, spec.wandb.mode, group)
    if wandb is not None:
        callbacks.append(wandb)
    return callbacks


def make_scheduler(spec: Spec) -> SignalHalving | None:
    """The space's successive halving (``search.asha``; None: every trial runs all its epochs), its
    cost strata the space's cost objectives."""
    asha = spec.search.asha
    if asha is None:
        return None
    return SignalHalving(
        max_epochs=spec.trial.epochs, grace_period=asha.grace_period, reduction_factor=asha.reduction_factor,
        noise_margin=asha.noise_margin, costs=[OBJECTIVE_METRICS[o][0] for o in spec.search.objectives[1:]],
    )  # fmt: skip


def _new_tuner(spec: Spec, trainable: Any, run_dir: str, journal: str) -> tune.Tuner:
    scheduler = make_scheduler(spec)
    sync = None if fs.is_local(run_dir) else JournalSync(journal, run_dir)
    searcher = make_searcher(spec, journal, sync.flush if sync else None)
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=searcher,  # metric/mode only there: a TuneConfig metric would
            scheduler=scheduler,  # silently collapse a multi-objective study
            num_samples=spec.search.num_samples,
            max_concurrent_trials=max_concurrent_trials(spec),
            reuse_actors=reuse_actors(spec),
        ),
        run_config=tune.RunConfig(
            name="tune",
            storage_path=run_dir,
            failure_config=tune.FailureConfig(max_failures=spec.search.max_failures),
            callbacks=_callbacks(spec, run_dir, sync),
            verbose=0,
        ),
    )


def run_sweep(spec: Spec, data: DataPaths, run_dir: str, *, resume: bool = False) -> list[TrialRow]:
    """Run (or resume) the sweep; return one row per trial, in creation order. Ray must be initialised."""
    context = SweepContext(spec=spec, data=data, run_dir=run_dir)
    trainable = tune.with_resources(tune.with_parameters(run_trial, context=context), trial_resources(spec.trial))
    experiment = fs.join(run_dir, "tune")
    journal = prepare_journal(spec, run_dir, resume)  # before a restored searcher reopens it
    if resume and tune.Tuner.can_restore(experiment):
        tuner = tune.Tuner.restore(experiment, trainable=trainable, resume_unfinished=True, resume_errored=True)
    else:
        tuner = _new_tuner(spec, trainable, run_dir, journal)
    results = tuner.fit()
    if results.num_terminated + results.num_errors == len(results):  # over, not interrupted: nothing runs again
        fail_unfinished(spec, journal)
    upload_journal(journal, run_dir)  # the last tells, whatever the callbacks last saw
    infeasible = FidelityAwareOptunaSearch.saved_infeasible(experiment)
    return trial_rows(spec, [(r.config or {}, r.metrics or {}, r.error) for r in results], infeasible)


def _infeasible_trial(record: InfeasibleConfig) -> tuple[dict[str, Any], dict[str, Any], Any]:
    """A rejected configuration as a table entry: its config (``feasible`` False) and a stable id."""
    config = {**record.config, NUMBER: record.number, "feasible": False, "infeasible_reason": record.reason,
              "size_bytes": record.size_bytes, "flops": record.flops}  # fmt: skip
    return config, {"trial_id": f"infeasible-{record.number}"}, None


def trial_rows(spec: Spec, trials: Sequence[tuple[dict[str, Any], dict[str, Any], Any]],
               infeasible: Sequence[InfeasibleConfig] = ()) -> list[TrialRow]:  # fmt: skip
    """The trials table from each Tune trial's (config, last metrics, error) and the searcher's
    rejected configurations (``infeasible``), numbered 0..n-1 in creation order.

    The order comes from the searcher's number in each config (see ``space.NUMBER``), not from the
    result grid's order: Tune moves a retried trial to the end of its list, and a resumed sweep
    re-queues its trials by their last result's time. Trials without a number (started by an older
    version) keep their grid order, after the numbered ones."""

    def created(item: tuple[int, tuple[dict[str, Any], dict[str, Any], Any]]) -> tuple[bool, int, int]:
        index, (config, _, _) = item
        number = config.get(NUMBER)
        return number is None, number if number is not None else 0, index

    entries = [*trials, *(_infeasible_trial(r) for r in infeasible)]
    ordered = [trial for _, trial in sorted(enumerate(entries), key=created)]
    return [trial_row(spec, n, config, metrics, error) for n, (config, metrics, error) in enumerate(ordered)]


def _float(value: Any) -> float:
    return math.nan if value is None else float(value)


def _first_line(error: Any) -> str:
    return (str(error).splitlines() or [""])[0][:300] if error else ""


def trial_row(spec: Spec, number: int, config: dict[str, Any], metrics: dict[str, Any], error: Any) -> TrialRow:
    """One trial's row: its parameters, its last result's metrics (NaN and empty paths when it did
    not train), its seed, and why it is infeasible (``feasible`` False in its config) or failed."""
    state = trial_state("ERROR" if error else "TERMINATED", metrics, error is not None, spec.trial.epochs)
    if config.get("feasible") is False:
        state = TrialState.INFEASIBLE
    family, hparams = model_of(config, spec.parameters) if "family" in config else ("", {})
    trained = state in TRAINED_STATES
    nan = math.nan
    return TrialRow(
        number=number,
        trial_id=str(metrics.get("trial_id", config.get("trial_id", ""))),
        state=state,
        model=family,
        hparams=dict(sorted(hparams.items())),
        config={p.name: config[p.name] for p in spec.parameters if p.name in config},
        gap=_float(metrics.get("gap_best")) if trained else nan,
        gap_last=_float(metrics.get("gap")) if trained else nan,
        hit_at_one=_float(metrics.get("hit_at_one")),
        perr=_float(metrics.get("perr")),
        map=_float(metrics.get("map")),
        epochs=int(metrics.get("epoch", 0)) if trained else 0,
        best_epoch=int(metrics.get("best_epoch", 0)),
        params=int(metrics.get("params", 0)),
        size_bytes=int(metrics.get("size_bytes", max(config.get("size_bytes", 0), 0))),
        samples_per_s=_float(metrics.get("samples_per_s")),
        checkpoint=str(metrics.get("checkpoint", "")) if trained else "",
        predictions=str(metrics.get("predictions", "")) if trained else "",
        reason=config.get("infeasible_reason", "") or _first_line(error),
        flops=max(int(metrics.get("flops", config.get("flops", 0))), 0),
        latency_ms=_float(metrics.get("latency_ms")),
        device=str(metrics.get("device", "")),
        seed=trial_seed(spec.search.seed, config.get(NUMBER)),
        holdout_gap=_float(metrics.get("holdout_gap_best")) if trained else nan,
    )
