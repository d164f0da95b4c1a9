"""Scale of the sweep's driver, the TFRecord converter and shard listing: measured small, extrapolated.

    .venv/bin/python benchmarks/bench_scale_driver.py [--part driver|convert|files|all]
        [--trials 16,32] [--convert-shards 4 --convert-videos 40] [--files 400,4000] [--no-s3]

driver   real sweeps (``yt8m_search.run.main``, each in a fresh process, as ``python -m
         yt8m_search.run`` runs) of tiny one-epoch trials on tiny data, W&B off: the driver's RSS
         sampled every 0.2 s (peak), its CPU seconds (every thread of the driver: Tune's loop, the
         searcher, the live view, the journal, the summary, ensemble and report; not the trials'
         processes, nor Ray's own daemons), and the run folder with its ``trials.csv``,
         ``optuna.journal`` and ``report.html``. Two sweep sizes give the growth per trial (driver
         CPU per result: the growth of CPU over the growth of results, which leaves out the fixed
         start and end), extrapolated linearly to 256 and 1,024 trials (labelled so).
convert  ``yt8m_search.convert.convert_on_ray`` over synthetic frame-level TFRecords of realistic
         length (45% of videos at 300 frames, the rest uniform in [60, 300]: ~234 on average, as in
         YouTube-8M; 1024 + 128 uint8 features; random bytes, which the uncompressed conversion does
         not care about) on a local Ray of ``--cpus`` CPUs, and one shard in one process: videos per
         second per CPU, and the estimate for YouTube-8M's 3,844 training shards of ~1,000 videos
         on the worker CPUs ``cluster.yaml`` allows (local disk here: S3 reads add their latency).
files    listing (``fs.list_sized``) and planning (``loading.read_videos``) N tiny shards, local and
         on s3:// (a moto server on 127.0.0.1): seconds and this process's RSS growth.

Measured on a shared machine: ``uptime``'s load average is printed beside every part.
"""

from __future__ import annotations

import os

os.environ.setdefault("RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS", "0")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import concurrent.futures as cf  # noqa: E402
import contextlib  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

from yt8m_search.data.labels import READ_THREADS  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "search_spaces" / "smoke.yaml"
CLASSES = 40
YT8M_SHARDS, YT8M_SHARD_VIDEOS = 3844, 1000


def load() -> str:
    """The 1-, 5- and 15-minute load averages, as ``uptime`` prints them."""
    return "load %.1f %.1f %.1f" % os.getloadavg()


def rss_mb(pid: int | None = None) -> float:
    with open(f"/proc/{pid or 'self'}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class RssSampler:
    """This process's RSS every ``every`` seconds in a thread, while the ``with`` block runs."""

    def __init__(self, every: float = 0.2) -> None:
        self.every, self.samples = every, [(0.0, rss_mb())]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        start = time.perf_counter()
        while not self._stop.wait(self.every):
            self.samples.append((time.perf_counter() - start, rss_mb()))

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.samples.append((self.samples[-1][0] + self.every, rss_mb()))

    @property
    def peak(self) -> float:
        return max(mb for _, mb in self.samples)


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


# ---- driver ---------------------------------------------------------------------------------------

def _sweep(trials: int, train: str, validation: str, out: Path) -> dict[str, float]:
    """One tiny sweep of ``trials`` trials in this process; its driver figures."""
    from yt8m_search import run

    overrides = [
        "data.synthetic=null", f"data.train={train}", f"data.validation={validation}",
        f"model.hparams.num_classes={CLASSES}", f"search.num_samples={trials}", "search.asha=null",
        "trial.epochs=1", "trial.batch_size=8", "trial.eval_batch_size=64", "trial.max_steps_per_epoch=1",
        "trial.shuffle_buffer=0", "budget.max_model_bytes=1e9", "budget.ensemble_bytes=1e9", "wandb.mode=disabled",
    ]
    cpu, started = time.process_time(), time.perf_counter()
    with RssSampler() as rss:
        code = run.main([str(SMOKE), *overrides, "--output", str(out)])
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    if code != 0:
        raise RuntimeError(f"the sweep of {trials} trials exited {code}: see {out / 'run.log'}")
    results = sum(1 for log in (out / "tune").glob("*/result.json") for line in log.read_text().splitlines() if line)
    size = {name: (out / name).stat().st_size for name in ("trials.csv", "optuna.journal", "report.html")}
    size |= {"trials_dir": folder_bytes(out / "trials"), "tune_dir": folder_bytes(out / "tune")}
    return {"trials": trials, "results": results, "wall_s": wall, "cpu_s": cpu, "rss_start": rss.samples[0][1],
            "rss_peak": rss.peak, "rss_end": rss.samples[-1][1], "folder": folder_bytes(out), **size}


def _sweep_in_child(trials: int, data: Any, out: Path) -> dict[str, float]:
    """``_sweep`` in a fresh process, as ``python -m yt8m_search.run`` runs: every sweep pays the same
    imports and starts from the same memory."""
    call = f"b._sweep({trials}, {data.train!r}, {data.validation!r}, b.Path({str(out)!r}))"
    code = (f"import json, sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import bench_scale_driver as b; "
            f"print('RESULT', json.dumps({call}))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    line = next((x for x in done.stdout.splitlines() if x.startswith("RESULT ")), None)
    if line is None:
        raise RuntimeError(f"the sweep of {trials} trials failed: {(done.stdout + done.stderr)[-3000:]}")
    return json.loads(line.removeprefix("RESULT "))


def _slope(rows: list[dict[str, float]], key: str) -> float:
    """``key``'s growth per trial between the smallest and the largest sweep (one sweep: per trial)."""
    a, b = rows[0], rows[-1]
    if b["trials"] == a["trials"]:
        return b[key] / b["trials"]
    return (b[key] - a[key]) / (b["trials"] - a["trials"])


def driver_part(args: argparse.Namespace) -> None:
    """Tiny sweeps of ``args.trials`` trials each; the driver's memory, CPU per result and run folder."""
    from yt8m_search.data.prepare import synthetic_dataset

    sizes = sorted(int(n) for n in args.trials.split(","))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = synthetic_dataset(tmp, "scale", train_videos=64, validation_videos=32, shards=2, seed=0,
                                 num_classes=CLASSES, max_frames=10, progress=False)
        for n in sizes:
            print(f"driver: sweeping {n} tiny trials ({load()})", flush=True)
            rows.append(_sweep_in_child(n, data, Path(tmp) / f"run{n}"))
    print(f"\ndriver ({load()}; {os.cpu_count()} cores; measured: {', '.join(map(str, sizes))} trials)")
    print_driver(rows)


DRIVER_ROWS = [("wall s", "wall_s", 1, "{:.0f}"), ("driver CPU s", "cpu_s", 1, "{:.1f}"),
               ("results", "results", 1, "{:.0f}"), ("driver RSS peak MB", "rss_peak", 1, "{:.0f}"),
               ("run folder MB", "folder", 1e6, "{:.1f}"), ("  trials/ MB", "trials_dir", 1e6, "{:.1f}"),
               ("  tune/ MB", "tune_dir", 1e6, "{:.1f}"), ("trials.csv KB", "trials.csv", 1e3, "{:.1f}"),
               ("optuna.journal KB", "optuna.journal", 1e3, "{:.1f}"), ("report.html KB", "report.html", 1e3, "{:.1f}")]


def print_driver(rows: list[dict[str, float]]) -> None:
    """Each sweep's totals, their growth per trial and the totals that growth gives at 256 and 1,024."""
    print(f"{'':22}" + "".join(f"{int(r['trials']):>10}" for r in rows)
          + f"{'per trial':>11}{'256 (ext.)':>12}{'1024 (ext.)':>12}")
    for name, key, unit, fmt in DRIVER_ROWS:
        slope, last = _slope(rows, key), rows[-1]
        ext = [last[key] + slope * (at - last["trials"]) for at in (256, 1024)]
        print(f"{name:22}" + "".join(f"{fmt.format(r[key] / unit):>10}" for r in rows)
              + f"{slope / unit:>11.3g}" + "".join(f"{fmt.format(v / unit):>12}" for v in ext))
    per_result = 1000 * _slope(rows, "cpu_s") / max(_slope(rows, "results"), 1e-9)
    print(f"driver CPU per result (marginal, between the sweeps): {per_result:.0f} ms; "
          f"RSS at the start of the first sweep: {rows[0]['rss_start']:.0f} MB")
    print("(ext.: the largest sweep plus the growth per trial, linearly: an extrapolation)")


# ---- conversion -----------------------------------------------------------------------------------

def realistic_frames(rng: np.random.Generator, count: int) -> np.ndarray:
    """YouTube-8M-like lengths: 45% of the videos at 300 frames, the rest uniform in [60, 300] (~234 on average)."""
    return np.where(rng.random(count) < 0.45, 300, rng.integers(60, 301, count))


def write_tfrecords(folder: Path, shards: int, videos: int, seed: int = 0) -> int:
    """``shards`` frame-level TFRecord shards of ``videos`` videos each; the total number of frames."""
    from yt8m_search.data.tfrecord import QuantizedVideo, write_frame_level

    folder.mkdir(parents=True, exist_ok=True)
    rng, frames = np.random.default_rng(seed), 0
    pool = rng.integers(0, 256, (300, 1152), dtype=np.uint8)
    for s in range(shards):
        lengths = realistic_frames(rng, videos)
        frames += int(lengths.sum())
        write_frame_level(str(folder / f"train{s:04d}.tfrecord"), (
            QuantizedVideo(f"s{s}v{i}", np.array([i % CLASSES], np.int32), pool[:n, :1024], pool[:n, 1024:])
            for i, n in enumerate(lengths)))
    return frames


def cluster_worker_cpus(path: Path = ROOT / "cluster.yaml") -> tuple[int, str]:
    """The most worker CPUs ``cluster.yaml`` allows: the largest node types first, each up to its
    ``max_workers``, all within the cluster's ``max_workers``; and how."""
    import yaml

    spec = yaml.safe_load(path.read_text())
    types = [(t["resources"].get("CPU", 0), t.get("max_workers", 0), name)
             for name, t in spec["available_node_types"].items() if name != spec["head_node_type"]]
    left, cpus, parts = spec.get("max_workers", 0), 0, []
    for per_node, most, name in sorted(types, reverse=True):
        take = min(most, left)
        if take and per_node:
            cpus, left = cpus + take * per_node, left - take
            parts.append(f"{take} x {name} ({per_node} CPUs)")
    return cpus, " + ".join(parts)


def conversion_part(args: argparse.Namespace) -> None:
    """Videos per second per CPU converting realistic TFRecords, and the full-scale estimate."""

    from yt8m_search.convert import convert_on_ray
    from yt8m_search.data.parquet import convert

    with tempfile.TemporaryDirectory() as tmp:
        frames = write_tfrecords(Path(tmp, "tfr"), args.convert_shards, args.convert_videos)
        videos = args.convert_shards * args.convert_videos
        started = time.perf_counter()
        convert(str(Path(tmp, "tfr", "train0000.tfrecord")), str(Path(tmp, "one")), workers=1, progress=False)
        one = args.convert_videos / (time.perf_counter() - started)
        with local_ray(args.cpus) as ray_cpus:
            report = convert_on_ray(str(Path(tmp, "tfr")), str(Path(tmp, "pq")), progress=False)
        in_bytes = folder_bytes(Path(tmp, "tfr"))
    on_ray = videos / report.seconds / ray_cpus
    cpus, how = cluster_worker_cpus()
    total = YT8M_SHARDS * YT8M_SHARD_VIDEOS
    print(f"\nconversion ({load()}; {videos} videos, {frames / videos:.0f} frames on average, "
          f"{in_bytes / videos / 1e3:.0f} KB each as TFRecord)")
    print(f"{'':34}{'videos/s/CPU':>14}{'3,844 shards on ' + str(cpus) + ' CPUs':>26}")
    for name, rate in (("one shard, one process", one), (f"convert_on_ray, {ray_cpus} CPUs", on_ray)):
        print(f"{name:34}{rate:>14.1f}{_duration(total / (rate * cpus)):>26}")
    print(f"(cluster.yaml's most worker CPUs: {how}; one 1-CPU task per shard, so at most "
          f"{YT8M_SHARDS} at once; S3 reads and writes not included)")


def _duration(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds > 5400 else f"{seconds / 60:.1f} min"


# ---- files ----------------------------------------------------------------------------------------

def write_tiny_shards(folder: Path, count: int) -> None:
    """``count`` Parquet shards of two two-frame videos (the per-file cost, without reading cost)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from yt8m_search.data.parquet import FRAME_SCHEMA

    folder.mkdir(parents=True, exist_ok=True)
    frames = bytes(2 * 1024)
    rows = {"id": ["a", "b"], "labels": [[1], [2]], "num_frames": [2, 2], "rgb": [frames] * 2,
            "num_audio_frames": [2, 2], "audio": [bytes(256)] * 2}
    for i in range(count):
        rows["id"] = [f"s{i}a", f"s{i}b"]
        pq.write_table(pa.table(rows, schema=FRAME_SCHEMA), folder / f"shard{i:05d}.parquet")


@contextlib.contextmanager
def moto_server() -> Iterator[str]:
    """A moto S3 server on 127.0.0.1 with one bucket, the AWS_* environment pointing at it; the bucket's URI."""
    import boto3

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    saved = {k: os.environ.get(k) for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                                            "AWS_DEFAULT_REGION", "AWS_REGION")}
    os.environ.update({"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "bench",
                       "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1"})
    try:
        for _ in range(600):
            with contextlib.suppress(Exception):
                boto3.client("s3").create_bucket(Bucket="yt8m-bench")
                break
            time.sleep(0.1)
        yield "s3://yt8m-bench"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _upload(folder: Path, bucket: str, prefix: str) -> None:
    import boto3

    client = boto3.client("s3")
    with cf.ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda p: client.upload_file(str(p), bucket, f"{prefix}/{p.name}"), sorted(folder.iterdir())))


def _list_and_plan(where: str) -> tuple[float, float, float, int, float, float]:
    """Seconds listing, seconds planning, RSS growth (MB) and read tasks for the shards at ``where``; then
    ``_labels_seconds`` over them."""
    from yt8m_search.data import fs, loading

    before, started = rss_mb(), time.perf_counter()
    found = fs.list_sized(where, pattern="*.parquet")
    listed = time.perf_counter()
    files, sizes = [p for p, _ in found], [n for _, n in found]
    loading.read_videos(files, listed=True, sizes=sizes)
    planned = time.perf_counter()
    grown, tasks = rss_mb() - before, len(loading.plan_tasks(files, sizes))
    return listed - started, planned - listed, grown, tasks, *_labels_seconds(files)


def _labels_seconds(files: list[str]) -> list[float]:
    """Seconds reading the ids and labels of ``files`` (the class-prior baseline's read), one file at a
    time and ``READ_THREADS`` at a time."""
    from yt8m_search.data.labels import read_labels

    seconds = []
    for threads in (1, READ_THREADS):
        started = time.perf_counter()
        read_labels(files, threads=threads)
        seconds.append(time.perf_counter() - started)
    return seconds


@contextlib.contextmanager
def local_ray(cpus: int) -> Iterator[int]:
    """A Ray of ``cpus`` CPUs for the part, started and stopped here; or the one already running in
    this process (a test's), as it is. Yields its CPUs."""
    import ray

    if ray.is_initialized():
        yield int(ray.cluster_resources().get("CPU", cpus))
        return
    ray.init(address="local", num_cpus=cpus, configure_logging=False, log_to_driver=False)
    try:
        yield cpus
    finally:
        ray.shutdown()


def files_part(args: argparse.Namespace) -> None:
    """Listing and planning time and driver memory for each count of tiny shards, local and on S3."""
    import ray.data  # noqa: F401 - imported before any memory is measured

    counts = [int(n) for n in args.files.split(",")]
    rows = []
    with local_ray(2), tempfile.TemporaryDirectory() as tmp, \
            (moto_server() if args.s3 else contextlib.nullcontext()) as s3:
        for n in counts:
            folder = Path(tmp, f"shards{n}")
            write_tiny_shards(folder, n)
            rows.append(("local", n, *_list_and_plan(str(folder))))
            if s3:
                _upload(folder, s3.removeprefix("s3://"), f"shards{n}")
                rows.append(("s3 (moto)", n, *_list_and_plan(f"{s3}/shards{n}")))
            shutil.rmtree(folder)
    print(f"\nfiles ({load()}; tiny shards; planning = read_videos over the listed files)")
    print(f"{'where':12}{'files':>7}{'list s':>9}{'plan s':>9}{'RSS +MB':>9}{'read tasks':>12}"
          f"{'labels s, 1 file':>18}{f'{READ_THREADS} at a time':>16}")
    for where, n, listing, planning, grown, tasks, serial, threaded in rows:
        print(f"{where:12}{n:>7}{listing:>9.2f}{planning:>9.2f}{grown:>9.1f}{tasks:>12}{serial:>18.2f}{threaded:>16.2f}")
    print("(listing and planning: once per trial: every epoch reads the same lists and the evaluation reuses its"
          " planned dataset; labels: once per sweep, for the class-prior baseline)")


PARTS = {"files": files_part, "convert": conversion_part, "driver": driver_part}


def add_arguments(ap: argparse.ArgumentParser) -> None:
    """The options of these parts (``bench_scale.py`` takes them too)."""
    ap.add_argument("--trials", default="16,32", help="comma-separated sweep sizes for the driver part")
    ap.add_argument("--convert-shards", type=int, default=4)
    ap.add_argument("--convert-videos", type=int, default=40, help="videos per synthetic shard")
    ap.add_argument("--cpus", type=int, default=2, help="the local Ray's CPUs for the conversion")
    ap.add_argument("--files", default="400,4000", help="comma-separated shard counts for the files part")
    ap.add_argument("--no-s3", dest="s3", action="store_false", help="skip the s3:// (moto) listings")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", choices=[*PARTS, "all"], default="all")
    add_arguments(ap)
    args = ap.parse_args(argv)
    for name, part in PARTS.items():
        if args.part in (name, "all"):
            part(args)


if __name__ == "__main__":
    main()
