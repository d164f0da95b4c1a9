"""The driver side of one trial: ``fit`` builds a TorchTrainer around the worker loop and returns
the trial's result.

It lists the shards once (workers never list storage), reads the PCA eigenvalues file when the model
whitens its input back (models take values, never paths), and resumes automatically: the run name
is fixed, and the loop continues from the newest checkpoint in ``<storage_path>/<name>``.
"""

from __future__ import annotations

import dataclasses
import io
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from yt8m_search import models
from yt8m_search.data import fs
from yt8m_search.data.loading import read_videos
from yt8m_search.train.loop import StepHooks, train_loop_per_worker
from yt8m_search.train.settings import TrainConfig

# Ray Train settings for every run (the calling process's environment; Train V2 passes these to its
# controller). Its controller polls the workers every 2 s by default, so a finished trial waits up
# to 2 s before its run ends; 0.5 s costs a few small RPCs a second.
TRAIN_ENV = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5"}
# Only on a one-machine Ray that ``run`` starts itself: the preemption watcher (one more process per
# trial) only matters where cloud nodes can be taken away.
LOCAL_TRAIN_ENV = {"RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"}


@dataclass(frozen=True)
class TrialResult:
    """What one trained trial hands to the search (the results contract)."""

    gap: float
    epochs: int
    params: int
    size_bytes: int
    checkpoint: str
    predictions: str
    metrics: dict[str, Any]  # the last report
    history: list[dict[str, Any]]  # every epoch's report

    @classmethod
    def from_report(cls, report: dict[str, Any], history: list[dict[str, Any]]) -> TrialResult:
        return cls(gap=report["gap_best"], epochs=report["epoch"], params=report["params"],
                   size_bytes=report["size_bytes"], checkpoint=report["checkpoint"],
                   predictions=report["predictions"], metrics=dict(report), history=history)


def fit(
    cfg: TrainConfig,
    train: str | Sequence[str],
    validation: str | Sequence[str],
    storage_path: str,
    name: str,
    *,
    callbacks: Sequence[Any] = (),
    hooks: StepHooks | None = None,
) -> TrialResult:
    """Train ``cfg`` with a TorchTrainer; resume automatically from ``<storage_path>/<name>``.

    Call with Ray initialised. The run name must be deterministic (no timestamps): a restarted
    driver then finds and resumes the same run. ``hooks.on_step(epoch, step, rank)`` is called on
    every worker before every step (tests inject faults this way)."""
    train_files, validation_files = _shards(train, validation)
    storage_path = os.path.abspath(storage_path) if fs.is_local(storage_path) else storage_path
    for key, value in TRAIN_ENV.items():
        os.environ.setdefault(key, value)  # a user's own setting wins
    loop_config = {
        "train": dataclasses.asdict(cfg),
        "validation_files": validation_files,
        "run_dir": fs.join(storage_path, name),
        "eigenvalues": _eigenvalues(cfg.pca_eigenvals) if cfg.reverse_whitening else None,
        "hooks": hooks,
    }
    trainer = _trainer(cfg, loop_config, train_files, storage_path, name, callbacks)
    result = trainer.fit()
    if result.error is not None:
        raise result.error
    return TrialResult.from_report(result.metrics, list(result.return_value or []))


def _eigenvalues(path: str | None) -> np.ndarray:
    """The PCA eigenvalues file, local or s3:// (read here, once, not by every worker)."""
    assert path is not None  # TrainConfig refuses reverse whitening without it
    try:
        data = fs.read_bytes(path)
    except OSError as err:
        raise ValueError(f"pca_eigenvals: cannot read eigenvalues from {path}: {err}") from err
    return models.load_eigenvals(io.BytesIO(data), name=path)


def _shards(train: str | Sequence[str], validation: str | Sequence[str]) -> tuple[list[str], list[str]]:
    """The Parquet shards of both sets (ValueError naming the set and the location if there are none)."""
    train_files = fs.list_files(train, pattern="*.parquet")
    validation_files = fs.list_files(validation, pattern="*.parquet")
    for role, files, where in (("training", train_files, train), ("validation", validation_files, validation)):
        if not files:
            raise ValueError(f"no {role} Parquet shards (*.parquet) found at {where}")
    return train_files, validation_files


def _trainer(
    cfg: TrainConfig, loop_config: dict[str, Any], train_files: list[str], storage_path: str, name: str,
    callbacks: Sequence[Any],
) -> Any:
    """The TorchTrainer of one trial (Ray is imported here: a driver-side call, made with Ray running)."""
    import ray.train
    from ray.train.torch import TorchTrainer

    gpus = {"GPU": cfg.gpus_per_worker} if cfg.gpus_per_worker else {}
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config,
        scaling_config=ray.train.ScalingConfig(
            num_workers=cfg.num_workers,
            use_gpu=cfg.gpus_per_worker > 0,
            resources_per_worker={"CPU": cfg.cpus_per_worker, **gpus},
            placement_strategy=cfg.placement_strategy,
        ),
        datasets={"train": lambda: read_videos(train_files, shuffle=True, listed=True)},
        dataset_config=ray.train.DataConfig(datasets_to_split=["train"]),
        run_config=ray.train.RunConfig(
            name=name,
            storage_path=storage_path,
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=max(cfg.keep_checkpoints, cfg.average_last, 1)),
            failure_config=ray.train.FailureConfig(max_failures=cfg.max_failures),
            callbacks=list(callbacks),
        ),
    )


__all__ = ["LOCAL_TRAIN_ENV", "TRAIN_ENV", "TrialResult", "fit"]
