"""The worker loop of a trial, one epoch at a time: on every Ray Train worker of a TorchTrainer
(DDP), or in the trial's own process (``session.LocalSession``), the same code behind ``Session``.

Every epoch: the training steps, evaluation over the whole validation set (``evaluation``), a
checkpoint (model, optimizer, epoch, examples seen, RNG state) reported to Ray Train
(``checkpoints``), and, when the epoch is the best so far, the model, its meta and its validation
predictions written to ``<run>/best/`` through ``artifacts.write_best``.

Ray is imported only by the sessions, inside their methods: ``import yt8m_search.train`` (the
recipe and evaluation, which the tests and benchmarks use on their own) loads without it.
"""

from __future__ import annotations

import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from yt8m_search import artifacts, models
from yt8m_search.artifacts import Predictions, TrialMeta
from yt8m_search.data import fs
from yt8m_search.data.cache import ShardCache
from yt8m_search.data.loading import iter_video_batches
from yt8m_search.train.checkpoints import Progress, resume_state, save_checkpoint_dir, write_history
from yt8m_search.train.collective import gather
from yt8m_search.train.evaluation import accumulate_average, device_name, evaluate_average, evaluate_globally
from yt8m_search.train.recipe import (
    cpu_state,
    learning_rate,
    make_optimizer,
    rng_state,
    seed_everything,
    set_rng_state,
    train_step,
)
from yt8m_search.train.session import RaySession, Session
from yt8m_search.train.settings import TrainConfig


class StepHooks(Protocol):
    """Called by the loop before every training step (tests inject faults this way); must pickle,
    since it travels to the workers with the loop's configuration."""

    def on_step(self, epoch: int, step: int, rank: int) -> None: ...


@dataclass
class Worker:
    """One worker's view of its trial: configuration, place in the group, model and progress."""

    cfg: TrainConfig
    session: Session
    model: nn.Module  # DDP-wrapped when world > 1
    optimizer: torch.optim.Optimizer
    count: models.Count  # analytic, as the search and the budget count
    size_bytes: int  # models.size_bytes at the storage dtype
    flops: int  # models.flops: forward FLOPs of one 300-frame video
    run_dir: str
    validation_files: list[str]  # this worker's share
    cache: ShardCache | None  # the node's shard cache (``data.shard_cache``), if any
    shard: Any  # this worker's Ray Data shard of the training set
    hooks: StepHooks | None
    progress: Progress

    @property
    def rank(self) -> int:
        return self.session.rank

    @property
    def world(self) -> int:
        return self.session.world

    @property
    def device(self) -> torch.device:
        return self.session.device

    @property
    def core(self) -> models.VideoModel:
        return getattr(self.model, "module", self.model)

    @property
    def best_dir(self) -> str:
        return fs.join(self.run_dir, "best")

    @property
    def batch_size(self) -> int:
        return self.cfg.batch_size // self.world


def train_loop_per_worker(config: dict[str, Any]) -> list[dict[str, Any]]:
    """What Ray Train runs on every worker: ``run_loop`` in this worker's Train session."""
    return run_loop(RaySession(), config)


def run_loop(session: Session, config: dict[str, Any]) -> list[dict[str, Any]]:
    """Train a trial in ``session``. ``config``: ``train`` (TrainConfig fields), ``validation_files``,
    ``run_dir`` (this run's storage URI), optional ``eigenvalues`` (the array for reverse whitening),
    ``cache`` (``ShardCache``) and ``hooks`` (``StepHooks``).

    Returns the per-epoch history (every report, restarts included, each epoch once)."""
    worker = start_worker(session, config)
    cfg, progress = worker.cfg, worker.progress
    if progress.history:
        # Restored: a checkpoint is persisted before its epoch is reported, so the driver may have died
        # in between and never seen the newest epoch (or, for a finished run, its result). Report it
        # again: delivery is at least once, and every consumer keys on the epoch (the rungs and ASHA
        # record a trial once per rung, Optuna keeps a step's first value).
        session.report(progress.history[-1], None, progress.epoch)
    for epoch in range(progress.epoch + 1, cfg.epochs + 1):  # epochs are 1-based in every report
        trained = train_epoch(worker, epoch)
        evaluated = evaluate_epoch(worker, epoch)
        report = epoch_report(worker, epoch, trained, evaluated)
        progress.epoch = epoch
        progress.history.append(report)
        if worker.rank == 0:
            write_history(worker.run_dir, progress.history)
        checkpoint_and_report(worker, epoch, report)
    return progress.history


def start_worker(session: Session, config: dict[str, Any]) -> Worker:
    """Build the model (identical initial weights on every rank), resume from the newest checkpoint,
    and wrap it for DDP."""
    cfg = TrainConfig.from_dict(config["train"])
    rank, world = session.rank, session.world
    if session.device.type == "cpu":  # one intra-op thread per reserved CPU, not one per core of the node
        torch.set_num_threads(max(1, int(cfg.cpus_per_worker)))
    seed_everything(cfg.seed)  # identical initial weights on every rank (DDP also broadcasts them)
    model = models.build(cfg.model, **cfg.hparams)
    if config.get("eigenvalues") is not None:  # before resuming: a checkpoint's buffer wins
        models.set_eigenvalues(model, config["eigenvalues"])
    optimizer = make_optimizer(model, cfg)
    progress = Progress()
    state = resume_state(config["run_dir"], rank)
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        progress = Progress.from_state(state)
        set_rng_state(state["rng"][min(rank, len(state["rng"]) - 1)])
    return Worker(
        cfg=cfg, session=session,
        model=session.prepare_model(model),
        optimizer=optimizer,
        count=models.count(cfg.model, **cfg.hparams),
        size_bytes=models.size_bytes(cfg.model, cfg.storage_dtype, **cfg.hparams),
        flops=models.flops(cfg.model, **cfg.hparams),
        run_dir=config["run_dir"],
        validation_files=config["validation_files"][rank::world],
        cache=config.get("cache"),
        shard=session.train_shard(),
        hooks=config.get("hooks"),
        progress=progress,
    )  # fmt: skip


def train_epoch(worker: Worker, epoch: int) -> dict[str, float]:
    """One pass over this worker's shard (or ``max_steps_per_epoch`` steps): the train loss and rate."""
    cfg, progress = worker.cfg, worker.progress
    worker.model.train()
    started, steps, loss_sum, epoch_examples = time.perf_counter(), 0, 0.0, 0
    batches = iter_video_batches(
        worker.shard,
        batch_size=worker.batch_size,
        num_classes=cfg.num_classes,
        pad_to=cfg.pad_to,
        shuffle_buffer=cfg.shuffle_buffer,
        seed=cfg.seed * 100_003 + epoch * 1_009 + worker.rank,
        drop_last=True,  # every rank must take the same number of DDP steps
        dequantize=worker.device.type == "cpu",  # GPUs get uint8 frames and dequantize them on the device
    )
    for batch in batches:
        if worker.hooks is not None:
            worker.hooks.on_step(epoch, steps, worker.rank)
        loss = train_step(worker.model, worker.optimizer, batch.to(worker.device), cfg, progress.examples_seen)
        steps += 1
        progress.examples_seen += worker.batch_size * worker.world
        epoch_examples += worker.batch_size * worker.world
        loss_sum += loss.item()
        if cfg.max_steps_per_epoch and steps >= cfg.max_steps_per_epoch:
            break
    seconds = time.perf_counter() - started
    if steps == 0:
        raise RuntimeError(
            f"epoch {epoch}: no training batch on rank {worker.rank} (fewer than {worker.batch_size} "
            "training videos per worker?)"
        )
    return {"train_loss": loss_sum / steps, "samples_per_s": epoch_examples / seconds}


def evaluate_epoch(worker: Worker, epoch: int) -> dict[str, Any]:
    """Evaluate the epoch's weights (and, after the last epoch, the average of the last ones);
    write ``best/`` when one beats the best so far. Returns the metrics for the report."""
    cfg, progress, core = worker.cfg, worker.progress, worker.core
    metrics, predictions = evaluate_globally(core, worker.validation_files, cfg, worker.device, worker.cache)
    if cfg.average_last > 1 and epoch > cfg.epochs - cfg.average_last:
        progress.averaged = accumulate_average(progress.averaged, core)
    if metrics["gap"] > progress.best["gap"]:  # the same decision on every rank: metrics are broadcast
        progress.best = {"gap": metrics["gap"], "epoch": epoch, "holdout_gap": metrics["holdout_gap"]}
        write_best(worker, epoch, cpu_state(core), metrics, predictions)
    if progress.averaged is None or epoch != cfg.epochs:
        return metrics
    count = progress.averaged["count"]
    avg_metrics, avg_state, avg_predictions = evaluate_average(
        core, progress.averaged, worker.validation_files, cfg, worker.device, worker.cache)
    if avg_metrics["gap"] > progress.best["gap"]:  # the average is what the trial exports, when it scores higher
        progress.best = {"gap": avg_metrics["gap"], "epoch": epoch, "averaged_epochs": count,
                         "holdout_gap": avg_metrics["holdout_gap"]}
        write_best(worker, epoch, avg_state, avg_metrics, avg_predictions, averaged_epochs=count)
    return {**metrics, **{f"averaged_{k}": v for k, v in avg_metrics.items()}, "averaged_epochs": count}


def write_best(
    worker: Worker, epoch: int, state: dict[str, Tensor], metrics: dict[str, Any], predictions: Predictions | None,
    averaged_epochs: int = 0,
) -> None:
    """The trial's ``best/`` folder, from rank 0 (which holds the gathered predictions)."""
    if worker.rank != 0 or predictions is None:
        return
    cfg = worker.cfg
    latency = metrics.get("latency_ms")
    meta = TrialMeta(
        model=cfg.model, hparams=cfg.resolved_hparams(), epoch=epoch, params=worker.count.params,
        stats=worker.count.stats, size_bytes=worker.size_bytes, storage_dtype=cfg.storage_dtype,
        metrics={k: v for k, v in metrics.items() if not k.startswith("_")}, averaged_epochs=averaged_epochs,
        flops=worker.flops, latency_ms=latency if latency is not None and math.isfinite(latency) else None,
        device=device_name(worker.device),
    )  # fmt: skip
    artifacts.write_best(worker.best_dir, models.folded_statistics(worker.core, state), meta, predictions)


def epoch_report(worker: Worker, epoch: int, trained: dict[str, float], evaluated: dict[str, Any]) -> dict[str, Any]:
    """What the epoch reports to Ray Train (and Tune, and W&B)."""
    metrics = {k: v for k, v in evaluated.items() if not k.startswith("averaged_")}
    averaged = {k: v for k, v in evaluated.items() if k.startswith("averaged_")}
    worker_nodes = gather(worker.session.node_id())  # on rank 0 only
    best, progress = worker.progress.best, worker.progress
    return {
        **metrics,
        **({"nodes": len(set(worker_nodes))} if worker.rank == 0 else {}),  # distinct nodes this epoch ran on
        "epoch": epoch,
        "train_loss": trained["train_loss"],
        "learning_rate": learning_rate(worker.cfg, progress.examples_seen),
        "examples_seen": progress.examples_seen,
        "samples_per_s": trained["samples_per_s"],
        "params": worker.count.params,
        "size_bytes": worker.size_bytes,
        "flops": worker.flops,  # analytic, beside the measured latency_ms (in ``metrics``)
        "device": device_name(worker.device),
        "gap_best": best["gap"],
        "holdout_gap_best": best.get("holdout_gap", math.nan),  # the best epoch's: it chose nothing
        "best_epoch": best["epoch"],
        "best_averaged_epochs": best.get("averaged_epochs", 0),  # >0: best/ holds averaged weights
        "checkpoint": worker.best_dir,
        "predictions": fs.join(worker.best_dir, artifacts.PREDICTIONS_FILE),
        **averaged,
    }


def checkpoint_and_report(worker: Worker, epoch: int, report: dict[str, Any]) -> None:
    """Report the epoch with its checkpoint (written by rank 0; every rank's RNG state)."""
    rngs = gather(rng_state())
    with tempfile.TemporaryDirectory() as directory:
        checkpoint = None
        if worker.rank == 0:
            state = worker.progress.state(cpu_state(worker.core), worker.optimizer.state_dict(), rngs, worker.cfg)
            checkpoint = Path(directory)
            save_checkpoint_dir(checkpoint, state)
        worker.session.report(report, checkpoint, epoch)


__all__ = [
    "StepHooks",
    "Worker",
    "checkpoint_and_report",
    "epoch_report",
    "evaluate_epoch",
    "run_loop",
    "start_worker",
    "train_epoch",
    "train_loop_per_worker",
    "write_best",
]
