"""The ensemble step: budgeted selection, the bundle, predict and evaluate.

Two kinds of inputs: synthetic random prediction matrices (fast; many random budgets and candidate
sets), and a fake finished sweep whose trials are tiny real models of several families, with random
weights, whose saved predictions come from actually running them on the small synthetic data set.
"""

from __future__ import annotations

import builtins
import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from yt8m_search import artifacts, bundle, ensemble, evaluate, metrics, models, predict, results
from yt8m_search.data.inference import iter_batches
from yt8m_search.data.prepare import DataPaths
from yt8m_search.ensemble.__main__ import main as ensemble_main
from yt8m_search.ensemble.scoring import Scorer

from .conftest import SMALL_CLASSES

# ---------------------------------------------------------------------------------------------
# Synthetic candidates


def _synthetic(rng: np.random.Generator, n: int, videos: int = 150, classes: int = 50, k: int = 20,
               sizes: tuple[int, int] = (100, 1000)) -> tuple[list[ensemble.Candidate], list[np.ndarray]]:
    """``n`` aligned candidates with top-k predictions of noisy dense scores; also their dense scores."""
    labels = [np.sort(rng.choice(classes, rng.integers(0, 5), replace=False)).astype(np.int32) for _ in range(videos)]
    truth = np.zeros((videos, classes), np.float32)
    for v, lab in enumerate(labels):
        truth[v, lab] = 1.0
    ids = np.array([f"v{i:04d}" for i in range(videos)], dtype=object)
    shared = rng.normal(size=(videos, classes))
    candidates, dense = [], []
    for j in range(n):
        logits = truth * rng.uniform(0.5, 3.0) + 0.5 * shared + rng.normal(size=(videos, classes)) - 1.0
        probs = (1.0 / (1.0 + np.exp(-0.5 * logits))).astype(np.float32)  # unsaturated: few float32 ties
        top = np.argsort(-probs, axis=1, kind="stable")[:, :k]
        scores = np.take_along_axis(probs, top, axis=1)
        d = np.zeros_like(probs)
        np.put_along_axis(d, top, scores, axis=1)
        dense.append(d)
        candidates.append(ensemble.Candidate(
            trial_id=f"t{j}", model="nextvlad", hparams={"num_classes": classes},
            size_bytes=int(rng.integers(*sizes)), video_ids=ids, labels=labels,
            classes=top.astype(np.int32), scores=scores,
        ))  # fmt: skip
    return candidates, dense


def _dense_labels(candidate: ensemble.Candidate, classes: int) -> np.ndarray:
    out = np.zeros((len(candidate.labels), classes), bool)
    for v, lab in enumerate(candidate.labels):
        out[v, lab] = True
    return out


def _brute_force_gap(scores: np.ndarray, labels: np.ndarray, k: int = 20) -> float:
    """GAP@k with positives ranked after negatives of equal score (the selection's tie rule)."""
    pooled = []
    for row, lab in zip(scores, labels):
        top = np.argsort(-row, kind="stable")[:k]
        pooled.extend((float(row[c]), bool(lab[c])) for c in top if row[c] > 0)
    pooled.sort(key=lambda e: (-e[0], e[1]))
    hits, total = 0, 0.0
    for rank, (_, positive) in enumerate(pooled, start=1):
        if positive:
            hits += 1
            total += hits / rank
    return total / labels.sum()


def test_fast_gap_equals_a_brute_force_gap_of_the_sparse_ensemble() -> None:
    rng = np.random.default_rng(0)
    candidates, dense = _synthetic(rng, 5, videos=300, classes=60)
    labels = _dense_labels(candidates[0], 60)
    scorer = Scorer(candidates, 20, 1)
    for _ in range(6):
        weights = rng.integers(0, 3, size=5)
        weights[rng.integers(5)] += 1
        composed = np.zeros_like(dense[0])  # float32, summed like the scorer
        for w, d in zip(weights, dense):
            if w:
                composed += np.float32(w) * d
        fast, _ = scorer.weighted_gap({j: int(w) for j, w in enumerate(weights) if w})
        assert fast == pytest.approx(_brute_force_gap(composed, labels), abs=1e-12)
        # The starter's GAP differs only in how it breaks exact float32 ties.
        starter = metrics.gap(composed, labels)
        assert fast == pytest.approx(starter, abs=1e-4)
        assert ensemble.ensemble_gap(candidates, list(weights)) == pytest.approx(starter, abs=1e-4)


def test_random_budgets_are_never_exceeded_and_beat_the_best_single_member() -> None:
    rng = np.random.default_rng(1)
    saw_repeat = False
    for trial in range(25):
        n = int(rng.integers(1, 8))
        videos, classes = int(rng.integers(40, 160)), int(rng.integers(20, 60))
        candidates, dense = _synthetic(rng, n, videos=videos, classes=classes)
        labels = _dense_labels(candidates[0], classes)
        sizes = [c.size_bytes for c in candidates]
        budget = int(rng.integers(min(sizes), sum(sizes) + 200))
        selection = ensemble.select(candidates, budget, workers=1 + trial % 2)
        distinct = {c.trial_id for c in selection.members}
        assert len(distinct) == len(selection.members)
        assert selection.size_bytes == sum(c.size_bytes for c in selection.members) <= budget
        assert all(isinstance(w, int) and w >= 1 for w in selection.weights)
        saw_repeat |= max(selection.weights) > 1
        # The best single member that fits, scored independently with the reference GAP.
        # (float32 ties, broken differently by metrics.gap, allow a small difference)
        singles = [metrics.gap(d, labels) for d, s in zip(dense, sizes) if s <= budget]
        assert selection.gap >= selection.best_single[1]
        assert selection.best_single[1] == pytest.approx(max(singles), abs=1e-4)
        # The curve stays within the budget and ends at the chosen ensemble; one greedy run's curve only
        # grows, a bagged one has a point per bag.
        assert selection.curve and all(s <= budget for s, _ in selection.curve)
        assert tuple(selection.curve[-1]) == (selection.size_bytes, selection.gap)
        if selection.method == "greedy":
            assert all(a[0] <= b[0] and a[1] < b[1] for a, b in zip(selection.curve, selection.curve[1:]))
        else:  # a point per bag, then one for the pruning and one for falling back to the best single, if any
            assert selection.bags == ensemble.DEFAULT_BAGS and len(candidates) >= 2
            extra = [s.split(" ")[0] for s in selection.steps[selection.bags:]]
            assert len(selection.curve) == len(selection.steps) and extra in ([], ["pruned"], ["best"],
                                                                               ["pruned", "best"])
        # The reported GAP is that of the chosen weights (repeats act as weights).
        weights = [0] * n
        index = {c.trial_id: j for j, c in enumerate(candidates)}
        for c, w in zip(selection.members, selection.weights):
            weights[index[c.trial_id]] = w
        reference = metrics.gap(sum(w * d for w, d in zip(weights, dense)), labels)
        assert selection.gap == pytest.approx(reference, abs=1e-4)
    assert saw_repeat


def test_a_repeat_is_a_weight_and_costs_no_bytes() -> None:
    rng = np.random.default_rng(2)
    candidates, dense = _synthetic(rng, 2, videos=200, classes=40)
    labels = _dense_labels(candidates[0], 40)
    scorer = Scorer(candidates, 20, 1)
    for weights in ({0: 2, 1: 1}, {0: 1, 1: 3}, {0: 5}):
        reference = metrics.gap(sum(w * dense[j] for j, w in weights.items()), labels)
        assert scorer.weighted_gap(weights)[0] == pytest.approx(reference, abs=1e-4)
    # A budget that holds exactly the two members: repeats never add bytes.
    budget = candidates[0].size_bytes + candidates[1].size_bytes
    selection = ensemble.select(candidates, budget)
    assert selection.size_bytes <= budget


def test_a_tight_budget_prefers_gain_per_byte() -> None:
    rng = np.random.default_rng(3)
    candidates, _ = _synthetic(rng, 6, videos=200, classes=40)
    # One big strong model against several small ones that together fill the same bytes.
    for c in candidates[1:]:
        c.size_bytes = 100
    candidates[0].size_bytes = 500
    # One greedy run (no bags: the knapsack greedy is what is tested), gain and per byte both tried.
    selection = ensemble.select(candidates, 500, bags=1)
    assert selection.size_bytes <= 500
    ensemble_of_small = ensemble.select(candidates[1:], 500, bags=1)
    assert selection.gap >= ensemble_of_small.gap - 1e-12


def test_a_budget_below_every_member_is_a_clear_error() -> None:
    candidates, _ = _synthetic(np.random.default_rng(4), 3, sizes=(1000, 2000))
    smallest = min(candidates, key=lambda c: c.size_bytes)
    with pytest.raises(ensemble.BudgetError, match="smaller than every candidate") as info:
        ensemble.select(candidates, 999)
    assert smallest.trial_id in str(info.value) and f"{smallest.size_bytes:,}" in str(info.value)
    with pytest.raises(ensemble.EnsembleError, match="no candidates"):
        ensemble.select([], 10**9)


# ---------------------------------------------------------------------------------------------
# A fake finished sweep of tiny real models

FAMILIES = {
    "t-nextvlad": ("nextvlad", {"groups": 2, "clusters": 8, "hidden_size": 16, "gating_reduction": 4}),
    "t-netvlad": ("netvlad", {"clusters": 4, "hidden_size": 16, "gating_reduction": 4}),
    "t-gru": ("gru", {"hidden_size": 8, "num_layers": 1}),
    "t-softbof": ("soft_bof", {"clusters": 16, "hidden_size": 16}),
    "t-mix": ("mix_nextvlad", {"num_branches": 2, "groups": 2, "clusters": 4, "hidden_size": 16,
                               "gating_reduction": 4}),
}


def _train_briefly(model: models.VideoModel, batches: list, epochs: int = 2) -> None:
    """A few Adam steps: some signal (and batch-norm statistics) for the ensemble to combine."""
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(epochs):
        for batch in batches:
            loss = model.loss(model(batch.features, batch.mask), batch.labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()


def _evaluate(model: models.VideoModel, batches: Any, top_k: int = 20) -> tuple[artifacts.Predictions, float]:
    """The trial's validation predictions (top-k, float32 probabilities) and its GAP, as the trainer
    computes them."""
    acc = metrics.MetricAccumulator(num_classes=SMALL_CLASSES)
    ids, classes, scores, labels = [], [], [], []
    model.eval()
    with torch.no_grad():
        for batch in batches:
            probs = torch.sigmoid(model.logits(model(batch.features, batch.mask)).float())
            top = torch.topk(probs, k=top_k, dim=1)
            acc.update(probs.numpy(), batch.labels.numpy())
            ids.extend(batch.ids)
            classes.append(top.indices.to(torch.int32).numpy())
            scores.append(top.values.numpy())
            labels.extend(np.flatnonzero(row).astype(np.int32) for row in batch.labels.numpy())
    return artifacts.Predictions(ids, np.concatenate(classes), np.concatenate(scores), labels), acc.gap()


def _row(number: int, trial_id: str, state: results.TrialState, model: str, hparams: dict, *, gap: float = np.nan,
         params: int = 0, size_bytes: int = -1, best: str = "") -> results.TrialRow:
    trained = state in results.TRAINED_STATES
    return results.TrialRow(
        number=number, trial_id=trial_id, state=state, model=model, hparams=hparams, config={"model": model},
        gap=gap, gap_last=gap, hit_at_one=np.nan, perr=np.nan, map=np.nan, epochs=1 if trained else 0,
        best_epoch=1 if trained else 0, params=params, size_bytes=size_bytes, samples_per_s=np.nan,
        checkpoint=best, predictions=f"{best}/{artifacts.PREDICTIONS_FILE}" if best else "", reason="",
    )  # fmt: skip


def _write_trial(model: models.VideoModel, name: str, hparams: dict, best: Path, batches: Any,
                 averaged_epochs: int = 0) -> artifacts.TrialMeta:
    """The trial's best/ folder, written as the trainer writes it."""
    predictions, gap = _evaluate(model, batches)
    count = models.module_count(model)
    meta = artifacts.TrialMeta(
        model=name, hparams=hparams, epoch=1, params=count.params, stats=count.stats,
        size_bytes=models.size_bytes(name, "bfloat16", **hparams), storage_dtype="bfloat16",
        metrics={"gap": gap}, averaged_epochs=averaged_epochs,
    )  # fmt: skip
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return artifacts.write_best(str(best), state, meta, predictions)


@pytest.fixture(scope="module")
def fake_run(small_data: DataPaths, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished sweep: trials.csv, summary.json and <trial>/best/{model.pt, meta.json, predictions.parquet}."""
    run_dir = tmp_path_factory.mktemp("sweep")
    rows = []
    training = list(iter_batches(small_data.train, batch_size=32, num_classes=SMALL_CLASSES))
    for seed, (trial_id, (name, hparams)) in enumerate(FAMILIES.items()):
        hparams = models.resolve(name, **hparams, num_classes=SMALL_CLASSES)
        torch.manual_seed(seed)
        model = models.build(name, **hparams)
        _train_briefly(model, training)
        best = run_dir / trial_id / "best"
        # t-gru: as if the average of the last epochs had scored best
        meta = _write_trial(model, name, hparams, best, iter_batches(small_data.validation, num_classes=SMALL_CLASSES),
                            averaged_epochs=2 if trial_id == "t-gru" else 0)
        state = results.TrialState.COMPLETE if seed % 2 == 0 else results.TrialState.STOPPED
        rows.append(_row(seed, trial_id, state, name, hparams, gap=meta.metrics["gap"], params=meta.params,
                         size_bytes=meta.size_bytes, best=str(best)))
    rows.append(_row(len(rows), "t-big", results.TrialState.INFEASIBLE, "nextvlad", {}, size_bytes=10**10))
    rows.append(_row(len(rows), "t-err", results.TrialState.ERROR, "gru", {}, size_bytes=1))
    results.write_trials(rows, str(run_dir))
    summary = results.RunSummary(
        space="space.yaml", space_hash="0" * 16, version="test", run_dir=str(run_dir), objectives=["gap"],
        trials=results.count_states(rows),
        budget=results.BudgetSummary(max_model_bytes=None, ensemble_bytes=10**9, storage_dtype="bfloat16"),
        data=results.DataSummary(train=small_data.train, validation=small_data.validation), best=None, pareto=[],
    )  # fmt: skip
    results.write_summary(summary, str(run_dir))
    return run_dir


def _sizes(run_dir: Path) -> dict[str, int]:
    return {r.trial_id: r.size_bytes for r in results.read_trials(str(run_dir))}


def _copy_run(run_dir: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    text = (copy / "trials.csv").read_text().replace(str(run_dir), str(copy))
    (copy / "trials.csv").write_text(text)
    return copy


def test_candidates_are_the_trained_trials_aligned_by_video(fake_run: Path) -> None:
    candidates = ensemble.load_candidates(str(fake_run))
    assert [c.trial_id for c in candidates] == list(FAMILIES)
    ids = candidates[0].video_ids
    assert list(ids) == sorted(ids) and len(ids) == 48
    for c in candidates:
        assert c.video_ids is ids and c.classes.shape == (48, 20) and c.scores.shape == (48, 20)
        # Each trial's GAP from its own top-20 equals the sweep's (exact for a single member).
        assert ensemble.ensemble_gap([c], [1]) == pytest.approx(c.gap, abs=1e-9)
    notes = {c.trial_id: c.notes for c in candidates}
    assert notes["t-gru"] and "average of its last 2 epochs" in notes["t-gru"][0] and not notes["t-netvlad"]


def test_candidates_validated_on_different_videos_are_refused(fake_run: Path, tmp_path: Path) -> None:
    run_dir = _copy_run(fake_run, tmp_path)
    path = run_dir / "t-gru" / "best" / "predictions.parquet"
    table = pq.read_table(path)
    pq.write_table(table.slice(1), path)
    with pytest.raises(ensemble.EnsembleError, match="different video sets"):
        ensemble.load_candidates(str(run_dir))


@pytest.fixture(scope="module")
def fake_ensemble(fake_run: Path) -> results.EnsembleSummary:
    sizes = _sizes(fake_run)
    budget = sum(sizes[t] for t in FAMILIES if t != "t-nextvlad") + 100_000  # all trained trials but one fit
    return ensemble.run(str(fake_run), budget)


def test_run_exports_a_bundle_within_budget_that_reproduces_its_gap(fake_run: Path, small_data: DataPaths,
                                                                    fake_ensemble: results.EnsembleSummary) -> None:
    entry = fake_ensemble
    sizes = _sizes(fake_run)
    assert entry.size_bytes == sum(sizes[t] for t in entry.members) <= entry.budget_bytes
    assert Path(entry.path).stat().st_size == entry.file_bytes <= entry.budget_bytes
    assert entry.gap >= entry.best_single["gap"]  # dense, both as shipped
    assert entry.curve and entry.curve[-1][0] <= entry.budget_bytes
    assert any("average of its last" in n for n in entry.notes) == ("t-gru" in entry.members)
    summary = json.loads((fake_run / "summary.json").read_text())
    as_json = json.loads(json.dumps(dataclasses.asdict(entry)).replace("NaN", "null"))  # no holdout: null
    assert summary["ensemble"] == as_json and summary["best"] is None
    assert summary["ensemble"]["holdout_gap"] is None and entry.holdout_videos == 0
    assert results.read_summary(str(fake_run)).ensemble == entry
    # Loading the bundle back gives the reported validation GAP exactly.
    loaded = ensemble.load_bundle(entry.path)
    assert loaded.trial_ids == entry.members and loaded.weights == entry.weights
    result = evaluate.evaluate_bundle(loaded, iter_batches(small_data.validation, num_classes=SMALL_CLASSES))
    assert result["gap"] == entry.gap and result["videos"] == 48


def test_bundle_predictions_are_the_weighted_mean_of_bf16_members(fake_run: Path, small_data: DataPaths,
                                                                  fake_ensemble: results.EnsembleSummary) -> None:
    loaded = ensemble.load_bundle(fake_ensemble.path)
    blob = torch.load(fake_ensemble.path, weights_only=True)
    assert blob["format_version"] == ensemble.FORMAT_VERSION == bundle.FORMAT_VERSION and blob["dtype"] == "bfloat16"
    for member in blob["members"]:
        assert all(v.dtype == torch.bfloat16 for v in member["state_dict"].values() if v.is_floating_point())
    batch = next(iter(iter_batches(small_data.validation, num_classes=SMALL_CLASSES)))
    expected = torch.zeros(len(batch), SMALL_CLASSES)
    total = sum(m["weight"] for m in blob["members"])
    for member in blob["members"]:
        model = models.build(member["model"], **member["hparams"])
        reference, _ = artifacts.read_model_file(str(Path(fake_run, member["trial_id"], "best")))
        rounded = {k: v.to(torch.bfloat16).float() if v.is_floating_point() else v for k, v in reference.items()}
        model.load_state_dict(rounded)
        with torch.no_grad():
            probs = torch.sigmoid(model.eval().logits(model(batch.features, batch.mask)))
        expected += member["weight"] / total * probs
    assert torch.allclose(loaded.predict(batch.features, batch.mask), expected, atol=1e-6)


def test_a_float32_single_member_bundle_scores_like_its_trial(fake_run: Path, small_data: DataPaths,
                                                               tmp_path: Path) -> None:
    candidates = ensemble.load_candidates(str(fake_run))
    smallest = min(candidates, key=lambda c: c.size_bytes)
    selection = ensemble.select(candidates, smallest.size_bytes)
    assert [c.trial_id for c in selection.members] == [smallest.trial_id]
    path = str(tmp_path / "one.pt")
    ensemble.export_bundle(selection, path, "float32", budget_bytes=10**9)
    loaded = ensemble.load_bundle(path)
    result = evaluate.evaluate_bundle(loaded, iter_batches(small_data.validation, num_classes=SMALL_CLASSES))
    assert result["gap"] == pytest.approx(smallest.gap, abs=1e-9) == pytest.approx(selection.gap, abs=1e-6)


def test_a_bundle_over_budget_is_refused_and_leaves_no_file(fake_run: Path, tmp_path: Path) -> None:
    candidates = ensemble.load_candidates(str(fake_run))
    selection = ensemble.select(candidates, 10**9)
    path = tmp_path / "out" / "bundle.pt"
    with pytest.raises(ensemble.BundleTooLargeError, match="over the budget") as info:
        ensemble.export_bundle(selection, str(path), budget_bytes=selection.size_bytes // 2)
    assert f"{selection.size_bytes // 2:,}" in str(info.value)
    assert isinstance(info.value, bundle.BundleTooLargeError) and isinstance(info.value, ensemble.EnsembleError)
    assert info.value.budget_bytes == selection.size_bytes // 2 < info.value.file_bytes
    assert not path.exists() and list(path.parent.iterdir()) == []


def _read_submission(path: Path) -> tuple[list[str], list[list[tuple[int, float]]]]:
    lines = path.read_text().splitlines()
    assert lines[0] == "VideoId,LabelConfidencePairs"
    ids, pairs = [], []
    for line in lines[1:]:
        video_id, rest = line.split(",")
        tokens = rest.split(" ")
        assert len(tokens) == 40
        ids.append(video_id)
        pairs.append([(int(tokens[i]), float(tokens[i + 1])) for i in range(0, 40, 2)])
    return ids, pairs


def test_predict_writes_the_kaggle_format(fake_ensemble: results.EnsembleSummary, small_data: DataPaths,
                                          tmp_path: Path) -> None:
    out = tmp_path / "submission.csv"
    assert predict.main([fake_ensemble.path, small_data.validation, "--out", str(out), "--batch-size", "7"]) == 0
    ids, pairs = _read_submission(out)
    assert sorted(ids) == sorted(ensemble.load_candidates(str(Path(fake_ensemble.path).parent))[0].video_ids)
    for row in pairs:
        classes = [c for c, _ in row]
        scores = [s for _, s in row]
        assert len(set(classes)) == 20 and all(0 <= c < SMALL_CLASSES for c in classes)
        assert all(0.0 <= s <= 1.0 for s in scores) and scores == sorted(scores, reverse=True)
    line = predict.format_line("abcd", [3, 1], [0.123456789, 1e-7])
    assert line == "abcd,3 0.123457 1 1e-07"


def test_predict_from_tfrecord_equals_predict_from_parquet(fake_ensemble: results.EnsembleSummary,
                                                           small_data: DataPaths, small_tfrecords: Path,
                                                           tmp_path: Path) -> None:
    from_parquet, from_tfrecord = tmp_path / "p.csv", tmp_path / "t.csv"
    for data, out in ((small_data.validation, from_parquet), (str(small_tfrecords / "validate" / "*.tfrecord"),
                                                             from_tfrecord)):
        assert predict.main([fake_ensemble.path, data, "--out", str(out), "--batch-size", "10"]) == 0
    assert from_parquet.read_text() == from_tfrecord.read_text()


def test_predict_handles_corrupt_records_as_the_data_layer(fake_ensemble: results.EnsembleSummary,
                                                           small_tfrecords: Path, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture) -> None:
    source = sorted((small_tfrecords / "validate").glob("*.tfrecord"))[0]
    data = bytearray(source.read_bytes())
    data[100] ^= 0xFF  # inside the first record's payload: its data CRC no longer matches
    bad = tmp_path / "bad.tfrecord"
    bad.write_bytes(bytes(data))
    out = tmp_path / "s.csv"
    assert predict.main([fake_ensemble.path, str(bad), "--out", str(out)]) == 1
    assert "CorruptRecordError" in capsys.readouterr().err.strip().splitlines()[-1] and not out.exists()
    assert predict.main([fake_ensemble.path, str(bad), "--out", str(out), "--skip-bad"]) == 0
    assert "skipping corrupt input" in capsys.readouterr().err
    ids, _ = _read_submission(out)
    assert 0 < len(ids)
    assert predict.main([fake_ensemble.path, str(tmp_path / "missing"), "--out", str(out)]) == 2


def test_evaluate_cli_prints_the_metrics(fake_ensemble: results.EnsembleSummary, small_data: DataPaths,
                                         capsys: pytest.CaptureFixture) -> None:
    assert evaluate.main([fake_ensemble.path, small_data.validation]) == 0
    printed = dict(line.split(":", 1) for line in capsys.readouterr().out.strip().splitlines())
    assert float(printed["GAP@20"]) == pytest.approx(fake_ensemble.gap, abs=1e-6)
    assert float(printed["Hit@1"]) == pytest.approx(fake_ensemble.hit_at_one, abs=1e-6)
    assert float(printed["PERR"]) == pytest.approx(fake_ensemble.perr, abs=1e-6)
    assert int(printed["videos"]) == 48


def test_ensemble_cli(fake_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run_dir = _copy_run(fake_run, tmp_path)
    smallest = min(_sizes(run_dir)[t] for t in FAMILIES)
    assert ensemble_main([str(run_dir), "--budget", str(smallest + 20_000)]) == 0  # + the file's overhead
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1].startswith("ensemble: 1 members") and (run_dir / ensemble.BUNDLE_NAME).exists()
    # each figure labelled by the part it was measured on (no holdout in this sweep: n/a)
    assert "selection GAP 0." in out[-1] and "holdout GAP n/a (0 videos)" in out[-1]
    assert any(line.startswith("best single model as shipped: trial ") for line in out)
    assert any(line.startswith("selection: ") and "a step kept when its gain exceeds 1.282 bootstrap sds" in line
               for line in out)
    entry = json.loads((run_dir / "summary.json").read_text())["ensemble"]
    assert entry["budget_bytes"] == smallest + 20_000 and len(entry["members"]) == 1
    assert ensemble_main([str(run_dir), "--budget", str(smallest - 1)]) == 1
    assert "smaller than every candidate" in capsys.readouterr().err.strip().splitlines()[-1]
    assert ensemble_main([str(tmp_path / "nowhere")]) == 2
    with pytest.raises(SystemExit) as info:
        ensemble_main([str(run_dir), "--budget", "-5"])
    assert info.value.code == 2


def _no_file_writes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make any file opened for writing an error (loading a bundle must write nothing)."""
    real_open = builtins.open

    def open_for_reading(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        if any(c in mode for c in "wax+"):
            raise AssertionError(f"a file was opened for writing: {file} ({mode})")
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", open_for_reading)
    monkeypatch.setattr(np, "save", lambda *a, **k: pytest.fail("np.save called"))


def _whitened_model(tmp_path: Path) -> tuple[models.VideoModel, dict[str, Any]]:
    """A NeXtVLAD with reverse whitening whose scale comes from an eigenvalue file (then deleted)."""
    eigenvals = tmp_path / "eigenvals.npy"
    np.save(eigenvals, np.random.default_rng(5).uniform(0.5, 4.0, 1024).astype(np.float32))
    hparams = models.resolve("nextvlad", **FAMILIES["t-nextvlad"][1], num_classes=SMALL_CLASSES,
                             reverse_whitening=True)
    torch.manual_seed(0)
    model = models.build("nextvlad", **hparams).eval()
    models.set_eigenvalues(model, models.load_eigenvals(str(eigenvals)))
    eigenvals.unlink()
    return model, hparams


def _expected(model: models.VideoModel, batch: Any) -> torch.Tensor:
    with torch.no_grad():
        return torch.sigmoid(model.logits(model(batch.features, batch.mask)))


def test_a_bundle_needs_no_eigenvalues_file(tmp_path: Path, small_data: DataPaths,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """NeXtVLAD's reverse whitening gets its scale from an eigenvalue file through the driver; the
    bundle carries it as a buffer, so loading it needs no file and writes none."""
    model, hparams = _whitened_model(tmp_path)
    count = models.module_count(model)
    meta = artifacts.TrialMeta(model="nextvlad", hparams=hparams, epoch=1, params=count.params, stats=count.stats,
                               size_bytes=models.size_bytes("nextvlad", "float32", **hparams),
                               storage_dtype="float32", metrics={})
    best = tmp_path / "trial" / "best"
    meta = artifacts.write_best(str(best), model.state_dict(), meta, artifacts.Predictions.concat([], 20))
    candidates, _ = _synthetic(np.random.default_rng(6), 1)
    candidate = candidates[0]
    candidate.checkpoint, candidate.trial_id, candidate.write_id = str(best), "whitened", meta.write_id
    selection = ensemble.select([candidate], 10**9)
    path = str(tmp_path / "bundle.pt")
    ensemble.export_bundle(selection, path, "float32")
    batch = next(iter(iter_batches(small_data.validation, num_classes=SMALL_CLASSES)))
    with monkeypatch.context() as patch:
        _no_file_writes(patch)
        loaded = ensemble.load_bundle(path)
    assert torch.equal(loaded.predict(batch.features, batch.mask), _expected(model, batch))
    # A best/ folder rewritten after its predictions were read is not exported.
    candidate.write_id = "epoch000-00000000"
    with pytest.raises(ensemble.EnsembleError, match="rewritten"):
        ensemble.export_bundle(selection, str(tmp_path / "again.pt"), "float32")


def test_a_version_1_bundle_still_loads_and_predicts_identically(tmp_path: Path, small_data: DataPaths,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Version 1 named NeXtVLAD's eigenvalue file in the hyperparameters (``pca_eigenvals``); its
    loader translates them (``models.upgrade_hparams``) and reads the scale from the state dict."""
    whitened, hparams = _whitened_model(tmp_path)
    torch.manual_seed(1)
    gru_hparams = models.resolve("gru", **FAMILIES["t-gru"][1], num_classes=SMALL_CLASSES)
    gru = models.build("gru", **gru_hparams).eval()
    old_hparams = {k: v for k, v in hparams.items() if k != "reverse_whitening"}
    members = [("whitened", "nextvlad", {**old_hparams, "pca_eigenvals": str(tmp_path / "gone.npy")}, whitened, 2),
               ("plain", "gru", gru_hparams, gru, 1)]
    old = {"format": bundle.FORMAT, "format_version": 1, "dtype": "float32", "num_classes": SMALL_CLASSES,
           "members": [{"trial_id": t, "model": name, "hparams": h, "weight": w, "size_bytes": 1,
                        "state_dict": {k: v.clone() for k, v in m.state_dict().items()}}
                       for t, name, h, m, w in members],
           "selection": {"gap": 0.0, "size_bytes": 2, "budget_bytes": 10**9, "strategy": "gain"}}  # fmt: skip
    path = tmp_path / "v1.pt"
    torch.save(old, path)
    current = str(tmp_path / "v2.pt")
    bundle.export_bundle([bundle.BundleMember(t, name, models.upgrade_hparams(name, h), w, 1, m.state_dict())
                          for t, name, h, m, w in members], current, "float32", budget_bytes=10**9,
                         selection=old["selection"])  # fmt: skip
    batch = next(iter(iter_batches(small_data.validation, num_classes=SMALL_CLASSES)))
    with monkeypatch.context() as patch:
        _no_file_writes(patch)
        v1 = bundle.load_bundle(str(path))
    v2 = bundle.load_bundle(current)
    assert torch.load(current, weights_only=True)["format_version"] == bundle.FORMAT_VERSION == 2
    assert v1.trial_ids == v2.trial_ids == ["whitened", "plain"] and v1.weights == v2.weights == [2, 1]
    assert v1.info["members"][0]["hparams"]["reverse_whitening"] is True
    expected = (2 * _expected(whitened, batch) + _expected(gru, batch)) / 3
    assert torch.equal(v1.predict(batch.features, batch.mask), v2.predict(batch.features, batch.mask))
    assert torch.allclose(v1.predict(batch.features, batch.mask), expected, atol=1e-6)
    torch.save({**old, "format_version": 99}, path)
    with pytest.raises(bundle.BundleError, match="unsupported bundle format version 99"):
        bundle.load_bundle(str(path))


def test_candidates_whose_files_come_from_different_writes_are_refused(fake_run: Path, tmp_path: Path) -> None:
    run_dir = _copy_run(fake_run, tmp_path)
    path = run_dir / "t-netvlad" / "best" / artifacts.PREDICTIONS_FILE
    predictions, write_id = artifacts.read_predictions(str(path))
    assert write_id
    pq.write_table(predictions.to_table("epoch009-aaaaaaaa"), path)
    with pytest.raises(ensemble.EnsembleError, match="still writing its best epoch"):
        ensemble.load_candidates(str(run_dir))


def test_batches_from_both_formats_are_identical_and_may_stay_quantized(small_data: DataPaths,
                                                                        small_tfrecords: Path) -> None:
    tfrecords = str(small_tfrecords / "validate")
    for dequantize in (True, False):
        a = list(iter_batches(small_data.validation, batch_size=9, num_classes=SMALL_CLASSES,
                                      dequantize=dequantize))
        b = list(iter_batches(tfrecords, batch_size=9, num_classes=SMALL_CLASSES, dequantize=dequantize))
        assert [len(x) for x in a] == [9, 9, 9, 9, 9, 3] == [len(x) for x in b]
        for x, y in zip(a, b):
            assert x.ids == y.ids and torch.equal(x.features, y.features) and torch.equal(x.mask, y.mask)
            assert torch.equal(x.labels, y.labels)
            assert x.features.dtype == (torch.float32 if dequantize else torch.uint8)
    plain = next(iter(iter_batches(small_data.validation, num_classes=SMALL_CLASSES)))
    quantized = next(iter(iter_batches(small_data.validation, num_classes=SMALL_CLASSES, dequantize=False)))
    assert torch.equal(quantized.to("cpu").features, plain.features)
