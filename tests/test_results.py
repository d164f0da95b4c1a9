"""The typed results: trials.csv and summary.json round trips, loud failures, the one Pareto rule."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest

from yt8m_search import results
from yt8m_search.results import TrialRow, TrialState


def row(number: int, state: TrialState = TrialState.COMPLETE, gap: float = 0.5, size: int = 1000,
        **config: object) -> TrialRow:
    trained = state in results.TRAINED_STATES
    gap = gap if trained else math.nan
    return TrialRow(
        number=number, trial_id=f"t{number:03d}", state=state, model="nextvlad", hparams={"groups": 4},
        config={"family": "nextvlad", **config}, gap=gap, gap_last=gap,
        hit_at_one=0.1, perr=0.2, map=math.nan, epochs=3 if trained else 0, best_epoch=2, params=size // 2,
        size_bytes=size, samples_per_s=12.5, checkpoint=f"/runs/x/t{number}/best" if trained else "",
        predictions=f"/runs/x/t{number}/best/predictions.parquet" if trained else "", reason="",
    )


def test_trials_round_trip_in_creation_order(tmp_path: Path) -> None:
    rows = [row(2, dropout=0.5, classifier="moe"), row(0, TrialState.INFEASIBLE, lr=2e-4),
            row(1, TrialState.STOPPED, gap=0.25, use=True)]
    results.write_trials(rows, str(tmp_path))
    back = results.read_trials(str(tmp_path))
    assert [r.number for r in back] == [0, 1, 2]
    for a, b in zip(sorted(rows, key=lambda r: r.number), back):
        for f in dataclasses.fields(TrialRow):
            x, y = getattr(a, f.name), getattr(b, f.name)
            assert (x == y) or (isinstance(x, float) and math.isnan(x) and math.isnan(y)), f.name
    header = (tmp_path / "trials.csv").read_text().splitlines()[0].split(",")
    assert header[:6] == ["number", "trial_id", "state", "model", "hparams", "config.family"]
    assert isinstance(back[0].state, TrialState) and back[0].config["lr"] == 2e-4 and back[1].config["use"] is True


def test_a_missing_column_fails_loudly(tmp_path: Path) -> None:
    results.write_trials([row(0)], str(tmp_path))
    path = tmp_path / "trials.csv"
    path.write_text(path.read_text().replace("size_bytes", "bytes", 1))
    with pytest.raises(results.ResultsError, match=r"trials\.csv: missing column\(s\) size_bytes"):
        results.read_trials(str(tmp_path))


def test_a_bad_value_names_the_line_and_field(tmp_path: Path) -> None:
    text = results.trials_text([row(0), row(1)]).replace(",12.5,", ",fast,", 2)
    with pytest.raises(results.ResultsError, match="line 2, samples_per_s: expected a number, got 'fast'"):
        results.parse_trials(text)


def test_pareto_front_of_complete_trials_only() -> None:
    rows = [row(0, gap=0.5, size=100), row(1, gap=0.6, size=200), row(2, gap=0.55, size=300),
            row(3, TrialState.STOPPED, gap=0.9, size=50), row(4, gap=0.6, size=200), row(5, gap=0.4, size=-1)]
    assert [r.number for r in results.pareto_front(rows)] == [0, 1, 4]
    assert results.best_trial(rows).number == 1  # complete beats a higher stopped trial
    assert results.best_trial([row(0, TrialState.STOPPED, gap=0.2)]).number == 0
    assert results.best_trial([row(0, TrialState.ERROR)]) is None
    assert results.count_states(rows) == {"complete": 5, "stopped": 1, "infeasible": 0, "error": 0, "pending": 0}


def summary(**changes: object) -> results.RunSummary:
    base = results.RunSummary(
        space="search_spaces/smoke.yaml", space_hash="abc", version="0.1.0", run_dir="/runs/smoke",
        objectives=["gap"], trials={"complete": 1}, budget=results.BudgetSummary(None, 10**9, "bfloat16"),
        data=results.DataSummary("/d/train", "/d/validation"), best=results.BestTrial.of(row(0)),
        pareto=["t000"],
    )
    return dataclasses.replace(base, **changes)


def test_summary_round_trip_with_each_kind_of_ensemble(tmp_path: Path) -> None:
    entry = results.EnsembleSummary(
        members=["t000"], weights=[1], models=["nextvlad"], member_gaps=[None], member_bytes=[1000], gap=0.5,
        selection_gap=0.49, best_single={"trial_id": "t000", "gap": 0.5}, hit_at_one=0.6, perr=0.4, map=None,
        validation_videos=48, size_bytes=1000, file_bytes=2000, budget_bytes=10**9, storage_dtype="bfloat16",
        path="/runs/smoke/ensemble.pt", format_version=2, strategy="greedy", curve=[[1000, 0.5]], steps=1,
        local_moves=0, candidates=1, evaluations=3, selection_seconds=0.1, seconds=1.0, notes=[],
    )
    with_holdout = dataclasses.replace(
        entry, best_single={"trial_id": "t000", "gap": 0.5, "holdout_gap": None}, holdout_gap=0.45, holdout_videos=12,
        holdout_fraction=0.2, method="bagged", bags=10, resamples=100, noise_z=1.2816, noise_sd=0.002,
        min_gain=0.0026, noise_tests=7, noise_rejections=3, shipped_best_single=True,
    )  # fmt: skip
    for ensemble in (None, results.EnsembleFailure("no trained trial fits the budget"), entry, with_holdout):
        written = summary(ensemble=ensemble)
        results.write_summary(written, str(tmp_path))
        assert results.read_summary(str(tmp_path)) == written
    raw = json.loads((tmp_path / "summary.json").read_text())
    assert list(raw) == ["space", "space_hash", "version", "run_dir", "objectives", "trials", "budget", "data",
                         "best", "pareto", "ensemble", "baselines"]


def test_an_ensemble_entry_from_before_the_holdout_and_the_noise_test_reads_with_defaults() -> None:
    old = {"members": ["t000"], "weights": [1], "models": ["nextvlad"], "member_gaps": [0.5], "member_bytes": [10],
           "gap": 0.5, "selection_gap": 0.5, "best_single": {"trial_id": "t000", "gap": 0.5}, "hit_at_one": 0.6,
           "perr": 0.4, "map": None, "validation_videos": 48, "size_bytes": 10, "file_bytes": 20,
           "budget_bytes": 100, "storage_dtype": "bfloat16", "path": "/r/ensemble.pt", "format_version": 2,
           "strategy": "gain", "curve": [[10, 0.5]], "steps": ["t000"], "local_moves": [], "candidates": 1,
           "evaluations": 3, "selection_seconds": 0.1, "seconds": 1.0, "notes": []}  # fmt: skip
    raw = {**results.summary_dict(summary()), "ensemble": old}
    entry = results.parse_summary(raw).ensemble
    assert entry.gap == 0.5 and math.isnan(entry.holdout_gap) and entry.holdout_videos == 0
    assert entry.method == "" and entry.bags == 0 and math.isnan(entry.noise_sd) and not entry.shipped_best_single
    written = results.summary_dict(summary(ensemble=dataclasses.replace(entry, holdout_gap=0.4)))
    assert written["ensemble"]["holdout_gap"] == 0.4 and written["ensemble"]["noise_sd"] is None
    assert results.parse_summary(json.loads(json.dumps(written))).ensemble.holdout_gap == 0.4


def test_summary_nan_is_null_and_a_renamed_key_fails(tmp_path: Path) -> None:
    results.write_summary(summary(best=dataclasses.replace(results.BestTrial.of(row(0)), gap=math.nan)),
                          str(tmp_path))
    raw = json.loads((tmp_path / "summary.json").read_text())
    assert raw["best"]["gap"] is None and math.isnan(results.read_summary(str(tmp_path)).best.gap)
    raw["best"]["size"] = raw["best"].pop("size_bytes")
    with pytest.raises(results.ResultsError, match="best: missing size_bytes; unknown size"):
        results.parse_summary(raw)


def test_a_table_from_before_trials_were_numbered_reads_in_line_order(tmp_path: Path) -> None:
    lines = results.trials_text([row(0), row(1, TrialState.STOPPED)]).splitlines()
    old = "\n".join(",".join(line.split(",")[1:]) if i == 0 else line.split(",", 1)[1] for i, line in
                    enumerate(lines))  # fmt: skip
    back = results.parse_trials(old + "\n")
    assert [(r.number, r.trial_id, r.state) for r in back] == [(0, "t000", TrialState.COMPLETE),
                                                             (1, "t001", TrialState.STOPPED)]


def test_float_fields_written_as_null_read_back_as_nan() -> None:
    entry = dict(members=[], weights=[], models=[], member_gaps=[], member_bytes=[], gap=math.nan,
                 selection_gap=math.nan, best_single={}, hit_at_one=math.nan, perr=0.5, map=None,
                 validation_videos=0, size_bytes=0, file_bytes=0, budget_bytes=1, storage_dtype="bfloat16", path="",
                 format_version=2, strategy="greedy", curve=[], steps=[], local_moves=[], candidates=0,
                 evaluations=0, selection_seconds=0.0, seconds=0.0, notes=[])
    raw = results.summary_dict(summary(ensemble=results.EnsembleSummary(**entry)))
    assert raw["ensemble"]["gap"] is None
    back = results.parse_summary(json.loads(json.dumps(raw))).ensemble
    assert math.isnan(back.gap) and math.isnan(back.hit_at_one) and back.perr == 0.5 and back.map is None
