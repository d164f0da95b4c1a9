"""Parquet -> padded torch batches: videos/s per core, against a floor, ``collate_table`` alone and Ray Data.

    .venv/bin/python benchmarks/bench_loader.py [--videos 2000] [--batch 160] [--cache ~/.cache/yt8m_search_bench]

Generates once (cached under ``--cache``) a synthetic training set with the generator's default length
distribution (half the videos 300 frames, the rest 1..300) over 3862 classes, converted to Parquet shards,
then measures in one run:

  floor       one core: ``pyarrow.parquet.read_table`` of the shards (zstd decode), ``np.frombuffer`` of the
              rgb and audio bytes and ``astype(float32)``; no padding, no labels
  collate     one core (``torch.set_num_threads(1)``): ``collate_table`` on in-memory Arrow batches of
              ``--batch`` rows sliced from the read table (so some span two row groups, as Ray's do), with
              ``dequantize=True`` (float32, what a CPU trainer gets) and ``dequantize=False`` (uint8, what a
              GPU gets; it dequantizes on the device); ``dequantize_batch`` alone on the uint8 batches
  ray data    ``iter_video_batches(read_videos(dir), batch_size=--batch)`` under ``ray.init(num_cpus=1)``, then
              ``num_cpus=2``; three passes each: float32 (the first starting Ray's workers), float32 again
              and uint8 (``dequantize=False``). The rate leaves out the first batch (its startup is printed
              apart); "videos/CPU-s" divides the videos by the CPU seconds that this process (Ray Data
              collates in its threads) and every process Ray started spent on the pass, since ``num_cpus``
              caps Ray's read tasks only, not the driver's collate threads.

Columns: videos/s by the wall clock and videos/CPU-s per CPU-second (the steadier figure on a shared
machine: other load stretches the wall time only; on one idle core the two agree). For Ray Data, "epoch/s"
is the whole pass, startup included, and "videos/s" leaves out the first batch (each shard is read as one
block, so batches arrive in bursts of a shard's videos). frames MB/s: the uint8 frame payload (valid frames x
1152 bytes) decoded per second; out MB/s: the bytes of the feature tensors produced (padding included); both
per CPU-second for the one-core rows, at the "videos/s" rate for Ray Data. "vs floor": videos/CPU-s over the
floor's.
"""

from __future__ import annotations

import os

os.environ.setdefault("RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS", "0")

import argparse  # noqa: E402
import logging  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import torch  # noqa: E402

from yt8m_search.constants import FEATURE_DIM, NUM_CLASSES  # noqa: E402
from yt8m_search.data.batch import COLUMNS, collate_table, dequantize_batch  # noqa: E402
from yt8m_search.data.loading import iter_video_batches, read_videos  # noqa: E402
from yt8m_search.data.prepare import DataPaths, synthetic_dataset  # noqa: E402


def shards(cache: str, videos: int, seed: int = 0) -> DataPaths:
    """The cached synthetic shards (folders of Parquet files), generated on the first call: ``videos``
    training videos in 4 shards, 5% as many validation videos; default lengths, 3862 classes."""
    return synthetic_dataset(
        cache, f"bench-{videos}-s{seed}", train_videos=videos, validation_videos=max(32, videos // 20),
        shards=4, seed=seed, num_classes=NUM_CLASSES, progress=False,
    )


def start_ray(num_cpus: int) -> None:
    """A local Ray instance with ``num_cpus`` CPUs, quiet (no dashboard, progress bars or INFO lines)."""
    import ray
    from ray.data import DataContext

    ray.init(num_cpus=num_cpus, include_dashboard=False, configure_logging=False, log_to_driver=False)
    DataContext.get_current().enable_progress_bars = False
    logging.getLogger("ray.data").setLevel(logging.ERROR)


def _files(folder: str) -> list[str]:
    return sorted(str(p) for p in Path(folder).glob("*.parquet"))


def _best(fn: Callable[[], None], repeats: int) -> tuple[float, float]:
    """Best wall time and best CPU time (this process, all threads) of ``repeats`` calls.

    On a shared machine the CPU time is the steadier figure: other load stretches the wall time only."""
    wall = cpu = float("inf")
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        wall = min(wall, time.perf_counter() - start)
        cpu = min(cpu, time.process_time() - start_cpu)
    return wall, cpu


def _floor(files: list[str]) -> None:
    for file in files:
        table = pq.read_table(file, columns=["rgb", "audio"], use_threads=False)
        for name in ("rgb", "audio"):
            for chunk in table.column(name).chunks:
                _, offsets, data = chunk.buffers()
                ends = np.frombuffer(offsets, np.int32, count=len(chunk) + 1, offset=chunk.offset * 4)
                np.frombuffer(data, np.uint8, count=int(ends[-1] - ends[0]), offset=int(ends[0])).astype(np.float32)


def _read_only(files: list[str]) -> None:
    for file in files:
        pq.read_table(file, columns=COLUMNS, use_threads=False)


def _cpu_seconds() -> float:
    """User + system CPU seconds of this process and of all its descendants (Ray's processes) alive now."""
    import psutil  # Ray ships it (ray/thirdparty_files), on the path once ray is imported

    total = 0.0
    for proc in [psutil.Process(), *psutil.Process().children(recursive=True)]:
        try:
            times = proc.cpu_times()
            total += times.user + times.system
        except psutil.Error:
            pass
    return total


def _ray_pass(folder: str, batch: int, dequantize: bool) -> dict[str, float]:
    """One pass over the shards through Ray Data: startup (first batch), steady rate, CPU seconds."""
    cpu0, start = _cpu_seconds(), time.perf_counter()
    first, videos, frames, out_bytes = None, 0, 0, 0
    for b in iter_video_batches(read_videos(folder), batch_size=batch, dequantize=dequantize):
        if first is None:
            first = time.perf_counter()
            first_videos = len(b)
        videos += len(b)
        frames += int(b.num_frames.sum())
        out_bytes += b.features.numel() * b.features.element_size()
    end = time.perf_counter()
    cpu = _cpu_seconds() - cpu0
    return {
        "startup": first - start,
        "rate": (videos - first_videos) / (end - first),
        "videos": videos,
        "frames": frames,
        "out_bytes": out_bytes,
        "seconds": end - start,
        "cpu": cpu,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=160)
    parser.add_argument("--cache", default="~/.cache/yt8m_search_bench")
    parser.add_argument("--repeats", type=int, default=3, help="passes for the one-core rows (best is kept)")
    parser.add_argument("--ray-cpus", default="1,2", help="num_cpus values for ray.init, comma-separated")
    args = parser.parse_args()

    started = time.perf_counter()
    folder = shards(args.cache, args.videos).train
    files = _files(folder)
    print(f"shards ready in {time.perf_counter() - started:.1f} s: {folder}")

    # ---- one core: the floor and collate_table alone
    all_cores = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    if all_cores:
        os.sched_setaffinity(0, {min(all_cores)})
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    pa.set_cpu_count(1)

    table = pa.concat_tables(pq.read_table(f, columns=COLUMNS, use_threads=False) for f in files)
    counts = table.column("num_frames").to_numpy()
    videos = table.num_rows
    payload_mb = float(counts.sum()) * FEATURE_DIM / 1e6  # rgb and audio counts are equal here
    parquet_mb = sum(os.path.getsize(f) for f in files) / 1e6
    batches = [table.slice(i, args.batch) for i in range(0, videos, args.batch)]
    spanning = sum(b.column("rgb").num_chunks > 1 for b in batches)
    print(f"{videos} videos in {len(files)} shards ({parquet_mb:.0f} MB of Parquet, zstd), {counts.mean():.0f} "
          f"frames on average, {np.mean(counts == 300):.0%} with 300; {payload_mb:.0f} MB of uint8 frames; "
          f"{len(batches)} batches of {args.batch} ({spanning} span two row groups)\n")

    def out_mb(dtype_bytes: int) -> float:
        longest = [int(b.column("num_frames").to_numpy().max()) for b in batches]
        return sum(len(b) * t * FEATURE_DIM * dtype_bytes for b, t in zip(batches, longest)) / 1e6

    rows: list[tuple[str, float, float, float]] = []  # (name, wall s, CPU s, out MB per video)
    rows.append(("floor: read_table + frombuffer + astype(f32)", *_best(lambda: _floor(files), args.repeats),
                 4 * payload_mb / videos))
    rows.append(("  read_table alone (zstd decode, all columns)", *_best(lambda: _read_only(files), args.repeats),
                 0.0))
    for label, dequantize, dtype_bytes in (("collate_table, dequantize=True (f32)", True, 4),
                                           ("collate_table, dequantize=False (uint8)", False, 1)):
        times = _best(lambda d=dequantize: [collate_table(b, dequantize=d) for b in batches], args.repeats)
        rows.append((label, *times, out_mb(dtype_bytes) / videos))
    quantized = [collate_table(b, dequantize=False) for b in batches]
    times = _best(lambda: [dequantize_batch(q.features, q.num_frames, q.num_audio_frames) for q in quantized],
                  args.repeats)
    rows.append(("  dequantize_batch alone (uint8 -> f32)", *times, out_mb(4) / videos))
    quantized.clear()  # free them (the timing closure keeps the name)
    floor = videos / rows[0][2]  # videos per CPU-second of the floor

    print(f"one core (pinned, 1 thread), best of {args.repeats}; MB/s and the ratio per CPU-second")
    print(f"{'path':<48}{'videos/s':>10}{'videos/CPU-s':>14}{'frames MB/s':>13}{'out MB/s':>10}{'vs floor':>10}")
    for name, wall, cpu, out_per_video in rows:
        rate = videos / cpu
        print(f"{name:<48}{videos / wall:>10.0f}{rate:>14.0f}{rate * payload_mb / videos:>13.0f}"
              f"{rate * out_per_video:>10.0f}{rate / floor:>10.2f}")

    # ---- the full Ray Data path
    del table
    batches.clear()  # free them (the closures above keep the name: no del)
    if all_cores:
        os.sched_setaffinity(0, all_cores)
    pa.set_cpu_count(len(all_cores) if all_cores else (os.cpu_count() or 1))
    import ray

    print(f"\nRay Data: iter_video_batches(read_videos(dir), batch_size={args.batch}), dequantize=True (f32) or "
          "False (uint8); rate without the first batch")
    print(f"{'ray.init(num_cpus=N), pass':<28}{'startup s':>10}{'epoch/s':>9}{'videos/s':>10}{'per CPU':>9}"
          f"{'CPU-s':>7}{'videos/CPU-s':>14}{'frames MB/s':>13}{'out MB/s':>10}{'vs floor':>10}")
    for cpus in (int(c) for c in args.ray_cpus.split(",")):
        torch.set_num_threads(cpus)
        os.environ["OMP_NUM_THREADS"] = str(cpus)  # what Ray's workers inherit
        start_ray(cpus)
        try:
            for attempt, dequantize in (("cold, f32", True), ("warm, f32", True), ("warm, uint8", False)):
                r = _ray_pass(folder, args.batch, dequantize)
                assert r["videos"] == videos, (r["videos"], videos)
                per_cpu_s = r["videos"] / r["cpu"]
                print(f"{f'num_cpus={cpus}, {attempt}':<28}{r['startup']:>10.2f}{r['videos'] / r['seconds']:>9.0f}"
                      f"{r['rate']:>10.0f}{r['rate'] / cpus:>9.0f}{r['cpu']:>7.1f}{per_cpu_s:>14.0f}"
                      f"{r['rate'] * payload_mb / videos:>13.0f}{r['rate'] * r['out_bytes'] / 1e6 / videos:>10.0f}"
                      f"{per_cpu_s / floor:>10.2f}")
        finally:
            ray.shutdown()
    torch.set_num_threads(threads)
    print(f"\ntotal {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
