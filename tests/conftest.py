"""Shared fixtures: a local Ray instance with a fixed CPU count, and small synthetic Parquet data."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from yt8m_search.data.prepare import DataPaths, synthetic_dataset

# Ray workers inherit this: without it every worker would start 2 OpenMP threads on 2 cores.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS", "0")

SMALL_CLASSES = 40


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


def kill_sweep_when(command: list[str], env: dict[str, str], ready: Callable[[], bool], log: Path,
                    timeout: float = 600) -> None:
    """Run a sweep in its own process group and SIGKILL the group (the driver and the Ray instance it
    started) once ``ready()`` holds, 5 s later, so the last report has reached Tune."""
    with log.open("w") as sink:
        driver = subprocess.Popen(command, env=env, start_new_session=True, stdout=sink, stderr=subprocess.STDOUT)
    deadline, reached = time.monotonic() + timeout, False
    while not reached and driver.poll() is None and time.monotonic() < deadline:
        time.sleep(1)
        reached = ready()
    assert reached and driver.poll() is None, "no trial finished while the sweep ran:\n" + log.read_text()[-4000:]
    time.sleep(5)
    os.killpg(driver.pid, signal.SIGKILL)
    driver.wait()
