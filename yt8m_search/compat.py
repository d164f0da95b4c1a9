"""Every private name of Ray, Optuna, W&B and torch that the project relies on, and nowhere else.

Each is wrapped in a small public function, so an upgrade that renames one breaks here, in one
file, and ``missing_private_names()`` (run by the test suite) says which one in plain words. Why
each is needed is written beside it. Ray, Optuna and W&B are imported inside the functions: the
training loop imports this module for torch alone.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

# (module, attribute path): the private names below, checked by ``missing_private_names``
PRIVATE_NAMES: tuple[tuple[str, str], ...] = (
    ("torch", "_foreach_norm"),
    ("torch", "_foreach_mul_"),
    ("ray.tune.search.optuna", "OptunaSearch._ot_study"),
    ("ray.tune.search.optuna", "OptunaSearch._ot_trials"),
    ("ray.tune.search.optuna", "OptunaSearch._completed_trials"),
    ("ray.air.integrations.wandb", "_WandbLoggingActor"),
    ("ray.air.integrations.wandb", "WandbLoggerCallback._logger_actor_cls"),
    ("ray.air.integrations.wandb", "_WandbLoggingActor._handle_result"),
    ("ray.air.integrations.wandb", "_QueueItem"),
)


# ---------------------------------------------------------------------------------------------
# torch: fused per-tensor norms (one kernel launch for all gradients instead of one per tensor; the
# per-parameter clipping of the recipe runs every step)


def foreach_norm(tensors: Sequence[Tensor]) -> list[Tensor]:
    """The L2 norm of every tensor."""
    return list(torch._foreach_norm(list(tensors)))


def foreach_mul_(tensors: Sequence[Tensor], scales: Sequence[Tensor]) -> None:
    """``tensors[i] *= scales[i]`` in place."""
    torch._foreach_mul_(list(tensors), list(scales))


# ---------------------------------------------------------------------------------------------
# Ray Tune's OptunaSearch: it tells Optuna COMPLETE for every finished trial. An ASHA-stopped trial
# must reach Optuna as PRUNED instead, and OptunaSearch has no public hook for that: the study, the
# Tune-id -> Optuna-trial map and the set of trials already told live in private attributes.


def tell_optuna_pruned(searcher: Any, trial_id: str) -> bool:
    """Tell ``searcher``'s study that Tune trial ``trial_id`` was pruned; False when it was already told."""
    import optuna

    if trial_id in searcher._completed_trials:
        return False
    searcher._ot_study.tell(searcher._ot_trials[trial_id], state=optuna.trial.TrialState.PRUNED)
    searcher._completed_trials.add(trial_id)
    return True


def reject_optuna_trial(searcher: Any, trial_id: str) -> None:
    """End the Optuna trial ``searcher`` just asked for Tune trial ``trial_id`` as PRUNED (an
    infeasible draw: its constraints, set while sampling, say why) and forget the mapping, so the
    next ``suggest(trial_id)`` asks Optuna for a new trial. PRUNED, not FAIL: TPE reads COMPLETE and
    PRUNED trials only, and puts those whose constraints are > 0 below every feasible one."""
    import optuna

    searcher._ot_study.tell(searcher._ot_trials.pop(trial_id), state=optuna.trial.TrialState.PRUNED)


def optuna_study(searcher: Any) -> Any:
    """The ``optuna.Study`` that ``searcher`` asks and tells (there once its metric and mode are set)."""
    return searcher._ot_study


def optuna_trial(searcher: Any, trial_id: str) -> Any:
    """The live ``optuna.Trial`` that ``searcher`` asked for Tune trial ``trial_id`` (to report per-epoch
    values and set attributes on, which OptunaSearch has no hook for); None once told, or unknown."""
    if trial_id in searcher._completed_trials:
        return None
    return searcher._ot_trials.get(trial_id)


def mark_optuna_told(searcher: Any, trial_id: str) -> None:
    """Count Tune trial ``trial_id`` as told, without telling the study (someone else did)."""
    searcher._completed_trials.add(trial_id)


def optuna_trial_numbers(searcher: Any) -> set[int]:
    """The Optuna numbers of the trials ``searcher`` holds for Tune trials (told or not)."""
    return {trial.number for trial in searcher._ot_trials.values()}


# ---------------------------------------------------------------------------------------------
# Ray's W&B integration: the per-trial logging actor is private, and subclassing it is the only way
# to run code (``define_metric``) inside the actor's process after ``wandb.init``.


def wandb_logging_actor_class() -> type:
    """Ray's ``_WandbLoggingActor``."""
    from ray.air.integrations import wandb as ray_wandb

    return ray_wandb._WandbLoggingActor


# The actor's queue protocol, for tests that drive a logging actor without a cluster: the item kinds
# (RESULT, CHECKPOINT, END) Ray's callback puts on the actor's queue, and the method that turns one
# result into (metrics logged, config update).


def wandb_callback_class(actor_cls: type) -> type:
    """A subclass of Ray's ``WandbLoggerCallback`` whose per-trial actor is ``actor_cls`` (the class
    attribute Ray reads for it is private)."""
    from ray.air.integrations.wandb import WandbLoggerCallback

    return type("WandbLoggerCallbackWithActor", (WandbLoggerCallback,), {"_logger_actor_cls": actor_cls})


def wandb_queue_item_kinds() -> Any:
    """Ray's ``_QueueItem`` enum."""
    from ray.air.integrations import wandb as ray_wandb

    return ray_wandb._QueueItem


def wandb_actor_split_result(actor: Any, result: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(what ``actor`` logs, what it adds to the run config) for one Tune result."""
    return actor._handle_result(result)


# ---------------------------------------------------------------------------------------------
# The check


# ---------------------------------------------------------------------------------------------
# Ray: the raylet's limit on idle task workers (a config of its C++ core, read from RAY_<name> when
# Ray starts). Ray keeps as many idle workers as there are free CPUs and kills the others after 1 s.
# In a local sweep the trials' processes hold CPUs, so each epoch's read tasks start new processes
# (Python, Ray's worker and pyarrow imported again) that are killed while the trial evaluates.
RAY_IDLE_WORKERS_CONFIG = "num_workers_soft_limit"


def keep_idle_workers(count: int) -> None:
    """Let the Ray that this process starts next keep up to ``count`` idle task workers (a user's own
    ``RAY_num_workers_soft_limit`` wins). No effect on a Ray already running, or on a cluster's."""
    os.environ.setdefault(f"RAY_{RAY_IDLE_WORKERS_CONFIG}", str(count))


def idle_workers_kept(cpus: int) -> int:
    """How many idle read workers a local Ray keeps: as many as read tasks fit on its CPUs
    (``data.loading.READ_CPUS`` each), at most 16 (an idle worker holds about 100 MB)."""
    from yt8m_search.data.loading import READ_CPUS

    return min(16, round(max(1, cpus) / READ_CPUS))


def _raylet_knows(config: str) -> bool:
    import ray

    raylet = Path(ray.__file__).parent / "core" / "src" / "ray" / "raylet" / "raylet"
    return raylet.exists() and config.encode() in raylet.read_bytes()


def _resolve(module: str, path: str) -> Any:
    obj: Any = importlib.import_module(module)
    for part in path.split("."):
        if part in ("_ot_study", "_ot_trials", "_completed_trials"):
            return _instance_attribute(obj, part)
        obj = getattr(obj, part)
    return obj


def _instance_attribute(cls: type, name: str) -> Any:
    """Instance attributes set in ``__init__`` are not on the class: look in a fresh instance."""
    import optuna

    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "new study created" line per check
    try:
        instance = cls(space={"x": optuna.distributions.FloatDistribution(0, 1)}, metric="m", mode="max")
    finally:
        optuna.logging.set_verbosity(verbosity)
    return getattr(instance, name)


def missing_private_names() -> list[str]:
    """The private names an upgrade removed, each as a sentence naming where it was used."""
    missing = []
    for module, path in PRIVATE_NAMES:
        try:
            _resolve(module, path)
        except (AttributeError, ImportError) as err:
            missing.append(f"{module}.{path} is gone ({type(err).__name__}: {err}); "
                           "yt8m_search.compat wraps it: adapt the wrapper to the new version")
    if not _raylet_knows(RAY_IDLE_WORKERS_CONFIG):
        missing.append(f"Ray's raylet no longer has the config {RAY_IDLE_WORKERS_CONFIG}; "
                       "yt8m_search.compat.keep_idle_workers sets it: adapt it to the new version")
    return missing


__all__ = [
    "PRIVATE_NAMES",
    "RAY_IDLE_WORKERS_CONFIG",
    "idle_workers_kept",
    "keep_idle_workers",
    "foreach_mul_",
    "foreach_norm",
    "mark_optuna_told",
    "missing_private_names",
    "optuna_study",
    "optuna_trial",
    "optuna_trial_numbers",
    "reject_optuna_trial",
    "tell_optuna_pruned",
    "wandb_actor_split_result",
    "wandb_callback_class",
    "wandb_logging_actor_class",
    "wandb_queue_item_kinds",
]
