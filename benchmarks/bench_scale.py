"""The platform at full YouTube-8M scale, measured in parts on this machine (issue #17).

    .venv/bin/python benchmarks/bench_scale.py [--part ensemble|files|convert|driver|all]
        [--videos 110000 1100000] [--candidates 64] [--workdir DIR] [--max-videos N]
        [--trials 16,32] [--convert-shards 4 --convert-videos 40] [--files 400,4000] [--no-s3]

Parts (``PARTS``; ``--part all`` runs each in turn; files, convert and driver are
``bench_scale_driver.py``'s, described there):

  ensemble  the ensemble step's selection (``candidates.load_sample`` then ``selection.select``: what the
            head node runs before the bundle's export and dense re-score) on a synthetic finished sweep
            of ``--candidates`` trials, at each ``--videos`` (default: 1/10 of YouTube-8M's 1.1M
            validation videos, then all). Each trial's ``best/`` folder is written as the trainer writes
            it (``artifacts.write_best``: predictions.parquet with the top-20 classes and float32 scores,
            meta.json, model.pt) and listed in trials.csv, so the step reads the real files. It runs in a
            fresh process per size: wall time of the load and of the selection, and the process's peak
            resident memory (``ru_maxrss``; beside its resident memory after the imports), side by side,
            then the full scale extrapolated from the smaller one.

Synthetic predictions, like a trained sweep's: every video has 1-5 labels (3 on average) among the 3,862
classes, and each trial scores a pool of 32 classes per video (the labels and 27-31 confusers, the
same pool for every trial) as a sigmoid of the labels' signal (its strength drawn per trial), noise
shared by all trials (their errors are correlated) and its own noise; its top 20 are saved. A quarter of
the trials list the videos in another order (multi-worker trials do). The files are written once per
size and seed under ``--workdir`` and reused.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable, Sequence  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from yt8m_search import artifacts, results  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))  # its driver, conversion and files parts, beside it
import bench_scale_driver as scale_driver  # noqa: E402

from yt8m_search.constants import NUM_CLASSES  # noqa: E402
from yt8m_search.ensemble import DEFAULT_BUDGET, DEFAULT_SAMPLE_VIDEOS, load_sample, select  # noqa: E402

FULL_VIDEOS = 1_100_000  # YouTube-8M 2018's validation videos, about
TOP_K = 20
POOL = 32  # classes each video's trials score (its labels and confusers)
HOLDOUT = 0.2  # data.holdout_fraction's default
DONE = "complete.json"  # written last: a sweep folder without it is written again


# ---------------------------------------------------------------------------------------------
# Synthetic sweep


def _videos(videos: int, rng: np.random.Generator) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Ids (in file order), each video's class pool ``[V, POOL]`` (distinct classes, its labels first)
    and its number of labels ``[V]``."""
    ids = [f"{i:07x}" for i in rng.permutation(videos)]
    offsets = rng.choice(NUM_CLASSES, POOL, replace=False)  # distinct, so every row's pool is
    pool = (rng.integers(0, NUM_CLASSES, videos)[:, None] + offsets[None, :]) % NUM_CLASSES
    return ids, pool.astype(np.int32), rng.integers(1, 6, videos)


def _trial_predictions(pool: np.ndarray, truth: np.ndarray, shared: np.ndarray,
                       rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One trial's top-k classes and sigmoid scores ``[V, TOP_K]``, best first."""
    logits = truth * np.float32(rng.uniform(1.5, 3.5)) + shared
    logits += rng.standard_normal(logits.shape, dtype=np.float32)
    top = np.argpartition(-logits, TOP_K, axis=1)[:, :TOP_K]
    chosen = np.take_along_axis(logits, top, axis=1)
    order = np.argsort(-chosen, axis=1)
    top, chosen = np.take_along_axis(top, order, axis=1), np.take_along_axis(chosen, order, axis=1)
    scores = (1.0 / (1.0 + np.exp(-chosen - np.float32(2.0)))).astype(np.float32)
    return np.take_along_axis(pool, top, axis=1), scores


def _row(number: int, best: Path, size_bytes: int, gap: float) -> results.TrialRow:
    return results.TrialRow(
        number=number, trial_id=f"trial_{number:03d}", state=results.TrialState.COMPLETE, model="nextvlad",
        hparams={}, config={}, gap=gap, gap_last=gap, hit_at_one=np.nan, perr=np.nan, map=np.nan, epochs=1,
        best_epoch=1, params=0, size_bytes=size_bytes, samples_per_s=np.nan, checkpoint=str(best),
        predictions=str(best / artifacts.PREDICTIONS_FILE), reason="", flops=10**9,
    )  # fmt: skip


def write_sweep(run_dir: Path, videos: int, candidates: int, seed: int = 0) -> float:
    """A finished sweep's trials.csv and best/ folders (module doc), unless already complete; returns
    the seconds spent writing (0 when reused)."""
    if (run_dir / DONE).exists():
        return 0.0
    started = time.perf_counter()
    rng = np.random.default_rng(seed)
    ids, pool, counts = _videos(videos, rng)
    truth = (np.arange(POOL)[None, :] < counts[:, None]).astype(np.float32)
    labels = _label_lists(pool, counts)
    shared = (0.8 * rng.standard_normal(truth.shape, dtype=np.float32)) - np.float32(2.5)
    other = np.roll(np.arange(videos), videos // 3)  # another worker order
    rows = []
    for j in range(candidates):
        classes, scores = _trial_predictions(pool, truth, shared, rng)
        order = other if j % 4 == 3 else np.arange(videos)
        predictions = artifacts.Predictions([ids[i] for i in order], classes[order], scores[order],
                                            [labels[i] for i in order])
        best = run_dir / f"trial_{j:03d}" / "best"
        meta = artifacts.TrialMeta(model="nextvlad", hparams={}, epoch=1, params=0, stats=0,
                                   size_bytes=int(rng.integers(50_000_000, 300_000_000)), storage_dtype="bfloat16",
                                   metrics={}, flops=10**9)  # fmt: skip
        artifacts.write_best(str(best), {}, meta, predictions)
        rows.append(_row(j, best, meta.size_bytes, float("nan")))
    results.write_trials(rows, str(run_dir))
    (run_dir / DONE).write_text(json.dumps({"videos": videos, "candidates": candidates, "seed": seed}))
    return time.perf_counter() - started


def _label_lists(pool: np.ndarray, counts: np.ndarray) -> list[np.ndarray]:
    """Each video's labels, sorted (as the trainer writes them: ``np.flatnonzero``)."""
    firsts = np.where(np.arange(POOL)[None, :] < counts[:, None], pool, np.iinfo(np.int32).max)
    ordered = np.sort(firsts, axis=1)
    return np.split(ordered[ordered < np.iinfo(np.int32).max], np.cumsum(counts)[:-1])


# ---------------------------------------------------------------------------------------------
# The ensemble part


def _rss_bytes() -> int:
    """This process's resident memory now (Linux ``/proc``)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def measure_selection(run_dir: str, max_videos: int | None, workers: int | None = None) -> dict[str, float]:
    """The selection step on a written sweep, in this process: seconds, peak and post-import memory."""
    imported = _rss_bytes()
    before = resource.getrusage(resource.RUSAGE_SELF)
    cpu_before = before.ru_utime + before.ru_stime
    started = time.perf_counter()
    candidates, sample = load_sample(run_dir, storage_dtype="bfloat16", holdout_fraction=HOLDOUT,
                                     max_videos=max_videos)
    loaded = time.perf_counter()
    chosen = select(candidates, DEFAULT_BUDGET, holdout_fraction=HOLDOUT,
                    population=sample.selection if sample.subsampled else None, workers=workers)
    done = time.perf_counter()
    usage = resource.getrusage(resource.RUSAGE_SELF)  # CPU seconds: what a loaded machine does not inflate
    return {
        "load_s": loaded - started, "select_s": done - loaded, "cpu_s": usage.ru_utime + usage.ru_stime - cpu_before,
        "peak_rss": usage.ru_maxrss * 1024, "imported_rss": imported, "videos": sample.videos,
        "selection": chosen.population, "used": chosen.videos, "members": len(chosen.members),
        "gap": chosen.gap, "gap_sd": chosen.gap_sd, "gap_se": chosen.gap_se, "noise_tests": chosen.noise_tests,
    }  # fmt: skip


def _measure_in_subprocess(run_dir: Path, max_videos: int | None, workers: int | None) -> dict[str, float]:
    """``measure_selection`` in a fresh interpreter: its peak memory is the step's alone."""
    command = [sys.executable, __file__, "--measure", str(run_dir)]
    command += ["--max-videos", str(max_videos if max_videos is not None else 0)]
    command += ["--workers", str(workers)] if workers else []
    out = subprocess.run(command, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"the selection step failed on {run_dir}:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _load() -> str:
    return ", ".join(f"{x:.1f}" for x in os.getloadavg())


def _table(figures: list[dict[str, float]]) -> None:
    print(f"{'videos':>10} {'cand.':>5} {'sel. videos':>12} {'used':>7} {'load s':>8} {'select s':>9} "
          f"{'total s':>8} {'CPU s':>7} {'peak RSS GB':>11} {'(imports)':>9} {'members':>7} {'GAP (used)':>10} "
          f"{'± se':>8}")
    for f in figures:
        print(f"{f['videos']:>10,} {f['candidates']:>5} {f['selection']:>12,} {f['used']:>7,} "
              f"{f['load_s']:>8.1f} {f['select_s']:>9.1f} {f['load_s'] + f['select_s']:>8.1f} {f['cpu_s']:>7.1f} "
              f"{f['peak_rss'] / 2**30:>11.2f} {f['imported_rss'] / 2**30:>9.2f} {f['members']:>7} "
              f"{f['gap']:>10.5f} {f['gap_se']:>8.5f}")


def _extrapolate(small: dict[str, float], large: dict[str, float], videos: int, candidates: int) -> None:
    """``videos`` x ``candidates`` predicted from both measurements: reading grows with videos x
    candidates (from the larger), the selection with the videos it uses x candidates (from the one
    with the most candidates), memory with the largest file read plus what is kept."""
    load_s = large["load_s"] * videos * candidates / (large["videos"] * large["candidates"])
    by = max((small, large), key=lambda f: (f["candidates"], f["videos"]))
    capped = by["used"] < by["selection"]  # subsampled: the full scale uses as many videos
    used = by["used"] if capped else videos * (1 - HOLDOUT)
    select_s = by["select_s"] * used * candidates / (by["used"] * by["candidates"])
    print(f"extrapolated to {videos:,} videos x {candidates} candidates: load {load_s:.0f} s (from "
          f"{large['videos']:,} x {large['candidates']}), select {select_s:.0f} s (from {by['used']:,} videos used x "
          f"{by['candidates']}), total {load_s + select_s:.0f} s")
    exact = by["select_s"] * videos * (1 - HOLDOUT) * candidates / (by["used"] * by["candidates"])
    print(f"an exact selection on all {videos * (1 - HOLDOUT):,.0f} selection videos would take about {exact:,.0f} s "
          f"(linear in the videos from {by['used']:,}: {by['select_s']:.0f} s)")


def ensemble_part(args: argparse.Namespace) -> None:
    """The selection step at each size, side by side (module doc)."""
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="bench_scale_"))
    max_videos = args.max_videos if args.max_videos > 0 else None
    counts = args.candidates * len(args.videos) if len(args.candidates) == 1 else args.candidates
    if len(counts) != len(args.videos):
        raise SystemExit("error: --candidates takes one count, or one per --videos")
    print(f"ensemble selection: top-{TOP_K} predictions, holdout {HOLDOUT}, selection on at most "
          f"{max_videos or 'all'} videos; {os.cpu_count()} cores; load average {_load()}", flush=True)
    figures = []
    for videos, candidates in zip(args.videos, counts):
        run_dir = workdir / f"sweep-{videos}x{candidates}-seed{args.seed}"
        spent = write_sweep(run_dir, videos, candidates, args.seed)
        print(f"{videos:,} videos: " + (f"sweep written in {spent:.0f} s" if spent else f"reusing {run_dir}"))
        figures.append({**_measure_in_subprocess(run_dir, max_videos, args.workers), "candidates": candidates})
        print(f"  measured (load average now {_load()}): {json.dumps(figures[-1])}", flush=True)
    _table(figures)
    if len(figures) > 1:
        _extrapolate(figures[0], figures[-1], FULL_VIDEOS, max(counts))


PARTS: dict[str, Callable[[argparse.Namespace], None]] = {"ensemble": ensemble_part, **scale_driver.PARTS}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="The platform at full YouTube-8M scale, in parts.")
    parser.add_argument("--part", choices=[*PARTS, "all"], default="all")
    parser.add_argument("--videos", type=int, nargs="+", default=[FULL_VIDEOS // 10, FULL_VIDEOS],
                        help="validation videos of each synthetic sweep (ensemble)")
    parser.add_argument("--candidates", type=int, nargs="+", default=[64],
                        help="trained trials of each sweep, one for all or one per --videos (ensemble)")
    parser.add_argument("--max-videos", type=int, default=DEFAULT_SAMPLE_VIDEOS,
                        help="the selection's subsample of selection videos; 0: all (ensemble)")
    parser.add_argument("--workers", type=int, default=None, help="threads scoring moves (default: up to 4)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", help="where the synthetic sweeps are written and reused (default: a temp dir)")
    parser.add_argument("--measure", help=argparse.SUPPRESS)  # the fresh process of one measurement
    scale_driver.add_arguments(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.measure:
        print(json.dumps(measure_selection(args.measure, args.max_videos or None, args.workers)))
        return 0
    for name, part in PARTS.items():
        if args.part in (name, "all"):
            part(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
