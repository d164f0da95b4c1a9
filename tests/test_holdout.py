"""The holdout split, the class-prior baseline and the GAP's standard error (issue #15, items 1 and 4)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from yt8m_search import metrics
from yt8m_search.artifacts import Predictions
from yt8m_search.data.batch import VideoBatch
from yt8m_search.data.errors import CorruptRecordError
from yt8m_search.data.labels import read_labels
from yt8m_search.metrics.baseline import class_frequencies, class_prior_gap
from yt8m_search.metrics.holdout import holdout_mask, in_holdout
from yt8m_search.metrics.noise import _topk_gap, gap_standard_error, video_folds
from yt8m_search.train.evaluation import evaluate, merged_metrics, selection_gap_se

from .conftest import write_tiny_shards

IDS = [f"validate-{i:07d}" for i in range(4000)]


def test_the_holdout_is_a_stable_hash_split_of_about_the_fraction() -> None:
    mask = holdout_mask(IDS, 0.2)
    assert 0.18 < mask.mean() < 0.22
    assert np.array_equal(mask, holdout_mask(list(reversed(IDS)), 0.2)[::-1])  # order plays no part
    assert [in_holdout(v, 0.2) for v in IDS[:50]] == list(mask[:50])
    assert not holdout_mask(IDS, 0.0).any()
    assert (holdout_mask(IDS, 0.3) >= mask).all()  # a larger fraction only adds videos
    with pytest.raises(ValueError, match="holdout fraction"):
        holdout_mask(IDS, 1.0)


def _random_labels(rng: np.random.Generator, n: int, classes: int) -> list[np.ndarray]:
    return [np.sort(rng.choice(classes, size=rng.integers(1, 4), replace=False)).astype(np.int32)
            for _ in range(n)]  # fmt: skip


def test_the_class_prior_gap_is_the_metric_of_the_tiled_frequencies() -> None:
    rng = np.random.default_rng(0)
    train, val = _random_labels(rng, 300, 50), _random_labels(rng, 120, 50)
    freq = class_frequencies(train, 50)
    assert freq.sum() == pytest.approx(sum(len(x) for x in train) / 300)
    dense = np.zeros((120, 50), np.float32)
    for i, row in enumerate(val):
        dense[i, row] = 1
    expected = metrics.gap(np.tile(freq.astype(np.float32), (120, 1)), dense)
    assert class_prior_gap(freq, val) == pytest.approx(expected, abs=1e-12)
    assert math.isnan(class_prior_gap(freq, []))


def test_labels_are_read_in_file_order_by_many_threads_and_a_bad_file_is_named(tmp_path: Path) -> None:
    paths = [str(p) for p in write_tiny_shards(tmp_path, 40)]
    tables = [pq.read_table(p, columns=["id", "labels"]) for p in paths]
    ids = [v for table in tables for v in table.column("id").to_pylist()]
    labels = [np.array(x, np.int32) for table in tables for x in table.column("labels").to_pylist()]
    for threads in (1, 8):
        got_ids, got = read_labels(paths, threads=threads)
        assert got_ids == ids
        assert len(got) == len(labels) and all(np.array_equal(a, b) for a, b in zip(got, labels))
        assert all(a.dtype == np.int32 for a in got)
    Path(paths[7]).write_bytes(b"not parquet")
    Path(paths[30]).write_bytes(b"")
    with pytest.raises(CorruptRecordError, match=r"shard00007\.parquet.*id and labels"):  # the first bad file
        read_labels(paths, threads=8)


class _Scores(torch.nn.Module):
    """A model whose logits are fixed per video (its first feature row holds them)."""

    def forward(self, features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return features[:, 0, :]

    def logits(self, output: torch.Tensor) -> torch.Tensor:
        return output

    def loss(self, output: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.binary_cross_entropy_with_logits(output, labels)


def test_evaluation_scores_the_selection_and_the_holdout_videos_apart() -> None:
    rng = np.random.default_rng(1)
    n, classes = 400, 30
    logits = rng.normal(size=(n, classes)).astype(np.float32)
    labels = np.zeros((n, classes), np.float32)
    for i, row in enumerate(_random_labels(rng, n, classes)):
        labels[i, row] = 1
    logits += 2 * labels  # some signal, so GAPs differ between parts
    ids = IDS[:n]
    def batch(s: int) -> VideoBatch:
        b = len(ids[s:s + 64])
        ones = torch.ones(b, dtype=torch.int64)
        return VideoBatch(torch.tensor(logits[s:s + 64, None, :]), torch.ones(b, 1, dtype=torch.bool), ones, ones,
                          torch.tensor(labels[s:s + 64]), ids[s:s + 64])

    batches = [batch(s) for s in range(0, n, 64)]
    result = merged_metrics([evaluate(_Scores(), batches, torch.device("cpu"), 20, classes, holdout_fraction=0.25)])
    held = holdout_mask(ids, 0.25)
    probs = 1 / (1 + np.exp(-logits))
    assert result["val_videos"] == (~held).sum() and result["holdout_videos"] == held.sum()
    assert result["gap"] == pytest.approx(metrics.gap(probs[~held], labels[~held]), abs=1e-6)
    assert result["holdout_gap"] == pytest.approx(metrics.gap(probs[held], labels[held]), abs=1e-6)
    assert result["gap"] != pytest.approx(result["holdout_gap"], abs=1e-4)
    plain = merged_metrics([evaluate(_Scores(), batches, torch.device("cpu"), 20, classes)])
    assert plain["val_videos"] == n and math.isnan(plain["holdout_gap"])


def _topk(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return order.astype(np.int32), np.take_along_axis(scores, order, axis=1)


def test_the_top_k_gap_used_for_the_noise_is_the_metric_without_ties() -> None:
    rng = np.random.default_rng(2)
    scores = rng.random((200, 40)).astype(np.float32)
    labels = _random_labels(rng, 200, 40)
    dense = np.zeros((200, 40), np.float32)
    for i, row in enumerate(labels):
        dense[i, row] = 1
    classes, top = _topk(scores, 20)
    hits = np.array([np.isin(classes[i], labels[i]) for i in range(200)])
    assert _topk_gap(top, hits, int(dense.sum())) == pytest.approx(metrics.gap(scores, dense), abs=1e-9)


def test_the_gap_standard_error_shrinks_with_the_square_root_of_the_videos() -> None:
    rng = np.random.default_rng(3)

    def se(n: int) -> float:
        labels = _random_labels(rng, n, 100)
        scores = rng.random((n, 100)).astype(np.float32)
        for i, row in enumerate(labels):
            scores[i, row] += rng.random(len(row)) * 0.8
        classes, top = _topk(scores, 20)
        return gap_standard_error(classes, top, labels, IDS[:n])

    small, large = np.median([se(250) for _ in range(5)]), np.median([se(4000) for _ in range(5)])
    assert 0.01 < small < 0.08
    assert 2.5 < small / large < 6.5  # sqrt(16) = 4
    assert np.array_equal(video_folds(IDS[:100]), video_folds(IDS[:100]))
    assert math.isnan(gap_standard_error(np.zeros((0, 20), np.int32), np.zeros((0, 20), np.float32), [], []))


def test_the_selection_gap_se_leaves_the_holdout_out() -> None:
    rng = np.random.default_rng(4)
    labels = _random_labels(rng, 600, 50)
    classes, top = _topk(rng.random((600, 50)).astype(np.float32), 20)
    predictions = Predictions(IDS[:600], classes, top, labels)
    keep = ~holdout_mask(IDS[:600], 0.5)
    chosen = np.flatnonzero(keep)
    expected = gap_standard_error(classes[keep], top[keep], [labels[i] for i in chosen], [IDS[i] for i in chosen])
    assert selection_gap_se(predictions, 0.5) == pytest.approx(expected)
    assert selection_gap_se(predictions, 0.5) != pytest.approx(selection_gap_se(predictions, 0.0))


def test_the_final_lines_label_selection_and_holdout(capsys: pytest.CaptureFixture[str]) -> None:
    import dataclasses

    from tests.test_report import ensemble_summary
    from yt8m_search import results, run

    best = results.BestTrial(trial_id="a1", config={}, model="nextvlad", hparams={}, gap=0.31, epochs=3,
                             params=10, size_bytes=10, checkpoint="", predictions="", holdout_gap=0.27)  # fmt: skip
    summary = results.RunSummary(
        space="smoke.yaml", space_hash="h", version="v", run_dir="/r", objectives=["gap"], trials={"complete": 1},
        budget=results.BudgetSummary(None, 16_000_000, "bfloat16"), data=results.DataSummary("t", "v", 0.2),
        best=best, pareto=[], baselines={"class_prior_selection_gap": 0.0395, "class_prior_holdout_gap": 0.0353},
        ensemble=ensemble_summary(members=["a1"], weights=[1], gap=0.31, holdout_gap=0.27, size_bytes=10,
                                  budget_bytes=16_000_000, storage_dtype="bfloat16", shipped_best_single=True,
                                  best_single={"trial_id": "a1", "gap": 0.3099, "holdout_gap": 0.2702}),
    )  # fmt: skip
    run.print_summary(summary, "/r")
    out = capsys.readouterr().out
    assert "best: trial a1 nextvlad GAP 0.3100 on selection, 0.2700 on holdout" in out
    assert "class-prior ranking (the baseline): GAP 0.0395 on selection, 0.0353 on holdout" in out
    assert "ensemble: 1 members, GAP 0.3100 on selection, 0.2700 on holdout" in out
    assert ("best single model as shipped (bfloat16): trial a1 GAP 0.3099 on selection, 0.2702 on holdout "
            "(shipped alone: the ensemble scored below it)") in out
    run.print_summary(dataclasses.replace(summary, baselines={}), "/r")  # a summary from before the baseline
    assert "class-prior" not in capsys.readouterr().out
