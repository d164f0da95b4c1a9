"""GPU check: the paper-size NeXtVLAD's bf16 training step (samples/s, MFU), the uint8 loader against what
that step consumes, and a one-trial smoke sweep on the GPU; one summary table at the end.

    bash benchmarks/gpu_check.sh [options]          # sets up .venv when needed, then runs this
    .venv/bin/python benchmarks/bench_gpu.py [--batch 80 320] [--steps 30] [--warmup 5] [--peak-tflops X]
        [--loader-videos 2000] [--loader-cpus N] [--no-sweep] [--sweep-timeout 300] [--cpu-smoke]

  step    the paper's NeXtVLAD (8 groups, 128 clusters, expansion 2, hidden 2048, gating r 8, logistic, 3862
          classes: 88.9 M parameters) trained with the recipe's own pieces (``make_optimizer``: Adam, foreach on
          CUDA by PyTorch's default; ``train_step``: bf16 autocast, per-parameter clipping) on a batch of 300-frame
          videos (every frame valid), each step as the loop takes it: uint8 frames from host memory to the
          device, dequantized there, the step, the loss read back. ``--batch``: per-GPU batches (80: the
          paper's 160 over 2 GPUs, as ``search_spaces/nextvlad.yaml``). Timed between ``torch.cuda.synchronize``
          calls after ``--warmup`` steps; samples/s of the median step. FLOPs per step: one step under
          ``torch.utils.flop_counter.FlopCounterMode`` (forward and backward counted as run, matmuls only, so
          no x3 rule); MFU = FLOPs / median step / the GPU's dense bf16 peak (``PEAKS`` by device name, or
          ``--peak-tflops``). Memory: ``torch.cuda.max_memory_allocated`` over the timed steps.
  loader  ``iter_video_batches(read_videos(...), dequantize=False)``: the uint8 batches a GPU worker gets,
          on synthetic shards (the generator's lengths: half the videos 300 frames), under
          ``ray.init(num_cpus=--loader-cpus)``; a cold pass (Ray starts its workers), a warm pass and a pass
          shaped as training (file shuffle, ``TrainConfig().shuffle_buffer`` rows of local shuffle,
          drop_last). videos/s by the wall clock, videos/CPU-s counting this process (Ray Data collates in
          its threads) and every Ray process. Loader cores per GPU = the step's samples/s at the first batch
          / the training-shaped videos/CPU-s.
  sweep   ``python -m yt8m_search.run search_spaces/smoke.yaml search.num_samples=1
          trial.gpus_per_worker=1`` (no per-model budget, so the one sampled trial always trains; W&B off)
          into a temporary folder, timed, with its synthetic data generated on first use; while it runs,
          the device's memory in use (``torch.cuda.mem_get_info``, all processes) is polled to see that the
          trial's process trained on the GPU.

``--cpu-smoke`` (or ``GPU_CHECK_CPU_SMOKE=1``): the same code on the CPU with tiny sizes (a small NeXtVLAD,
batch 4 of 10 frames, 48 loader videos, no sweep unless ``--sweep``), so the tests exercise it.
"""

from __future__ import annotations

import os

os.environ.setdefault("RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS", "0")

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import re  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from collections.abc import Iterable, Sequence  # noqa: E402
from pathlib import Path  # noqa: E402
from statistics import median  # noqa: E402
from typing import Any  # noqa: E402

import torch  # noqa: E402
from bench_train import start_ray, sync  # noqa: E402  (benchmarks/ is sys.path[0])
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from yt8m_search import models  # noqa: E402
from yt8m_search.constants import FEATURE_DIM, NUM_CLASSES  # noqa: E402
from yt8m_search.data.batch import VideoBatch  # noqa: E402
from yt8m_search.data.loading import iter_video_batches, read_videos  # noqa: E402
from yt8m_search.data.prepare import DataPaths, synthetic_dataset  # noqa: E402
from yt8m_search.train import TrainConfig, make_optimizer, train_step  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PAPER = dict(groups=8, clusters=128, expansion=2, hidden_size=2048, gating_reduction=8, dropout=0.5,
             classifier="logistic", num_classes=NUM_CLASSES)
TINY = dict(groups=2, clusters=8, expansion=1, hidden_size=32, gating_reduction=4, classifier="logistic",
            num_classes=NUM_CLASSES)
# Dense bf16 tensor-core peaks in TFLOPS (NVIDIA data sheets quote twice these "with sparsity"), matched
# against torch.cuda.get_device_name in order: the first match wins (H100 PCIe before H100 SXM).
PEAKS = [(r"\bH200\b", 989.0), (r"\bH100\b.*\bPCIe\b", 756.0), (r"\bH100\b", 989.0), (r"\bA100\b", 312.0),
         (r"\bL40S\b", 362.0), (r"\bL4\b", 121.0), (r"\bA10G\b", 125.0)]
GIB = 2**30


def peak_tflops(device_name: str, given: float | None = None) -> float | None:
    """The dense bf16 peak: ``given``, else the table's entry for the device, else None (no MFU)."""
    if given:
        return given
    return next((peak for pattern, peak in PEAKS if re.search(pattern, device_name)), None)


def video_batch(size: int, frames: int, num_classes: int = NUM_CLASSES, seed: int = 0) -> VideoBatch:
    """A host batch as the loader hands a GPU worker: uint8 frames (all ``frames`` valid), ~3 labels each."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.zeros(size, num_classes)
    labels.scatter_(1, torch.randint(num_classes, (size, 3), generator=gen), 1.0)
    lengths = torch.full((size,), frames, dtype=torch.int64)
    return VideoBatch(
        features=torch.randint(0, 256, (size, frames, FEATURE_DIM), dtype=torch.uint8, generator=gen),
        mask=torch.ones(size, frames, dtype=torch.bool), num_frames=lengths, num_audio_frames=lengths.clone(),
        labels=labels, ids=[f"v{i}" for i in range(size)],
    )


def measure_step(cfg: TrainConfig, batch: VideoBatch, steps: int, warmup: int, device: torch.device) -> dict[str, Any]:
    """The loop's step on ``batch``: FLOPs of one step, then median time and peak memory of ``steps`` after
    ``warmup`` (the counted step is not timed: the counter slows it down)."""
    torch.manual_seed(cfg.seed)
    model = models.build(cfg.model, **cfg.hparams).to(device).train()
    optimizer = make_optimizer(model, cfg)
    with FlopCounterMode(display=False) as counter:
        train_step(model, optimizer, batch.to(device), cfg, 0).item()
    for _ in range(warmup):
        train_step(model, optimizer, batch.to(device), cfg, 0).item()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(steps):
        sync(device)
        start = time.perf_counter()
        train_step(model, optimizer, batch.to(device), cfg, 0).item()  # .item(): the loop's per-step sync
        sync(device)
        times.append(time.perf_counter() - start)
    step = median(times)
    memory = torch.cuda.max_memory_allocated() / GIB if device.type == "cuda" else float("nan")
    optimizer_kind = "fused" if optimizer.defaults.get("fused") else "foreach" if device.type == "cuda" else "for-loop"
    del model, optimizer
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return {"batch": len(batch), "frames": batch.features.shape[1], "step_s": step, "best_s": min(times),
            "samples_per_s": len(batch) / step, "flops": counter.get_total_flops(), "memory_gib": memory,
            "optimizer": optimizer_kind}


def step_rows(r: dict[str, Any], peak: float | None, bf16: bool) -> list[tuple[str, str]]:
    achieved = r["flops"] / r["step_s"] / 1e12
    mfu = f"{achieved / peak:.1%} of {peak:g}" if peak else "n/a (unknown peak: give --peak-tflops)"
    memory = "n/a (CPU)" if math.isnan(r["memory_gib"]) else f"{r['memory_gib']:.1f} GiB"
    return [
        (f"train step, batch {r['batch']} x {r['frames']} frames, {'bf16 autocast' if bf16 else 'fp32'}, "
         f"Adam {r['optimizer']}", f"{r['samples_per_s']:,.1f} samples/s ({r['step_s'] * 1e3:.1f} ms/step, "
         f"best {r['best_s'] * 1e3:.1f})"),
        ("  model FLOPs per sample (forward + backward, counted)", f"{r['flops'] / r['batch'] / 1e9:.3g} GFLOP"),
        ("  achieved / MFU (dense bf16 peak, TFLOPS)", f"{achieved:.3g} TFLOPS / {mfu}"),
        ("  peak memory allocated", memory),
    ]


def cpu_by_process() -> dict[int, float]:
    """User + system CPU seconds of this process and of each of its descendants (Ray's processes), by pid."""
    import ray  # noqa: F401, I001  (first: it puts the psutil it ships on the path)
    import psutil

    seconds = {}
    for proc in [psutil.Process(), *psutil.Process().children(recursive=True)]:
        try:
            times = proc.cpu_times()
            seconds[proc.pid] = times.user + times.system
        except psutil.Error:
            pass
    return seconds


def cpu_since(before: dict[int, float]) -> float:
    """CPU seconds spent since ``before`` by the processes alive now (per pid: a Ray worker that exits
    in between takes its seconds along, which a difference of totals would count as negative)."""
    return sum(max(0.0, t - before.get(pid, 0.0)) for pid, t in cpu_by_process().items())


def drain(data: Iterable[VideoBatch]) -> dict[str, float]:
    """Pull every batch; videos, wall seconds, CPU seconds of this process and Ray's, time to the first batch."""
    cpu0, start = cpu_by_process(), time.perf_counter()
    first, videos = float("nan"), 0
    for batch in data:
        if videos == 0:
            first = time.perf_counter() - start
        videos += len(batch)
    wall, cpu = time.perf_counter() - start, cpu_since(cpu0)
    return {"videos": videos, "wall": wall, "cpu": cpu, "first": first, "rate": videos / wall, "per_cpu": videos / cpu}


def measure_loader(train: str, batch: int, cpus: int) -> dict[str, dict[str, float]]:
    """Cold, warm and training-shaped passes of uint8 batches over the training shards."""
    shuffle = TrainConfig(model="nextvlad").shuffle_buffer  # the trial default a GPU space runs with
    ours = start_ray(cpus)
    try:
        plain = lambda: iter_video_batches(read_videos(train), batch_size=batch, dequantize=False)  # noqa: E731
        cold, warm = drain(plain()), drain(plain())
        trained = drain(iter_video_batches(read_videos(train, shuffle=True), batch_size=batch,
                                           shuffle_buffer=shuffle, seed=1, drop_last=True, dequantize=False))
    finally:
        if ours:
            import ray

            ray.shutdown()
    return {"cold (Ray starts its workers)": cold, "warm": warm, f"as training ({shuffle}-row shuffle)": trained}


def sweep_command(output: str, gpus: float) -> list[str]:
    """The one-trial smoke sweep: no per-model budget (the sampled trial always trains), W&B off."""
    return [sys.executable, "-m", "yt8m_search.run", str(ROOT / "search_spaces" / "smoke.yaml"),
            "search.num_samples=1", f"trial.gpus_per_worker={gpus:g}", "budget.max_model_bytes=null",
            "budget.ensemble_bytes=1000000000", "wandb.mode=disabled", "--output", output]


def device_used_mib() -> int:
    """Memory in use on the whole device, every process's (cudaMemGetInfo: works where a container hides
    the other processes from nvidia-smi)."""
    free, total = torch.cuda.mem_get_info()
    return (total - free) // 2**20


def run_sweep(gpus: float, timeout: float) -> dict[str, Any]:
    """Run the sweep; its wall time, exit code, best GAP and the most device memory it added (GPU runs)."""
    baseline, added = (device_used_mib() if gpus else 0), [0]
    done = threading.Event()

    def poll() -> None:  # memory the trial's process takes on the device proves the trial trained there
        while not done.wait(0.5):
            added.append(device_used_mib() - baseline)

    if gpus:
        threading.Thread(target=poll, daemon=True).start()
    with tempfile.TemporaryDirectory() as output:
        start = time.perf_counter()
        try:
            out = subprocess.run(sweep_command(output, gpus), capture_output=True, text=True, timeout=timeout,
                                 cwd=ROOT, env={k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"})
            code, text = out.returncode, out.stdout + out.stderr
        except subprocess.TimeoutExpired as err:
            partial = err.stdout or ""  # bytes even with text=True
            code, text = "timeout", partial.decode(errors="replace") if isinstance(partial, bytes) else partial
        wall = time.perf_counter() - start
        done.set()
        summary = Path(output) / "summary.json"
        best = json.loads(summary.read_text()).get("best") if summary.exists() else None
    return {"wall": wall, "code": code, "gap": (best or {}).get("gap"), "gpu_mib": max(added), "tail": text[-2000:]}


def loader_data(cache: str, videos: int, frames: int) -> DataPaths:
    return synthetic_dataset(cache, f"gpucheck-{videos}-f{frames}", train_videos=videos,
                             validation_videos=max(16, videos // 20), shards=4, seed=0, num_classes=NUM_CLASSES,
                             max_frames=frames, progress=False)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, nargs="+", default=None, help="per-GPU batches (default 80 320)")
    parser.add_argument("--frames", type=int, default=None, help="frames per video of the step (default 300)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default 30)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 5)")
    parser.add_argument("--peak-tflops", type=float, default=None, help="the GPU's dense bf16 peak")
    parser.add_argument("--loader-videos", type=int, default=None, help="loader shards' videos (default 2000)")
    parser.add_argument("--loader-cpus", type=int, default=None, help="Ray CPUs of the loader (default: all cores)")
    parser.add_argument("--cache", default="~/.cache/yt8m_search_bench")
    parser.add_argument("--loader-data", default=None,
                        help="a folder of training Parquet shards to load instead of generating them")
    parser.add_argument("--sweep", action=argparse.BooleanOptionalAction, default=None,
                        help="run the one-trial sweep (default: on a GPU, not in --cpu-smoke)")
    parser.add_argument("--sweep-timeout", type=float, default=300)
    parser.add_argument("--cpu-smoke", action="store_true", default=os.environ.get("GPU_CHECK_CPU_SMOKE") == "1",
                        help="tiny sizes on the CPU (tests); also GPU_CHECK_CPU_SMOKE=1")
    args = parser.parse_args(argv)
    smoke = args.cpu_smoke
    defaults = dict(batch=[4] if smoke else [80, 320], frames=10 if smoke else 300, steps=2 if smoke else 30,
                    warmup=1 if smoke else 5, loader_videos=48 if smoke else 2000, sweep=not smoke,
                    loader_cpus=2 if smoke else (os.cpu_count() or 1))
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    return args


def step_section(args: argparse.Namespace, device: torch.device) -> list[dict[str, Any]]:
    hparams = TINY if args.cpu_smoke else PAPER
    cfg = TrainConfig(model="nextvlad", hparams=hparams, batch_size=max(args.batch))
    print(f"step: NeXtVLAD {hparams} ({models.param_count('nextvlad', **hparams) / 1e6:.1f} M parameters)",
          flush=True)
    results = []
    for size in args.batch:
        results.append(measure_step(cfg, video_batch(size, args.frames), args.steps, args.warmup, device))
        print(f"  batch {size}: {results[-1]['samples_per_s']:,.0f} samples/s", flush=True)
    return results


def loader_section(args: argparse.Namespace, gpu_rate: float) -> list[tuple[str, str]]:
    started = time.perf_counter()
    train = args.loader_data or loader_data(args.cache, args.loader_videos, 10 if args.cpu_smoke else 300).train
    print(f"loader: shards ready in {time.perf_counter() - started:.0f} s: {train}", flush=True)
    passes = measure_loader(train, args.batch[0], args.loader_cpus)
    for name, r in passes.items():
        print(f"  {name:<36} {r['videos']} videos, first batch {r['first']:.2f} s, {r['rate']:,.0f} videos/s, "
              f"{r['per_cpu']:,.0f} videos/CPU-s ({r['cpu']:.1f} CPU-s)", flush=True)
    trained = list(passes.values())[-1]
    return [
        (f"loader, uint8, as training, batch {args.batch[0]}, ray.init(num_cpus={args.loader_cpus})",
         f"{trained['rate']:,.0f} videos/s, {trained['per_cpu']:,.0f} videos/CPU-s"),
        (f"  loader cores per GPU (step at batch {args.batch[0]} / videos per CPU-s)",
         f"{gpu_rate / trained['per_cpu']:.1f}"),
        ("  one loader iterator keeps up (its videos/s >= the step's samples/s)",
         "yes" if trained["rate"] >= gpu_rate else f"NO ({trained['rate'] / gpu_rate:.0%})"),
    ]


def sweep_rows(r: dict[str, Any], gpus: float) -> list[tuple[str, str]]:
    used = r["gpu_mib"]  # a CUDA context alone takes a few hundred MiB: more than that is a model training
    gpu = f"{'yes' if used > 256 else 'NO'}, up to {used:,} MiB more device memory in use"
    gap = "n/a" if r["gap"] is None else f"{r['gap']:.3f}"
    rows = [(f"one-trial smoke sweep, trial.gpus_per_worker={gpus:g}", f"{r['wall']:.0f} s, exit {r['code']}, "
             f"best GAP {gap}")]
    if gpus:
        rows.append(("  the trial trained on the GPU (device memory while it ran)", gpu))
    return rows


def print_summary(title: str, rows: Sequence[tuple[str, str]]) -> None:
    width = max(len(label) for label, _ in rows) + 2
    print(f"\n{title}\n{'measure':<{width}}value")
    for label, value in rows:
        print(f"{label:<{width}}{value}")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    cuda = torch.cuda.is_available() and not args.cpu_smoke
    if not cuda and not args.cpu_smoke:
        print("bench_gpu: no CUDA device (torch.cuda.is_available() is False); use --cpu-smoke", file=sys.stderr)
        return 2
    device = torch.device("cuda" if cuda else "cpu")
    name = torch.cuda.get_device_name(device) if cuda else f"CPU, {torch.get_num_threads()} threads"
    peak = peak_tflops(name, args.peak_tflops) if cuda else args.peak_tflops
    started = time.perf_counter()
    title = (f"GPU check: {name}, torch {torch.__version__}{f' (CUDA {torch.version.cuda})' if cuda else ''}, "
             f"peak {f'{peak:g} TFLOPS dense bf16' if peak else 'unknown'}{', CPU smoke sizes' if not cuda else ''}")
    print(title, flush=True)
    steps = step_section(args, device)
    rows = [row for r in steps for row in step_rows(r, peak, cuda)]
    rows += loader_section(args, steps[0]["samples_per_s"])
    if args.sweep:
        gpus = 1.0 if cuda else 0.0
        print(f"sweep: {' '.join(sweep_command('TMP', gpus)[1:])}", flush=True)
        result = run_sweep(gpus, args.sweep_timeout)
        if result["code"] != 0:
            print(f"sweep failed (exit {result['code']}), its last output:\n{result['tail']}", flush=True)
        rows += sweep_rows(result, gpus)
    print_summary(f"{title}; total {time.perf_counter() - started:.0f} s", rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
