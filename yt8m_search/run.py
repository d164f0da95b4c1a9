"""The main command: a space file in, a finished sweep out.

    python -m yt8m_search.run SPACE.yaml [key.path=value ...] [--output DIR] [--resume] [--dry-run]

Exit codes: 0 done; 2 invalid space file or arguments, or ``--resume`` with a space that differs
from the run's (every error listed, nothing started or written); 1 anything else, with the cause
in one line at the end. A failed ensemble step is 1 too, after ``summary.json`` (which records the
failure) and ``report.html`` (which shows it) are written.

Ray, Optuna and torch (``search``, ``tracking``, ``ensemble``, ``train``) are imported inside the
functions that need them: ``--help`` and a space file's errors answer at once, without loading them.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import traceback
from collections.abc import Sequence
from typing import TYPE_CHECKING

from yt8m_search import config, logs, report, results, space_record
from yt8m_search.data import fs
from yt8m_search.data.prepare import DataPaths, synthetic_dataset

if TYPE_CHECKING:
    from yt8m_search.ensemble import Rescore

# read processes started with a local Ray, per CPU: two trials' first epochs on 2 cores run 4 read tasks
PRESTARTED_READERS_PER_CPU = 2


class UsageError(Exception):
    """Arguments that do not fit the run folder (exit code 2)."""


def prepare_data(data: config.DataSpec, progress: bool = True) -> DataPaths:
    """The run's Parquet shards: the configured paths, or the synthetic set generated on first use."""
    if data.synthetic is None:
        assert data.train and data.validation  # guaranteed by config validation
        return DataPaths(train=data.train, validation=data.validation)
    s = data.synthetic
    return synthetic_dataset(
        s.cache,
        s.key(),
        train_videos=s.train_videos,
        validation_videos=s.validation_videos,
        shards=s.shards,
        seed=s.seed,
        num_classes=s.num_classes,
        max_frames=s.max_frames,
        progress=progress,
    )


def run_folder(spec: config.Spec, output: str | None) -> str:
    folder = output or fs.join(spec.storage, spec.name)
    return os.path.abspath(os.path.expanduser(folder)) if fs.is_local(folder) else folder.rstrip("/")


def _trial_lines(spec: config.Spec) -> list[str]:
    """The trial settings as each family's trials get them (the space's > the family's recipe > the
    defaults; searched ones are parameters, unset ones left out): those all families share on one
    line, then one line per family with those that differ between families, marked ``(recipe)``
    where a recipe set them."""
    by_family = {family: config.setting_sources(spec, family) for family in spec.families}
    per_family = [k for k in config.TrialSettings.names()
                  if len({sources[k] for sources in by_family.values()}) > 1
                  or any(sources[k][1] == "recipe" for sources in by_family.values())]
    shared = next(iter(by_family.values()))
    lines = ["trial: " + ", ".join(f"{k}={v}" for k, (v, source) in shared.items()
                                   if k not in per_family and source != "searched" and v is not None)]
    if per_family:
        lines.append("trial settings by family (the space's > the family's recipe > the defaults):")
        for family, sources in by_family.items():
            shown = [f"{k}={sources[k][0]}" + (" (recipe)" if sources[k][1] == "recipe" else "") for k in per_family]
            lines.append(f"  {family}: " + ", ".join(shown))
    return lines


def _print_space(spec: config.Spec) -> None:
    print(f"space {spec.source} ({spec.name}, hash {spec.digest()})")
    print("parameters:")
    for p in spec.parameters:
        what = f"{p.distribution.kind} {_describe(p.distribution)}" if p.distribution else f"= {p.value!r}"
        when = "  when " + ", ".join(f"{k} in {list(v)}" for k, v in p.when) if p.when else ""
        print(f"  {p.name:<20} {what}{when}    ({p.path})")
    print("\n".join(_trial_lines(spec)))
    print(f"search: {spec.search.num_samples} trials, objectives {list(spec.search.objectives)}, "
          f"ASHA {spec.search.asha}, seed {spec.search.seed}")
    budget = spec.budget
    limit = f"{budget.max_model_bytes:,} bytes" if budget.max_model_bytes else "none"
    print(f"budget: per model {limit}, ensemble {budget.ensemble_bytes:,} bytes, stored as {budget.storage_dtype}")
    flops = {"per model": budget.max_flops, "ensemble": budget.ensemble_flops}
    print("FLOPs budget (per video): " + ", ".join(f"{k} {v / 1e9:.4g} GFLOPs" if v else f"{k} none"
                                                   for k, v in flops.items()))
    found = config.survey(spec.parameters, budget)
    print(f"budget check: {found.valid} of {found.checked} configurations checked are valid models, {found.fitting} "
          f"within the per-model budgets; the smallest needs {found.smallest[0]:,.0f} bytes ({found.smallest[1]}), "
          f"the cheapest {found.cheapest[0] / 1e9:.4g} GFLOPs ({found.cheapest[1]})")


def dry_run(spec: config.Spec, samples: int = 5) -> None:
    """Print the resolved space, the budget check and the sweep's first sampled configurations."""
    import optuna  # lazy: see the module docstring

    from yt8m_search import search

    _print_space(spec)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=search.make_sampler(spec))  # the sweep's own sampler
    space = search.SearchSpace.of(spec)
    samples = min(samples, spec.search.num_samples)  # no more than the sweep runs (a grid repeats after)
    print(f"first {samples} sampled configurations:")
    for i in range(samples):
        t = study.ask()
        extra = space(t)
        values = {**t.params, **{k: v for k, v in extra.items() if k not in search.EXTRA_KEYS}}
        status = "ok" if extra["feasible"] else f"INFEASIBLE: {extra['infeasible_reason']}"
        size = f"{extra['size_bytes'] / 1e6:.2f} MB" if extra["size_bytes"] >= 0 else "-"
        flops = f"{extra['flops'] / 1e9:.3f} GFLOPs" if extra["flops"] >= 0 else "-"
        print(f"  {i + 1}. {flops:>14} {size:>10}  {status}  {values}")
        study.tell(t, state=optuna.trial.TrialState.FAIL)


def _describe(d: config.Distribution) -> str:
    if d.kind == "choice":
        return str(list(d.choices))
    return f"[{d.low}, {d.high}]" + (" log" if d.log else "") + (f" step {d.step}" if d.step else "")


def _init_ray(dashboard: bool = True) -> bool:
    """Start Ray (or join the cluster of ``ray job submit``) unless it runs already; True when this
    call started it. ``dashboard``: a local Ray with its dashboard, whose state API Train V2 queries
    (multi-worker trials); without it a local Ray starts 3 s sooner and leaves the trials its CPU."""
    import ray  # lazy: see the module docstring

    if ray.is_initialized():
        return False
    # the trials' processes: no Ray Data progress bars (the driver's DataContext does not reach them;
    # in the run's log they were 12,000 blank lines and redraws per smoke sweep)
    env = {"RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS": "0", "WANDB_SILENT": "true", "RAY_DATA_DISABLE_PROGRESS_BARS": "1"}
    env.update({k: os.environ[k] for k in ("WANDB_MODE", "AWS_ENDPOINT_URL") if k in os.environ})
    if os.environ.get("RAY_ADDRESS"):  # inside `ray job submit`: join the cluster
        ray.init(runtime_env={"env_vars": env}, log_to_driver=False)  # a cluster's workers stay in their own logs
    else:
        from yt8m_search import compat
        from yt8m_search.data import loading
        from yt8m_search.train import LOCAL_TRAIN_ENV

        env.update({k: os.environ.get(k, v) for k, v in LOCAL_TRAIN_ENV.items()})
        # the trials' output reaches the run's log through the driver (logs.to_file), not the terminal,
        # so without colour codes
        os.environ.setdefault("RAY_COLOR_PREFIX", "0")
        # the read tasks' processes outlive an epoch: Ray would keep one idle worker per free CPU, and the
        # trials hold CPUs (benchmarks/bench_worker_reuse.py)
        compat.keep_idle_workers(compat.idle_workers_kept(os.cpu_count() or 1))
        ray.init(num_cpus=os.cpu_count(), log_to_driver=True, include_dashboard=dashboard,
                 runtime_env={"env_vars": env})
        # while Tune and the first trials start: the read processes of the trials' first epoch
        loading.prestart_readers(PRESTARTED_READERS_PER_CPU * (os.cpu_count() or 1))
    from ray.data import DataContext

    DataContext.get_current().enable_progress_bars = False
    return True


def log_path(spec: config.Spec, run_dir: str) -> str:
    """The sweep's log file: ``run.log`` in a local run folder; for a remote one, a local file (the
    log is written line by line, which object stores do not do)."""
    if fs.is_local(run_dir):
        return os.path.join(run_dir, "run.log")
    return os.path.join(tempfile.gettempdir(), "yt8m_search", spec.name, "run.log")


def check_resumed_space(spec: config.Spec, run_dir: str) -> None:
    """Refuse (``UsageError``) to resume a sweep with a space or overrides that resolve to anything
    else than the run's own (``space.json``), naming every key that differs; a run folder from
    before the record was written resumes with a warning."""
    recorded = space_record.read(run_dir)
    where = space_record.path_in(run_dir)
    if recorded is None:
        print(f"warning: --resume: {where} not found (a run from an older version): cannot check that "
              "the space and overrides are the run's", file=sys.stderr)
        return
    changed = space_record.differences(recorded, spec)
    if changed:
        raise UsageError(f"--resume: the space differs from the run's ({where}): " + ", ".join(changed))


def sweep(spec: config.Spec, run_dir: str, resume: bool, overrides: Sequence[str] = ()) -> results.RunSummary:
    """The sweep (or its continuation: ``resume``), its summary, report and ensemble. ``overrides``
    (as given) are recorded with the resolved space in ``space.json``."""
    import ray  # lazy: see the module docstring
    from ray import tune

    from yt8m_search import tracking

    experiment = fs.join(run_dir, "tune")
    if resume and not tune.Tuner.can_restore(experiment):
        raise UsageError(f"--resume: no sweep to resume in {run_dir}")
    if not resume and fs.exists(experiment):
        raise UsageError(f"{run_dir} already holds a sweep: pass --resume to continue it, or --output DIR")
    if resume:
        check_resumed_space(spec, run_dir)  # before Ray: a restored Tuner would ignore the changes
    eigenvals = spec.data.pca_eigenvals
    if eigenvals and not fs.is_local(eigenvals):  # a local file was checked with the space
        missing = config.missing_eigenvalues(eigenvals)  # before Ray: no trial fails on it hours later
        if missing:
            raise UsageError(missing)
    if not resume:
        space_record.write(spec, overrides, run_dir)
    data = prepare_data(spec.data)  # before the log takes the output: generating data shows its progress
    if tracking.wandb_mode(spec.wandb.mode) == "offline":
        os.environ["WANDB_MODE"] = "offline"  # before Ray starts, so the logging actors inherit it
    with logs.to_file(log_path(spec, run_dir)) as log:
        logs.say(f"sweep {spec.name}: {spec.search.num_samples} trials -> {run_dir} (Ray, W&B, Optuna log to {log})")
        started = _init_ray(dashboard=spec.trial.num_workers > 1)  # one-worker trials never use Train
        try:
            return _sweep_and_report(spec, data, run_dir, resume)
        finally:
            if started:  # while the log has the output: Ray's farewells are no news to the user
                ray.shutdown()


def _sweep_and_report(spec: config.Spec, data: DataPaths, run_dir: str, resume: bool) -> results.RunSummary:
    from yt8m_search import search  # lazy: see the module docstring

    rows = search.run_sweep(spec, data, run_dir, resume=resume)
    results.write_trials(rows, run_dir)
    summary = search.summarize(spec, rows, run_dir, data)
    return finish(run_dir, rows, summary, search.importances(search.read_study(spec, run_dir)))


def finish(run_dir: str, rows: Sequence[results.TrialRow], summary: results.RunSummary,
           importances: dict[str, float]) -> results.RunSummary:
    """The ensemble step, then ``summary.json`` and ``report.html``, written whatever the step did
    (a failure is the summary's ensemble entry, and the report shows it)."""
    results.write_summary(summary, run_dir)  # the ensemble step reads it
    summary = summary.with_ensemble(_ensemble(run_dir))
    results.write_summary(summary, run_dir)
    report.write_report(run_dir, rows, summary, importances)
    return summary


def _ensemble(run_dir: str) -> results.EnsembleSummary | results.EnsembleFailure:
    """The ensemble step's entry: its summary, or any exception as a failure ("Type: message", one
    line; e.g. no trained trial fits the budget), so that the sweep's summary and report still follow."""
    from yt8m_search import ensemble  # lazy: see the module docstring

    try:
        # the step's progress goes to the run's log (the process's output), not the terminal
        return ensemble.run(run_dir, rescore=_ray_rescore(), log=lambda line: print(f"ensemble: {line}", flush=True))
    except Exception as err:  # any: recorded, shown in the report and the exit code's cause (see main)
        if not isinstance(err, ensemble.EnsembleError):  # a bug: its traceback goes to the log
            traceback.print_exc()
        failure = results.EnsembleFailure(" ".join(f"{type(err).__name__}: {err}".split()))
        logs.say(f"ensemble: failed: {failure.error}")
        return failure


def _ray_rescore() -> Rescore | None:
    """The dense re-score on the Ray cluster when Ray is up (the sweep's) and has somewhere else to run
    it: GPUs, or more than one node. Else None, in this process: a one-node Ray without GPUs (a local
    sweep) would run it on the same CPUs after starting an actor's process (the smoke sweep: 16 s
    on Ray, 3 s here)."""
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return None
    if not ray.cluster_resources().get("GPU") and len([n for n in ray.nodes() if n.get("Alive")]) < 2:
        return None
    from yt8m_search.rescore import rescore_on_ray  # lazy: see the module docstring

    return rescore_on_ray


def _gaps(selection: float, holdout: float) -> str:
    """A GAP on both parts of the validation videos, labelled: the selection part chose the models."""
    return f"{selection:.4f} on selection, {holdout:.4f} on holdout"


def print_summary(summary: results.RunSummary, run_dir: str, log: str | None = None) -> None:
    counts = ", ".join(f"{v} {k}" for k, v in summary.trials.items() if v)
    print(f"\ntrials: {counts}")
    best = summary.best
    if best:
        print(f"best: trial {best.trial_id} {best.model} GAP {_gaps(best.gap, best.holdout_gap)} after "
              f"{best.epochs} epochs, {best.params:,} parameters, {best.size_bytes / 1e6:.2f} MB, "
              f"{best.flops / 1e9:.3g} GFLOPs, {best.latency_ms:.3g} ms per video ({best.device or 'device unknown'})")
    prior = summary.baselines
    if prior:
        gaps = _gaps(prior.get("class_prior_selection_gap", math.nan), prior.get("class_prior_holdout_gap", math.nan))
        print(f"class-prior ranking (the baseline): GAP {gaps}")
    ens = summary.ensemble
    if isinstance(ens, results.EnsembleFailure):
        print(f"ensemble: failed: {ens.error}")
    elif isinstance(ens, results.EnsembleSummary) and ens.members:
        flops = f" of {ens.budget_flops / 1e9:.4g}" if ens.budget_flops else ""
        print(f"ensemble: {len(ens.members)} members, GAP {_gaps(ens.gap, ens.holdout_gap)}, "
              f"{ens.size_bytes / 1e6:.2f} MB of {ens.budget_bytes / 1e6:.2f} MB, {ens.flops / 1e9:.4g}{flops} "
              f"GFLOPs -> {ens.path}")
        single = ens.best_single
        if single.get("trial_id"):
            shipped = " (shipped alone: the ensemble scored below it)" if ens.shipped_best_single else ""
            print(f"best single model as shipped ({ens.storage_dtype}): trial {single['trial_id']} GAP "
                  f"{_gaps(single.get('gap', math.nan), single.get('holdout_gap', math.nan))}{shipped}")
    print(f"run folder: {run_dir} (summary.json, trials.csv, report.html, optuna.journal)")
    if log:
        print(f"log: {log}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m yt8m_search.run", description=__doc__.split("\n")[0])
    parser.add_argument("space", help="the space file (YAML)")
    parser.add_argument("overrides", nargs="*", help="key.path=value overrides of the space file")
    parser.add_argument("--output", help="the run folder (default: <storage>/<space name>)")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted sweep in the run folder")
    parser.add_argument("--dry-run", action="store_true", help="print the resolved space and sampled configs")
    try:
        args = parser.parse_intermixed_args(argv)  # flags and key=value overrides in any order
    except SystemExit as exit_:
        return 2 if exit_.code else 0
    try:
        spec = config.load(args.space, args.overrides)
    except config.SpecError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    run_dir = run_folder(spec, args.output)
    try:
        if args.dry_run:
            dry_run(spec)
            return 0
        summary = sweep(spec, run_dir, args.resume, args.overrides)
        print_summary(summary, run_dir, log_path(spec, run_dir))
        if isinstance(summary.ensemble, results.EnsembleFailure):  # the summary and report are written
            print(f"error: the ensemble step failed: {summary.ensemble.error}", file=sys.stderr)
            return 1
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"error: interrupted; continue with --resume --output {run_dir}", file=sys.stderr)
        return 1
    except Exception as err:  # the last line names the cause
        traceback.print_exc()
        print(f"error: {type(err).__name__}: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
