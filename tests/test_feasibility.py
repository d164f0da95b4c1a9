"""Over-budget configurations never become Tune trials (the searcher rejects them through Optuna's
constraints and asks again), and every trial trains with its own seed derived from the sweep seed."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import optuna
import pytest

from yt8m_search import compat, config, results, run, search
from yt8m_search.data.prepare import DataPaths

SMOKE = Path(__file__).resolve().parents[1] / "search_spaces" / "smoke.yaml"


def _searcher(spec: config.Spec) -> search.FidelityAwareOptunaSearch:
    searcher = search.make_searcher(spec)
    searcher.set_search_properties(None, None, {})
    return searcher


def test_searcher_hands_tune_feasible_configs_only_and_records_the_rest(tmp_path: Path) -> None:
    spec = config.load(SMOKE)  # 8e6-byte budget: some sampled configurations are over it
    searcher = _searcher(spec)
    suggested = [searcher.suggest(f"t{i}") for i in range(8)]
    assert all(c is not None and c["feasible"] and 0 < c["size_bytes"] <= 8e6 for c in suggested)
    rejected = searcher.infeasible
    assert rejected, "the smoke budget should reject some of the first draws"
    for r in rejected:
        assert r.size_bytes > 8e6 and r.reason == f"{r.size_bytes:,} bytes > budget 8,000,000"
        assert r.config["family"] and r.config["number"] == r.number
    numbers = sorted([c["number"] for c in suggested] + [r.number for r in rejected])
    assert numbers == list(range(len(numbers)))  # one Optuna numbering, in creation order

    study = compat.optuna_study(searcher)
    for r in rejected:  # Optuna holds them as infeasible through its standard constraints
        trial = study.trials[r.number]
        assert trial.state == optuna.trial.TrialState.PRUNED and trial.constraints["size_over_budget"] > 0
    for c in suggested:
        trial = study.trials[c["number"]]
        assert trial.state == optuna.trial.TrialState.RUNNING and trial.constraints["size_over_budget"] <= 0

    # Tune's searcher checkpoint (save pickles the searcher's attributes) keeps them
    restored = search.make_searcher(spec)
    searcher.save(str(tmp_path / "searcher.pkl"))
    restored.restore(str(tmp_path / "searcher.pkl"))
    assert restored.infeasible == rejected
    nxt = restored.suggest("t8")
    assert nxt is not None and nxt["number"] > max(numbers)  # the restored study numbers on
    # and run_sweep reads the newest checkpoint Tune wrote into the experiment folder
    searcher.save_to_dir(str(tmp_path), "2025-01-01_00-00-00")
    restored.save_to_dir(str(tmp_path), "2025-01-02_00-00-00")
    assert search.FidelityAwareOptunaSearch.saved_infeasible(str(tmp_path)) == restored.infeasible
    assert search.FidelityAwareOptunaSearch.saved_infeasible(str(tmp_path / "none")) == []


def test_searcher_gives_up_naming_the_budget_when_nothing_fits() -> None:
    spec = config.load(SMOKE)
    searcher = search.FidelityAwareOptunaSearch(
        space=search.SearchSpace(spec.parameters, 1000, spec.budget.storage_dtype), metric="gap_best", mode="max",
        max_epochs=3, budget="budget.max_model_bytes=1,000", max_draws=5,
    )  # fmt: skip
    searcher.set_search_properties(None, None, {})
    with pytest.raises(RuntimeError, match=r"5 configurations in a row were over budget.max_model_bytes=1,000"):
        searcher.suggest("t0")
    assert len(searcher.infeasible) == 5


def test_infeasible_configs_become_infeasible_rows_in_creation_order(tmp_path: Path) -> None:
    spec = config.load(SMOKE)
    searcher = _searcher(spec)
    suggested = {f"t{i}": searcher.suggest(f"t{i}") for i in range(5)}
    metrics = {"epoch": 3, "gap": 0.3, "gap_best": 0.4, "params": 10, "checkpoint": "/c"}
    trials = [(c, {**metrics, "trial_id": tid, "size_bytes": c["size_bytes"]}, None) for tid, c in suggested.items()]
    rows = search.trial_rows(spec, trials[::-1], searcher.infeasible)
    assert [r.number for r in rows] == list(range(5 + len(searcher.infeasible)))
    infeasible = [r for r in rows if r.state is results.TrialState.INFEASIBLE]
    assert [r.trial_id for r in infeasible] == [f"infeasible-{r.number}" for r in searcher.infeasible]
    assert all(r.reason and r.size_bytes > 8e6 and r.model and r.config for r in infeasible)
    assert results.count_states(rows)["infeasible"] == len(searcher.infeasible)


def test_trial_seeds_are_stable_distinct_and_reach_the_trial(tmp_path: Path) -> None:
    seeds = [search.trial_seed(0, n) for n in range(50)]
    assert len(set(seeds)) == 50 and all(0 <= s < 2**31 for s in seeds)
    assert search.trial_seed(0, 0) == 821328062  # pinned: SeedSequence([0, 0]) never changes
    assert search.trial_seed(7, 3) == search.trial_seed(7, 3) != search.trial_seed(8, 3)
    assert search.trial_seed(5, None) == 5  # an unnumbered (older) trial trained with the sweep seed

    spec = config.load(SMOKE, ["search.seed=7"])
    context = search.SweepContext(spec=spec, data=DataPaths("train", "validation"), run_dir=str(tmp_path))
    searcher = _searcher(spec)
    configs = [searcher.suggest(f"t{i}") for i in range(2)]
    trained = [context.train_config(c).seed for c in configs]  # type: ignore[arg-type]
    assert trained == [search.trial_seed(7, c["number"]) for c in configs] and trained[0] != trained[1]

    metrics = {"epoch": 3, "gap": 0.3, "gap_best": 0.4, "params": 10, "size_bytes": 5, "checkpoint": "/c"}
    rows = search.trial_rows(spec, [(c, {**metrics, "trial_id": f"t{i}"}, None) for i, c in enumerate(configs)])
    results.write_trials(rows, str(tmp_path))
    assert [r.seed for r in results.read_trials(str(tmp_path))] == trained
    # a table from before the seed column still reads (seed -1: unknown)
    table = list(csv.DictReader((tmp_path / results.TRIALS_FILE).open()))
    old = io.StringIO()
    writer = csv.DictWriter(old, [c for c in table[0] if c != "seed"], extrasaction="ignore")
    writer.writeheader()
    writer.writerows(table)
    assert [r.seed for r in results.parse_trials(old.getvalue())] == [-1, -1]


@pytest.mark.slow
def test_sweep_turns_rejected_configs_into_infeasible_rows(ray_local: None, tmp_path: Path) -> None:
    """search.seed=0 on the smoke space under a 6e6-byte budget draws over-budget configurations first
    and third: rows of the table, counted in the summary, but no Tune trial, no Train run, no W&B run."""
    out = tmp_path / "run"
    overrides = [
        "data.synthetic.train_videos=96", "data.synthetic.validation_videos=32", "data.synthetic.shards=2",
        f"data.synthetic.cache={tmp_path / 'cache'}", "search.num_samples=2", "trial.epochs=1",
        "trial.batch_size=16", "data.synthetic.num_classes=40", "model.hparams.num_classes=40",
        "search.max_concurrent=1", "search.seed=0", "budget.max_model_bytes=6e6",
    ]
    assert run.main([str(SMOKE), *overrides, "--output", str(out)]) == 0
    rows = list(csv.DictReader((out / "trials.csv").open()))
    infeasible = [r for r in rows if r["state"] == "infeasible"]
    trained = [r for r in rows if r["state"] != "infeasible"]
    assert len(trained) == 2 and infeasible  # num_samples counts Tune trials only
    assert [int(r["number"]) for r in rows] == list(range(len(rows)))
    for row in infeasible:
        assert row["trial_id"] == f"infeasible-{row['number']}" and float(row["size_bytes"]) > 6e6
        assert "bytes > budget 6,000,000" in row["reason"]
    folders = list((out / "tune").glob("run_trial_*"))
    assert len(folders) == 2 and len(list((out / "tune").glob("*/result.json"))) == 2
    assert all(r["trial_id"] in {f.name.split("_")[2] for f in folders} for r in trained)
    for trial in (json.loads(line) for f in folders for line in (f / "result.json").read_text().splitlines()):
        assert "infeasible" not in trial and trial["gap"] > 0  # ASHA saw real GAPs only
    # W&B runs live in Tune trial folders only (the last trial's may not be there yet when a tiny sweep ends)
    assert 1 <= len(list((out / "tune").glob("*/wandb/offline-run-*"))) <= 2
    seeds = {int(r["seed"]) for r in rows}
    assert len(seeds) == len(rows)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["trials"]["infeasible"] == len(infeasible) and sum(summary["trials"].values()) == len(rows)
