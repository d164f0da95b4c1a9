"""The benchmarks' code paths on tiny CPU runs, so that they cannot rot: ``bench_train`` (smoke
configurations, compute-bound rate against a real fit), ``bench_gpu`` (the GPU check, in its CPU
smoke mode; it runs no sweep here) and ``bench_search`` (TPE + ASHA against random search: its
figures on hand-made epochs, and the whole benchmark on tiny sweeps)."""

from __future__ import annotations

import math
import subprocess
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from yt8m_search import config
from yt8m_search.data.prepare import DataPaths

from .conftest import BENCHMARKS, benchmark_modules


@pytest.fixture(scope="module")
def bench() -> Iterator[dict[str, ModuleType]]:
    with benchmark_modules("bench_train", "bench_gpu", "bench_baseline", "bench_search") as modules:
        yield modules


def test_smoke_picks_follow_the_space_file(bench: dict[str, ModuleType]) -> None:
    bench_train = bench["bench_train"]
    spec = config.load(bench_train.SMOKE)
    picks = bench_train.representative(spec)
    assert [p.family for p in picks] == ["nextvlad", "nextvlad", "mix_nextvlad", "mix_nextvlad"]
    assert all(p.size_bytes <= spec.budget.max_model_bytes for p in picks)  # larger ones never train
    assert picks[0].size_bytes < picks[1].size_bytes and picks[2].size_bytes < picks[3].size_bytes
    assert all(p.hparams["dropout"] == pytest.approx(0.35) for p in picks)  # floats at their range's middle
    by_classifier = bench_train.representative(spec, by_classifier=True)
    assert {(p.family, p.hparams["classifier"]) for p in by_classifier} >= {("nextvlad", "logistic"),
                                                                             ("nextvlad", "moe")}
    cfg = bench_train.train_config(spec, picks[0])
    assert (cfg.batch_size, cfg.eval_batch_size, cfg.epochs) == (64, 200, 3)
    assert 4e-3 < cfg.learning_rate < 2e-2


def test_bench_train_measures_a_tiny_fit(bench: dict[str, ModuleType], ray_local: None, small_data: DataPaths,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    bench["bench_train"].main([
        "data.synthetic=null", f"data.train={small_data.train}", f"data.validation={small_data.validation}",
        "trial.batch_size=16", "trial.eval_batch_size=48", "trial.shuffle_buffer=0", "trial.max_steps_per_epoch=2",
        "--epochs", "1", "--configs", "1", "--steps", "1", "--warmup", "0",
    ])
    out = capsys.readouterr().out
    assert "fit/compute" in out
    row = next(line for line in out.splitlines() if line.startswith("1  nextvlad"))
    assert row.split()[-2] in ("yes", "NO") and "%" in row


def test_bench_baseline_sets_nextvlad_beside_the_mean_pooled_baseline(
        bench: dict[str, ModuleType], ray_local: None, small_data: DataPaths,
        capsys: pytest.CaptureFixture[str]) -> None:
    bench["bench_baseline"].main([
        "data.synthetic=null", f"data.train={small_data.train}", f"data.validation={small_data.validation}",
        "trial.batch_size=16", "trial.eval_batch_size=48", "trial.shuffle_buffer=0", "trial.max_steps_per_epoch=2",
        "model.hparams.num_classes=40", "data.holdout_fraction=0.3", "--epochs", "1", "--configs", "1",
        "--seeds", "0",
    ])
    out = capsys.readouterr().out
    table = out[out.index("GAP selection"):].splitlines()
    rows = {line.split()[0]: line for line in table[1:] if line.strip()}
    assert set(rows) == {"frame_logistic", "nextvlad", "class-prior"}
    assert rows["frame_logistic"].rstrip().endswith("1.00x")  # the baseline over itself
    for name in ("frame_logistic", "nextvlad"):  # median (min-max) over the seeds, on both parts
        assert rows[name].count("(") == 2 and rows[name].count("-") >= 2


def test_bench_gpu_runs_its_cpu_smoke_mode(bench: dict[str, ModuleType], ray_local: None, small_data: DataPaths,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    assert bench["bench_gpu"].main(["--cpu-smoke", "--loader-data", small_data.train]) == 0
    out = capsys.readouterr().out
    summary = out[out.index("\nGPU check"):]
    for measure in ("train step, batch 4 x 10 frames, fp32", "model FLOPs per sample", "loader cores per GPU"):
        assert measure in summary
    assert "sweep" not in summary  # tests never run the sweep


def test_dense_bf16_peaks_by_device_name(bench: dict[str, ModuleType]) -> None:
    peak = bench["bench_gpu"].peak_tflops
    assert peak("NVIDIA H200") == peak("NVIDIA H100 80GB HBM3") == 989
    assert peak("NVIDIA H100 PCIe") == 756
    assert peak("NVIDIA A100-SXM4-80GB") == 312
    assert (peak("NVIDIA L4"), peak("NVIDIA L40S"), peak("NVIDIA A10G")) == (121, 362, 125)
    assert peak("Tesla T4") is None and peak("Tesla T4", 65.0) == 65.0


def test_the_gpu_sweep_command_is_a_valid_smoke_space(bench: dict[str, ModuleType]) -> None:
    command = bench["bench_gpu"].sweep_command("/tmp/out", 1.0)
    space, overrides = command[3], command[4:command.index("--output")]
    spec = config.load(space, overrides)
    assert (spec.search.num_samples, spec.trial.gpus_per_worker, spec.budget.max_model_bytes) == (1, 1.0, None)


def test_gpu_check_script_parses() -> None:
    out = subprocess.run(["bash", "-n", str(BENCHMARKS / "gpu_check.sh")], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def _sweep(bench_search: ModuleType, gaps: list[tuple[str, int, float]]) -> object:
    """A sweep whose epochs (trial, epoch, GAP) were reported in this order, one second apart."""
    epochs = [bench_search.Epoch(float(i), trial, epoch, gap, gap - 0.01) for i, (trial, epoch, gap) in enumerate(gaps)]
    return bench_search.Sweep(epochs, len({t for t, _, _ in gaps}), 1.0)


def test_bench_search_compares_at_equal_trial_epochs(bench: dict[str, ModuleType]) -> None:
    bs = bench["bench_search"]
    # TPE + ASHA: trial b stopped at its first rung; random: two full trials and one past the budget
    tpe = _sweep(bs, [("a", 1, 0.10), ("b", 1, 0.05), ("a", 2, 0.20), ("c", 1, 0.12), ("c", 2, 0.30)])
    rnd = _sweep(bs, [("x", 1, 0.08), ("y", 1, 0.15), ("x", 2, 0.18), ("y", 2, 0.19), ("z", 1, 0.40),
                      ("z", 2, 0.50)])
    r = bs.SeedResult(7, 5, tpe, rnd, tpe.stopped(2))
    assert r.stopped == {1: 1}
    assert r.best("random").gap == 0.40  # cut at the budget: z's second epoch does not count
    assert r.best("tpe+asha").holdout_gap_best == pytest.approx(0.29)
    assert math.isinf(r.share)  # TPE + ASHA never reached 0.40
    assert bs.fmt_share(r.share) == "never"
    r2 = bs.SeedResult(7, 4, tpe, rnd, {})  # random's best within 4: 0.19, which TPE reached at its 3rd epoch
    assert r2.share == pytest.approx(3 / 4)
    curve = r.curve("tpe+asha")
    assert len(curve) == bs.GRID and math.isnan(curve[0]) and curve[-1] == 0.30
    seen = [g for g in curve if not math.isnan(g)]
    assert seen == sorted(seen)  # the best so far never falls
    lines = bs.summary_lines([r, r2])
    assert lines[-1] == "goal (median share <= 50%): NOT met"
    assert "(reached in 1 of 2 seeds)" in "\n".join(lines)


@pytest.mark.slow
def test_bench_search_runs_tiny_sweeps(bench: dict[str, ModuleType], ray_local: None, small_data: DataPaths,
                                       tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plot = tmp_path / "efficiency.svg"
    results = bench["bench_search"].main([
        "data.synthetic=null", f"data.train={small_data.train}", f"data.validation={small_data.validation}",
        "model.hparams.num_classes=40", "trial.epochs=2", "trial.batch_size=16", "trial.eval_batch_size=48",
        "trial.shuffle_buffer=0", "trial.max_steps_per_epoch=2",
        "--seeds", "3", "--trials", "2", "--plot", str(plot),
    ])  # one seed, two sweeps: the figures over several seeds are checked on hand-made epochs above
    assert [r.seed for r in results] == [3]
    for r in results:
        assert r.budget == len(r.tpe.epochs) <= 4 and r.tpe.trials == 2  # TPE + ASHA's spend is the budget
        assert len(r.random.epochs) >= r.budget and r.random.trials == -(-r.budget // 2)  # random: full trials
        assert all(0 < r.best(m).gap <= 1 for m in ("tpe+asha", "random"))
    out = capsys.readouterr().out
    table = out[out.index("\nsearch efficiency:"):].splitlines()
    header = table.index(bench["bench_search"].HEADER)
    row = table[header + 1].split()
    assert (int(row[0]), int(row[1])) == (3, results[0].budget)  # the seed and the budget both methods had
    assert "over 1 seed, median (min–max):" in table and table[-2].startswith("goal (median share <= 50%): ")
    svg = ET.fromstring(plot.read_text())
    ns = {"svg": "http://www.w3.org/2000/svg"}
    curves = {p.get("class") for p in svg.iterfind(".//svg:path", ns) if "curve" in (p.get("class") or "")}
    assert curves == {"curve tpe-asha", "curve random"}
    assert len(svg.findall(".//svg:polygon", ns)) == 2  # the min–max bands
