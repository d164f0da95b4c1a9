"""Parquet -> padded torch batches: each stage per CPU-second, against its floor, in one run.

    .venv/bin/python benchmarks/bench_loader.py [--quick] [--videos 2000] [--batch 160] [--codec none]
                                                 [--ray-cpus 2] [--repeats 3] [--cache ~/.cache/yt8m_search_bench]

Generates once (cached under ``--cache``) a synthetic training set with the generator's default length
distribution (half the videos 300 frames, the rest 1..300) over 3862 classes, in 4 shards, and rewrites it
once per Parquet codec (same row groups, the converter's writer settings). Then measures, side by side:

  parquet     one core: the loader's shard reader (``_read_shards``: memory-mapped, the training columns)
              over one shard per codec (zstd, lz4, snappy, none), and the same through a Python file object
  one core    (``torch.set_num_threads(1)``) on in-memory Arrow batches of ``--batch`` rows sliced from the
              ``--codec`` shards (so some span two row groups, as Ray's do): ``collate_table`` to uint8
              (what a GPU gets: the floor of the Ray Data rows) and to float32 (what a CPU trainer gets), in
              the reused buffers the loader collates into (and float32 in new memory), ``dequantize_batch`` into
              new tensors and into preallocated ones, and the reference: a bare uint8 -> float32 copy into
              a preallocated tensor
  ray data    ``iter_video_batches(dataset, batch_size=--batch)`` over one ``read_videos`` dataset of the
              ``--codec`` shards, under ``ray.init(num_cpus=N)`` for each N of ``--ray-cpus``: the first pass
              starts Ray's workers (cold start), the others iterate the already-read dataset anew (warm
              start: the first batch of a fresh iteration)

Figures are per CPU-second (the steadier figure on a shared machine: other load stretches wall time only):
"videos/CPU-s" for Ray Data divides the videos by the CPU seconds that this process (Ray Data collates in
its threads) and every process Ray started spent on the pass. "frames GB/s": the uint8 frame payload
(valid frames x 1152 bytes) per CPU-second. "start s" is the wall time to the first batch; "videos/s" the
wall rate after it.
"""

from __future__ import annotations

import os

os.environ.setdefault("RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS", "0")

import argparse  # noqa: E402
import logging  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import torch  # noqa: E402

from yt8m_search.constants import FEATURE_DIM, NUM_CLASSES  # noqa: E402
from yt8m_search.data import fs  # noqa: E402
from yt8m_search.data.batch import COLUMNS, FeatureBuffers, collate_table, dequantize_batch  # noqa: E402
from yt8m_search.data.loading import _read_shards, iter_video_batches, read_videos  # noqa: E402
from yt8m_search.data.parquet import COMPRESSION, ROW_GROUP_SIZE  # noqa: E402
from yt8m_search.data.prepare import synthetic_dataset  # noqa: E402

CODECS = ("zstd", "lz4", "snappy", "none")


def shards(cache: str, videos: int, seed: int = 0) -> str:
    """The cached synthetic training shards (a folder), generated on the first call: ``videos`` videos in 4
    shards; default lengths, 3862 classes."""
    return synthetic_dataset(
        cache, f"bench-{videos}-s{seed}", train_videos=videos, validation_videos=max(32, videos // 20),
        shards=4, seed=seed, num_classes=NUM_CLASSES, progress=False,
    ).train


def recoded(folder: str, codec: str, count: int) -> list[str]:
    """The first ``count`` shards of ``folder`` rewritten with ``codec`` (cached beside it), as the converter
    writes them: row groups of ``ROW_GROUP_SIZE``, no dictionaries, statistics for the small columns only."""
    out = Path(f"{folder}-{codec}")
    out.mkdir(exist_ok=True)
    paths = []
    for source in _files(folder)[:count]:
        target = out / Path(source).name
        if not target.exists():
            temp = target.with_name(f".{target.name}.tmp")
            pq.write_table(pq.read_table(source), temp, compression=codec, use_dictionary=False,
                           row_group_size=ROW_GROUP_SIZE, write_statistics=["id", "num_frames", "num_audio_frames"])
            temp.rename(target)
        paths.append(str(target))
    return paths


def _files(folder: str) -> list[str]:
    return sorted(str(p) for p in Path(folder).glob("*.parquet"))


def _best(fn: Callable[[], Any], repeats: int) -> float:
    """Best CPU time (this process, all threads) of ``repeats`` calls."""
    best = float("inf")
    for _ in range(repeats):
        start = time.process_time()
        fn()
        best = min(best, time.process_time() - start)
    return best


def _read(path: str, python_file: bool) -> int:
    if python_file:  # how the loader read local shards before: through a buffered Python file object
        with fs.open_input(path, seekable=True) as f:
            shard = pq.ParquetFile(f)
            return sum(shard.read_row_group(g, columns=COLUMNS).num_rows for g in range(shard.num_row_groups))
    return sum(t.num_rows for t in _read_shards(pa.table({"paths": [[path]]})))


def bench_parquet(folder: str, repeats: int) -> None:
    """One core: the loader's read of one shard per codec."""
    print("Parquet decode, one core: the loader's reader (memory-mapped, training columns), one shard")
    print(f"{'codec':<34}{'MB':>8}{'videos/CPU-s':>14}{'frames GB/s':>13}{'vs none':>9}")
    rows = [(codec, recoded(folder, codec, 1)[0], False) for codec in CODECS]
    rows.append(("none, through a Python file object", rows[-1][1], True))
    counts = pq.read_table(rows[0][1], columns=["num_frames"]).column("num_frames").to_numpy()
    payload = float(counts.sum()) * FEATURE_DIM
    rates = {name: len(counts) / _best(lambda p=path, py=python: _read(p, py), repeats) for name, path, python in rows}
    for name, path, _ in rows:
        print(f"{name:<34}{os.path.getsize(path) / 1e6:>8.1f}{rates[name]:>14.0f}"
              f"{rates[name] * payload / len(counts) / 1e9:>13.2f}{rates[name] / rates['none']:>9.2f}")


def bench_one_core(files: list[str], batch: int, repeats: int) -> dict[str, float]:
    """One core: collation and dequantization alone, on in-memory Arrow batches. Returns videos/CPU-s."""
    table = pa.concat_tables(pq.read_table(f, columns=COLUMNS) for f in files)
    videos = table.num_rows
    payload = float(table.column("num_frames").to_numpy().sum()) * FEATURE_DIM
    batches = [table.slice(i, batch) for i in range(0, videos, batch)]
    quantized = [collate_table(b, dequantize=False) for b in batches]
    preallocated = [torch.empty(q.features.shape, dtype=torch.float32) for q in quantized]
    for out in preallocated:
        out.fill_(0.0)  # fault its pages in: "preallocated" means memory already in use
    uint8, float32 = FeatureBuffers(dtype=np.uint8), FeatureBuffers(dtype=np.float32)  # as the loader collates
    steps: list[tuple[str, Callable[[], Any]]] = [  # each result dropped at once, as a training loop does
        ("collate_table -> uint8 (GPU path)", lambda: _each(lambda b: collate_table(b, dequantize=False,
                                                                                    buffers=uint8), batches)),
        ("collate_table -> float32, new memory", lambda: _each(collate_table, batches)),
        ("  the same, reused buffers (CPU path)", lambda: _each(lambda b: collate_table(b, buffers=float32), batches)),
        ("dequantize_batch, new tensors", lambda: _each(_dequantize, quantized)),
        ("dequantize_batch, out=preallocated", lambda: _each(_dequantize, quantized, preallocated)),
        ("bare copy into preallocated (ref.)", lambda: _each(_copy, quantized, preallocated)),
    ]
    print(f"\nOne core, 1 torch thread, {videos} videos in {len(batches)} batches of {batch} "
          f"({sum(b.column('rgb').num_chunks > 1 for b in batches)} span two row groups), "
          f"{table.column('num_frames').to_numpy().mean():.0f} frames on average; best of {repeats}")
    print(f"{'path':<38}{'videos/CPU-s':>14}{'frames GB/s':>13}{'vs bare copy':>14}")
    rates = {name: videos / _best(fn, repeats) for name, fn in steps}
    copy = rates[steps[-1][0]]
    for name, rate in rates.items():
        print(f"{name:<38}{rate:>14.0f}{rate * payload / videos / 1e9:>13.2f}{rate / copy:>14.2f}")
    return {"uint8": rates[steps[0][0]], "float32": rates[steps[2][0]]}


def _each(fn: Callable[..., Any], *items: list[Any]) -> None:
    for args in zip(*items):
        fn(*args)


def _dequantize(q: Any, out: torch.Tensor | None = None) -> torch.Tensor:
    return dequantize_batch(q.features, q.num_frames, q.num_audio_frames, out=out)


def _copy(q: Any, out: torch.Tensor) -> torch.Tensor:
    return out.copy_(q.features)


def _cpu_seconds() -> float:
    """User + system CPU seconds of this process and all its descendants (Ray's processes), the exited
    ones included: Ray ends idle workers, and a parent's children times hold those it reaped."""
    import psutil  # Ray ships it (ray/thirdparty_files), on the path once ray is imported

    total = 0.0
    for proc in [psutil.Process(), *psutil.Process().children(recursive=True)]:
        try:
            times = proc.cpu_times()
            total += times.user + times.system + times.children_user + times.children_system
        except psutil.Error:
            pass
    return total


def _ray_pass(dataset: Any, batch: int, dequantize: bool) -> dict[str, float]:
    """One pass over the dataset through Ray Data: time to the first batch, steady rate, CPU seconds."""
    cpu0, start = _cpu_seconds(), time.perf_counter()
    first, first_videos, videos = 0.0, 0, 0
    for b in iter_video_batches(dataset, batch_size=batch, dequantize=dequantize):
        if not videos:
            first, first_videos = time.perf_counter(), len(b)
        videos += len(b)
    end = time.perf_counter()
    return {"start": first - start, "rate": (videos - first_videos) / max(end - first, 1e-9), "videos": videos,
            "cpu": _cpu_seconds() - cpu0}


def bench_ray(folder: str, cpus: int, batch: int, floors: dict[str, float], videos: int) -> None:
    import ray
    from ray.data import DataContext

    torch.set_num_threads(cpus)
    os.environ["OMP_NUM_THREADS"] = str(cpus)  # what Ray's workers inherit
    ray.init(num_cpus=cpus, include_dashboard=False, configure_logging=False, log_to_driver=False)
    DataContext.get_current().enable_progress_bars = False
    logging.getLogger("ray.data").setLevel(logging.ERROR)
    try:
        dataset = read_videos(folder)
        passes = [("cold", False), ("warm", False), ("warm", False), ("warm", True), ("warm", True)]
        for start, dequantize in passes:
            r = _ray_pass(dataset, batch, dequantize)
            if start == "cold":
                time.sleep(3)  # let the workers started late finish starting: not part of the next pass
            assert r["videos"] == videos, (r["videos"], videos)
            kind = "float32" if dequantize else "uint8"
            per_cpu = r["videos"] / r["cpu"]
            print(f"{f'num_cpus={cpus}, {start}, {kind}':<30}{r['start']:>9.2f}{r['rate']:>10.0f}{r['cpu']:>7.2f}"
                  f"{per_cpu:>14.0f}{per_cpu / floors[kind]:>15.2f}")
    finally:
        ray.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=160)
    parser.add_argument("--codec", choices=CODECS, default=COMPRESSION, help="the Ray Data rows' shards")
    parser.add_argument("--cache", default="~/.cache/yt8m_search_bench")
    parser.add_argument("--repeats", type=int, default=3, help="passes for the one-core rows (best is kept)")
    parser.add_argument("--ray-cpus", default="2", help="num_cpus for ray.init, comma-separated ('': no Ray rows)")
    parser.add_argument("--quick", action="store_true", help="500 videos, 1 repeat")
    args = parser.parse_args()
    if args.quick:
        args.videos, args.repeats = 500, 1

    started = time.perf_counter()
    folder = shards(args.cache, args.videos)
    files = recoded(folder, args.codec, len(_files(folder)))
    print(f"shards ready in {time.perf_counter() - started:.1f} s: {folder}-{args.codec}\n")

    all_cores = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    if all_cores:
        os.sched_setaffinity(0, {min(all_cores)})
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    pa.set_cpu_count(1)
    bench_parquet(folder, args.repeats)
    floors = bench_one_core(files, args.batch, args.repeats)
    if all_cores:
        os.sched_setaffinity(0, all_cores)
    pa.set_cpu_count(len(all_cores) if all_cores else (os.cpu_count() or 1))

    print(f"\nRay Data, {args.codec} shards: iter_video_batches(read_videos(dir), batch_size={args.batch}); one "
          "dataset, iterated anew each pass; 'vs one core': videos/CPU-s over the one-core collate_table rate")
    print(f"{'ray.init(num_cpus=N), pass':<30}{'start s':>9}{'videos/s':>10}{'CPU-s':>7}{'videos/CPU-s':>14}"
          f"{'vs one core':>15}")
    for cpus in (int(c) for c in args.ray_cpus.split(",") if c):
        bench_ray(str(Path(files[0]).parent), cpus, args.batch, floors, args.videos)
    torch.set_num_threads(threads)
    print(f"\ntotal {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
