"""W&B tracking of a sweep: one W&B run per trial, all in one group per sweep, through Ray's
``WandbLoggerCallback``.

Every run gets the trial's flat hyperparameters as its config, plus ``params``, ``size_bytes``,
``flops`` and ``device`` (so W&B's parallel-coordinates and importance panels can use them), and
per-epoch metrics stepped by ``epoch``. Run summaries keep the best value of each metric (max GAP,
min loss), not the last one, so the sweep table ranks trials the way the search does.

Offline unless the user asks for ``online`` *and* has ``WANDB_API_KEY`` set; offline runs land in
each trial's folder under the run folder and can be uploaded later with ``wandb sync``. The key
only ever travels as an environment variable: never into a config, a log line or a result.

Tune calls every callback from the one loop that serves all trials, and Ray's callback blocks it:
its first call for a trial waits until that trial's logging and queue actors have started (16 s on
a busy 2-core machine), so every other trial waits too. ``OffLoop`` takes the calls off that loop.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from typing import Any

from ray import tune
from ray.air.integrations.wandb import WANDB_PROCESS_RUN_INFO_HOOK, WandbLoggerCallback

from yt8m_search import compat, logs

logger = logging.getLogger(__name__)

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
    "latency_ms": "min",
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
    # result keys copied into the run's config: the model's size and FLOPs next to its hyperparameters
    AUTO_CONFIG_KEYS = [*WandbLoggerCallback.AUTO_CONFIG_KEYS, "params", "size_bytes", "flops", "device"]


class OffLoop(tune.Callback):
    """Forwards Tune's trial hooks to ``inner`` in call order, on one daemon thread of the driver,
    so a slow ``inner`` never holds up the loop that serves the trials: each hook only enqueues.

    Safe for Ray's W&B callback: it is the thread's alone (only the thread calls it, one call at a
    time), Ray's core API is thread-safe (Ray Data's executor drives tasks from a driver thread
    too), and what it reads of a trial (id, name, config, folder) is fixed when the trial is made.
    The trials list and the result are copied at enqueue time, because Tune goes on changing them.
    ``on_experiment_end`` waits for the thread to deliver everything, at most ``drain_s`` seconds.
    """

    def __init__(self, inner: tune.Callback, drain_s: float) -> None:
        self.inner, self.drain_s = inner, drain_s
        self._calls: queue.Queue[tuple[str, dict[str, Any]] | None] | None = None
        self._thread: threading.Thread | None = None

    def __getstate__(self) -> dict[str, Any]:
        # Tune stores its callbacks with the sweep (tuner.pkl); a thread and its queue do not pickle
        return {**self.__dict__, "_calls": None, "_thread": None}

    def setup(self, **info: Any) -> None:
        self.inner.setup(**info)  # quick (reads the API key and project), and its errors should stop the sweep

    def on_trial_start(self, **info: Any) -> None:
        self._enqueue("on_trial_start", info)

    def on_trial_restore(self, **info: Any) -> None:
        self._enqueue("on_trial_restore", info)

    def on_trial_save(self, **info: Any) -> None:
        self._enqueue("on_trial_save", info)

    def on_trial_result(self, **info: Any) -> None:
        self._enqueue("on_trial_result", info)

    def on_trial_complete(self, **info: Any) -> None:
        self._enqueue("on_trial_complete", info)

    def on_trial_recover(self, **info: Any) -> None:
        self._enqueue("on_trial_recover", info)

    def on_trial_error(self, **info: Any) -> None:
        self._enqueue("on_trial_error", info)

    def on_checkpoint(self, **info: Any) -> None:
        self._enqueue("on_checkpoint", info)

    def on_experiment_end(self, **info: Any) -> None:
        self._enqueue("on_experiment_end", info)
        calls, thread = self._calls, self._thread
        assert calls is not None and thread is not None
        calls.put(None)
        thread.join(self.drain_s)
        if thread.is_alive():  # qsize counts the end marker in place of the call in progress
            logger.error("%s: %d calls not delivered after %g s; their W&B data may be missing",
                         type(self.inner).__name__, calls.qsize(), self.drain_s)
        self._calls = self._thread = None

    def _enqueue(self, hook: str, info: dict[str, Any]) -> None:
        if "trials" in info:
            info["trials"] = list(info["trials"])
        if "result" in info:
            info["result"] = dict(info["result"])  # Tune updates it in place after the callbacks
        if self._thread is None:  # started here, not in setup: also a copy unpickled for --resume
            self._calls = queue.Queue()
            self._thread = threading.Thread(target=_deliver, args=(self._calls, self.inner),
                                            name=f"{type(self.inner).__name__}-calls", daemon=True)
            self._thread.start()
        assert self._calls is not None
        self._calls.put((hook, info))


def _deliver(calls: queue.Queue[tuple[str, dict[str, Any]] | None], inner: tune.Callback) -> None:
    """The thread: each call in turn, until the end marker. A failing call is logged and skipped,
    because losing a W&B entry must not stop the sweep."""
    while (call := calls.get()) is not None:
        hook, info = call
        try:
            getattr(inner, hook)(**info)
        except Exception:
            logger.exception("%s.%s failed", type(inner).__name__, hook)


def wandb_mode(requested: str) -> str:
    """The mode to run in: ``online`` falls back to ``offline`` without an API key."""
    if requested == "online" and not os.environ.get("WANDB_API_KEY"):
        return "offline"
    return requested


def wandb_callback(project: str, entity: str | None, mode: str, group: str) -> OffLoop | None:
    """The sweep's W&B callback (``OffLoop`` around a ``SweepWandbCallback``), or None when W&B is
    disabled. Call in the driver before Tune starts."""
    if mode == "disabled":
        return None
    effective = wandb_mode(mode)
    if effective != mode:
        logs.say("wandb: mode online but no WANDB_API_KEY is set; logging offline (sync later with `wandb sync`)")
    if effective == "offline":
        os.environ["WANDB_MODE"] = "offline"  # Ray checks this in the driver before looking for a key
    os.environ.setdefault("WANDB_SILENT", "true")
    upload_timeout = 60
    inner = SweepWandbCallback(
        project=project, entity=entity, group=group, mode=effective, upload_timeout=upload_timeout, excludes=EXCLUDED
    )
    # the drain covers the calls still queued (each trial's first waits for its actors) plus Ray's
    # own wait of upload_timeout for the runs to finish
    return OffLoop(inner, drain_s=upload_timeout + 60)
