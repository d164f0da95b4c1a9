"""Inference cost in the search: ``flops`` as an objective and a budget (per model and per ensemble),
and each trial's measured latency (``latency_ms``), from the space file to trials.csv, summary.json,
the Optuna study, the ensemble and the report."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import shutil
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch

from yt8m_search import artifacts, compat, config, ensemble, models, report, results, run, search
from yt8m_search.data.batch import VideoBatch
from yt8m_search.results import TrialRow, TrialState
from yt8m_search.train import evaluate
from yt8m_search.train.evaluation import latency_ms, merged_metrics

from .test_ensemble import FAMILIES, _synthetic, fake_run  # noqa: F401  (fake_run: a fixture)

SMOKE = Path(__file__).resolve().parents[1] / "search_spaces" / "smoke.yaml"


# ---------------------------------------------------------------------------------------------
# The space: objectives and per-model budgets


@pytest.mark.parametrize("objectives",
                         ["gap", "[gap, size]", "[gap, flops]", "[gap, size, flops]", "[gap, flops, size]"])
def test_objectives_are_gap_then_any_of_size_and_flops(objectives: str) -> None:
    spec = config.load(SMOKE, [f"search.objectives={objectives}"])
    assert spec.search.objectives == tuple(objectives.strip("[]").split(", "))


@pytest.mark.parametrize("objectives", ["[flops]", "[flops, gap]", "[gap, flops, flops]", "[gap, latency]", "size"])
def test_other_objectives_are_refused_with_their_key_path(objectives: str) -> None:
    with pytest.raises(config.SpecError) as info:
        config.load(SMOKE, [f"search.objectives={objectives}"])
    assert any(e.startswith("search.objectives: must be gap, [gap, size], [gap, flops]") for e in info.value.errors)


def test_a_config_over_max_flops_is_rejected_with_a_reason_naming_flops() -> None:
    spec = config.load(SMOKE, ["budget.max_flops=1.0e9", "budget.max_model_bytes=1e9"])
    assert spec.budget.max_flops == 10**9
    space = search.SearchSpace.of(spec)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = {True: 0, False: 0}
    for _ in range(30):
        trial = study.ask()
        extra = space(trial)
        family, hparams = search.model_of({**trial.params, **extra}, spec.parameters)
        flops = models.flops(family, **hparams)
        assert extra["flops"] == flops and extra["feasible"] == (flops <= 10**9)
        if not extra["feasible"]:  # mix_nextvlad: two branches, about 1.3 GFLOPs
            assert extra["infeasible_reason"] == f"{flops:,} FLOPs per video > budget 1,000,000,000 FLOPs"
        study.tell(trial, 0.0)
        constraints = study.trials[-1].constraints
        assert (constraints["flops_over_budget"] <= 0) == extra["feasible"] and constraints["size_over_budget"] <= 0
        seen[extra["feasible"]] += 1
    assert seen[True] and seen[False]


def test_both_budgets_give_both_reasons() -> None:
    spec = config.load(SMOKE, ["budget.max_flops=1.0e9"])  # and the smoke's 8 MB
    space = search.SearchSpace.of(spec)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    reasons = [space(study.ask())["infeasible_reason"] for _ in range(40)]
    assert any("bytes > budget" in r and "FLOPs per video > budget" in r for r in reasons), reasons


def test_budgets_no_configuration_fits_are_refused_before_anything_starts(capsys: pytest.CaptureFixture[str]) -> None:
    smallest = config.survey(config.load(SMOKE).parameters, config.BudgetSpec(storage_dtype="bfloat16"))
    cheapest = int(smallest.cheapest[0])
    assert cheapest == 656_729_856  # nextvlad, 2 groups, 8 clusters, 64 hidden: the space's cheapest
    with pytest.raises(config.SpecError) as info:
        config.load(SMOKE, ["budget.max_flops=6e8", "budget.ensemble_flops=5e8"])
    errors = info.value.errors
    assert any(e.startswith("budget.max_flops: 600,000,000 FLOPs per video is below every configuration")
               and f"the cheapest needs {cheapest:,} FLOPs" in e for e in errors), errors
    assert any(e.startswith("budget.ensemble_flops: 500,000,000 FLOPs per video is below every") for e in errors)
    # each budget alone admits configurations, none is within both: the smallest (4 groups) costs more
    # FLOPs than the cheapest (2 groups), which takes more bytes
    both = [f"budget.max_model_bytes={smallest.smallest[0]}", f"budget.max_flops={cheapest}"]
    with pytest.raises(config.SpecError, match="no configuration is within both budget.max_model_bytes"):
        config.load(SMOKE, both)
    assert run.main([str(SMOKE), "budget.max_flops=1e6", "--dry-run"]) == 2
    assert "budget.max_flops: 1,000,000 FLOPs per video is below every configuration" in capsys.readouterr().err
    with pytest.raises(config.SpecError, match="budget.max_flops: expected a positive number of FLOPs per video"):
        config.load(SMOKE, ["budget.max_flops=-3"])


def test_dry_run_prints_each_sampled_configurations_gflops(capsys: pytest.CaptureFixture[str]) -> None:
    assert run.main([str(SMOKE), "--dry-run", "budget.max_flops=1.4e9", "search.seed=1"]) == 0
    out = capsys.readouterr().out
    sampled = [line for line in out.splitlines() if line.startswith("  ") and " GFLOPs " in line]
    assert len(sampled) == 5 and all(" MB " in line for line in sampled)
    assert "the cheapest 0.6567 GFLOPs" in out and "FLOPs budget (per video): per model 1.4 GFLOPs" in out
    assert "FLOPs per video > budget 1,400,000,000 FLOPs" in out


# ---------------------------------------------------------------------------------------------
# The study and the Pareto front


def _row(number: int, state: TrialState, gap: float, size: int, flops: int, latency: float = 2.5) -> TrialRow:
    trained = state in results.TRAINED_STATES
    return TrialRow(
        number=number, trial_id=f"t{number}", state=state, model="nextvlad", hparams={"groups": 2},
        config={"family": "nextvlad", "groups": 2}, gap=gap if trained else math.nan, gap_last=math.nan,
        hit_at_one=math.nan, perr=math.nan, map=math.nan, epochs=3 if trained else 0, best_epoch=1, params=size // 2,
        size_bytes=size, samples_per_s=math.nan, checkpoint="", predictions="", reason="",
        flops=flops, latency_ms=latency if trained else math.nan, device="cpu (1 thread)" if trained else "",
    )  # fmt: skip


ROWS = [
    _row(0, TrialState.COMPLETE, 0.50, 4_000_000, 700_000_000),
    _row(1, TrialState.COMPLETE, 0.55, 3_000_000, 1_300_000_000),  # smaller, but more FLOPs
    _row(2, TrialState.COMPLETE, 0.45, 2_000_000, 650_000_000),
    _row(3, TrialState.COMPLETE, 0.48, 5_000_000, 750_000_000),  # dominated by t0 in both costs
    _row(4, TrialState.STOPPED, 0.60, 1_000_000, 600_000_000),  # partial: never on a front
    _row(5, TrialState.INFEASIBLE, math.nan, 9_000_000, 1_500_000_000),
]


def test_pareto_fronts_over_flops_size_and_both() -> None:
    def ids(costs: tuple[str, ...]) -> list[str]:
        return [r.trial_id for r in results.pareto_front(ROWS, costs)]

    assert ids(("size",)) == ["t1", "t2"]
    assert ids(("flops",)) == ["t0", "t1", "t2"]
    assert ids(("size", "flops")) == ids(("flops", "size")) == ["t0", "t1", "t2"]
    assert results.pareto_costs(["gap"]) == ("size",) and results.pareto_costs(["gap", "flops"]) == ("flops",)
    old = [dataclasses.replace(r, flops=0) for r in ROWS]  # a table from before FLOPs: unknown, no front
    assert results.pareto_front(old, ("flops",)) == []


@pytest.mark.parametrize("objectives, metrics", [
    (["gap", "flops"], ["gap_best", "flops"]),
    (["gap", "size", "flops"], ["gap_best", "size_bytes", "flops"]),
])  # fmt: skip
def test_cost_objectives_make_a_study_with_a_direction_each(objectives: list[str], metrics: list[str],
                                                            tmp_path: Path) -> None:
    spec = config.load(SMOKE, [f"search.objectives=[{', '.join(objectives)}]", "budget.max_flops=1.4e9"])
    searcher = search.make_searcher(spec)
    searcher.set_search_properties(None, None, {})
    directions = [optuna.study.StudyDirection.MAXIMIZE] + [optuna.study.StudyDirection.MINIMIZE] * (len(objectives) - 1)
    assert compat.optuna_study(searcher).directions == directions
    assert searcher.metric == metrics  # what each trial reports for Optuna
    # the live journal: the same directions and objective names, each trial's values, both budgets'
    # constraints
    journal = tmp_path / "optuna.journal"
    searcher = search.make_searcher(spec, str(journal))
    trained = searcher.suggest("t0")
    assert trained is not None
    result = {"epoch": spec.trial.epochs, "gap": 0.5, "gap_best": 0.5,
              "size_bytes": trained["size_bytes"], "flops": trained["flops"]}  # fmt: skip
    searcher.on_trial_result("t0", result)
    searcher.on_trial_complete("t0", result)
    study = optuna.load_study(study_name=spec.name, storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(journal))))  # fmt: skip
    assert study.directions == directions and study.metric_names == ["gap", *metrics[1:]]
    trial = study.trials[trained["number"]]
    assert trial.values == [0.5, *(float(trained[m]) for m in metrics[1:])]
    assert trial.constraints["flops_over_budget"] == trained["flops"] - 1_400_000_000 <= 0
    assert all(t.constraints["flops_over_budget"] > 0 or t.constraints["size_over_budget"] > 0
               for t in study.trials if t.user_attrs.get("state") == "infeasible")  # fmt: skip


# ---------------------------------------------------------------------------------------------
# The trials table, summary.json and meta.json: new fields, old files


def test_trials_csv_holds_flops_latency_and_device_and_old_tables_still_read(tmp_path: Path) -> None:
    results.write_trials(ROWS, str(tmp_path))
    header = (tmp_path / "trials.csv").read_text().splitlines()[0].split(",")
    assert header[-5:] == ["flops", "latency_ms", "device", "seed", "holdout_gap"]
    back = results.read_trials(str(tmp_path))
    assert [(r.flops, r.device) for r in back] == [(r.flops, r.device) for r in ROWS]
    assert back[0].latency_ms == 2.5 and math.isnan(back[5].latency_ms)
    # a table written before these columns (and the later seed and holdout_gap): unknown FLOPs (0), no
    # latency, no device, no holdout
    with (tmp_path / "trials.csv").open() as f:
        records = list(csv.reader(f))
    old = "\n".join(",".join(record[:-5]) for record in records) + "\n"
    rows = results.parse_trials(old)
    assert [(r.flops, r.device) for r in rows] == [(0, "")] * len(ROWS) and all(math.isnan(r.latency_ms) for r in rows)
    assert all(math.isnan(r.holdout_gap) and r.seed == -1 for r in rows)
    assert [r.trial_id for r in rows] == [r.trial_id for r in ROWS]


def test_summary_records_the_best_trials_cost_and_old_summaries_still_read(tmp_path: Path) -> None:
    summary = results.RunSummary(
        space="s.yaml", space_hash="h", version="0", run_dir=str(tmp_path), objectives=["gap", "flops"],
        trials=results.count_states(ROWS),
        budget=results.BudgetSummary(None, 16_000_000, "bfloat16", max_flops=1_400_000_000, ensemble_flops=2 * 10**9),
        data=results.DataSummary("t", "v"), best=results.BestTrial.of(ROWS[1]), pareto=["t0", "t1", "t2"],
    )  # fmt: skip
    results.write_summary(summary, str(tmp_path))
    raw = json.loads((tmp_path / "summary.json").read_text())
    assert raw["best"]["flops"] == 1_300_000_000 and raw["best"]["latency_ms"] == 2.5
    assert raw["budget"]["max_flops"] == 1_400_000_000 and results.read_summary(str(tmp_path)) == summary
    for key in ("flops", "latency_ms", "device"):
        del raw["best"][key]
    del raw["budget"]["max_flops"], raw["budget"]["ensemble_flops"]
    old = results.parse_summary(raw)
    assert old.best.flops == 0 and math.isnan(old.best.latency_ms) and old.budget.max_flops is None


def test_old_meta_json_reads_without_the_inference_cost() -> None:
    hparams = models.tiny_hparams("nextvlad")
    raw = {"model": "nextvlad", "hparams": hparams, "epoch": 1, "params": 1, "stats": 0, "size_bytes": 2,
           "storage_dtype": "bfloat16", "metrics": {}}
    meta = artifacts.TrialMeta.from_dict(raw, "meta.json")
    assert (meta.flops, meta.latency_ms, meta.device) == (0, None, "")
    meta = artifacts.TrialMeta.from_dict({**raw, "flops": 123, "latency_ms": 0.5, "device": "cpu (1 thread)"}, "m")
    assert (meta.flops, meta.latency_ms, meta.device) == (123, 0.5, "cpu (1 thread)")


# ---------------------------------------------------------------------------------------------
# Measured latency


def test_evaluation_times_the_forward_of_each_batch() -> None:
    hparams = {**models.tiny_hparams("nextvlad"), "num_classes": 40}
    model = models.build("nextvlad", **hparams)
    batches = [VideoBatch(features=torch.rand(n, 30, 1152), mask=torch.ones(n, 30, dtype=torch.bool),
                          num_frames=torch.full((n,), 30), num_audio_frames=torch.full((n,), 30),
                          labels=torch.eye(40)[:n], ids=[f"v{i}" for i in range(n)]) for n in (16, 16, 16, 5)]
    evaluation = evaluate(model, batches, torch.device("cpu"), 20, 40)
    assert [n for _, n in evaluation.timings] == [16, 16, 16, 5] and all(s > 0 for s, _ in evaluation.timings)
    measured = merged_metrics([evaluation, evaluation])["latency_ms"]
    full = sorted(1000 * s / 16 for s, n in evaluation.timings if n == 16)
    assert measured == pytest.approx(full[1]) and measured > 0  # the full batches' median, the last left out
    assert latency_ms([(0.2, 4)]) == 50.0 and math.isnan(latency_ms([]))


# ---------------------------------------------------------------------------------------------
# The ensemble's FLOPs budget


def test_selection_respects_both_the_byte_and_the_flops_budget() -> None:
    rng = np.random.default_rng(7)
    bound_by_flops = 0
    for _ in range(12):
        candidates, _ = _synthetic(rng, int(rng.integers(2, 7)), videos=120, classes=40)
        for c in candidates:
            c.flops = int(rng.integers(100, 1000))
        budget = int(rng.integers(max(c.size_bytes for c in candidates), sum(c.size_bytes for c in candidates) + 1))
        budget_flops = int(rng.integers(max(c.flops for c in candidates), sum(c.flops for c in candidates) + 1))
        selection = ensemble.select(candidates, budget, budget_flops=budget_flops, workers=1)
        assert selection.size_bytes == sum(c.size_bytes for c in selection.members) <= budget
        assert selection.flops == sum(c.flops for c in selection.members) <= budget_flops
        assert selection.budget_flops == budget_flops and selection.gap >= selection.best_single[1]
        bytes_only = ensemble.select(candidates, budget, workers=1)
        bound_by_flops += sum(c.flops for c in bytes_only.members) > budget_flops
    assert bound_by_flops  # the FLOPs budget changed some ensembles


def test_a_flops_budget_no_candidate_fits_is_a_clear_error() -> None:
    candidates, _ = _synthetic(np.random.default_rng(8), 3, sizes=(100, 200))
    for c, flops in zip(candidates, (500, 300, 400)):
        c.flops = flops
    with pytest.raises(ensemble.BudgetError, match="FLOPs budget of 299 FLOPs per video is smaller than every") as info:
        ensemble.select(candidates, 10**6, budget_flops=299)
    assert "trial t1" in str(info.value) and "needs 300 FLOPs" in str(info.value)
    smallest = min(candidates, key=lambda c: c.size_bytes)
    with pytest.raises(ensemble.BudgetError, match="no candidate fits both"):
        ensemble.select(candidates, smallest.size_bytes, budget_flops=smallest.flops - 1)


def test_the_ensemble_step_bounds_its_flops_and_records_them(fake_run: Path, tmp_path: Path) -> None:  # noqa: F811
    """A sweep whose trials.csv and meta.json hold no FLOPs (0, as a sweep from before they were
    recorded reads): the candidates' FLOPs are counted from their models, and the step keeps to the
    sweep's FLOPs budget, or to the one it is given."""
    run_dir = tmp_path / "run"
    shutil.copytree(fake_run, run_dir)
    (run_dir / "trials.csv").write_text((run_dir / "trials.csv").read_text().replace(str(fake_run), str(run_dir)))
    flops = {t: models.flops(name, **models.resolve(name, **hp, num_classes=40)) for t, (name, hp) in FAMILIES.items()}
    assert {c.trial_id: c.flops for c in ensemble.load_candidates(str(run_dir))} == flops
    limit = sum(flops.values()) - max(flops.values())  # not every trial fits
    summary = results.read_summary(str(run_dir))
    budget = dataclasses.replace(summary.budget, ensemble_flops=limit)
    results.write_summary(dataclasses.replace(summary, budget=budget), str(run_dir))
    entry = ensemble.run(str(run_dir))
    assert entry.budget_flops == limit and entry.flops == sum(flops[m] for m in entry.members) <= limit
    assert entry.member_flops == [flops[m] for m in entry.members]
    assert results.read_summary(str(run_dir)).ensemble == entry
    tighter = min(flops.values())  # the CLI's budget beats the sweep's: one member at most
    assert ensemble.run(str(run_dir), budget_flops=tighter).flops <= tighter


# ---------------------------------------------------------------------------------------------
# The report


def _plot(page: str, cls: str) -> tuple[str, set[str]]:
    """The page's SVG plot of class ``cls`` and the trials it marks as on its Pareto front."""
    svg = page[page.index(f'<svg class="plot {cls}"'):]
    svg = svg[: svg.index("</svg>")]
    return svg, {part.split('"')[0] for part in svg.split('data-trial="')[1:] if 'data-pareto="1"' in part}


def test_the_report_plots_gap_against_gflops_with_its_pareto_front() -> None:
    summary = results.RunSummary(
        space="s.yaml", space_hash="h", version="0", run_dir="/r", objectives=["gap", "flops"],
        trials=results.count_states(ROWS),
        budget=results.BudgetSummary(8_000_000, 16_000_000, "bfloat16", max_flops=1_400_000_000),
        data=results.DataSummary("t", "v"), best=results.BestTrial.of(ROWS[1]), pareto=["t0", "t1", "t2"],
    )  # fmt: skip
    text = report.render_report(ROWS, summary, {})
    flops_svg, on_front = _plot(text, "flops")
    assert on_front == {"t0", "t1", "t2"} and "pareto-line" in flops_svg
    assert "per-model FLOPs budget 1.4 GFLOPs" in flops_svg and 'data-trial="t5" data-state="infeasible"' in flops_svg
    assert _plot(text, "size")[1] == {"t1", "t2"}  # each plot its own front
    # the trials table: GFLOPs and ms per video side by side; "Pareto" marks the search's front
    assert "<th>GFLOPs</th><th>ms / video</th>" in text
    row = text[text.index('<tr class="state-complete" data-trial="t0"'):]
    row = row[: row.index("</tr>")]
    assert '<td class="num">0.7</td><td class="num" title="cpu (1 thread)">2.5</td>' in row and "Pareto" in row
    assert "1.3 GFLOPs · 2.5 ms per video (cpu (1 thread))" in text  # the best trial's facts


# ---------------------------------------------------------------------------------------------
# End to end


@pytest.mark.slow
def test_a_gap_flops_sweep_end_to_end(ray_local: None, tmp_path: Path) -> None:
    """The smoke space searched over [gap, flops] under a FLOPs budget: the costly configurations
    never train, every trial has its FLOPs, the trained ones their measured latency; the summary,
    the study, the report and the ensemble carry them."""
    out = tmp_path / "run"
    overrides = [
        "data.synthetic.train_videos=240", "data.synthetic.validation_videos=80", "data.synthetic.shards=2",
        f"data.synthetic.cache={tmp_path / 'cache'}", "trial.epochs=2", "trial.batch_size=32",
        "data.synthetic.num_classes=40", "model.hparams.num_classes=40", "wandb.mode=disabled", "search.asha=null",
        "search.objectives=[gap, flops]", "search.seed=1", "search.num_samples=5", "search.startup_trials=10",
        "budget.max_model_bytes=1e9", "budget.max_flops=1.4e9", "budget.ensemble_flops=1.4e9",
    ]  # seeded random draws only: seed 1's first six are five within 1.4 GFLOPs and one over
    assert run.main([str(SMOKE), *overrides, "--output", str(out)]) == 0
    rows = results.read_trials(str(out))
    assert len(rows) == 6 and all(r.flops > 0 for r in rows)  # five Tune trials, one rejected draw
    for r in rows:
        if r.state is TrialState.INFEASIBLE:
            assert r.flops > 1.4e9 and "FLOPs per video > budget 1,400,000,000 FLOPs" in r.reason
            assert math.isnan(r.latency_ms) and not (out / "trials" / f"trial-{r.trial_id}").exists()
        else:
            assert r.state is TrialState.COMPLETE and r.flops <= 1.4e9 and r.latency_ms > 0
            assert r.device.startswith("cpu (")
            meta = artifacts.read_meta(r.checkpoint)
            assert meta.flops == r.flops and meta.latency_ms > 0 and meta.device == r.device
    assert sum(r.state is TrialState.INFEASIBLE for r in rows) == 1
    print("latency ms per video:", {r.trial_id: (r.model, round(r.flops / 1e9, 3), r.latency_ms) for r in rows})
    summary = results.read_summary(str(out))
    assert summary.objectives == ["gap", "flops"] and summary.budget.max_flops == 1_400_000_000
    assert summary.best is not None and summary.best.flops > 0 and summary.best.latency_ms > 0
    front = [r.trial_id for r in results.pareto_front(rows, ("flops",))]
    assert front and summary.pareto == front
    study = optuna.load_study(study_name=None, storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(out / "optuna.journal"))))
    assert len(study.directions) == 2 and study.metric_names == ["gap", "flops"]
    trained = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]  # the live study's
    assert [t.user_attrs["trial_id"] for t in trained] == [r.trial_id for r in rows if r.state is TrialState.COMPLETE]
    assert all(sorted(t.user_attrs[search.GAP_BY_EPOCH]) == ["1", "2"] for t in trained)  # per-epoch GAP
    page = (out / "report.html").read_text()
    assert _plot(page, "flops")[1] == set(front) and "ms / video" in page
    assert summary.ensemble.flops <= summary.ensemble.budget_flops == 1_400_000_000
