"""Several nodes: a trial's two workers on two nodes, and a node lost mid-trial (two_node_sweep.py)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from yt8m_search import results

from .conftest import run_sweep_to_the_end

SCRIPT = Path(__file__).with_name("two_node_sweep.py")


@pytest.mark.slow
def test_two_node_sweep_survives_losing_a_node_mid_trial(tmp_path: Path) -> None:
    out = tmp_path / "run"
    overrides = [
        "data.synthetic.train_videos=480", "data.synthetic.validation_videos=80", "data.synthetic.shards=4",
        f"data.synthetic.cache={tmp_path / 'cache'}", "data.synthetic.num_classes=40", "model.hparams.num_classes=40",
        "search.num_samples=1", "search.max_concurrent=1", "search.asha=null", "budget.max_model_bytes=1e9",
        "trial.epochs=4", "trial.batch_size=32", "trial.num_workers=2", "trial.cpus_per_worker=1",
        "trial.placement_strategy=SPREAD", "trial.max_failures=3",
    ]
    run_sweep_to_the_end([sys.executable, str(SCRIPT), str(out), *overrides, "--remove-node-after-epoch", "1"],
                         tmp_path / "sweep.log")

    summary = json.loads((out / "summary.json").read_text())
    assert summary["trials"]["complete"] == 1 and sum(summary["trials"].values()) == 1
    assert [r.number for r in results.read_trials(str(out))] == [0]
    removed = json.loads((out / "node_removed.json").read_text())
    before = removed["history"]  # the trial's epochs when the node went away
    assert before[0]["nodes"] == 2  # its two workers ran on the two nodes
    history = json.loads((out / "trials" / removed["trial"] / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2, 3, 4]
    assert history[: len(before)] == before  # nothing trained before the loss was redone or lost
    assert history[-1]["nodes"] == 1  # it finished on the node that was left
    per_epoch = history[0]["examples_seen"]
    assert [h["examples_seen"] for h in history] == [per_epoch * e for e in (1, 2, 3, 4)]
