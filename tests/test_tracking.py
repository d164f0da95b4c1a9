"""W&B tracking: summaries keep each metric's best epoch, config gets the model's size, no secrets;
the callback never holds up the loop that serves the trials."""

from __future__ import annotations

import logging
import os
import pickle
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from ray import tune

from yt8m_search import compat, tracking


def test_run_summaries_keep_the_best_epoch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import wandb

    monkeypatch.setenv("WANDB_SILENT", "true")
    run = wandb.init(mode="offline", dir=str(tmp_path), project="t", config={"groups": 4})
    tracking.define_metrics(run)
    for epoch, gap, loss in ((1, 0.2, 3.0), (2, 0.5, 2.0), (3, 0.4, 2.5)):
        run.log({"epoch": epoch, "gap": gap, "val_loss": loss})
    assert run.summary["gap"]["max"] == 0.5 and run.summary["val_loss"]["min"] == 2.0
    run.finish()
    assert list(tmp_path.glob("wandb/offline-run-*"))


def test_online_without_a_key_falls_back_to_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    assert tracking.wandb_mode("online") == "offline"
    callback = tracking.wandb_callback("p", None, "online", "g")
    assert isinstance(callback, tracking.OffLoop)  # Ray's callback, off the loop that serves the trials
    ray_callback = callback.inner
    assert ray_callback.kwargs["mode"] == "offline" and os.environ["WANDB_MODE"] == "offline"
    assert "size_bytes" in ray_callback.AUTO_CONFIG_KEYS and "params" in ray_callback.AUTO_CONFIG_KEYS
    assert tracking.wandb_callback("p", None, "disabled", "g") is None
    monkeypatch.setenv("WANDB_API_KEY", "secret-key-123")
    assert tracking.wandb_mode("online") == "online"


def test_ray_logging_actor_defines_the_metrics_and_sizes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The actor class Ray starts per trial runs ``define_metrics`` right after ``wandb.init``."""
    import queue

    kinds = compat.wandb_queue_item_kinds()
    seen = []
    define = tracking.define_metrics
    monkeypatch.setattr(tracking, "define_metrics", lambda run: (define(run), seen.append(dict(run.config))))
    monkeypatch.setenv("WANDB_SILENT", "true")
    items: queue.Queue = queue.Queue()
    items.put((kinds.RESULT, {"config": {"groups": 4}, "epoch": 1, "gap": 0.3, "params": 10, "size_bytes": 20}))
    items.put((kinds.END, None))
    actor = tracking._TrialLoggingActor(
        logdir=str(tmp_path), queue=items, exclude=tracking.EXCLUDED,
        to_config=tracking.SweepWandbCallback.AUTO_CONFIG_KEYS, mode="offline", dir=str(tmp_path), project="t",
    )
    log, config_update = compat.wandb_actor_split_result(actor, items.queue[0][1])
    assert config_update == {"groups": 4, "params": 10, "size_bytes": 20} and log == {"epoch": 1, "gap": 0.3}
    actor.run()
    assert len(seen) == 1


class _SlowCallback(tune.Callback):
    """Ray's W&B callback as the driver sees it on a busy machine: every call takes a while."""

    def __init__(self, delay: float) -> None:
        self.delay, self.calls, self.threads = delay, [], set()
        self.setup_calls = 0

    def setup(self, **info: Any) -> None:
        self.setup_calls += 1

    def _record(self, hook: str, info: dict[str, Any]) -> None:
        time.sleep(self.delay)
        self.threads.add(threading.current_thread().name)
        self.calls.append((hook, info.get("trial"), dict(info.get("result") or {}), len(info.get("trials", []))))

    def on_trial_start(self, **info: Any) -> None:
        self._record("on_trial_start", info)

    def on_trial_result(self, **info: Any) -> None:
        if info["result"].get("epoch") == 2 and info["trial"] == "b":
            raise RuntimeError("wandb went away")  # one failing call: logged, the others still arrive
        self._record("on_trial_result", info)

    def on_trial_complete(self, **info: Any) -> None:
        self._record("on_trial_complete", info)

    def on_experiment_end(self, **info: Any) -> None:
        self._record("on_experiment_end", info)


def test_off_loop_calls_return_at_once_and_arrive_in_order(caplog: pytest.LogCaptureFixture) -> None:
    inner = _SlowCallback(delay=0.3)
    callback = tracking.OffLoop(inner, drain_s=30)
    callback.setup(stop=None)
    assert inner.setup_calls == 1  # at once, in the caller's thread: its errors stop the sweep
    trials = ["a", "b"]
    expected, slowest = [], 0.0
    for trial in trials:
        started = time.monotonic()
        callback.on_trial_start(iteration=0, trials=trials, trial=trial)
        slowest = max(slowest, time.monotonic() - started)
        expected.append(("on_trial_start", trial, {}, 2))
    for epoch in (1, 2, 3):
        for trial in trials:
            result = {"epoch": epoch, "gap": 0.1 * epoch}
            started = time.monotonic()
            callback.on_trial_result(iteration=epoch, trials=trials, trial=trial, result=result)
            slowest = max(slowest, time.monotonic() - started)
            result["done"] = True  # Tune changes the result after the callbacks: the call keeps its copy
            if (trial, epoch) != ("b", 2):
                expected.append(("on_trial_result", trial, {"epoch": epoch, "gap": 0.1 * epoch}, 2))
    trials.append("c")  # nor does a later trial reach the calls already made
    callback.on_trial_complete(iteration=4, trials=trials, trial="a")
    expected.append(("on_trial_complete", "a", {}, 3))
    assert slowest < 0.5, slowest  # each would take 0.3 s on the caller's thread, 2.7 s in all
    assert len(inner.calls) < len(expected)  # still being delivered
    pickle.loads(pickle.dumps(callback))  # Tune stores its callbacks with the sweep, thread running or not
    with caplog.at_level(logging.ERROR, logger=tracking.__name__):
        callback.on_experiment_end(trials=trials)
    assert inner.calls == [*expected, ("on_experiment_end", None, {}, 3)]
    assert len(inner.threads) == 1 and threading.current_thread().name not in inner.threads
    assert "on_trial_result failed" in caplog.text and "wandb went away" in caplog.text


def test_off_loop_waits_a_bounded_time_at_the_end(caplog: pytest.LogCaptureFixture) -> None:
    inner = _SlowCallback(delay=1.0)
    callback = tracking.OffLoop(inner, drain_s=0.5)
    for epoch in range(5):
        callback.on_trial_result(iteration=epoch, trials=["a"], trial="a", result={"epoch": epoch})
    started = time.monotonic()
    with caplog.at_level(logging.ERROR, logger=tracking.__name__):
        callback.on_experiment_end(trials=["a"])
    assert time.monotonic() - started < 1.5
    assert "calls not delivered after 0.5 s" in caplog.text
