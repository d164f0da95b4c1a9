"""``benchmarks/bench_scale.py``'s ensemble part on a tiny synthetic sweep, so that it cannot rot: the
sweep is written as trials write it, the selection step is measured in a fresh process, and both sizes
are printed side by side with the extrapolation."""

from __future__ import annotations

from pathlib import Path

import pytest

from yt8m_search import ensemble

from .conftest import benchmark_modules


def test_bench_scale_measures_the_ensemble_selection_at_two_sizes(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    with benchmark_modules("bench_scale") as modules:
        bench_scale = modules["bench_scale"]
    assert bench_scale.main(["--part", "ensemble", "--videos", "400", "900", "--candidates", "3",
                             "--max-videos", "500", "--workdir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines()
            if line.strip().startswith(("400 ", "900 ")) and "videos:" not in line]  # the table's rows
    assert [r[0] for r in rows] == ["400", "900"]
    for row in rows:
        assert row[1] == "3" and float(row[8]) > 0.05  # candidates; a peak RSS in GB
    assert rows[0][3] == rows[0][2] and rows[1][3] == "500"  # 400: all ~320 selection videos; 900: subsampled
    assert "extrapolated to 1,100,000 videos x 3 candidates" in out and "an exact selection on all" in out
    # the sweep it wrote is a real one: the ensemble step's loader reads it, and it is reused
    candidates, sample = ensemble.load_sample(str(tmp_path / "sweep-900x3-seed0"), holdout_fraction=0.2, max_videos=300)
    assert len(candidates) == 3 and sample.used == 300 and sample.videos == 900
    assert bench_scale.write_sweep(tmp_path / "sweep-900x3-seed0", 900, 3) == 0.0
