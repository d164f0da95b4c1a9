"""Read workers kept or restarted: what Ray's idle-worker limit costs a small machine's sweep.

    .venv/bin/python benchmarks/bench_worker_reuse.py [--epochs 3] [--keep N]

Ray keeps at most as many idle task workers as there are free CPUs and kills the others after 1 s
idle. In a local sweep the trials' own processes hold CPUs (0.5 each in the smoke), so the read tasks
of an epoch (``data.loading.read_videos``, 0.25 CPU each) start processes that are killed while the
trial evaluates, and the next epoch starts them again: each pays Python, Ray's worker and pyarrow's
imports before its first read.

Two trial-like actors (0.5 CPU each, as the smoke's trials) each read the smoke-shaped training
shards ``--epochs`` times through ``read_videos`` and ``iter_video_batches``, with a 2 s pause after
each pass (their evaluation, when the read workers sit idle). This runs twice, each in a fresh
``ray.init(num_cpus=2)``: with Ray's default and with ``compat.keep_idle_workers(N)`` (what
``run.py`` sets for a local Ray). Printed side by side: wall time, and the task worker processes
started (Ray's state API: living and dead). Then the CPU seconds one fresh read worker costs up to
the end of its first shard (measured inside it, so the figure holds on a loaded machine): the
workers avoided times this is the CPU the limit costs.
"""

from __future__ import annotations

import os

os.environ.setdefault("RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS", "0")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

PAUSE_S = 2.0  # a trial's evaluation and checkpoint between passes: longer than Ray's 1 s idle limit


def _data(cache: str) -> list[str]:
    from yt8m_search.data import fs
    from yt8m_search.data.prepare import synthetic_dataset

    paths = synthetic_dataset(cache, "worker-reuse", train_videos=1200, validation_videos=40, shards=4, seed=1,
                              num_classes=3862, max_frames=20, progress=False)  # the smoke's training shape
    return fs.list_files(paths.train, pattern="*.parquet")


def _variant(keep: int, epochs: int, cache: str) -> dict[str, Any]:
    """One fresh Ray: two trial-like actors reading ``epochs`` passes each; wall time and workers."""
    from yt8m_search import compat

    if keep:
        compat.keep_idle_workers(keep)
    import ray
    from ray.util.state import list_workers

    files = _data(cache)
    ray.init(address="local", num_cpus=2, include_dashboard=True, log_to_driver=False)

    @ray.remote(num_cpus=0.5)
    class Trial:
        def passes(self, files: list[str], epochs: int) -> int:
            from yt8m_search.data.loading import iter_video_batches, read_videos

            videos = 0
            for epoch in range(epochs):
                data = read_videos(files, shuffle=True, listed=True)
                for batch in iter_video_batches(data, batch_size=64, seed=epoch):
                    videos += len(batch.ids)
                time.sleep(PAUSE_S)
            return videos

    trials = [Trial.remote() for _ in range(2)]
    ray.get([t.passes.remote(files[:1], 1) for t in trials])  # the trials' own start, outside the figure
    before = _task_workers(list_workers)
    started = time.perf_counter()
    videos = sum(ray.get([t.passes.remote(files, epochs) for t in trials]))
    wall = time.perf_counter() - started
    workers = _task_workers(list_workers) - before
    cold = ray.get(ray.remote(num_cpus=0.25, max_calls=1)(_fresh_read).remote(files[0]))
    ray.shutdown()
    return {"wall_s": wall, "workers": len(workers), "videos": videos, "fresh_cpu_s": cold}


def _task_workers(list_workers: Any) -> set[int]:
    import ray

    listed = list_workers(address=ray.get_runtime_context().gcs_address, filters=[("worker_type", "=", "WORKER")],
                          limit=10_000, raise_on_missing_output=False)
    return {w.pid for w in listed}


def _fresh_read(path: str) -> float:
    """CPU seconds of this process from its start to the end of reading ``path`` as a read task does."""
    import resource

    import pyarrow as pa

    from yt8m_search.data.loading import _read_shards  # the read task's own function

    for _ in _read_shards(pa.table({"paths": [[path]]})):  # one read task's group of one shard
        pass
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--keep", type=int, default=0, help="idle workers kept (default: what run.py sets)")
    parser.add_argument("--variant", type=int, default=None, help=argparse.SUPPRESS)  # internal: one Ray
    parser.add_argument("--cache", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.variant is not None:
        print(json.dumps(_variant(args.variant, args.epochs, args.cache)))
        return 0
    from yt8m_search import compat

    keep = args.keep or compat.idle_workers_kept(os.cpu_count() or 1)
    with tempfile.TemporaryDirectory() as cache:
        rows = {name: _run(n, args.epochs, cache) for name, n in (("Ray's default", 0), (f"keep {keep}", keep))}
    _print(rows, args.epochs)
    return 0


def _run(keep: int, epochs: int, cache: str) -> dict[str, Any]:
    command = [sys.executable, __file__, "--variant", str(keep), "--epochs", str(epochs), "--cache", cache]
    out = subprocess.run(command, capture_output=True, text=True, cwd=Path(__file__).parents[1])
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({out.returncode}):\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _print(rows: dict[str, dict[str, Any]], epochs: int) -> None:
    print(f"two trial-like actors (0.5 CPU), {epochs} passes each over 1,200 smoke-shaped videos in 4 shards, "
          f"{PAUSE_S:.0f} s pause after each; load {os.getloadavg()[0]:.1f}")
    print(f"{'idle workers':>16}  {'wall s':>7}  {'workers started':>15}  {'fresh worker CPU s':>18}")
    for name, r in rows.items():
        print(f"{name:>16}  {r['wall_s']:7.1f}  {r['workers']:15d}  {r['fresh_cpu_s']:18.2f}")
    default, kept = rows.values()
    avoided = default["workers"] - kept["workers"]
    print(f"workers avoided: {avoided}, about {avoided * default['fresh_cpu_s']:.0f} CPU seconds; "
          f"wall time ratio {kept['wall_s'] / default['wall_s']:.2f}")


if __name__ == "__main__":
    sys.exit(main())
