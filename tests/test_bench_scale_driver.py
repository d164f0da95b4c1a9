"""``benchmarks/bench_scale_driver.py`` at its smallest, so that its code paths cannot rot: each part
runs for real (a two-trial sweep, two tiny TFRecord shards converted, a few shards listed locally
and on a local moto server) and prints its table."""

from __future__ import annotations

from collections.abc import Iterator
from types import ModuleType

import pytest

from .conftest import benchmark_modules


@pytest.fixture(scope="module")
def bench() -> Iterator[ModuleType]:
    with benchmark_modules("bench_scale_driver") as modules:
        yield modules["bench_scale_driver"]


def test_cluster_worker_cpus_follow_cluster_yaml(bench: ModuleType) -> None:
    cpus, how = bench.cluster_worker_cpus()
    assert cpus > 0 and "x" in how


def test_realistic_frame_counts_average_about_230(bench: ModuleType) -> None:
    import numpy as np

    lengths = bench.realistic_frames(np.random.default_rng(0), 20_000)
    assert lengths.max() == 300 and lengths.min() >= 60 and 220 < lengths.mean() < 245


def test_conversion_part(bench: ModuleType, capsys: pytest.CaptureFixture[str]) -> None:
    bench.main(["--part", "convert", "--convert-shards", "2", "--convert-videos", "3"])
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith(("one shard", "convert_on_ray"))]
    assert len(rows) == 2 and all(float(r.split()[-3]) > 0 for r in rows), out


def test_files_part(bench: ModuleType, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("moto.server")
    bench.main(["--part", "files", "--files", "12"])
    out = capsys.readouterr().out
    table = out[out.index("where"):].splitlines()[1:3]
    assert [line.split()[0] for line in table] == ["local", "s3"], out
    assert all(line.split()[-3] == "12" for line in table)  # a tiny shard per read task: only 12 of them
    assert all(float(seconds) > 0 for line in table for seconds in line.split()[-2:])  # labels, 1 and 16 at a time


@pytest.mark.slow
def test_driver_part(bench: ModuleType, capsys: pytest.CaptureFixture[str]) -> None:
    bench.main(["--part", "driver", "--trials", "2"])
    out = capsys.readouterr().out
    wanted = ("results", "driver CPU s", "driver RSS peak MB", "trials.csv KB", "optuna.journal KB")
    rows = {line[:22].strip(): line[22:].split() for line in out.splitlines() if line[:22].strip() in wanted}
    assert rows["results"][0] == "2", out  # one report per one-epoch trial
    assert all(float(rows[name][0]) > 0 for name in wanted), out
    assert "driver CPU per result" in out
