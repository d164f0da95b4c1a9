"""A sweep on a local two-node Ray cluster (``ray.cluster_utils.Cluster``), run by test_multinode.py.

    python tests/two_node_sweep.py OUT_DIR [key=value ...] [--remove-node-after-epoch N]

It runs in its own process because the test session already holds a one-node Ray. The head node
has 3 CPUs, the second node 2: a trial of two 1-CPU workers placed with SPREAD gets one worker on
each. With ``--remove-node-after-epoch N``, a watcher thread removes the second node once the
first trial's epoch N is checkpointed and its report has reached Tune, and writes
``OUT_DIR/node_removed.json`` (the trial and its history up to epoch N) for the test to compare with
the trial's final history.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path

SMOKE = Path(__file__).resolve().parents[1] / "search_spaces" / "smoke.yaml"


def _reported(tune: Path, trial: str, epoch: int) -> bool:
    """Whether Tune has recorded the trial's report of ``epoch``. Train registers a report's checkpoint
    before its callbacks pass the report on, so that epoch's checkpoint is committed by then; a
    checkpoint's files in storage alone are not: a worker lost before every rank has reported takes
    the epoch with it, and the retry trains it again."""
    for results in tune.glob(f"run_trial_{trial.removeprefix('trial-')}_*/result.json"):
        lines = results.read_text().splitlines()
        if any(json.loads(line).get("epoch", 0) >= epoch for line in lines if line.strip()):
            return True
    return False


def _remove_after(cluster: object, node: object, out: Path, epoch: int, record: Path) -> None:
    while True:
        done = sorted((out / "trials").glob(f"trial-*/epoch_{epoch:03d}/state.pt"))
        if done and _reported(out / "tune", done[0].parents[1].name, epoch):
            trial = done[0].parents[1]
            # the epochs up to the committed one: a later epoch may be under way, not yet committed
            history = json.loads((trial / "history.json").read_text())[:epoch]
            cluster.remove_node(node)  # type: ignore[attr-defined]
            record.write_text(json.dumps({"trial": trial.name, "history": history, "time": time.time()}))
            return
        time.sleep(0.2)


def main(argv: list[str]) -> int:
    from ray.cluster_utils import Cluster

    remove_after = None
    if "--remove-node-after-epoch" in argv:
        i = argv.index("--remove-node-after-epoch")
        remove_after = int(argv[i + 1])
        argv = argv[:i] + argv[i + 2:]
    out, overrides = Path(argv[0]), argv[1:]

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 3})
    second = cluster.add_node(num_cpus=2)
    cluster.wait_for_nodes()
    os.environ["RAY_ADDRESS"] = cluster.address  # run joins it, as under `ray job submit`
    if remove_after is not None:
        threading.Thread(target=_remove_after, daemon=True,
                         args=(cluster, second, out, remove_after, out / "node_removed.json")).start()
    from yt8m_search import run

    try:
        return run.main([str(SMOKE), *overrides, "--output", str(out)])
    finally:
        import ray

        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
