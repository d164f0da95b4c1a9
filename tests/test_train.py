"""The per-trial trainer: recipe pieces, the best/ artifacts, and real Ray Train runs (1 and 2 workers,
reverse whitening, a killed worker)."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from yt8m_search import artifacts, metrics, models
from yt8m_search.config import TrialSettings
from yt8m_search.data.batch import VideoBatch
from yt8m_search.data.loading import iter_video_batches, read_videos
from yt8m_search.data.prepare import DataPaths
from yt8m_search.train import (
    CHECKPOINT_FILE,
    TrainConfig,
    clip_per_parameter_,
    epoch_checkpoints,
    evaluate,
    fit,
    learning_rate,
    make_optimizer,
)
from yt8m_search.train.checkpoints import newest_state

from .conftest import SMALL_CLASSES
from .faults import KillOnce

TINY = {"groups": 2, "clusters": 8, "hidden_size": 32, "gating_reduction": 4, "num_classes": SMALL_CLASSES}


def _config(**overrides: object) -> TrainConfig:
    values = dict(model="nextvlad", hparams=TINY, epochs=2, batch_size=16, eval_batch_size=32, learning_rate=2e-3,
                  shuffle_buffer=64, cpus_per_worker=0.5, max_failures=3)  # 3: TrainConfig's old default
    values.update(overrides)
    return TrainConfig(**values)  # type: ignore[arg-type]


def test_learning_rate_is_a_staircase_in_examples() -> None:
    cfg = _config(learning_rate=1e-3, lr_decay=0.5, lr_decay_examples=1000)
    assert learning_rate(cfg, 0) == learning_rate(cfg, 999) == 1e-3
    assert learning_rate(cfg, 1000) == 5e-4
    assert learning_rate(cfg, 2500) == 2.5e-4


def test_clipping_is_per_parameter_like_tf_clip_by_norm() -> None:
    a, b = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(3))
    a.grad, b.grad = torch.tensor([3.0, 4.0]), torch.tensor([0.1, 0.2, 0.2])
    clip_per_parameter_([a, b], 1.0)
    assert torch.allclose(a.grad, torch.tensor([0.6, 0.8]))  # norm 5 -> 1
    assert torch.allclose(b.grad, torch.tensor([0.1, 0.2, 0.2]))  # norm 0.3: untouched


def test_l2_applies_to_the_classifier_only() -> None:
    model = models.build("nextvlad", **TINY)
    optimizer = make_optimizer(model, _config())
    plain, decayed = optimizer.param_groups
    assert decayed["weight_decay"] == 1e-5 and plain["weight_decay"] == 0.0
    assert {id(p) for p in decayed["params"]} == {id(p) for p in model.classifier.l2_parameters()}
    assert len(plain["params"]) + len(decayed["params"]) == len(list(model.parameters()))


def test_invalid_configs_list_every_problem() -> None:
    with pytest.raises(ValueError) as info:
        _config(epochs=0, batch_size=15, num_workers=2, hparams={"groups": 3, "colour": 1})
    message = str(info.value)
    assert "epochs must be >= 1" in message and "divisible by num_workers" in message and "colour" in message


def test_train_config_is_the_trial_settings_plus_the_model(tmp_path: Path) -> None:
    assert TrainConfig(model="nextvlad").settings() == TrialSettings()  # one set of defaults
    settings = TrialSettings().replace(learning_rate=1e-3, lr_decay_examples=5000.0)
    cfg = TrainConfig.from_settings(settings, model="nextvlad", hparams=TINY, storage_dtype="float32", seed=7)
    assert cfg.settings() == settings and (cfg.model, cfg.hparams, cfg.storage_dtype, cfg.seed) == (
        "nextvlad", TINY, "float32", 7)
    assert TrainConfig.from_dict(dataclasses.asdict(cfg)) == cfg  # what the workers rebuild
    with pytest.raises(ValueError, match="reverse_whitening needs pca_eigenvals"):
        TrainConfig(model="nextvlad", hparams={**TINY, "reverse_whitening": True})
    cfg = TrainConfig(model="nextvlad", hparams={**TINY, "reverse_whitening": True}, pca_eigenvals="e.npy")
    assert cfg.reverse_whitening and not _config().reverse_whitening


def _best_dir(path: Path, epoch: int, seed: int) -> artifacts.TrialMeta:
    """A best/ folder written as the loop writes it (a tiny model, its evaluation)."""
    torch.manual_seed(seed)
    model = models.build("nextvlad", **TINY)
    videos = [f"v{i}" for i in range(4)]
    batch = VideoBatch(features=torch.rand(4, 5, 1152), mask=torch.ones(4, 5, dtype=torch.bool),
                       num_frames=torch.full((4,), 5), num_audio_frames=torch.full((4,), 5),
                       labels=torch.eye(SMALL_CLASSES)[:4], ids=videos)
    evaluation = evaluate(model, [batch], torch.device("cpu"), 20, SMALL_CLASSES)
    count = models.count("nextvlad", **TINY)
    meta = artifacts.TrialMeta(model="nextvlad", hparams=models.resolve("nextvlad", **TINY), epoch=epoch,
                               params=count.params, stats=count.stats,
                               size_bytes=models.size_bytes("nextvlad", "bfloat16", **TINY),
                               storage_dtype="bfloat16", metrics={"gap": 0.5})
    return artifacts.write_best(str(path), model.state_dict(), meta, evaluation.predictions)


def test_a_best_folder_mixing_two_writes_is_refused(tmp_path: Path) -> None:
    first = _best_dir(tmp_path / "a", epoch=1, seed=0)
    second = _best_dir(tmp_path / "b", epoch=2, seed=1)
    assert artifacts.read_best(str(tmp_path / "a")).meta == first
    assert first.write_id != second.write_id
    for i, name in enumerate((artifacts.PREDICTIONS_FILE, artifacts.MODEL_FILE, artifacts.META_FILE)):
        mixed = tmp_path / f"mixed-{i}"
        shutil.copytree(tmp_path / "a", mixed)
        shutil.copy(tmp_path / "b" / name, mixed / name)  # one file of another epoch's write
        with pytest.raises(artifacts.ArtifactError, match="the files come from different writes"):
            artifacts.read_best(str(mixed))


def _gap_from_predictions(path: str, batch_size: int) -> float:
    """GAP@20 recomputed from the saved top-20 predictions (GAP only reads the top 20), fed in the
    evaluation's batches: the starter's GAP breaks exact score ties (fp32 sigmoids saturate at 1.0) by
    the order entries were pushed, batch by batch, so other batches could move it by ~1e-6."""
    table = pq.read_table(path)
    dense = np.zeros((table.num_rows, SMALL_CLASSES))
    labels = np.zeros((table.num_rows, SMALL_CLASSES))
    for i, (classes, scores, labs) in enumerate(
        zip(table["classes"].to_pylist(), table["scores"].to_pylist(), table["labels"].to_pylist())
    ):
        dense[i, classes] = scores
        labels[i, labs] = 1
    acc = metrics.MetricAccumulator(num_classes=SMALL_CLASSES)
    for start in range(0, table.num_rows, batch_size):
        acc.update(dense[start : start + batch_size], labels[start : start + batch_size])
    return acc.result()["gap"]


@pytest.mark.slow
def test_one_worker_trains_evaluates_and_saves_the_best(ray_local: None, small_data: DataPaths, tmp_path: Path) -> None:
    cfg = _config(epochs=3, average_last=2)
    result = fit(cfg, small_data.train, small_data.validation, str(tmp_path), "one")
    assert result.epochs == 3 and [h["epoch"] for h in result.history] == [1, 2, 3]
    assert result.params == models.param_count("nextvlad", **TINY)
    assert result.size_bytes == models.size_bytes("nextvlad", dtype="bfloat16", **TINY)
    last = result.history[-1]
    single_best = max(h["gap"] for h in result.history)
    averaged_won = last["averaged_gap"] > single_best  # then best/ holds the averaged weights
    assert result.gap == max(single_best, last["averaged_gap"])
    assert last["best_averaged_epochs"] == (2 if averaged_won else 0)
    for key in ("gap", "hit_at_one", "perr", "map", "val_loss", "train_loss", "samples_per_s", "learning_rate"):
        assert np.isfinite(last[key]), key
    assert last["val_videos"] == 48 and "averaged_gap" in last and last["averaged_epochs"] == 2
    # the saved predictions are the best epoch's: recomputing GAP from them gives the reported value
    assert _gap_from_predictions(result.predictions, cfg.eval_batch_size) == pytest.approx(result.gap, abs=1e-9)
    assert pq.read_table(result.predictions).num_rows == 48
    # the saved model reproduces its validation predictions and GAP
    model, meta = artifacts.load_model(result.checkpoint)
    assert meta.epoch == (3 if averaged_won else max(result.history, key=lambda h: h["gap"])["epoch"])
    assert meta.averaged_epochs == last["best_averaged_epochs"]
    assert meta.size_bytes == result.size_bytes and meta.params == result.params  # one count: models'
    assert artifacts.read_best(result.checkpoint).meta == meta  # model, meta and predictions of one write
    batches = iter_video_batches(read_videos(small_data.validation), batch_size=32, num_classes=SMALL_CLASSES)
    again = evaluate(model, batches, torch.device("cpu"), 20, SMALL_CLASSES)
    saved = pq.read_table(result.predictions)
    assert saved["id"].to_pylist() == again.predictions.ids
    np.testing.assert_array_equal(np.array(saved["classes"].to_pylist()), again.predictions.classes)
    np.testing.assert_allclose(np.array(saved["scores"].to_pylist()), again.predictions.scores, rtol=1e-6)
    assert metrics.MetricAccumulator.from_states([again.state]).result()["gap"] == pytest.approx(result.gap, abs=1e-6)
    assert json.loads((tmp_path / "one" / "history.json").read_text())[-1]["epoch"] == 3
    # learning from the planted signal: far above a random ranking
    chance = _gap_from_random(small_data)
    assert result.gap > chance + 0.1


def _gap_from_random(data: DataPaths) -> float:
    table = pq.read_table(data.validation)
    labels = np.zeros((table.num_rows, SMALL_CLASSES))
    for i, labs in enumerate(table["labels"].to_pylist()):
        labels[i, labs] = 1
    return metrics.gap(np.random.default_rng(0).random(labels.shape), labels)


@pytest.mark.slow
def test_two_gloo_workers_report_the_global_gap(ray_local: None, small_data: DataPaths, tmp_path: Path) -> None:
    # with reverse whitening: the driver reads the eigenvalues file, the workers get the values
    eigenvals = np.random.default_rng(5).uniform(0.5, 4.0, 1024).astype(np.float32)
    np.save(tmp_path / "eigenvals.npy", eigenvals)
    cfg = _config(num_workers=2, hparams={**TINY, "reverse_whitening": True},
                  pca_eigenvals=str(tmp_path / "eigenvals.npy"))
    result = fit(cfg, small_data.train, small_data.validation, str(tmp_path), "two")
    assert result.epochs == 2
    assert result.history[-1]["val_videos"] == 48  # both workers' files, merged on rank 0
    # each worker evaluated one 24-video file in one batch, worker 0's first
    assert _gap_from_predictions(result.predictions, 24) == pytest.approx(result.gap, abs=1e-9)
    assert pq.read_table(result.predictions).num_rows == 48
    model, meta = artifacts.load_model(result.checkpoint)  # the model is rebuilt without the file
    assert meta.hparams["reverse_whitening"] and "pca_eigenvals" not in meta.hparams
    torch.testing.assert_close(model.whitening.scale, torch.from_numpy(np.sqrt(eigenvals) + 1e-4))
    assert result.size_bytes == models.size_bytes("nextvlad", "bfloat16", **cfg.hparams)


@pytest.mark.slow
def test_failed_runs_and_killed_workers_resume_from_the_last_checkpoint(
    ray_local: None, small_data: DataPaths, tmp_path: Path
) -> None:
    import ray.train

    # A TorchTrainer run (in_process=False: one worker, as Train runs it):
    # 1. A run that fails for good (a worker killed in epoch 2, no restarts allowed), then is
    #    started again under its name, as a Tune-level retry does: it continues after epoch 1.
    # 2. In that second run a worker is killed in epoch 3: Ray Train restarts it from epoch 2.
    # The kills come through the loop's step hooks (tests/faults.py), pickled to the workers.
    first_fault = KillOnce(epoch=2, step=2, rank=0, marker=str(tmp_path / "killed-1"))
    with pytest.raises(ray.train.TrainingFailedError):
        fit(_config(epochs=3, max_failures=0), small_data.train, small_data.validation, str(tmp_path), "faulty",
            hooks=first_fault, in_process=False)
    first = epoch_checkpoints(str(tmp_path / "faulty"))
    assert [Path(p).name for p in first] == ["epoch_001"]
    epoch_one = torch.load(Path(first[0]) / CHECKPOINT_FILE, weights_only=False)["history"][0]

    second_fault = KillOnce(epoch=3, step=1, rank=0, marker=str(tmp_path / "killed-2"))
    result = fit(_config(epochs=3, max_failures=1), small_data.train, small_data.validation, str(tmp_path), "faulty",
                 hooks=second_fault, in_process=False)
    assert (tmp_path / "killed-2").exists()  # the worker really was killed mid-epoch
    assert [h["epoch"] for h in result.history] == [1, 2, 3]  # each epoch once
    # epoch 1 not trained again: its record, timings included (NaN, e.g. the holdout's GAP without a
    # holdout, compared as equal)
    assert _nan_equal(result.history[0]) == _nan_equal(epoch_one)
    steps_per_epoch = result.history[0]["examples_seen"]
    assert [h["examples_seen"] for h in result.history] == [steps_per_epoch * e for e in (1, 2, 3)]
    assert Path(epoch_checkpoints(str(tmp_path / "faulty"))[0]).name == "epoch_003"
    assert epoch_checkpoints(str(tmp_path / "never-ran")) == []


@pytest.mark.slow
def test_a_killed_in_process_trial_is_retried_by_tune_from_its_checkpoint(
    ray_local: None, small_data: DataPaths, tmp_path: Path
) -> None:
    """A one-worker trial trains inside its Tune trial's process: when that process is killed in
    epoch 2, Tune's retry starts the trial again and it continues after epoch 1, each epoch trained
    once; the restored epoch is reported again (its first report may not have reached Tune)."""
    from ray import tune

    fault = KillOnce(epoch=2, step=1, rank=0, marker=str(tmp_path / "killed"))
    cfg = _config(epochs=3, keep_checkpoints=1)
    data, storage = small_data, str(tmp_path / "trials")
    seen: list[tuple[int, int]] = []

    class Seen(tune.Callback):
        def on_trial_result(self, iteration: int, trials: list, trial: object, result: dict, **info: object) -> None:
            seen.append((result["epoch"], result["examples_seen"]))

    def trainable(config: dict) -> None:
        fit(cfg, data.train, data.validation, storage, "faulty", report=tune.report, hooks=fault)

    results = tune.Tuner(
        tune.with_resources(trainable, {"cpu": 0.5}),
        tune_config=tune.TuneConfig(reuse_actors=True),  # as the sweep runs one-worker trials
        run_config=tune.RunConfig(storage_path=str(tmp_path), name="tune", verbose=0, callbacks=[Seen()],
                                  failure_config=tune.FailureConfig(max_failures=1)),
    ).fit()
    assert not results.errors and (tmp_path / "killed").exists()  # the trial's process really was killed
    assert int((tmp_path / "killed").read_text()) != os.getpid()  # ... and it was not this one
    per_epoch = seen[0][1]
    # epoch 1 not trained again: its report repeated as it was
    assert seen == [(1, per_epoch), (1, per_epoch), (2, 2 * per_epoch), (3, 3 * per_epoch)]
    history = json.loads((tmp_path / "trials" / "faulty" / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2, 3]
    # the trial wrote its own checkpoints, in Train's layout, keeping the newest one
    assert [Path(p).name for p in epoch_checkpoints(storage + "/faulty")] == ["epoch_003"]


def test_an_epoch_checkpointed_but_never_reported_is_reported_on_resume(
    ray_local: None, small_data: DataPaths, tmp_path: Path
) -> None:
    """A checkpoint is persisted before its epoch is reported: a driver that dies in between (here the
    report itself fails) never sees that epoch. The resumed run reports it before training on, so a
    consumer still gets every epoch, each trained once."""

    def dies(metrics: dict[str, Any]) -> None:
        raise RuntimeError(f"the driver died before epoch {metrics['epoch']} reached it")

    cfg = _config(epochs=3)
    with pytest.raises(RuntimeError, match="before epoch 1"):
        fit(cfg, small_data.train, small_data.validation, str(tmp_path), "cut", report=dies)
    assert [Path(p).name for p in epoch_checkpoints(str(tmp_path / "cut"))] == ["epoch_001"]
    seen: list[dict[str, Any]] = []
    result = fit(cfg, small_data.train, small_data.validation, str(tmp_path), "cut", report=seen.append)
    assert [r["epoch"] for r in seen] == [1, 2, 3]
    per_epoch = seen[0]["examples_seen"]
    assert [r["examples_seen"] for r in seen] == [per_epoch, 2 * per_epoch, 3 * per_epoch]  # epoch 1 not retrained
    assert [h["epoch"] for h in result.history] == [1, 2, 3]


def test_resume_skips_a_checkpoint_cut_short(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for epoch in (1, 2):
        (tmp_path / f"epoch_{epoch:03d}").mkdir()
        torch.save({"epoch": epoch}, tmp_path / f"epoch_{epoch:03d}" / CHECKPOINT_FILE)
    (tmp_path / "epoch_003").mkdir()  # a failed upload: no state file at all
    full = (tmp_path / "epoch_002" / CHECKPOINT_FILE).read_bytes()
    (tmp_path / "epoch_002" / CHECKPOINT_FILE).write_bytes(full[: len(full) // 2])  # truncated

    found = epoch_checkpoints(str(tmp_path))
    assert [Path(p).name for p in found] == ["epoch_002", "epoch_001"]
    assert newest_state(found) == ({"epoch": 1}, found[1])
    out = capsys.readouterr().out
    assert "skipping unreadable checkpoint" in out and "epoch_002" in out
    assert newest_state([]) == (None, None)


def _nan_equal(record: dict[str, Any]) -> dict[str, Any]:
    """``record`` with every NaN as None, so that two equal records compare equal."""
    return {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in record.items()}
