"""The search layer without a cluster: the size-aware space, states, Pareto front, dry run, CLI errors."""

from __future__ import annotations

import json
import math
import pickle
import re
import sys
from pathlib import Path

import numpy as np
import optuna
import pytest

from yt8m_search import compat, config, models, results, run, search
from yt8m_search.results import TrialRow, TrialState

from .conftest import kill_sweep_when, run_sweep_to_the_end

SMOKE = Path(__file__).resolve().parents[1] / "search_spaces" / "smoke.yaml"
SPACES = sorted((Path(__file__).resolve().parents[1] / "search_spaces").glob("*.yaml"))


@pytest.mark.parametrize("space", SPACES, ids=lambda p: p.name)
def test_every_shipped_space_validates(space: Path) -> None:
    spec = config.load(space)
    assert spec.families and spec.search.num_samples >= 1


def test_space_samples_conditionally_and_rejects_over_budget_configs() -> None:
    spec = config.load(SMOKE)
    space = search.SearchSpace(spec.parameters, spec.budget.max_model_bytes, spec.budget.storage_dtype)
    space = pickle.loads(pickle.dumps(space))  # Tune pickles the searcher with its space
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    seen = {True: 0, False: 0}
    for number in range(40):
        trial = study.ask()
        extra = space(trial)
        assert extra["number"] == number  # Optuna's trial number: the order the trials were asked for
        values = {**trial.params, **{k: v for k, v in extra.items() if k in {p.name for p in spec.parameters}}}
        family, hparams = search.model_of(values, spec.parameters)
        assert ("temperature" in values) == (family == "mix_nextvlad")
        assert ("num_mixtures" in values) == (values["classifier"] == "moe")
        size = models.size_bytes(family, dtype="bfloat16", **hparams)
        assert extra["size_bytes"] == size
        assert extra["feasible"] == (size <= spec.budget.max_model_bytes)
        seen[extra["feasible"]] += 1
        study.tell(trial, 0.0)
        constraint = study.trials[-1].constraints["size_over_budget"]
        assert (constraint <= 0) == extra["feasible"], constraint
    assert seen[True] and seen[False]  # the smoke budget really constrains the space


def test_states_and_pareto_front_use_fully_trained_trials_only() -> None:
    assert search.trial_state("TERMINATED", {"epoch": 3}, False, 3) == "complete"
    assert search.trial_state("TERMINATED", {"epoch": 1}, False, 3) == "stopped"
    assert search.trial_state("ERROR", None, True, 3) == "error"
    rows = [
        _row(0, "a", "complete", gap=0.5, size_bytes=10),
        _row(1, "b", "complete", gap=0.4, size_bytes=5),
        _row(2, "c", "complete", gap=0.3, size_bytes=8),  # dominated by b
        _row(3, "d", "stopped", gap=0.9, size_bytes=1),  # partial: never on the front
    ]
    assert [r.trial_id for r in results.pareto_front(rows)] == ["a", "b"]


def _row(number: int, trial_id: str, state: str, **values: object) -> TrialRow:
    fields: dict[str, object] = dict(
        number=number, trial_id=trial_id, state=TrialState(state), model="nextvlad", hparams={}, config={},
        gap=math.nan, gap_last=math.nan, hit_at_one=math.nan, perr=math.nan, map=math.nan, epochs=0, best_epoch=0,
        params=0, size_bytes=-1, samples_per_s=math.nan, checkpoint="", predictions="", reason="",
    )  # fmt: skip
    fields.update(values)
    return TrialRow(**fields)  # type: ignore[arg-type]


def test_trials_table_is_in_creation_order_numbered_from_zero(tmp_path: Path) -> None:
    """Rows follow the searcher's number in each trial's config, whatever order Tune lists the trials
    in (it moves a retried trial to the end and re-queues resumed ones by their last result)."""
    spec = config.load(SMOKE)
    created = [  # (trial id, Optuna number), as Tune might list them after a resume
        ("c", 5), ("a", 0), ("e", 7), ("b", 2), ("d", 6),
    ]
    metrics = {"epoch": 3, "gap": 0.3, "gap_best": 0.4, "params": 10, "size_bytes": 20, "checkpoint": "/c"}
    trials = [({"family": "nextvlad", "groups": 2, "number": n, "feasible": True},
               {**metrics, "trial_id": tid}, None) for tid, n in created]  # fmt: skip
    rejected = search.InfeasibleConfig(  # rejected by the searcher: never a Tune trial
        number=1, config={"family": "nextvlad", "groups": 4, "number": 1, "feasible": False},
        size_bytes=9_000_000, flops=10, reason="over budget")  # fmt: skip
    rows = search.trial_rows(spec, trials, [rejected])
    assert [r.number for r in rows] == list(range(6))
    assert [r.trial_id for r in rows] == ["a", "infeasible-1", "b", "c", "d", "e"]
    assert rows[1].state == "infeasible" and rows[1].reason == "over budget" and rows[1].size_bytes == 9_000_000
    assert rows[0].state == "complete" and rows[0].gap == 0.4 and rows[0].config == {"family": "nextvlad", "groups": 2}
    results.write_trials(rows[::-1], str(tmp_path))  # the table is written in creation order
    table = results.read_trials(str(tmp_path))
    assert [(r.number, r.trial_id) for r in table] == [(r.number, r.trial_id) for r in rows]


def test_dry_run_prints_space_budget_and_sampled_sizes(capsys: pytest.CaptureFixture[str]) -> None:
    assert run.main([str(SMOKE), "--dry-run", "search.seed=3"]) == 0
    out = capsys.readouterr().out
    assert "budget check:" in out and "first 5 sampled configurations:" in out
    assert out.count(" MB ") >= 5 and "family" in out


def test_cli_exit_codes_for_bad_spaces_and_arguments(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(SMOKE.read_text().replace("groups: {choice: [2, 4]}", "groups: {choice: []}")
                   .replace("epochs: 3", "epochs: zero"))
    assert run.main([str(bad)]) == 2
    err = capsys.readouterr().err
    assert "model.hparams.groups.choice: expected a non-empty list" in err and "trial.epochs" in err
    assert run.main([str(SMOKE), "budget.max_model_bytes=1000"]) == 2
    assert "below every configuration" in capsys.readouterr().err
    assert run.main([str(SMOKE), "--resume", "--output", str(tmp_path / "none")]) == 2
    assert "no sweep to resume" in capsys.readouterr().err
    assert run.main(["--bogus"]) == 2
    assert not (tmp_path / "none").exists()


@pytest.mark.parametrize(
    "override, message",
    [
        ("model.hparams.colour=3", "model.hparams.colour: not a hyperparameter of nextvlad"),
        ("model.hparams.temperature={float: [0, 1], when: {famly: mix_nextvlad}}", "condition on a missing parameter"),
        ("model.hparams.clusters={int: [32, 8]}", "empty range"),
        ("model.hparams.clusters={int: [8, 32], step: 5}", "dividing high - low"),
        ("trial.learning_rate={logfloat: [0, 1]}", "log range needs low > 0"),
        ("trial.epochs={int: [1, 3]}", "trial.epochs: cannot be searched"),
        ("search.objectives=[size]", "search.objectives"),
        ("model.family=resnet", "unknown model 'resnet'"),
        ("trial.cpus_per_worker=0", "must be non-zero"),
    ],
)
def test_malformed_space_errors_name_their_key_path(override: str, message: str) -> None:
    with pytest.raises(config.SpecError) as info:
        config.load(SMOKE, [override])
    key_path = override.split("=")[0]
    assert any(message in e and key_path in e for e in info.value.errors), info.value.errors


def test_multi_objective_searcher_keeps_two_directions() -> None:
    spec = config.load(SMOKE, ["search.objectives=[gap, size]"])
    searcher = search.make_searcher(spec)
    searcher.set_search_properties(None, None, {})
    assert len(compat.optuna_study(searcher).directions) == 2
    assert not math.isnan(spec.budget.ensemble_bytes)


@pytest.mark.slow
def test_smoke_sweep_end_to_end(ray_local: None, tmp_path: Path) -> None:
    """The embedded default, shrunk: trials train, infeasible ones are rejected, outputs appear."""
    import csv

    out = tmp_path / "run"
    overrides = [
        "data.synthetic.train_videos=240", "data.synthetic.validation_videos=80", "data.synthetic.shards=2",
        f"data.synthetic.cache={tmp_path / 'cache'}", "search.num_samples=4", "trial.epochs=2",
        "trial.batch_size=32", "data.synthetic.num_classes=40", "model.hparams.num_classes=40",
    ]
    assert run.main([str(SMOKE), *overrides, "--output", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    rows = list(csv.DictReader((out / "trials.csv").open()))
    tune_trials = [r for r in rows if r["state"] != "infeasible"]  # num_samples counts Tune trials only
    assert len(tune_trials) == 4 and sum(summary["trials"].values()) == len(rows)
    _assert_tune_creation_order(out, rows)
    for row in rows:
        size = int(float(row["size_bytes"]))
        if row["state"] == "infeasible":  # never trained: no Train run folder was made for it
            assert size > 8e6 and not (out / "trials" / f"trial-{row['trial_id']}").exists()
        else:
            assert row["state"] in ("complete", "stopped") and size <= 8e6 and Path(row["predictions"]).exists()
    best = summary["best"]
    assert best is not None and Path(best["checkpoint"], "model.pt").exists()
    print("best GAP", best["gap"])
    assert best["gap"] > 0.15  # 40 classes, ~3 labels: a random ranking scores about 0.08
    # the holdout (20% of the 80 validation videos by id hash) chose nothing; the class prior beside it
    prior = summary["baselines"]
    assert 0 < prior["class_prior_holdout_gap"] < 0.6 and 0 < prior["class_prior_selection_gap"] < 0.6
    assert 0 < best["holdout_gap"] <= 1 and best["holdout_gap"] != best["gap"]
    trained = [r for r in tune_trials if r["state"] == "complete"]
    assert all(0 < float(r["holdout_gap"]) <= 1 for r in trained)
    assert summary["data"]["holdout_fraction"] == 0.2
    for key in ("trial_id", "config", "gap", "epochs", "params", "size_bytes", "checkpoint", "predictions"):
        assert key in best
    assert (out / "report.html").read_text().startswith("<!DOCTYPE html>")
    assert (out / "optuna.journal").stat().st_size > 0
    assert list((out / "tune").glob("*/wandb/offline-run-*")), "W&B offline runs"
    ensemble = summary["ensemble"]
    assert ensemble["size_bytes"] <= ensemble["budget_bytes"] and Path(ensemble["path"]).exists()


@pytest.mark.slow
def test_one_worker_trials_reuse_the_trial_process(ray_local: None, tmp_path: Path) -> None:
    """One trial at a time: every trial, the ones ASHA stops included, trains in the first trial's
    process (Tune's actor reuse), each from its own fresh start, and writes its own best/."""
    import csv

    out = tmp_path / "run"
    overrides = [
        "data.synthetic.train_videos=96", "data.synthetic.validation_videos=32", "data.synthetic.shards=2",
        f"data.synthetic.cache={tmp_path / 'cache'}", "search.num_samples=5", "trial.epochs=2",
        "trial.batch_size=16", "data.synthetic.num_classes=40", "model.hparams.num_classes=40",
        "search.max_concurrent=1", "budget.max_model_bytes=1e9", "wandb.mode=disabled",
        # plain halving (on 32 videos every GAP difference is within the noise) with the cutoff near the
        # best recorded GAP: a trial is stopped unless it beats every one before it, so with 5 trials
        # nothing is stopped only when each is a new best (1 in 120 for exchangeable GAPs)
        "search.asha.noise_margin=0", "search.asha.reduction_factor=100",
    ]
    assert run.main([str(SMOKE), *overrides, "--output", str(out)]) == 0
    rows = list(csv.DictReader((out / "trials.csv").open()))
    assert [r["state"] in ("complete", "stopped") for r in rows] == [True] * 5
    assert any(r["state"] == "stopped" for r in rows)  # ASHA stopped one: its process still ran the next
    logs = (out / "tune").glob("*/result.json")
    reports = [[json.loads(line) for line in log.read_text().splitlines()] for log in logs]
    assert len(reports) == 5 and len({r["pid"] for trial in reports for r in trial}) == 1
    for trial in reports:
        assert [r["epoch"] for r in trial] == list(range(1, len(trial) + 1))  # no epoch carried over
        assert trial[0]["examples_seen"] == reports[0][0]["examples_seen"]
    for row in rows:
        assert Path(row["predictions"]).exists() and Path(row["checkpoint"], "model.pt").exists()


def _assert_tune_creation_order(out: Path, rows: list[dict[str, str]]) -> None:
    """The table is numbered 0..n-1 in creation order, and its Tune trials (the rows that are not
    rejected infeasible configurations) follow the order Tune created them: Tune names a trial's folder
    ``run_trial_<trial id>_<experiment tag>_<date>``, and the tag starts with its 1-based creation count."""
    created = {}
    for folder in (out / "tune").glob("run_trial_*"):
        match = re.match(r"run_trial_([0-9a-f]+)_(\d+)_", folder.name)
        assert match, folder.name
        created[match[1]] = int(match[2]) - 1
    assert [int(r["number"]) for r in rows] == list(range(len(rows)))
    tune_rows = [r for r in rows if r["state"] != "infeasible"]
    assert [created[r["trial_id"]] for r in tune_rows] == list(range(len(tune_rows))) == sorted(created.values())


def _journal(out: Path) -> optuna.Study:
    """The run's live study, read as optuna-dashboard reads it."""
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(out / "optuna.journal")))
    return optuna.load_study(study_name="smoke", storage=storage)


def _trial_spans(out: Path) -> list[tuple[float, float]]:
    """(start, end) wall-clock seconds of every trained trial, from Tune's per-trial result logs."""

    spans = []
    for log in (out / "tune").glob("*/result.json"):
        results = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
        if results:
            spans.append((results[0]["timestamp"] - results[0]["time_this_iter_s"], results[-1]["timestamp"]))
    return spans


@pytest.mark.slow
def test_sweep_killed_mid_way_finishes_with_resume(tmp_path: Path) -> None:
    """Two trials at a time; the driver (and its Ray instance) is SIGKILLed once a trial has finished;
    ``--resume``, a new process as a user would start it, completes the sweep without re-running the
    finished trial."""
    import csv

    out = tmp_path / "run"
    overrides = [
        "data.synthetic.train_videos=240", "data.synthetic.validation_videos=80", "data.synthetic.shards=2",
        f"data.synthetic.cache={tmp_path / 'cache'}", "search.num_samples=4", "trial.epochs=2", "search.asha=null",
        "trial.batch_size=32", "data.synthetic.num_classes=40", "model.hparams.num_classes=40",
        "search.max_concurrent=2", "budget.max_model_bytes=1e9",  # every trial trains
    ]
    command = [sys.executable, "-m", "yt8m_search.run", str(SMOKE), *overrides, "--output", str(out)]
    finished: dict[str, float] = {}  # trial -> its history's mtime, once its final checkpoint is written

    def some_trial_finished() -> bool:
        for last in (out / "trials").glob("trial-*/epoch_002"):
            finished[last.parent.name] = (last.parent / "history.json").stat().st_mtime
        return bool(finished)

    kill_sweep_when(command, some_trial_finished, tmp_path / "first.log")
    assert not (out / "summary.json").exists()
    live = _journal(out)  # written while the sweep ran: a finished trial with its per-epoch GAP
    done = [t for t in live.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert done and all(sorted(t.intermediate_values) == [1, 2] for t in done)

    resumed = run_sweep_to_the_end([*command, "--resume"], tmp_path / "resumed.log")
    assert re.search(r"^\[00:[0-2]\d\] ", resumed, re.MULTILINE), resumed  # the clock restarts: not the killed run's
    # a clean terminal: the live line and the summary; Ray's, Tune's, W&B's and Optuna's output is in run.log
    assert not re.search(r"WARNING|performance bottleneck|\(raylet\)|Traceback", resumed), resumed
    assert f"log: {out / 'run.log'}" in resumed and "Wrote the latest version" in (out / "run.log").read_text()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["trials"]["complete"] == 4 and sum(summary["trials"].values()) == 4
    rows = list(csv.DictReader((out / "trials.csv").open()))
    _assert_tune_creation_order(out, rows)  # survives --resume
    # the same journal went on: numbers continue, its trials in the table's order (a trial asked after
    # the last searcher checkpoint is the killed sweep's: FAIL, no Tune trial)
    study = _journal(out)
    assert [t.number for t in study.trials] == list(range(len(study.trials)))
    held = [t for t in study.trials if t.state != optuna.trial.TrialState.FAIL]
    assert [t.user_attrs["trial_id"] for t in held] == [r["trial_id"] for r in rows]
    assert all(t.user_attrs["state"] == "complete" and len(t.intermediate_values) == 2 for t in held), [
        (t.number, t.state, t.user_attrs.get("state"), t.intermediate_values) for t in study.trials]
    assert all(t.datetime_start <= u.datetime_start for t, u in zip(study.trials, study.trials[1:]))
    for name, mtime in finished.items():  # finished before the kill: not trained again
        assert (out / "trials" / name / "history.json").stat().st_mtime == mtime
    spans = sorted(_trial_spans(out))
    assert any(a_end > b_start for (_, a_end), (b_start, _) in zip(spans, spans[1:])), spans  # 2 at a time


@pytest.mark.slow
def test_train_reports_reach_tune_while_its_driver_is_slow(tmp_path: Path) -> None:
    """Tune's driver held 8 s on each first result: a trial's last report and the end of its ``fit``
    come before Tune asks again. Every report still reaches Tune in order and the sweep ends (with
    Ray's ``TuneReportCallback`` the trial hung for ever); a loop that raises fails its trial with
    the loop's error."""

    script = Path(__file__).with_name("slow_driver_sweep.py")
    run_sweep_to_the_end([sys.executable, str(script), str(tmp_path)], tmp_path / "sweep.log", timeout=240)
    trials = json.loads((tmp_path / "results.json").read_text())
    assert trials["ok"] == {"epochs": [1, 2], "error": None}
    assert trials["fails"]["epochs"] == [1]
    assert "the loop broke after epoch 1" in trials["fails"]["error"]


def test_importance_ranks_what_reaches_a_high_gap() -> None:
    """``a`` alone decides which trials reach a high GAP; ``b`` only orders the poor ones. Ranked by
    how they reach *low* values (the evaluator's own sense), ``b`` would come first."""
    rng = np.random.default_rng(0)
    study = optuna.create_study(direction="maximize")
    uniform = optuna.distributions.FloatDistribution(0, 1)
    distributions = {"a": uniform, "b": uniform}
    for a, b in rng.random((200, 2)):
        gap = 0.5 + 0.01 * b if a > 0.9 else 0.1 * b
        study.add_trial(optuna.trial.create_trial(params={"a": a, "b": b}, distributions=distributions, value=gap,
                                                  user_attrs={"state": "complete"}))
    ranked = search.importances(study)
    assert ranked["a"] > ranked["b"], ranked
