"""Training samples/s per worker of the paper-size NeXtVLAD against the loader's samples/s on the same shards.

    .venv/bin/python benchmarks/bench_train.py [--videos 2000] [--batch 32] [--iters 3] [--no-fit]

The loader must deliver at least 3x what one training worker consumes, so that data never starves a GPU.
On the cached synthetic shards of ``bench_loader.py`` (default lengths: half the videos 300 frames), one run
measures:

  loader   ``iter_video_batches`` under ``ray.init(num_cpus=1)``, batches of the per-worker size, dequantized
           as the training loop asks (float32 on a CPU, uint8 for a GPU): a cold pass (Ray starts its
           workers; its first batches are kept for the trainer), a warm pass, and a pass configured as
           ``train_loop_per_worker`` configures it (file shuffle, ``TrainConfig().shuffle_buffer`` rows of
           local shuffle, drop_last). Epoch rate = videos / whole pass; steady rate leaves out the first
           batch; videos/CPU-s counts the CPU seconds of this process (Ray Data collates in its threads)
           and of every Ray process, since ``num_cpus`` caps only Ray's read tasks.
  trainer  the paper-size NeXtVLAD (8 groups, 128 clusters, hidden 2048, gating r 8, logistic, 3862
           classes) trained with the recipe's own pieces (``make_optimizer``, ``learning_rate``, the model's
           loss, ``clip_per_parameter_``, bf16 autocast on a GPU, fp32 on a CPU) on the kept loader batches;
           one worker, all cores' threads on a CPU; best and median step, and samples per CPU-second
           of the best step (on a CPU, x threads = the rate on idle cores).
  fit      (unless ``--no-fit``) a real one-worker ``fit()`` of a small NeXtVLAD for ``--fit-steps`` steps
           under ``ray.init(num_cpus=2)``: the ``samples_per_s`` of its own report against the same loop's
           step-only rate on in-memory batches (1 thread, as the worker's 1 CPU), i.e. Ray Train's and
           the streaming loader's overhead on a short epoch (the report's clock starts before the first
           batch, so the loader's startup is in it).
"""

from __future__ import annotations

import os

os.environ.setdefault("RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS", "0")

import argparse  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Iterable  # noqa: E402
from statistics import median  # noqa: E402

import torch  # noqa: E402
from bench_loader import _cpu_seconds, shards, start_ray  # noqa: E402  (benchmarks/ is sys.path[0])

from yt8m_search import models  # noqa: E402
from yt8m_search.data.loading import VideoBatch, iter_video_batches, read_videos  # noqa: E402
from yt8m_search.train import TrainConfig, fit, make_optimizer, train_step  # noqa: E402

PAPER = dict(groups=8, clusters=128, expansion=2, hidden_size=2048, gating_reduction=8, dropout=0.5,
             classifier="logistic", num_classes=3862)
SMALL = dict(groups=4, clusters=16, expansion=2, hidden_size=256, gating_reduction=4, num_classes=3862)


def loader_pass(data: Iterable[VideoBatch], keep: int = 0) -> tuple[dict[str, float], list[VideoBatch]]:
    """Drain ``data``; time, rates and CPU seconds, and its first ``keep`` batches."""
    kept: list[VideoBatch] = []
    cpu0, start = _cpu_seconds(), time.perf_counter()
    first, first_videos, videos = None, 0, 0
    for batch in data:
        if first is None:
            first, first_videos = time.perf_counter(), len(batch)
        if len(kept) < keep:
            kept.append(batch)
        videos += len(batch)
    end = time.perf_counter()
    cpu = _cpu_seconds() - cpu0
    return {
        "videos": videos,
        "startup": first - start,
        "epoch": videos / (end - start),
        "steady": (videos - first_videos) / (end - first) if end > first else float("nan"),
        "per_cpu_s": videos / cpu,
        "cpu": cpu,
    }, kept


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def step_times(cfg: TrainConfig, batches: list[VideoBatch], steps: int, warmup: int,
               device: torch.device) -> tuple[list[float], list[float]]:
    """Wall and CPU seconds (this process) of ``steps`` training steps after ``warmup``: the steps of
    ``train_loop_per_worker``."""
    torch.manual_seed(cfg.seed)
    model = models.build(cfg.model, **cfg.hparams).to(device).train()
    optimizer = make_optimizer(model, cfg)
    examples_seen, times, cpu_times = 0, [], []
    for i in range(warmup + steps):
        sync(device)
        start, start_cpu = time.perf_counter(), time.process_time()
        batch = batches[i % len(batches)].to(device)
        train_step(model, optimizer, batch, cfg, examples_seen).item()  # .item(): the loop's per-step sync
        sync(device)
        examples_seen += len(batch)
        if i >= warmup:
            times.append(time.perf_counter() - start)
            cpu_times.append(time.process_time() - start_cpu)
    return times, cpu_times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", type=int, default=2000)
    parser.add_argument("--cache", default="~/.cache/yt8m_search_bench")
    parser.add_argument("--batch", type=int, default=None, help="per-worker batch (default 32 on a CPU, 160 on a GPU)")
    parser.add_argument("--iters", type=int, default=None, help="timed steps (default 3 on a CPU, 20 on a GPU)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps (Adam's state, allocator warm-up)")
    parser.add_argument("--no-fit", action="store_true", help="skip the fit() run")
    parser.add_argument("--fit-steps", type=int, default=20)
    parser.add_argument("--fit-shuffle-buffer", type=int, default=0,
                        help="local shuffle rows of the fit() run (0: none, so the report times the steps, "
                             "not the buffer's fill)")
    args = parser.parse_args()

    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    batch = args.batch or (160 if cuda else 32)
    iters = args.iters or (20 if cuda else 3)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    torch.set_num_threads(cores)
    started = time.perf_counter()
    paths = shards(args.cache, args.videos)
    print(f"device {device} ({torch.cuda.get_device_name() if cuda else f'{cores} cores, {cores} threads'}), "
          f"torch {torch.__version__}, {'bf16 autocast' if cuda else 'fp32'}, per-worker batch {batch}; "
          f"shards ready in {time.perf_counter() - started:.1f} s: {paths.train}\n")

    # ---- the loader, one Ray CPU
    import ray

    os.environ["OMP_NUM_THREADS"] = "1"  # what Ray's processes inherit
    train_cfg = TrainConfig(model="nextvlad", hparams=PAPER, batch_size=batch)
    dequantize = not cuda  # as train_loop_per_worker: GPUs get uint8 and dequantize on the device
    start_ray(1)
    try:
        cold, kept = loader_pass(
            iter_video_batches(read_videos(paths.train), batch_size=batch, dequantize=dequantize),
            keep=args.warmup + iters)
        warm, _ = loader_pass(iter_video_batches(read_videos(paths.train), batch_size=batch, dequantize=dequantize))
        shuffled, _ = loader_pass(iter_video_batches(
            read_videos(paths.train, shuffle=True), batch_size=batch, shuffle_buffer=train_cfg.shuffle_buffer,
            seed=1, drop_last=True, dequantize=dequantize))
    finally:
        ray.shutdown()
    label = "f32" if dequantize else "uint8"
    print(f"loader: ray.init(num_cpus=1), iter_video_batches(batch_size={batch}, {label})")
    print(f"{'pass':<44}{'startup s':>10}{'epoch/s':>9}{'steady/s':>10}{'CPU-s':>7}{'videos/CPU-s':>14}")
    for name, r in (("cold (Ray starts its workers)", cold), ("warm", warm),
                    (f"as training: file + {train_cfg.shuffle_buffer}-row shuffle, drop_last", shuffled)):
        print(f"{name:<44}{r['startup']:>10.2f}{r['epoch']:>9.0f}{r['steady']:>10.0f}{r['cpu']:>7.1f}"
              f"{r['per_cpu_s']:>14.0f}")

    # ---- the paper-size trainer on the kept batches
    params = models.param_count("nextvlad", **PAPER)
    frames = [int(b.num_frames.float().mean()) for b in kept]
    times, cpu_times = step_times(train_cfg, kept, iters, args.warmup, device)
    best, med = batch / min(times), batch / median(times)
    print(f"\ntrainer: paper-size NeXtVLAD ({params / 1e6:.1f} M parameters), {len(times)} timed steps "
          f"after {args.warmup}, on loader batches padded to {sorted({int(b.features.shape[1]) for b in kept})} "
          f"frames (mean valid {sum(frames) / len(frames):.0f})")
    print(f"{'samples/s per worker':<28}{'best':>8}{'median':>8}{'step s':>8}{'samples/CPU-s':>15}")
    print(f"{'':<28}{best:>8.1f}{med:>8.1f}{min(times):>8.2f}{batch / min(cpu_times):>15.1f}")

    # ---- the verdict
    loader_rate, loader_core = min(warm["epoch"], shuffled["epoch"]), min(warm["per_cpu_s"], shuffled["per_cpu_s"])
    print(f"\n{'loader / trainer (per worker)':<46}{'ratio':>8}{'>= 3x':>7}")
    for name, rate in ((f"loader, 1 Ray CPU, epoch rate ({loader_rate:.0f}/s)", loader_rate),
                       (f"loader per CPU-second ({loader_core:.0f}/CPU-s)", loader_core)):
        print(f"{name:<46}{rate / best:>8.1f}{'yes' if rate >= 3 * best else 'NO':>7}")
    if not cuda:
        print("(a CPU trainer; whether a GPU starves takes this run on a GPU machine, where the loader yields uint8\n"
              " batches of 160 and the step runs in bf16; bench_loader.py's uint8 rows give the loader's side)")

    # ---- fit(): Ray Train's own report against the step-only rate, small model
    if not args.no_fit:
        fit_cfg = TrainConfig(model="nextvlad", hparams=SMALL, epochs=1, batch_size=batch, eval_batch_size=256,
                              num_workers=1, gpus_per_worker=1.0 if cuda else 0.0, cpus_per_worker=1.0,
                              max_steps_per_epoch=args.fit_steps, shuffle_buffer=args.fit_shuffle_buffer,
                              max_failures=0)
        torch.set_num_threads(1)  # the worker's 1 CPU (train_loop_per_worker sets 1 thread per CPU)
        step_only = batch / median(step_times(fit_cfg, kept, max(iters, 5), args.warmup, device)[0])
        print(f"\nfit(): ray.init(num_cpus={cores}), 1 worker x 1 CPU, {args.fit_steps} steps of {batch}, "
              f"local shuffle {args.fit_shuffle_buffer}, small NeXtVLAD "
              f"({models.param_count('nextvlad', **SMALL) / 1e6:.2f} M parameters: {SMALL})")
        torch.set_num_threads(cores)
        start_ray(cores)
        try:
            with tempfile.TemporaryDirectory() as storage:
                t0 = time.perf_counter()
                result = fit(fit_cfg, paths.train, paths.validation, storage, "bench")
                wall = time.perf_counter() - t0
        finally:
            ray.shutdown()
        reported = result.metrics["samples_per_s"]
        examples = args.fit_steps * batch
        print(f"  fit() wall {wall:.1f} s: Ray Train's start, the steps, evaluation of "
              f"{result.metrics['val_videos']} videos, a checkpoint")
        print(f"{'samples/s':<52}{'value':>8}{'/ step-only':>13}{f'{examples} samples, s':>20}")
        for name, rate in (("step-only, in-memory batches, 1 thread (median)", step_only),
                           ("fit() report samples_per_s (loader startup included)", reported),
                           ("loader alone, 1 Ray CPU, warm epoch rate", warm["epoch"])):
            print(f"{name:<52}{rate:>8.1f}{rate / step_only:>13.2f}{examples / rate:>20.1f}")
    print(f"\ntotal {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
