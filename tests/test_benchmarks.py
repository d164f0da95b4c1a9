"""The benchmarks' code paths on tiny CPU runs, so that they cannot rot: ``bench_train`` (smoke
configurations, compute-bound rate against a real fit) and ``bench_gpu`` (the GPU check, in its CPU
smoke mode); neither runs a sweep here."""

from __future__ import annotations

import importlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from yt8m_search import config
from yt8m_search.data.prepare import DataPaths

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def bench() -> Iterator[dict[str, ModuleType]]:
    """The benchmark scripts as modules (they import each other as top-level modules, as when run)."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        yield {name: importlib.import_module(name) for name in ("bench_train", "bench_gpu")}
    finally:
        sys.path.remove(str(BENCHMARKS))


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
