"""TFRecord -> Parquet conversion at cluster scale: one Ray task per shard.

    python -m yt8m_search.convert INPUTS... --output DIR [--skip-bad] [--level frame|video]

Inside ``ray job submit`` (``RAY_ADDRESS`` set) it runs on the cluster, else on a local Ray. Inputs
and output may be s3://. Each task converts one shard with ``yt8m_search.data.parquet.convert_shard``,
which writes atomically, reads the written footer back to verify it, and skips a shard whose
verified output already exists: a re-run resumes where an interrupted one stopped. Transient
storage errors (``OSError``) are retried by Ray; a corrupt record fails the run (or is skipped and
reported with ``--skip-bad``) naming the file and record.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence

import ray

from yt8m_search.data import fs
from yt8m_search.data.errors import CorruptRecordError
from yt8m_search.data.parquet import ConversionReport, ShardResult, advance_progress, convert_shard, plan, progress_bar

RETRIES = 3
WAIT_S = 0.5  # how often the driver collects finished shards (and moves the bar)


def convert_on_ray(inputs: str | Sequence[str], output_dir: str, *, skip_bad: bool = False, level: str = "frame",
                   progress: bool = True, cpus_per_task: float = 1.0) -> ConversionReport:
    """Convert every input shard as its own Ray task (Ray must be initialised); results in input order."""
    start = time.perf_counter()
    pairs = plan(inputs, output_dir)
    fs.makedirs(output_dir)
    task = ray.remote(convert_shard).options(num_cpus=cpus_per_task, max_retries=RETRIES,
                                             retry_exceptions=[OSError])
    pending = {task.remote(src, dst, skip_bad, level): i for i, (src, dst) in enumerate(pairs)}
    waiting = list(pending)
    results: dict[int, ShardResult] = {}
    bar = progress_bar(len(pairs), progress)
    try:
        while waiting:
            # every finished task at each call, and the rest kept for the next: waiting on all 3,844
            # shards one result at a time would be quadratic in the shards
            done, waiting = ray.wait(waiting, num_returns=len(waiting), timeout=WAIT_S, fetch_local=False)
            for ref in done:
                i = pending.pop(ref)
                results[i] = ray.get(ref)
                advance_progress(bar, results[i])
    except BaseException:
        for ref in pending:
            ray.cancel(ref)
        raise
    finally:
        if bar is not None:
            bar.close()
    return ConversionReport([results[i] for i in range(len(pairs))], time.perf_counter() - start)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m yt8m_search.convert", description=__doc__.split("\n")[0])
    parser.add_argument("inputs", nargs="+", help="TFRecord files, directories or globs (local or s3://)")
    parser.add_argument("--output", "-o", required=True, help="output directory or s3:// prefix")
    parser.add_argument("--skip-bad", action="store_true", help="skip and report corrupt records")
    parser.add_argument("--level", choices=["frame", "video"], default="frame")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    if not ray.is_initialized():
        ray.init(address=os.environ.get("RAY_ADDRESS") or None, log_to_driver=False)
    try:
        report = convert_on_ray(args.inputs, args.output, skip_bad=args.skip_bad, level=args.level,
                                progress=not args.no_progress)
    except (CorruptRecordError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except ray.exceptions.RayTaskError as err:
        cause = err.as_instanceof_cause()
        print(f"error: {cause}", file=sys.stderr)
        return 2 if isinstance(cause, CorruptRecordError) else 1
    print(report.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
