"""Synthetic YouTube-8M shards: determinism, realistic statistics, and a class signal that needs more than
mean pooling (yt8m_search.data.synthetic)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from yt8m_search.constants import FEATURE_DIM, NUM_CLASSES
from yt8m_search.data import iter_frame_level_quantized, multi_hot, read_frame_level
from yt8m_search.data.synthetic import build_class_model, generate, generate_splits, main


def test_same_seed_same_bytes_different_seed_different(tmp_path: Path) -> None:
    kwargs = dict(num_videos=12, num_shards=2, num_classes=100, max_frames=40)
    a = generate(str(tmp_path / "a"), seed=5, **kwargs)
    b = generate(str(tmp_path / "b"), seed=5, **kwargs)
    c = generate(str(tmp_path / "c"), seed=6, **kwargs)
    assert [Path(p).name for p in a] == ["train0000.tfrecord", "train0001.tfrecord"]
    for pa_, pb, pc in zip(a, b, c):
        assert Path(pa_).read_bytes() == Path(pb).read_bytes()
        assert Path(pa_).read_bytes() != Path(pc).read_bytes()
    ids = [v.id for p in a for v in iter_frame_level_quantized(p, num_classes=100)]
    assert len(ids) == 12 and len(set(ids)) == 12


def test_splits_share_the_class_model_but_not_videos(tmp_path: Path) -> None:
    paths = generate_splits(str(tmp_path), train_videos=6, val_videos=4, train_shards=2, val_shards=1, seed=1,
                            num_classes=50, max_frames=20)
    assert [Path(p).parent.name for p in paths["train"]] == ["train", "train"]
    assert [Path(p).name for p in paths["validate"]] == ["validate0000.tfrecord"]
    train = [v for p in paths["train"] for v in iter_frame_level_quantized(p, num_classes=50)]
    val = [v for p in paths["validate"] for v in iter_frame_level_quantized(p, num_classes=50)]
    assert len(train) == 6 and len(val) == 4
    assert not {v.id for v in train} & {v.id for v in val}
    assert not any(np.array_equal(t.rgb, v.rgb) for t in train for v in val if t.rgb.shape == v.rgb.shape)
    m1, m2 = build_class_model(50, 1), build_class_model(50, 1)
    np.testing.assert_array_equal(m1.words, m2.words)
    np.testing.assert_array_equal(m1.class_words, m2.class_words)
    assert not np.array_equal(build_class_model(50, 2).words, m1.words)


def test_class_model_twins() -> None:
    model = build_class_model(11, 0)
    m = len(model.words) - 6  # 6 pairs, the last one with a single class
    for p in range(5):
        first, second = model.class_words[2 * p], model.class_words[2 * p + 1]
        separate, compound = (first, second) if first[0] < m else (second, first)
        assert separate[0] != separate[1] and max(separate) < m
        assert compound[0] == compound[1] == m + p
        np.testing.assert_allclose(model.words[m + p], model.words[separate].mean(0), rtol=1e-6)
    assert max(model.class_words[10]) < m  # the unpaired class is separate
    pairs = {tuple(sorted(model.class_words[c])) for c in range(11) if max(model.class_words[c]) < m}
    assert len(pairs) == 6  # distinct atom pairs


def test_realistic_statistics(tmp_path: Path) -> None:
    (path,) = generate(str(tmp_path), num_videos=400, num_shards=1, seed=0)
    videos = list(iter_frame_level_quantized(path))
    n = np.array([len(v.rgb) for v in videos])
    k = np.array([len(v.labels) for v in videos])
    assert all(len(v.audio) == len(v.rgb) for v in videos)
    assert n.min() >= 1 and n.max() == 300
    assert 0.35 < (n == 300).mean() < 0.65 and (n < 60).mean() > 0.05
    assert k.min() >= 1 and 2.6 < k.mean() < 3.4
    counts = np.bincount(np.concatenate([v.labels for v in videos]), minlength=NUM_CLASSES)
    assert counts[:10].sum() > 0.15 * counts.sum()  # long tail: the head classes dominate...
    assert (counts > 0).sum() > 300  # ...but many classes appear
    assert counts[:100].mean() > 10 * max(counts[1000:].mean(), 1e-3)
    frames = np.concatenate([v.rgb[:20] for v in videos[:50]] + [v.audio[:20] for v in videos[:50]], axis=None)
    assert ((frames == 0) | (frames == 255)).mean() < 1e-3  # quantization rarely saturates
    assert 120 < frames.mean() < 135


def _kmeans(x: np.ndarray, k: int, rng: np.random.Generator, iters: int = 8) -> np.ndarray:
    centers = x[rng.choice(len(x), k, replace=False)].copy()
    for _ in range(iters):
        assign = ((centers**2).sum(1)[None] - 2 * x @ centers.T).argmin(1)
        for j in range(k):
            if (assign == j).any():
                centers[j] = x[assign == j].mean(0)
    return centers


def _ridge_scores(train: np.ndarray, y: np.ndarray, test: np.ndarray, lam: float = 100.0) -> np.ndarray:
    mu, sd = train.mean(0), train.std(0) + 1e-6
    a = np.hstack([(train - mu) / sd, np.ones((len(train), 1))])
    b = np.hstack([(test - mu) / sd, np.ones((len(test), 1))])
    return b @ np.linalg.solve(a.T @ a + lam * np.eye(a.shape[1]), a.T @ y)


def _auc(scores: np.ndarray, y: np.ndarray) -> float:
    ranks = scores.argsort().argsort() + 1.0
    pos = y.sum()
    return float((ranks[y == 1].sum() - pos * (pos + 1) / 2) / (pos * (len(y) - pos)))


def test_class_signal_needs_more_than_mean_pooling(tmp_path: Path) -> None:
    """Bag-of-frame-clusters features separate twin classes; mean-pooled features cannot."""
    c = 16
    paths = generate_splits(str(tmp_path), train_videos=500, val_videos=250, train_shards=1, val_shards=1,
                            seed=1, num_classes=c, max_frames=120)

    def load(split: str) -> tuple[list[np.ndarray], np.ndarray]:
        records = [r for p in paths[split] for r in read_frame_level(p, max_frames=120, num_classes=c)]
        return ([r.features[: r.num_frames] for r in records],
                np.array([multi_hot(r.labels, c, dtype=np.float64) for r in records]))

    train_frames, y_train = load("train")
    val_frames, y_val = load("validate")
    rng = np.random.default_rng(0)
    pool = np.concatenate(train_frames)
    centers = _kmeans(pool[rng.choice(len(pool), 5000, replace=False)], 48, rng)
    sq = (centers**2).sum(1)

    def bag(frames: list[np.ndarray]) -> np.ndarray:  # normalized histogram of nearest centers [V, 48]
        lengths = np.array([len(f) for f in frames])
        nearest = (sq[None] - 2 * np.concatenate(frames) @ centers.T).argmin(1)
        video = np.repeat(np.arange(len(frames)), lengths)
        return np.bincount(video * 48 + nearest, minlength=48 * len(frames)).reshape(-1, 48) / lengths[:, None]

    def mean(frames: list[np.ndarray]) -> np.ndarray:
        return np.array([f.mean(0) for f in frames])

    results = {}
    for name, feat in (("mean", mean), ("bag", bag)):
        scores = _ridge_scores(feat(train_frames), y_train, feat(val_frames))
        overall = np.mean([_auc(scores[:, j], y_val[:, j]) for j in range(c) if 0 < y_val[:, j].sum() < len(y_val)])
        twins = []
        for p in range(0, c, 2):  # videos with exactly one of a twin pair: which one is it?
            one = y_val[:, p] + y_val[:, p + 1] == 1
            if min(y_val[one, p].sum(), (1 - y_val[one, p]).sum()) >= 3:
                twins.append(_auc(scores[one, p] - scores[one, p + 1], y_val[one, p]))
        results[name] = (overall, float(np.mean(twins)))
    (mean_all, mean_twin), (bag_all, bag_twin) = results["mean"], results["bag"]
    assert mean_all > 0.7 and bag_all > 0.85  # the class signal is real for both...
    assert bag_all > mean_all
    assert bag_twin > 0.75 and mean_twin < 0.65  # ...but only the cluster view tells twins apart


@pytest.mark.parametrize("max_frames", [7])
def test_cli_and_max_frames(tmp_path: Path, max_frames: int, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(tmp_path), "--videos", "5", "--shards", "1", "--seed", "3", "--classes", "30",
                 "--max-frames", str(max_frames), "--val-videos", "2"]) == 0
    printed = capsys.readouterr().out.split()
    assert [Path(p).name for p in printed] == ["train0000.tfrecord", "validate0000.tfrecord"]
    records = list(read_frame_level(printed[0], max_frames=max_frames, num_classes=30))
    assert len(records) == 5
    assert all(1 <= r.num_frames <= max_frames and r.features.shape == (max_frames, FEATURE_DIM) for r in records)
