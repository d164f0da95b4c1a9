"""Benchmark of yt8m_search.metrics on YouTube-8M-sized inputs.

Prints the time of ``gap()`` on 100,000 x 3862 float32 random predictions (~3 labels per video), the
time of ``MetricAccumulator`` fed batches of 1000 videos (update loop and ``result()``), and the
accumulator's memory (state arrays, tracemalloc peaks) against the dense prediction matrix.

    python benchmarks/bench_metrics.py [--videos 100000] [--classes 3862] [--batch 1000]
"""

from __future__ import annotations

import argparse
import time
import tracemalloc

import numpy as np

from yt8m_search.metrics import MetricAccumulator, gap, hit_at_one, perr


def make_inputs(videos: int, classes: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    pred = rng.random((videos, classes), dtype=np.float32)
    labels = np.zeros((videos, classes), dtype=bool)
    per_video = rng.poisson(3.0, videos).clip(0, classes)
    rows = np.repeat(np.arange(videos), per_video)
    labels[rows, rng.integers(0, classes, rows.size)] = True
    return pred, labels


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--videos", type=int, default=100_000)
    ap.add_argument("--classes", type=int, default=3862)
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--top-k", type=int, default=20)
    args = ap.parse_args()

    pred, labels = make_inputs(args.videos, args.classes)
    dense_mb = pred.nbytes / 2**20
    print(f"inputs: {pred.shape} float32 ({dense_mb:.0f} MiB), {int(labels.sum())} labels")

    t = time.perf_counter()
    g = gap(pred, labels, args.top_k)
    t_gap = time.perf_counter() - t
    print(f"gap():                {t_gap:7.2f} s   GAP={g:.6f}")
    t = time.perf_counter()
    g2 = gap(pred, labels, args.top_k)
    print(f"gap() again (cached): {time.perf_counter() - t:7.2f} s   (shuffle permutation cached)")
    assert g2 == g

    t = time.perf_counter()
    h = hit_at_one(pred, labels)
    print(f"hit_at_one():         {time.perf_counter() - t:7.2f} s   Hit@1={h:.6f}")
    t = time.perf_counter()
    p = perr(pred, labels)
    print(f"perr():               {time.perf_counter() - t:7.2f} s   PERR={p:.6f}")

    acc = MetricAccumulator(args.classes, args.top_k)
    t = time.perf_counter()
    for lo in range(0, args.videos, args.batch):
        acc.update(pred[lo : lo + args.batch], labels[lo : lo + args.batch])
    t_upd = time.perf_counter() - t
    t = time.perf_counter()
    res = acc.result()
    t_res = time.perf_counter() - t
    n_batches = -(-args.videos // args.batch)
    print(
        f"accumulator: {n_batches} updates {t_upd:6.2f} s, result() {t_res:5.2f} s  "
        + " ".join(f"{k}={v:.6f}" for k, v in res.items())
    )
    assert abs(res["gap"] - g) < 1e-9, (res["gap"], g)

    # Memory, measured in a second pass (tracemalloc slows allocation-heavy code down).
    tracemalloc.start()
    acc = MetricAccumulator(args.classes, args.top_k)
    for lo in range(0, args.videos, args.batch):
        acc.update(pred[lo : lo + args.batch], labels[lo : lo + args.batch])
    held, peak_update = tracemalloc.get_traced_memory()
    tracemalloc.reset_peak()
    acc.result()
    _, peak_result = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    state_mb = sum(a.nbytes for a in acc.state().values()) / 2**20
    print(
        f"memory: state {state_mb:.1f} MiB ({state_mb * 2**20 / args.videos:.0f} B/video); "
        f"tracemalloc: held after updates {held / 2**20:.1f} MiB, peak during updates "
        f"{peak_update / 2**20:.1f} MiB, peak during result() {peak_result / 2**20:.1f} MiB; "
        f"dense float32 predictions {dense_mb:.0f} MiB (state = {100 * state_mb / dense_mb:.1f}%)"
    )


if __name__ == "__main__":
    main()
