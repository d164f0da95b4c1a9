"""A trial's epoch checkpoints and the state a restarted worker group resumes from.

The layout of a run in storage (a local folder or s3://): ``<storage>/<name>/epoch_NNN/state.pt``
(Ray Train checkpoints, the last ``keep_checkpoints`` kept), ``<storage>/<name>/history.json`` (every
epoch's report) and ``<storage>/<name>/best/`` (``artifacts``: the best epoch's model, meta and
predictions).
"""

from __future__ import annotations

import dataclasses
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from yt8m_search.data import fs
from yt8m_search.train.collective import broadcast

CHECKPOINT_FILE = "state.pt"
HISTORY_FILE = "history.json"


@dataclass
class Progress:
    """What a worker carries from epoch to epoch, and a checkpoint restores (with the weights, the
    optimizer and the random generators)."""

    epoch: int = 0  # the last finished epoch (epochs are 1-based in every report)
    examples_seen: int = 0  # counted globally: the learning-rate schedule's clock
    best: dict[str, Any] = field(default_factory=lambda: {"gap": -1.0, "epoch": 0})
    averaged: dict[str, Any] | None = None  # running sum of the last epochs' weights (``evaluation``)
    history: list[dict[str, Any]] = field(default_factory=list)  # every epoch's report, each epoch once

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Progress:
        return cls(state["epoch"], state["examples_seen"], state["best"], state.get("averaged"), state["history"])

    def state(self, model: dict[str, Any], optimizer: dict[str, Any], rngs: list[Any] | None,
              train_config: Any) -> dict[str, Any]:
        """The checkpoint's contents (``state.pt``)."""
        return {"model": model, "optimizer": optimizer, "epoch": self.epoch, "examples_seen": self.examples_seen,
                "best": self.best, "averaged": self.averaged, "history": self.history, "rng": rngs,
                "train_config": dataclasses.asdict(train_config)}


def save_checkpoint_dir(directory: Path, state: dict[str, Any]) -> None:
    torch.save(state, directory / CHECKPOINT_FILE)


def epoch_checkpoints(run_dir: str) -> list[str]:
    """A run's ``epoch_NNN`` checkpoint directories that hold a state file, newest first."""
    try:
        files = fs.list_files(fs.join(run_dir, f"epoch_*/{CHECKPOINT_FILE}"))
    except FileNotFoundError:
        return []
    return [f.rsplit("/", 1)[0] for f in reversed(files)]  # epoch_NNN sorts by epoch


def read_state(directory: str) -> dict[str, Any]:
    data = fs.read_bytes(fs.join(directory, CHECKPOINT_FILE))
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)


def newest_state(directories: Sequence[str]) -> tuple[dict[str, Any] | None, str | None]:
    """The newest readable state of ``directories`` (newest first) and where it came from."""
    for directory in directories:
        try:
            return read_state(directory), directory
        except Exception as err:  # noqa: BLE001 - an upload cut short by a failure: take the one before
            print(f"skipping unreadable checkpoint {directory}: {type(err).__name__}: {err}", flush=True)
    return None, None


def resume_state(run_dir: str, rank: int) -> dict[str, Any] | None:
    """The state to continue from, the same on every rank; None for a fresh start.

    The newest complete checkpoint in the run's storage (where Ray Train persists its checkpoints
    too), not Ray Train's latest registered one: Train V2 registers a checkpoint only once every
    worker's report is in, so a node lost just after an epoch's checkpoint was written, or a run
    that failed for good and is started again under the same name (a Tune-level retry), would
    otherwise start that epoch, or the whole run, over.
    """
    state, source = newest_state(epoch_checkpoints(run_dir)) if rank == 0 else (None, None)
    source = broadcast(source)
    if source is None or rank == 0:
        return state
    return read_state(source)


def write_history(run_dir: str, history: list[dict[str, Any]]) -> None:
    """Every epoch's report as ``history.json`` beside the checkpoints (rank 0)."""
    with fs.atomic_output(fs.join(run_dir, HISTORY_FILE)) as f:
        f.write(json.dumps(history, indent=1).encode())


__all__ = [
    "CHECKPOINT_FILE",
    "HISTORY_FILE",
    "Progress",
    "epoch_checkpoints",
    "newest_state",
    "read_state",
    "resume_state",
    "save_checkpoint_dir",
    "write_history",
]
