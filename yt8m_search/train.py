"""Per-trial training on Ray Train: one worker loop (DDP), run by ``fit`` through a TorchTrainer.

Recipe (NeXtVLAD paper and linrongc/youtube-8m code, all configurable in ``TrainConfig``): Adam at
2e-4; staircase decay x0.8 every 2M *examples* (counted globally, so the schedule does not depend on
the number of workers); global batch 160 split over the workers; per-parameter clip-by-norm at 1.0
(TF's clip_gradient_norms, not a global norm); coupled L2 1e-5 on the classifier only; bf16
autocast on GPU, fp32 on CPU.

Every epoch: evaluation over the whole validation set (each worker scores a disjoint set of
validation files; the metric states and top-k predictions are gathered to rank 0, which computes
the exact global GAP, not an average of per-worker GAPs), a checkpoint (model, optimizer, epoch,
examples seen, RNG state) reported to Ray Train, and — when the epoch is the best so far — the
model and its validation predictions written under ``<run>/best/``.

The layout of a run in storage (a local folder or s3://): ``<storage>/<name>/epoch_NNN/`` (Ray
Train checkpoints, the last ``keep_checkpoints`` kept) and ``<storage>/<name>/best/`` holding
``model.pt`` and ``predictions.parquet``.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import os
import random
import signal
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch import Tensor, nn

from yt8m_search import models
from yt8m_search.constants import NUM_CLASSES, PLACEMENT_STRATEGIES
from yt8m_search.data import fs
from yt8m_search.data.loading import VideoBatch, iter_video_batches, read_videos
from yt8m_search.metrics import MetricAccumulator

CHECKPOINT_FILE = "state.pt"

# Ray Train settings for every run (the calling process's environment; Train V2 passes these to its
# controller). Its controller polls the workers every 2 s by default, so a finished trial waits up
# to 2 s before its run ends; 0.5 s costs a few small RPCs a second.
TRAIN_ENV = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5"}
# Only on a one-machine Ray that ``run`` starts itself: the preemption watcher (one more process per
# trial) only matters where cloud nodes can be taken away.
LOCAL_TRAIN_ENV = {"RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"}


@dataclass(frozen=True)
class TrainConfig:
    """Everything one trial's training needs besides the data: the model and the recipe."""

    model: str
    hparams: dict[str, Any] = field(default_factory=dict)
    epochs: int = 5
    batch_size: int = 160  # global, split evenly over the workers
    eval_batch_size: int = 256  # per worker
    learning_rate: float = 2e-4
    lr_decay: float = 0.8
    lr_decay_examples: int = 2_000_000
    clip_norm: float = 1.0  # per parameter; 0 disables
    l2: float = 1e-5  # coupled L2 on the classifier's tensors
    num_workers: int = 1
    gpus_per_worker: float = 0.0  # > 0: train on GPUs (bf16 autocast)
    cpus_per_worker: float = 1.0
    pad_to: int | None = None  # None: pad each batch to its longest video
    shuffle_buffer: int = 2048
    keep_checkpoints: int = 2
    average_last: int = 0  # >1: also evaluate the average of the last N epochs' weights
    prediction_top_k: int = 20
    storage_dtype: str = "bfloat16"
    max_failures: int = 3
    seed: int = 0
    max_steps_per_epoch: int | None = None  # for benchmarks and quick checks
    placement_strategy: str = "PACK"  # how the workers spread over nodes (constants.PLACEMENT_STRATEGIES)

    def __post_init__(self) -> None:
        errors = []
        positive = ("epochs", "batch_size", "eval_batch_size", "num_workers", "keep_checkpoints", "prediction_top_k")
        for key in positive:
            if getattr(self, key) < 1:
                errors.append(f"{key} must be >= 1, got {getattr(self, key)}")
        if self.batch_size % self.num_workers:
            errors.append(f"batch_size ({self.batch_size}) must be divisible by num_workers ({self.num_workers})")
        if not self.learning_rate > 0:
            errors.append(f"learning_rate must be > 0, got {self.learning_rate}")
        if not 0 < self.lr_decay <= 1:
            errors.append(f"lr_decay must lie in (0, 1], got {self.lr_decay}")
        if self.lr_decay_examples < 1:
            errors.append(f"lr_decay_examples must be >= 1, got {self.lr_decay_examples}")
        if self.clip_norm < 0 or self.l2 < 0 or self.cpus_per_worker <= 0 or self.gpus_per_worker < 0:
            errors.append("clip_norm, l2 and gpus_per_worker must be >= 0 and cpus_per_worker > 0")
        if self.average_last < 0 or self.average_last > self.epochs:
            errors.append(f"average_last must lie in [0, epochs={self.epochs}], got {self.average_last}")
        if self.placement_strategy not in PLACEMENT_STRATEGIES:
            errors.append(f"placement_strategy must be one of {PLACEMENT_STRATEGIES}, got {self.placement_strategy!r}")
        if self.storage_dtype not in models.STORAGE_DTYPES:
            errors.append(f"storage_dtype must be one of {sorted(models.STORAGE_DTYPES)}, got {self.storage_dtype!r}")
        try:
            models.resolve(self.model, **self.hparams)
        except ValueError as err:
            errors.append(str(err))
        if errors:
            raise ValueError("invalid training config: " + "; ".join(errors))

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        return cls(**values)


# ---------------------------------------------------------------------------------------------
# The recipe's pieces


def learning_rate(cfg: TrainConfig, examples_seen: int) -> float:
    """Staircase exponential decay counted in examples (TF exponential_decay(staircase=True))."""
    return cfg.learning_rate * cfg.lr_decay ** (examples_seen // cfg.lr_decay_examples)


def clip_per_parameter_(parameters: Iterable[nn.Parameter], max_norm: float) -> None:
    """TF clip_by_norm on every gradient separately: g * max_norm / max(||g||, max_norm)."""
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads or max_norm <= 0:
        return
    norms = torch._foreach_norm(grads)
    scales = [torch.clamp(max_norm / torch.clamp(n, min=max_norm), max=1.0) for n in norms]
    torch._foreach_mul_(grads, scales)


def make_optimizer(model: models.VideoModel, cfg: TrainConfig) -> torch.optim.Adam:
    """Adam (TF defaults) with coupled L2 (``weight_decay``) on the classifier tensors only."""
    l2_ids = {id(p) for p in model.l2_parameters()}
    decayed = [p for p in model.parameters() if id(p) in l2_ids]
    plain = [p for p in model.parameters() if id(p) not in l2_ids]
    groups = [{"params": plain, "weight_decay": 0.0}, {"params": decayed, "weight_decay": cfg.l2}]
    return torch.optim.Adam(groups, lr=cfg.learning_rate, betas=(0.9, 0.999), eps=1e-8)


def train_step(
    model: nn.Module, optimizer: torch.optim.Optimizer, batch: VideoBatch, cfg: TrainConfig, examples_seen: int
) -> Tensor:
    """One optimisation step of the recipe on a batch already on the model's device; returns the loss.

    ``model`` may be DDP-wrapped: the forward goes through the wrapper (gradient sync), the loss
    through the family's own ``loss``."""
    core: models.VideoModel = getattr(model, "module", model)
    for group in optimizer.param_groups:
        group["lr"] = learning_rate(cfg, examples_seen)
    with _autocast(batch.features.device):
        output = model(batch.features, batch.mask)
    loss = core.loss(output, batch.labels)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    clip_per_parameter_([p for group in optimizer.param_groups for p in group["params"]], cfg.clip_norm)
    optimizer.step()
    return loss


def _rng_state() -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


# ---------------------------------------------------------------------------------------------
# Evaluation


@dataclass
class Evaluation:
    """One worker's evaluation of its validation files: metric state plus top-k predictions."""

    state: dict[str, np.ndarray]
    ids: list[str]
    classes: np.ndarray  # [V, k] int32, best first
    scores: np.ndarray  # [V, k] float32
    labels: list[np.ndarray]  # V arrays of class ids


def evaluate(
    model: models.VideoModel,
    batches: Iterable[VideoBatch],
    device: torch.device,
    top_k: int,
    num_classes: int = NUM_CLASSES,
) -> Evaluation:
    """Score ``batches`` in eval mode; keep the metric accumulator's state and top-k predictions."""
    model.eval()
    acc = MetricAccumulator(num_classes=num_classes)
    ids: list[str] = []
    classes, scores, labels = [], [], []
    with torch.no_grad(), _autocast(device):
        for batch in batches:
            batch = batch.to(device)
            output = model(batch.features, batch.mask)
            loss = model.loss(output, batch.labels).item()
            probs = torch.sigmoid(model.logits(output).float())  # scores in fp32: bf16 would create ties
            top = torch.topk(probs, k=min(top_k, probs.shape[1]), dim=1)
            probs_np, labels_np = probs.cpu().numpy(), batch.labels.cpu().numpy()
            acc.update(probs_np, labels_np, loss=loss)
            ids.extend(batch.ids)
            classes.append(top.indices.to(torch.int32).cpu().numpy())
            scores.append(top.values.cpu().numpy())
            labels.extend(np.flatnonzero(row).astype(np.int32) for row in labels_np)
    k = min(top_k, num_classes)
    return Evaluation(
        state=acc.state(),
        ids=ids,
        classes=np.concatenate(classes) if classes else np.zeros((0, k), np.int32),
        scores=np.concatenate(scores) if scores else np.zeros((0, k), np.float32),
        labels=labels,
    )


def predictions_table(evaluations: Sequence[Evaluation]) -> pa.Table:
    """Validation predictions as Parquet rows: id, top-k classes and scores (best first), labels."""
    ids = [i for e in evaluations for i in e.ids]
    classes = np.concatenate([e.classes for e in evaluations])
    scores = np.concatenate([e.scores for e in evaluations])
    labels = [lab for e in evaluations for lab in e.labels]
    return pa.table(
        {
            "id": pa.array(ids, pa.string()),
            "classes": pa.array(list(classes), pa.list_(pa.int32())),
            "scores": pa.array(list(scores), pa.list_(pa.float32())),
            "labels": pa.array(labels, pa.list_(pa.int32())),
        }
    )


def _autocast(device: torch.device) -> Any:
    # bf16 on GPUs; on CPUs fp32 (CPU bf16 autocast is slower than fp32 on most machines).
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


# ---------------------------------------------------------------------------------------------
# Storage of checkpoints and of the best epoch


def _save_checkpoint_dir(directory: Path, state: dict[str, Any]) -> None:
    torch.save(state, directory / CHECKPOINT_FILE)


def epoch_checkpoints(run_dir: str) -> list[str]:
    """A run's ``epoch_NNN`` checkpoint directories that hold a state file, newest first."""
    try:
        files = fs.list_files(fs.join(run_dir, f"epoch_*/{CHECKPOINT_FILE}"))
    except FileNotFoundError:
        return []
    return [f.rsplit("/", 1)[0] for f in reversed(files)]  # epoch_NNN sorts by epoch


def _read_state(directory: str) -> dict[str, Any]:
    data = fs.read_bytes(fs.join(directory, CHECKPOINT_FILE))
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)


def _newest_state(directories: Sequence[str]) -> tuple[dict[str, Any] | None, str | None]:
    """The newest readable state of ``directories`` (newest first) and where it came from."""
    for directory in directories:
        try:
            return _read_state(directory), directory
        except Exception as err:  # noqa: BLE001 - an upload cut short by a failure: take the one before
            print(f"skipping unreadable checkpoint {directory}: {type(err).__name__}: {err}", flush=True)
    return None, None


def _resume_state(run_dir: str, rank: int) -> dict[str, Any] | None:
    """The state to continue from, the same on every rank; None for a fresh start.

    The newest complete checkpoint in the run's storage (where Ray Train persists its checkpoints
    too), not Ray Train's latest registered one: Train V2 registers a checkpoint only once every
    worker's report is in, so a node lost just after an epoch's checkpoint was written, or a run
    that failed for good and is started again under the same name (a Tune-level retry), would
    otherwise start that epoch, or the whole run, over.
    """
    state, source = _newest_state(epoch_checkpoints(run_dir)) if rank == 0 else (None, None)
    source = _broadcast(source)
    if source is None or rank == 0:
        return state
    return _read_state(source)


def _write_best(best_dir: str, model_state: dict[str, Tensor], meta: dict[str, Any], table: pa.Table) -> None:
    """model.pt (weights + model name and hyperparameters) and predictions.parquet under best_dir."""
    # Predictions first: a model.pt beside stale predictions would be worse than the reverse.
    with fs.atomic_output(fs.join(best_dir, "predictions.parquet")) as f:
        pq.write_table(table, f, compression="zstd")
    with fs.atomic_output(fs.join(best_dir, "model.pt")) as f:
        torch.save({"model": meta["model"], "hparams": meta["hparams"], "state_dict": model_state, "meta": meta}, f)
    with fs.atomic_output(fs.join(best_dir, "meta.json")) as f:
        f.write(json.dumps(meta, indent=2, default=str).encode())


def load_best_model(best_dir: str, device: str | torch.device = "cpu") -> tuple[models.VideoModel, dict[str, Any]]:
    """Rebuild the model saved under ``<run>/best/`` (for the ensemble and for prediction)."""
    raw = io.BytesIO(fs.read_bytes(fs.join(best_dir, "model.pt")))  # S3 streams are not seekable
    blob = torch.load(raw, map_location=device, weights_only=False)
    model = models.build(blob["model"], **blob["hparams"])
    model.load_state_dict(blob["state_dict"])
    return model.to(device).eval(), blob["meta"]


# ---------------------------------------------------------------------------------------------
# The worker loop


def _gather(obj: Any) -> list[Any] | None:
    """All workers' objects on rank 0 (None elsewhere); the identity with one worker."""
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_initialized() or dist.get_world_size() == 1:
        return [obj]
    out: list[Any] | None = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object(obj, out, dst=0)
    return out


def _broadcast(obj: Any) -> Any:
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_initialized() or dist.get_world_size() == 1:
        return obj
    holder = [obj]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def _maybe_inject_fault(spec: dict[str, Any] | None, epoch: int, step: int, rank: int) -> None:
    """Test hook: SIGKILL this worker process once, at (epoch, step) on ``rank``.

    The marker file makes it fire only on the first attempt, so the restarted group can finish.
    """
    if not spec or (epoch, step, rank) != (spec["epoch"], spec["step"], spec.get("rank", 0)):
        return
    marker = Path(spec["marker"])
    if marker.exists():
        return
    marker.write_text(str(os.getpid()))
    os.kill(os.getpid(), signal.SIGKILL)


def train_loop_per_worker(config: dict[str, Any]) -> list[dict[str, Any]]:
    """What Ray Train runs on every worker. ``config``: ``train`` (TrainConfig fields),
    ``validation_files``, ``run_dir`` (this run's storage URI), optional ``fault``.

    Returns the per-epoch history (every report, restarts included, each epoch once)."""
    import ray.train
    import ray.train.torch

    cfg = TrainConfig.from_dict(config["train"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    if device.type == "cpu":  # one intra-op thread per reserved CPU, not one per core of the node
        torch.set_num_threads(max(1, int(cfg.cpus_per_worker)))
    _seed_everything(cfg.seed)  # identical initial weights on every rank (DDP also broadcasts them)

    model = models.build(cfg.model, **cfg.hparams)
    count = models.module_count(model)
    size_bytes = (count.params + count.stats) * models.storage_itemsize(cfg.storage_dtype)
    optimizer = make_optimizer(model, cfg)

    start_epoch, examples_seen, best, averaged = 0, 0, {"gap": -1.0, "epoch": 0}, None
    history: list[dict[str, Any]] = []
    run_dir = config["run_dir"]
    state = _resume_state(run_dir, rank)
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch, examples_seen, best = state["epoch"], state["examples_seen"], state["best"]
        averaged, history = state.get("averaged"), state["history"]
        _set_rng_state(state["rng"][min(rank, len(state["rng"]) - 1)])

    model = ray.train.torch.prepare_model(model)  # to the device; DDP when world > 1
    core: models.VideoModel = getattr(model, "module", model)
    train_shard = ray.train.get_dataset_shard("train")
    my_val_files = config["validation_files"][rank::world]
    per_worker_batch = cfg.batch_size // world
    num_classes = _num_classes(cfg)
    best_dir = fs.join(run_dir, "best")

    if history and start_epoch >= cfg.epochs:
        # Restored a run that had already finished (its driver died before the last report reached
        # Tune): report the final epoch again, so the caller still gets its result.
        ray.train.report(history[-1])
    for epoch in range(start_epoch + 1, cfg.epochs + 1):  # epochs are 1-based in every report
        model.train()
        started, steps, loss_sum, epoch_examples = time.perf_counter(), 0, 0.0, 0
        batches = iter_video_batches(
            train_shard,
            batch_size=per_worker_batch,
            num_classes=num_classes,
            pad_to=cfg.pad_to,
            shuffle_buffer=cfg.shuffle_buffer,
            seed=cfg.seed * 100_003 + epoch * 1_009 + rank,
            drop_last=True,  # every rank must take the same number of DDP steps
            dequantize=device.type == "cpu",  # GPUs get uint8 frames and dequantize them on the device
        )
        for batch in batches:
            _maybe_inject_fault(config.get("fault"), epoch, steps, rank)
            loss = train_step(model, optimizer, batch.to(device), cfg, examples_seen)
            steps += 1
            examples_seen += per_worker_batch * world
            epoch_examples += per_worker_batch * world
            loss_sum += loss.item()
            if cfg.max_steps_per_epoch and steps >= cfg.max_steps_per_epoch:
                break
        train_seconds = time.perf_counter() - started
        if steps == 0:
            raise RuntimeError(
                f"epoch {epoch}: no training batch on rank {rank} (fewer than {per_worker_batch} "
                "training videos per worker?)"
            )

        metrics, table = _evaluate_globally(core, my_val_files, cfg, device)
        if cfg.average_last > 1 and epoch > cfg.epochs - cfg.average_last:
            averaged = _accumulate_average(averaged, core)
        if metrics["gap"] > best["gap"]:  # the same decision on every rank: metrics are broadcast
            best = {"gap": metrics["gap"], "epoch": epoch}
            if rank == 0:
                _write_best(best_dir, _cpu_state(core), _meta(cfg, count, size_bytes, epoch, metrics), table)
        averaged_report: dict[str, Any] = {}
        if averaged is not None and epoch == cfg.epochs:
            avg_metrics, avg_state, avg_table = _evaluate_average(core, averaged, my_val_files, cfg, device)
            averaged_report = {f"averaged_{k}": v for k, v in avg_metrics.items()}
            averaged_report["averaged_epochs"] = averaged["count"]
            if avg_metrics["gap"] > best["gap"]:  # the average is what the trial exports, when it scores higher
                best = {"gap": avg_metrics["gap"], "epoch": epoch, "averaged_epochs": averaged["count"]}
                if rank == 0:
                    meta = _meta(cfg, count, size_bytes, epoch, avg_metrics) | {"averaged_epochs": averaged["count"]}
                    _write_best(best_dir, avg_state, meta, avg_table)

        worker_nodes = _gather(ray.get_runtime_context().get_node_id())  # on rank 0 only
        report = {
            **metrics,
            **({"nodes": len(set(worker_nodes))} if rank == 0 else {}),  # distinct nodes this epoch ran on
            "epoch": epoch,
            "train_loss": loss_sum / steps,
            "learning_rate": learning_rate(cfg, examples_seen),
            "examples_seen": examples_seen,
            "samples_per_s": epoch_examples / train_seconds,
            "params": count.params,
            "size_bytes": size_bytes,
            "gap_best": best["gap"],
            "best_epoch": best["epoch"],
            "best_averaged_epochs": best.get("averaged_epochs", 0),  # >0: best/ holds averaged weights
            "checkpoint": best_dir,
            "predictions": fs.join(best_dir, "predictions.parquet"),
            **averaged_report,
        }

        history.append(report)
        if rank == 0:
            with fs.atomic_output(fs.join(run_dir, "history.json")) as f:
                f.write(json.dumps(history, indent=1).encode())
        rngs = _gather(_rng_state())
        with tempfile.TemporaryDirectory() as directory:
            ckpt = None
            if rank == 0:
                _save_checkpoint_dir(
                    Path(directory),
                    {
                        "model": _cpu_state(core),
                        "optimizer": optimizer.state_dict(),
                        "epoch": epoch,
                        "examples_seen": examples_seen,
                        "best": best,
                        "averaged": averaged,
                        "history": history,
                        "rng": rngs,
                        "train_config": dataclasses.asdict(cfg),
                    },
                )
                ckpt = ray.train.Checkpoint.from_directory(directory)
            ray.train.report(report, checkpoint=ckpt, checkpoint_dir_name=f"epoch_{epoch:03d}")
    return history


def _num_classes(cfg: TrainConfig) -> int:
    return int(models.resolve(cfg.model, **cfg.hparams).get("num_classes", NUM_CLASSES))


def _cpu_state(model: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def _meta(cfg: TrainConfig, count: models.Count, size_bytes: int, epoch: int, metrics: dict[str, Any]) -> dict[str, Any]:
    return {
        "model": cfg.model,
        "hparams": models.resolve(cfg.model, **cfg.hparams),
        "epoch": epoch,
        "params": count.params,
        "stats": count.stats,
        "size_bytes": size_bytes,
        "storage_dtype": cfg.storage_dtype,
        "metrics": {k: v for k, v in metrics.items() if not k.startswith("_")},
    }


def _evaluate_globally(
    model: models.VideoModel, files: list[str], cfg: TrainConfig, device: torch.device
) -> tuple[dict[str, Any], pa.Table | None]:
    """Evaluate this worker's files and merge every worker's state on rank 0.

    Returns the global metrics (on every rank) and the predictions table (on rank 0, else None).
    """
    num_classes = _num_classes(cfg)
    batches: Iterable[VideoBatch] = []
    if files:
        batches = iter_video_batches(
            read_videos(files, listed=True),  # listed by fit
            batch_size=cfg.eval_batch_size,
            num_classes=num_classes,
            pad_to=cfg.pad_to,
            dequantize=device.type == "cpu",
        )
    gathered = _gather(evaluate(model, batches, device, cfg.prediction_top_k, num_classes))
    metrics, table = None, None
    if gathered is not None:
        merged = MetricAccumulator.from_states([e.state for e in gathered])
        result = merged.result()
        metrics = {
            "gap": result["gap"],
            "hit_at_one": result["hit_at_one"],
            "perr": result["perr"],
            "map": result["map"],
            "val_loss": result.get("loss", math.nan),
            "val_videos": merged.num_videos,
        }
        table = predictions_table(gathered)
    return _broadcast(metrics), table


def _accumulate_average(averaged: dict[str, Any] | None, model: nn.Module) -> dict[str, Any]:
    """Running sum of floating-point state (weights and BN statistics), as in boliu61's averaging."""
    state = _cpu_state(model)
    if averaged is None:
        return {"count": 1, "sum": {k: v.double() if v.is_floating_point() else v for k, v in state.items()}}
    for k, v in state.items():
        if v.is_floating_point():
            averaged["sum"][k] += v.double()
        else:
            averaged["sum"][k] = v
    averaged["count"] += 1
    return averaged


def _evaluate_average(
    model: models.VideoModel, averaged: dict[str, Any], files: list[str], cfg: TrainConfig, device: torch.device
) -> tuple[dict[str, Any], dict[str, Tensor], pa.Table | None]:
    """Evaluate the averaged weights (then restore the trained ones): metrics, the averaged state and
    its predictions table (rank 0)."""
    trained = _cpu_state(model)
    n = averaged["count"]
    avg = {k: (v / n).to(trained[k].dtype) if v.is_floating_point() else v for k, v in averaged["sum"].items()}
    model.load_state_dict(avg)
    metrics, table = _evaluate_globally(model, files, cfg, device)
    model.load_state_dict(trained)
    return metrics, avg, table


# ---------------------------------------------------------------------------------------------
# The driver side


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


def fit(
    cfg: TrainConfig,
    train: str | Sequence[str],
    validation: str | Sequence[str],
    storage_path: str,
    name: str,
    *,
    callbacks: Sequence[Any] = (),
    fault: dict[str, Any] | None = None,
) -> TrialResult:
    """Train ``cfg`` with a TorchTrainer; resume automatically from ``<storage_path>/<name>``.

    Call with Ray initialised. The run name must be deterministic (no timestamps): a restarted
    driver then finds and resumes the same run.
    """
    import ray.train
    from ray.train.torch import TorchTrainer

    validation_files = fs.list_files(validation, pattern="*.parquet")
    train_files = fs.list_files(train, pattern="*.parquet")
    for role, files, where in (("training", train_files, train), ("validation", validation_files, validation)):
        if not files:
            raise ValueError(f"no {role} Parquet shards (*.parquet) found at {where}")
    storage_path = os.path.abspath(storage_path) if fs.is_local(storage_path) else storage_path
    for key, value in TRAIN_ENV.items():
        os.environ.setdefault(key, value)  # a user's own setting wins
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "train": dataclasses.asdict(cfg),
            "validation_files": validation_files,
            "run_dir": fs.join(storage_path, name),
            "fault": fault,
        },
        scaling_config=ray.train.ScalingConfig(
            num_workers=cfg.num_workers,
            use_gpu=cfg.gpus_per_worker > 0,
            resources_per_worker={"CPU": cfg.cpus_per_worker, **({"GPU": cfg.gpus_per_worker} if cfg.gpus_per_worker else {})},
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
    result = trainer.fit()
    if result.error is not None:
        raise result.error
    m = result.metrics
    return TrialResult(
        gap=m["gap_best"],
        epochs=m["epoch"],
        params=m["params"],
        size_bytes=m["size_bytes"],
        checkpoint=m["checkpoint"],
        predictions=m["predictions"],
        metrics=dict(m),
        history=list(result.return_value or []),
    )
