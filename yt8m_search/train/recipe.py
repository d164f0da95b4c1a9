"""The training recipe's pieces: schedule, clipping, optimizer, one step, autocast and seeding.

NeXtVLAD paper and linrongc/youtube-8m code, all configurable in the trial settings: Adam at 2e-4;
staircase decay x0.8 every 2M *examples* (counted globally, so the schedule does not depend on the
number of workers); per-parameter clip-by-norm at 1.0 (TF's clip_gradient_norms, not a global
norm); coupled L2 1e-5 on the classifier only; bf16 autocast on GPU, fp32 on CPU.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from yt8m_search import compat, models
from yt8m_search.config.trial import TrialSettings
from yt8m_search.data.batch import VideoBatch


def learning_rate(cfg: TrialSettings, examples_seen: int) -> float:
    """Staircase exponential decay counted in examples (TF exponential_decay(staircase=True))."""
    return cfg.learning_rate * cfg.lr_decay ** (examples_seen // cfg.lr_decay_examples)


def clip_per_parameter_(parameters: Iterable[nn.Parameter], max_norm: float) -> None:
    """TF clip_by_norm on every gradient separately: g * max_norm / max(||g||, max_norm)."""
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads or max_norm <= 0:
        return
    norms = compat.foreach_norm(grads)
    scales = [torch.clamp(max_norm / torch.clamp(n, min=max_norm), max=1.0) for n in norms]
    compat.foreach_mul_(grads, scales)


def make_optimizer(model: models.VideoModel, cfg: TrialSettings) -> torch.optim.Adam:
    """Adam (TF defaults) with coupled L2 (``weight_decay``) on the classifier tensors only."""
    l2_ids = {id(p) for p in model.l2_parameters()}
    decayed = [p for p in model.parameters() if id(p) in l2_ids]
    plain = [p for p in model.parameters() if id(p) not in l2_ids]
    groups = [{"params": plain, "weight_decay": 0.0}, {"params": decayed, "weight_decay": cfg.l2}]
    return torch.optim.Adam(groups, lr=cfg.learning_rate, betas=(0.9, 0.999), eps=1e-8)


def autocast(device: torch.device) -> Any:
    """bf16 on GPUs; on CPUs fp32 (CPU bf16 autocast is slower than fp32 on most machines)."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


def train_step(
    model: nn.Module, optimizer: torch.optim.Optimizer, batch: VideoBatch, cfg: TrialSettings, examples_seen: int
) -> Tensor:
    """One optimisation step of the recipe on a batch already on the model's device; returns the loss.

    ``model`` may be DDP-wrapped: the forward goes through the wrapper (gradient sync), the loss
    through the family's own ``loss``."""
    core: models.VideoModel = getattr(model, "module", model)
    for group in optimizer.param_groups:
        group["lr"] = learning_rate(cfg, examples_seen)
    with autocast(batch.features.device):
        output = model(batch.features, batch.mask)
    loss = core.loss(output, batch.labels)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    clip_per_parameter_([p for group in optimizer.param_groups for p in group["params"]], cfg.clip_norm)
    optimizer.step()
    return loss


def rng_state() -> dict[str, Any]:
    """Every random generator the loop draws from (checkpointed per rank, so a resumed epoch
    shuffles and drops out as the uninterrupted run would have)."""
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():  # a GPU trial's dropout draws from it
        state["cuda"] = torch.cuda.get_rng_state()  # the current device's (one per process)
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():  # restored on the GPU of the resuming process
        torch.cuda.set_rng_state(state["cuda"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def cpu_state(model: nn.Module) -> dict[str, Tensor]:
    """A copy of the model's state on the CPU (what checkpoints, best/ and the averaging keep)."""
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


__all__ = [
    "autocast",
    "clip_per_parameter_",
    "cpu_state",
    "learning_rate",
    "make_optimizer",
    "rng_state",
    "seed_everything",
    "set_rng_state",
    "train_step",
]
