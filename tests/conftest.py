"""Shared fixtures: a local Ray instance with a fixed CPU count, and small synthetic Parquet data."""

from __future__ import annotations

import contextlib
import importlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import NoReturn

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from yt8m_search.data.parquet import FRAME_SCHEMA
from yt8m_search.data.prepare import DataPaths, synthetic_dataset

# Ray workers inherit this: without it every worker would start 2 OpenMP threads on 2 cores.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS", "0")

SMALL_CLASSES = 40
BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@contextlib.contextmanager
def benchmark_modules(*names: str) -> Iterator[dict[str, ModuleType]]:
    """The benchmark scripts ``names`` as modules, importable while the block runs (they import each
    other as top-level modules, as when run)."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        yield {name: importlib.import_module(name) for name in names}
    finally:
        sys.path.remove(str(BENCHMARKS))


def write_tiny_shards(folder: Path, count: int, seed: int = 0) -> list[Path]:
    """``count`` frame-level shards of one or two videos of two frames each."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        n = 1 + i % 2
        rows = {"id": [f"s{i:05d}v{j}" for j in range(n)], "labels": [[int(rng.integers(SMALL_CLASSES))]] * n,
                "num_frames": [2] * n, "rgb": [rng.integers(0, 256, 2 * 1024, dtype=np.uint8).tobytes()] * n,
                "num_audio_frames": [2] * n, "audio": [rng.integers(0, 256, 2 * 128, dtype=np.uint8).tobytes()] * n}
        paths.append(folder / f"shard{i:05d}.parquet")
        pq.write_table(pa.table(rows, schema=FRAME_SCHEMA), paths[-1])
    return paths


@pytest.fixture(scope="session")
def ray_local() -> Iterator[None]:
    import ray

    # the dashboard serves the state API that Train V2's placement-group cleaner queries
    ray.init(num_cpus=2, configure_logging=False, log_to_driver=False)
    from ray.data import DataContext

    DataContext.get_current().enable_progress_bars = False
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def small_data(tmp_path_factory: pytest.TempPathFactory) -> DataPaths:
    """160 training and 48 validation synthetic videos (1..60 frames) over 40 classes, as Parquet."""
    return synthetic_dataset(
        tmp_path_factory.mktemp("cache"),
        "small",
        train_videos=160,
        validation_videos=48,
        shards=4,
        seed=3,
        num_classes=SMALL_CLASSES,
        max_frames=60,
        progress=False,
    )


@pytest.fixture(scope="session")
def small_tfrecords(small_data: DataPaths) -> Path:
    return Path(small_data.train).parents[1] / "tfrecord"


@pytest.fixture
def s3_bucket(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    pytest.importorskip("moto.server")  # moto[server]; run with this interpreter, not a moto_server on PATH
    boto3 = pytest.importorskip("boto3")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        endpoint = f"http://127.0.0.1:{port}"
        for key, value in {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "test",
                           "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1",
                           "AWS_REGION": "us-east-1"}.items():
            monkeypatch.setenv(key, value)
        client = boto3.client("s3")
        for _ in range(100):
            try:
                client.create_bucket(Bucket="yt8m-test")
                break
            except Exception:  # the server is still starting
                time.sleep(0.1)
        else:
            pytest.skip("moto server did not start")
        yield "s3://yt8m-test"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def kill_sweep_when(command: list[str], ready: Callable[[], bool], log: Path, timeout: float = 600) -> None:
    """Run a sweep in its own process group and SIGKILL the group (the driver and the Ray instance it
    started) once ``ready()`` holds, 5 s later, so the last report has reached Tune."""
    driver = _start(command, log)
    deadline, reached = time.monotonic() + timeout, False
    while not reached and driver.poll() is None and time.monotonic() < deadline:
        time.sleep(1)
        reached = ready()
    if not reached:
        _fail(driver, log, "no trial finished while the sweep ran")
    time.sleep(5)
    os.killpg(driver.pid, signal.SIGKILL)
    driver.wait()


def run_sweep_to_the_end(command: list[str], log: Path, timeout: float = 600) -> str:
    """Run a sweep in its own process group; return its output once it exits with 0. A sweep still
    running after ``timeout`` fails the test with the stacks of all its processes."""
    driver = _start(command, log)
    try:
        driver.wait(timeout)
    except subprocess.TimeoutExpired:
        _fail(driver, log, f"the sweep did not end in {timeout:.0f} s")
    output = log.read_text()
    assert driver.returncode == 0, output[-4000:]
    return output


def _start(command: list[str], log: Path) -> subprocess.Popen[bytes]:
    """A sweep in its own process group, with a Ray instance of its own (the session's is not its)."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"OMP_NUM_THREADS": "1"}
    with log.open("w") as sink:
        return subprocess.Popen(command, env=env, start_new_session=True, stdout=sink, stderr=subprocess.STDOUT)


def _fail(driver: subprocess.Popen[bytes], log: Path, why: str) -> NoReturn:
    """Fail with the sweep's last output and the main-thread stacks of every process of its group
    (every thread of a trial actor; all of them in ``<log>.stacks``; py-spy comes with ray[default]),
    so that a hang in CI shows where it hangs."""
    stacks = []
    if driver.poll() is None:
        pids = subprocess.run(["ps", "-o", "pid=", "-g", str(driver.pid)],
                              capture_output=True, text=True, check=False).stdout
        spy = Path(sys.executable).with_name("py-spy")
        with log.with_suffix(".stacks").open("w") as full:  # every thread of every process, for a closer look
            for pid in pids.split():
                try:
                    dump = subprocess.run([str(spy), "dump", "--pid", pid],
                                          capture_output=True, text=True, timeout=30, check=False)
                except subprocess.TimeoutExpired:
                    continue
                full.write(f"=== pid {pid}\n{dump.stdout}\n")
                if "ImplicitFunc" in dump.stdout:  # a trial actor: its main and training threads
                    stacks.append(dump.stdout.strip()[:4000])
                elif dump.stdout:  # another Python process: its header and its main thread
                    stacks.append("\nThread ".join(dump.stdout.split("\nThread ")[:2]).strip()[:1500])
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
    pytest.fail(f"{why}; exit code {driver.returncode}\n{log.read_text()[-3000:]}\n\n" + "\n\n".join(stacks))
