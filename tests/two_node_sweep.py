"""A sweep on a local two-node Ray cluster (``ray.cluster_utils.Cluster``), run by test_multinode.py.

    python tests/two_node_sweep.py OUT_DIR [key=value ...] [--remove-node-after-epoch N]

It runs in its own process because the test session already holds a one-node Ray. The head node
has 3 CPUs, the second node 2: a trial of two 1-CPU workers placed with SPREAD gets one worker on
each. With ``--remove-node-after-epoch N``, a watcher thread removes the second node once the
first trial has checkpointed epoch N, and writes ``OUT_DIR/node_removed.json`` (the trial and its
history at that moment) for the test to compare with the trial's final history.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path

SMOKE = Path(__file__).resolve().parents[1] / "search_spaces" / "smoke.yaml"


def _remove_after(cluster: object, node: object, trials: Path, epoch: int, record: Path) -> None:
    while True:
        done = sorted(trials.glob(f"trial-*/epoch_{epoch:03d}/state.pt"))
        if done:
            trial = done[0].parents[1]
            history = json.loads((trial / "history.json").read_text())
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
                         args=(cluster, second, out / "trials", remove_after, out / "node_removed.json")).start()
    from yt8m_search import run

    try:
        return run.main([str(SMOKE), *overrides, "--output", str(out)])
    finally:
        import ray

        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
