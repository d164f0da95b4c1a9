"""Train reports relayed to Tune while Tune's driver is slow, run by test_search.py.

    python tests/slow_driver_sweep.py OUT_DIR

Two trials, one after the other, each a TorchTrainer run relayed by ``train.relay_reports``:
``ok`` reports epochs 1 and 2; ``fails`` reports epoch 1, then its loop raises. A Tune callback
holds the driver for 8 s on every epoch-1 result, so a trial's second report and the end of its
``fit`` both come before Tune asks for its next result (the order that left a trial hanging with
Ray's ``TuneReportCallback``). Writes ``OUT_DIR/results.json``: per trial, the epochs Tune received
and its error, if any. Its own process: the test session already holds a Ray instance.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

HOLD_S = 8.0


def loop(config: dict[str, Any]) -> None:
    import ray.train

    ray.train.report({"epoch": 1})
    if config["kind"] == "fails":
        raise RuntimeError("the loop broke after epoch 1")
    ray.train.report({"epoch": 2})


def trainable(config: dict[str, Any]) -> None:
    import ray.train
    from ray import tune
    from ray.train.torch import TorchTrainer

    from yt8m_search.train import relay_reports

    relay_reports(lambda callback: TorchTrainer(
        loop,
        train_loop_config=config,
        scaling_config=ray.train.ScalingConfig(num_workers=1, resources_per_worker={"CPU": 0.5}),
        run_config=ray.train.RunConfig(name=config["kind"], storage_path=config["storage"], callbacks=[callback],
                                       failure_config=ray.train.FailureConfig(max_failures=0)),
    ).fit(), tune.report)


def main(out: Path) -> None:
    import ray
    from ray import tune

    received: dict[str, list[int]] = {}

    class SlowDriver(tune.Callback):
        def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
            received.setdefault(trial.config["kind"], []).append(result["epoch"])
            if result["epoch"] == 1:
                time.sleep(HOLD_S)

    ray.init(num_cpus=2, configure_logging=False, log_to_driver=False)
    results = tune.Tuner(
        tune.with_resources(trainable, {"cpu": 0.01}),
        param_space={"kind": tune.grid_search(["ok", "fails"]), "storage": str(out / "train")},
        tune_config=tune.TuneConfig(max_concurrent_trials=1),
        run_config=tune.RunConfig(storage_path=str(out), name="tune", verbose=0, callbacks=[SlowDriver()]),
    ).fit()
    trials = {r.config["kind"]: {"epochs": received.get(r.config["kind"], []),
                                 "error": str(r.error) if r.error else None} for r in results}
    (out / "results.json").write_text(json.dumps(trials))


if __name__ == "__main__":
    os.environ.setdefault("RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS", "0")
    main(Path(sys.argv[1]))
