"""Ensemble selection that resists overfitting the selection set (issue #15): the holdout part chooses
nothing, a step must beat the paired bootstrap's noise, bags keep the budgets, and the step never
ships an ensemble that scores below the best single model as shipped."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest

from yt8m_search import ensemble, evaluate, metrics, results
from yt8m_search.data.inference import iter_batches
from yt8m_search.data.prepare import DataPaths
from yt8m_search.ensemble import selection as selection_module
from yt8m_search.ensemble import step
from yt8m_search.ensemble.bootstrap import Bootstrap, weighted_gap
from yt8m_search.ensemble.scoring import Scorer, _pooled_gap
from yt8m_search.metrics.holdout import holdout_mask

from .conftest import SMALL_CLASSES
from .test_ensemble import _copy_run, _synthetic, fake_run  # noqa: F401  (fake_run: a fixture)


def _repeated(candidates: list[ensemble.Candidate], counts: np.ndarray) -> list[ensemble.Candidate]:
    """The candidates with video v written out ``counts[v]`` times (fresh ids)."""
    rows = np.repeat(np.arange(counts.size), counts)
    ids = np.array([f"r{i:05d}" for i in range(rows.size)], dtype=object)
    labels = [candidates[0].labels[v] for v in rows]
    return [dataclasses.replace(c, video_ids=ids, labels=labels, classes=c.classes[rows], scores=c.scores[rows])
            for c in candidates]  # fmt: skip


def test_the_weighted_gap_is_the_plain_gap_for_unit_weights_and_of_the_copies_for_integer_weights() -> None:
    rng = np.random.default_rng(11)
    candidates, _ = _synthetic(rng, 3, videos=180, classes=50)
    scorer = Scorer(candidates, 20, 1)
    for weights in ({0: 1}, {0: 2, 2: 1}, {0: 1, 1: 1, 2: 3}):
        gap, base = scorer.weighted_gap(weights)
        rows, positive = scorer.ranked(base)
        unit = weighted_gap(rows, positive, np.ones(180, np.int64), scorer.video_positives)
        assert unit == pytest.approx(gap, abs=1e-12)
        assert unit == pytest.approx(_pooled_gap(base, scorer.base_labels, 20, scorer.total_positives), abs=1e-12)
        counts = rng.integers(0, 4, size=(3, 180))
        counts[0, :90] = 0  # a resample may leave videos out entirely
        resampled = weighted_gap(rows, positive, counts, scorer.video_positives)
        for b in range(3):
            copies = Scorer(_repeated(candidates, counts[b]), 20, 1)
            assert resampled[b] == pytest.approx(copies.weighted_gap(weights)[0], abs=1e-12)
    # The bootstrap's resamples: each draws the videos with replacement, as many as there are.
    noise = Bootstrap(scorer.video_positives, resamples=50, seed=3)
    assert noise.counts.shape == (50, 180) and np.all(noise.counts.sum(axis=1) == 180)
    assert np.array_equal(noise.counts, Bootstrap(scorer.video_positives, resamples=50, seed=3).counts)


def _independent_views(model: ensemble.Candidate, n: int,
                       rng: np.random.Generator) -> list[tuple[np.ndarray, np.ndarray]]:
    """``n`` (classes, scores) top-k predictions of equal strength whose errors are independent."""
    num_classes, k = model.hparams["num_classes"], model.classes.shape[1]
    truth = np.zeros((len(model.labels), num_classes))
    for v, labels in enumerate(model.labels):
        truth[v, labels] = 1.0
    views = []
    for _ in range(n):
        probs = (1 / (1 + np.exp(-(1.5 * truth + rng.normal(size=truth.shape) - 1.0)))).astype(np.float32)
        top = np.argsort(-probs, axis=1, kind="stable")[:, :k]
        views.append((top.astype(np.int32), np.take_along_axis(probs, top, axis=1)))
    return views


def test_a_gain_within_the_noise_is_refused_and_a_real_gain_kept() -> None:
    rng = np.random.default_rng(4)
    (model,), _ = _synthetic(rng, 1, videos=240, classes=60)
    noisy = (model.scores * (1 + 1e-3 * rng.normal(size=model.scores.shape))).astype(np.float32)
    copy = dataclasses.replace(model, trial_id="copy", scores=noisy)
    scorer = Scorer([model, copy], 20, 1)
    alone = max(scorer.weighted_gap({0: 1})[0], scorer.weighted_gap({1: 1})[0])
    assert scorer.weighted_gap({0: 1, 1: 1})[0] - alone > 1e-7  # a fixed 1e-7 minimum gain would keep it
    chosen = ensemble.select([model, copy], 10**9)
    assert len(chosen.members) == 1 and chosen.noise_rejections >= 1
    assert chosen.gap == pytest.approx(alone, abs=1e-12) and chosen.min_gain > 0 and chosen.noise_sd > 0
    # Two models as good as each other with independent errors: the ensemble's gain is far above the noise.
    pair = [dataclasses.replace(model, trial_id=f"view{j}", classes=c, scores=p)
            for j, (c, p) in enumerate(_independent_views(model, 2, np.random.default_rng(12)))]
    chosen = ensemble.select(pair, 10**9)
    assert len(chosen.members) == 2 and chosen.gap > chosen.best_single[1] + chosen.min_gain
    assert chosen.noise_tests > chosen.noise_rejections


def _perfect_on(candidate: ensemble.Candidate, rows: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Scores ``[V, k]`` ranking each video's true labels first on ``rows``, and junk elsewhere."""
    k, scores = candidate.classes.shape[1], np.empty(candidate.scores.shape, np.float32)
    classes = np.empty(candidate.classes.shape, np.int32)
    num_classes = candidate.hparams["num_classes"]
    for v, labels in enumerate(candidate.labels):
        wrong = np.setdiff1d(np.arange(num_classes), labels)
        if rows[v]:
            classes[v] = np.concatenate([labels, rng.choice(wrong, k - len(labels), replace=False)])
            scores[v] = np.concatenate([np.full(len(labels), 0.999), np.full(k - len(labels), 1e-3)])
        else:
            classes[v], scores[v] = rng.choice(wrong, k, replace=False), np.sort(rng.uniform(1e-5, 1e-4, k))[::-1]
    return classes, scores


def test_selection_sees_only_the_selection_part() -> None:
    rng = np.random.default_rng(13)
    candidates, _ = _synthetic(rng, 3, videos=300, classes=50)
    held = holdout_mask(list(candidates[0].video_ids), 0.3)
    assert 0 < held.sum() < 300
    classes, scores = _perfect_on(candidates[0], held, rng)
    cheat = dataclasses.replace(candidates[0], trial_id="cheat", classes=classes, scores=scores)
    pool = [*candidates, cheat]
    # On all videos the cheat adds much to any ensemble; on the selection part it is useless.
    assert "cheat" in [c.trial_id for c in ensemble.select(pool, 10**9).members]
    chosen = ensemble.select(pool, 10**9, holdout_fraction=0.3)
    assert "cheat" not in [c.trial_id for c in chosen.members] and chosen.best_single[0] != "cheat"
    assert chosen.videos == 300 - held.sum() and chosen.holdout_fraction == 0.3
    part = [ensemble.Candidate(**{**c.__dict__, "video_ids": c.video_ids[~held], "classes": c.classes[~held],
                                  "scores": c.scores[~held], "labels": [x for x, h in zip(c.labels, held) if not h]})
            for c in candidates]  # fmt: skip
    index = {c.trial_id: j for j, c in enumerate(candidates)}
    weights = [0] * 3
    for c, w in zip(chosen.members, chosen.weights):
        weights[index[c.trial_id]] = w
    assert chosen.gap == pytest.approx(ensemble.ensemble_gap(part, weights), abs=1e-4)


def test_bags_keep_both_budgets_and_a_seed_gives_one_answer() -> None:
    rng = np.random.default_rng(14)
    for trial in range(6):
        candidates, _ = _synthetic(rng, int(rng.integers(4, 9)), videos=120, classes=40)
        for c in candidates:
            c.flops = int(rng.integers(100, 1000))
        budget = int(rng.integers(max(c.size_bytes for c in candidates), sum(c.size_bytes for c in candidates)))
        flops = int(rng.integers(max(c.flops for c in candidates), sum(c.flops for c in candidates)))
        chosen = ensemble.select(candidates, budget, budget_flops=flops, bags=6, seed=trial, workers=1 + trial % 2)
        assert chosen.method == "bagged" and chosen.bags == 6 and len(chosen.curve) == len(chosen.steps)
        assert [s.split(":")[0] for s in chosen.steps[:6]] == [f"bag {b}" for b in range(1, 7)]
        assert chosen.size_bytes == sum(c.size_bytes for c in chosen.members) <= budget
        assert chosen.flops == sum(c.flops for c in chosen.members) <= flops
        assert chosen.gap >= chosen.best_single[1]
        again = ensemble.select(candidates, budget, budget_flops=flops, bags=6, seed=trial, workers=2 - trial % 2)
        assert ([c.trial_id for c in again.members], again.weights, again.gap, again.curve) == (
            [c.trial_id for c in chosen.members], chosen.weights, chosen.gap, chosen.curve)


def test_the_bags_union_is_trimmed_by_weight_per_share_of_the_budget() -> None:
    limits = selection_module._Limits([600, 100, 100], [10, 10, 10], 700, None)
    # The large member has the highest weight but the lowest weight per byte: it goes first.
    assert selection_module._trim({0: 4, 1: 1, 2: 3}, limits) == {1: 1, 2: 3}
    assert selection_module._trim({0: 9, 1: 1}, limits) == {0: 9, 1: 1}  # it fits: nothing removed
    flops = selection_module._Limits([100, 100, 100], [50, 10, 10], 10**6, 60)
    assert selection_module._trim({0: 5, 1: 1, 2: 1}, flops) == {1: 1, 2: 1}


def test_the_step_ships_the_best_single_model_when_the_ensemble_loses_as_shipped(
        fake_run: Path, small_data: DataPaths, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    """The sparse selection claims the ensemble wins; scored densely as shipped it loses, so the
    step exports the best single model alone and says so."""
    run_dir = _copy_run(fake_run, tmp_path)
    real_select = step.select

    def overconfident(candidates: list[ensemble.Candidate], *args: object, **kwargs: object) -> ensemble.Selection:
        chosen = real_select(candidates, *args, **kwargs)
        worst = min(candidates, key=lambda c: c.gap)
        assert worst.trial_id != chosen.best_single[0]
        return dataclasses.replace(chosen, members=[worst], weights=[1], gap=chosen.best_single[1] + 0.1,
                                   size_bytes=worst.size_bytes, flops=worst.flops)

    monkeypatch.setattr(step, "select", overconfident)
    entry = ensemble.run(str(run_dir))
    assert entry.shipped_best_single and entry.members == [entry.best_single["trial_id"]] and entry.weights == [1]
    assert any("below the best single model as shipped" in n for n in entry.notes)
    assert entry.gap == entry.best_single["gap"]
    loaded = ensemble.load_bundle(entry.path)
    assert loaded.trial_ids == entry.members and loaded.weights == [1]
    rescored = evaluate.evaluate_bundle(loaded, iter_batches(small_data.validation, num_classes=SMALL_CLASSES))
    assert rescored["gap"] == entry.gap  # the file at the path is the model alone
    assert results.read_summary(str(run_dir)).ensemble == entry


def test_the_step_scores_the_selection_and_holdout_parts_separately(fake_run: Path, small_data: DataPaths,  # noqa: F811
                                                                    tmp_path: Path) -> None:
    run_dir = _copy_run(fake_run, tmp_path)
    summary = results.read_summary(str(run_dir))
    results.write_summary(dataclasses.replace(summary, data=dataclasses.replace(summary.data, holdout_fraction=0.3)),
                          str(run_dir))
    entry = ensemble.run(str(run_dir))
    assert entry.holdout_fraction == 0.3 and entry.validation_videos + entry.holdout_videos == 48
    assert entry.holdout_videos > 0 and entry.validation_videos > 0
    # The reported figures are the bundle's GAP on each part's videos.
    loaded = ensemble.load_bundle(entry.path)
    ids, probs, labels = [], [], []
    for batch in iter_batches(small_data.validation, num_classes=SMALL_CLASSES):
        ids.extend(batch.ids)
        probs.append(loaded.predict(batch.features, batch.mask).numpy())
        labels.append(batch.labels.numpy())
    held = holdout_mask(ids, 0.3)
    probs, labels = np.concatenate(probs), np.concatenate(labels)
    assert entry.gap == pytest.approx(metrics.gap(probs[~held], labels[~held]), abs=1e-9)
    assert entry.holdout_gap == pytest.approx(metrics.gap(probs[held], labels[held]), abs=1e-9)
    assert entry.validation_videos == int((~held).sum())
    assert math.isfinite(entry.best_single["holdout_gap"]) and entry.gap >= entry.best_single["gap"]
    assert entry.method and entry.resamples > 0 and entry.noise_z > 0
    assert results.read_summary(str(run_dir)).ensemble == entry
