"""W&B tracking: summaries keep each metric's best epoch, config gets the model's size, no secrets."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

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
    assert callback is not None and callback.kwargs["mode"] == "offline" and os.environ["WANDB_MODE"] == "offline"
    assert "size_bytes" in callback.AUTO_CONFIG_KEYS and "params" in callback.AUTO_CONFIG_KEYS
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
