"""Where the worker loop runs: the one seam between the loop and what hosts it.

- ``RaySession``: a Ray Train worker of a TorchTrainer (DDP over several workers). Checkpoints go
  through ``ray.train.report``, which persists them to ``<run>/epoch_NNN/``.
- ``LocalSession``: the calling process itself (a one-worker trial runs inside its Tune trial).
  Train V2 would start a controller, a worker, and Ray Data's dataset and split-coordinator actors
  for every run: about 28 s of fixed cost per trial on 2 cores, against Tune's 3 s. Here the loop
  writes its checkpoints to the same ``<run>/epoch_NNN/`` layout itself and hands each report to
  the caller, so resuming (``checkpoints.resume_state``) and Tune-level retries work the same.

Ray is imported inside the functions: ``import yt8m_search.train`` loads without it.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from yt8m_search.data import fs
from yt8m_search.train.checkpoints import CHECKPOINT_FILE, epoch_checkpoints

Report = Callable[[dict[str, Any]], None]


class Session(Protocol):
    """What the loop needs from its host: its place in the group, its device, its share of the
    training set, and where each epoch's report and checkpoint go."""

    rank: int
    world: int
    device: torch.device

    def prepare_model(self, model: nn.Module) -> nn.Module: ...

    def train_shard(self) -> Any: ...  # a Ray dataset or a Train worker's DataIterator

    def node_id(self) -> str: ...

    def report(self, metrics: dict[str, Any], checkpoint: Path | None, epoch: int) -> None: ...


class RaySession:
    """A worker of a TorchTrainer run (``ray.train`` context)."""

    def __init__(self) -> None:
        import ray.train
        import ray.train.torch

        ctx = ray.train.get_context()
        self.rank, self.world = ctx.get_world_rank(), ctx.get_world_size()
        self.device: torch.device = ray.train.torch.get_device()

    def prepare_model(self, model: nn.Module) -> nn.Module:
        import ray.train.torch

        return ray.train.torch.prepare_model(model)  # to the device; DDP when world > 1

    def train_shard(self) -> Any:
        import ray.train

        return ray.train.get_dataset_shard("train")

    def node_id(self) -> str:
        import ray

        return ray.get_runtime_context().get_node_id()

    def report(self, metrics: dict[str, Any], checkpoint: Path | None, epoch: int) -> None:
        import ray.train

        saved = ray.train.Checkpoint.from_directory(str(checkpoint)) if checkpoint is not None else None
        ray.train.report(metrics, checkpoint=saved, checkpoint_dir_name=epoch_dir(epoch))


@dataclass
class LocalSession:
    """The loop in the calling process: rank 0 of 1, its own checkpoint writer, ``on_report`` per epoch.

    ``train_data``: the training set as a Ray dataset (read anew, reshuffled, every epoch);
    ``keep``: how many epoch checkpoints stay in storage (the newest ones)."""

    run_dir: str
    train_data: Any
    keep: int
    on_report: Report | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    rank: int = 0
    world: int = 1

    def prepare_model(self, model: nn.Module) -> nn.Module:
        return model.to(self.device)

    def train_shard(self) -> Any:
        return self.train_data

    def node_id(self) -> str:
        import ray

        return ray.get_runtime_context().get_node_id() if ray.is_initialized() else "local"

    def report(self, metrics: dict[str, Any], checkpoint: Path | None, epoch: int) -> None:
        """Persist the checkpoint first: a report seen by Tune always has its checkpoint behind it."""
        if checkpoint is not None:
            persist_checkpoint(checkpoint, fs.join(self.run_dir, epoch_dir(epoch)))
            prune_checkpoints(self.run_dir, self.keep)
        if self.on_report is not None:
            self.on_report(metrics)


def epoch_dir(epoch: int) -> str:
    return f"epoch_{epoch:03d}"


def persist_checkpoint(source: Path, target: str) -> None:
    """Copy a checkpoint folder's state file into storage (local or s3://), atomically."""
    fs.makedirs(target)
    with open(source / CHECKPOINT_FILE, "rb") as src, fs.atomic_output(fs.join(target, CHECKPOINT_FILE)) as dst:
        shutil.copyfileobj(src, dst, length=8 << 20)


def prune_checkpoints(run_dir: str, keep: int) -> None:
    """Delete all but the newest ``keep`` epoch checkpoints of a run."""
    for directory in epoch_checkpoints(run_dir)[keep:]:
        fs.remove(fs.join(directory, CHECKPOINT_FILE))
        if fs.is_local(directory):
            shutil.rmtree(directory, ignore_errors=True)


def local_device(gpus: float) -> torch.device:
    """The device of an in-process trial: the GPU Ray assigned to it (CUDA_VISIBLE_DEVICES), else the CPU."""
    return torch.device("cuda", 0) if gpus > 0 and torch.cuda.is_available() else torch.device("cpu")


__all__ = [
    "LocalSession",
    "RaySession",
    "Report",
    "Session",
    "epoch_dir",
    "local_device",
    "persist_checkpoint",
    "prune_checkpoints",
]
