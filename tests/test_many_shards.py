"""Thousands of shards (YouTube-8M has 3,844 per split): listing and planning them happens once per
trial, not per epoch, in seconds, with the driver's memory bounded; locally and on s3:// (a local
moto server). The shards are tiny (two videos of two frames): what is measured is the per-file
cost, which the real shards' reading would hide."""

from __future__ import annotations

import concurrent.futures as cf
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from yt8m_search.data import fs, loading
from yt8m_search.train import TrainConfig, fit

from .conftest import SMALL_CLASSES, write_tiny_shards

SHARDS = 4000
PLAN_SECONDS = 10.0  # generous: ~0.4 s measured on 2 cores at a load average of 15
RSS_GROWTH_MB = 64.0  # measured: ~4 MB for 4,000 shards
TINY = {"groups": 2, "clusters": 8, "hidden_size": 32, "gating_reduction": 4, "num_classes": SMALL_CLASSES}


@pytest.fixture(scope="module")
def many_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("many") / "train"
    write_tiny_shards(folder, SHARDS)
    return folder


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20


def _counted(monkeypatch: pytest.MonkeyPatch, owner: Any, name: str) -> list[Any]:
    """Count the calls of ``owner.name`` (the real function still runs)."""
    calls: list[Any] = []
    real: Callable[..., Any] = getattr(owner, name)

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append(args[0] if args else None)
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, counting)
    return calls


def _list_and_plan(where: str, sizes: bool = True) -> tuple[float, float, Any]:
    """Seconds listing ``where``, seconds planning its dataset, and the dataset."""
    started = time.perf_counter()
    found = fs.list_sized(where, pattern="*.parquet")
    listed = time.perf_counter()
    files = [path for path, _ in found]
    dataset = loading.read_videos(files, listed=True, sizes=[n for _, n in found] if sizes else None)
    assert len(found) == SHARDS
    return listed - started, time.perf_counter() - listed, dataset


def test_4000_local_shards_are_listed_and_planned_in_seconds(ray_local: None, many_shards: Path) -> None:
    import ray.data  # noqa: F401 - imported before the memory is measured

    before = _rss_mb()
    listing, planning, dataset = _list_and_plan(str(many_shards))
    assert listing + planning < PLAN_SECONDS
    assert _rss_mb() - before < RSS_GROWTH_MB
    files = fs.list_files(str(many_shards), pattern="*.parquet")
    groups = loading.plan_tasks(files, [fs.file_size(f) for f in files])
    assert len(groups) == loading.MIN_TASKS and [f for g in groups for f in g] == files  # in order, each once
    started = time.perf_counter()
    assert loading.read_videos(files, listed=True) is dataset  # the next epoch's evaluation: planned already
    assert time.perf_counter() - started < 0.5


def test_big_shards_are_read_one_per_task() -> None:
    files = [f"s3://bucket/train{i:04d}.parquet" for i in range(3844)]
    groups = loading.plan_tasks(files, [270 << 20] * len(files))  # YouTube-8M: ~1,000 videos, ~270 MB a shard
    assert groups == [[f] for f in files]
    few = loading.plan_tasks(files[:4], [1000] * 4)  # a few tiny shards still spread over tasks
    assert few == [[f] for f in files[:4]]


@pytest.mark.slow
def test_a_trial_lists_and_plans_its_shards_once_for_all_epochs(
        ray_local: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import ray.data

    # how often, not how fast (the tests above): 320 shards, ten times the fewest read tasks
    many_shards, validation = tmp_path / "train", tmp_path / "validation"
    write_tiny_shards(many_shards, 10 * loading.MIN_TASKS)
    write_tiny_shards(validation, 64, seed=1)
    listings = _counted(monkeypatch, fs, "list_sized")
    plans = _counted(monkeypatch, ray.data, "from_items")
    cfg = TrainConfig(model="nextvlad", hparams=TINY, epochs=2, batch_size=4, eval_batch_size=32,
                      max_steps_per_epoch=1, shuffle_buffer=0, num_workers=1, cpus_per_worker=0.5)
    reports: list[dict[str, Any]] = []
    result = fit(cfg, str(many_shards), str(validation), str(tmp_path / "trials"), "trial-many",
                 report=reports.append)
    assert [r["epoch"] for r in reports] == [1, 2] and result.metrics["val_videos"] == 96
    shards = [where for where in listings if where in (str(many_shards), str(validation))]  # not checkpoints
    assert sorted(shards) == sorted([str(many_shards), str(validation)])  # each set once, not per epoch
    assert len(plans) == 2  # the training set's dataset and the validation set's, not one per epoch


@pytest.mark.slow
def test_4000_shards_on_s3_are_listed_and_planned_in_seconds(
        ray_local: None, many_shards: Path, s3_bucket: str) -> None:
    import boto3

    bucket = s3_bucket.removeprefix("s3://")
    client = boto3.client("s3")
    with cf.ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda p: client.upload_file(str(p), bucket, f"train/{p.name}"), sorted(many_shards.iterdir())))
    started = time.perf_counter()  # the server's own floor: the same LIST pages, through boto3
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="train/", Delimiter="/")
    assert sum(len(page.get("Contents", [])) for page in pages) == SHARDS
    floor = time.perf_counter() - started

    before = _rss_mb()
    listing, planning, dataset = _list_and_plan(f"{s3_bucket}/train")
    # moto answers a LIST page of 1,000 keys in seconds on a loaded machine (S3 in ~0.1 s): the
    # listing is held to that server's floor, the planning to the bound
    assert listing < max(PLAN_SECONDS, 2 * floor), (listing, floor)
    assert planning < PLAN_SECONDS
    assert _rss_mb() - before < RSS_GROWTH_MB
    # without sizes, remote shards are weighed from a few samples, not one request each
    started = time.perf_counter()
    unsized = loading.plan_tasks(fs.list_files(f"{s3_bucket}/train"))
    assert len(unsized) == loading.MIN_TASKS and time.perf_counter() - started < PLAN_SECONDS + 2 * floor
    assert dataset is not None
