"""W&B tracking of a sweep: one W&B run per trial, all in one group per sweep, through Ray's
``WandbLoggerCallback``.

Every run gets the trial's flat hyperparameters as its config, plus ``params`` and ``size_bytes``
(so W&B's parallel-coordinates and importance panels can use them), and per-epoch metrics stepped
by ``epoch``. Run summaries keep the best value of each metric (max GAP, min loss), not the last
one, so the sweep table ranks trials the way the search does.

Offline unless the user asks for ``online`` *and* has ``WANDB_API_KEY`` set; offline runs land in
each trial's folder under the run folder and can be uploaded later with ``wandb sync``. The key
only ever travels as an environment variable: never into a config, a log line or a result.
"""

from __future__ import annotations

import os
from typing import Any

from ray.air.integrations.wandb import WANDB_PROCESS_RUN_INFO_HOOK, WandbLoggerCallback

from yt8m_search import compat

# metric -> summary W&B keeps for it; all are stepped by "epoch"
SUMMARIES = {
    "gap": "max",
    "gap_best": "max",
    "averaged_gap": "max",
    "hit_at_one": "max",
    "perr": "max",
    "map": "max",
    "val_loss": "min",
    "train_loss": "min",
    "samples_per_s": "mean",
}
EXCLUDED = ["checkpoint", "predictions", "infeasible_reason", "config"]  # config: logged as the run config


def define_metrics(run: Any) -> None:
    """Step every metric by ``epoch`` and keep its best value as the run's summary."""
    run.define_metric("epoch")
    for name, summary in SUMMARIES.items():
        run.define_metric(name, step_metric="epoch", summary=summary)


class _TrialLoggingActor(compat.wandb_logging_actor_class()):  # type: ignore[misc]
    """Ray's logging actor (one process per trial), with ``define_metrics`` run after ``wandb.init``
    through Ray's own run-info hook."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        os.environ[WANDB_PROCESS_RUN_INFO_HOOK] = f"{__name__}.define_metrics"
        super().__init__(*args, **kwargs)


class SweepWandbCallback(compat.wandb_callback_class(_TrialLoggingActor)):  # type: ignore[misc]
    # result keys copied into the run's config: the model's size next to its hyperparameters
    AUTO_CONFIG_KEYS = [*WandbLoggerCallback.AUTO_CONFIG_KEYS, "params", "size_bytes"]


def wandb_mode(requested: str) -> str:
    """The mode to run in: ``online`` falls back to ``offline`` without an API key."""
    if requested == "online" and not os.environ.get("WANDB_API_KEY"):
        return "offline"
    return requested


def wandb_callback(project: str, entity: str | None, mode: str, group: str) -> SweepWandbCallback | None:
    """The sweep's W&B callback, or None when W&B is disabled. Call in the driver before Tune starts."""
    if mode == "disabled":
        return None
    effective = wandb_mode(mode)
    if effective != mode:
        print("wandb: mode online but no WANDB_API_KEY is set; logging offline (sync later with `wandb sync`)")
    if effective == "offline":
        os.environ["WANDB_MODE"] = "offline"  # Ray checks this in the driver before looking for a key
    os.environ.setdefault("WANDB_SILENT", "true")
    return SweepWandbCallback(
        project=project, entity=entity, group=group, mode=effective, upload_timeout=60, excludes=EXCLUDED
    )
