"""The ensemble step at YouTube-8M scale (issue #17), on tiny sizes: the predictions' storage round-trips,
the streaming loader aligns and checks trials one file at a time, a large selection part is selected
on a seeded subsample whose GAP comes with its standard error (and agrees with the exact selection
within it), and the dense re-score as Ray Data actors equals the one in the driver."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from yt8m_search import artifacts, ensemble, results
from yt8m_search.data.prepare import DataPaths
from yt8m_search.ensemble.candidates import restrict
from yt8m_search.ensemble.scoring import Scorer
from yt8m_search.metrics.holdout import holdout_mask

from .conftest import benchmark_modules
from .test_ensemble import _copy_run, fake_run  # noqa: F401  (fake_run: a fixture)


@pytest.fixture(scope="module")
def bench_scale() -> Iterator[ModuleType]:
    with benchmark_modules("bench_scale") as modules:
        yield modules["bench_scale"]


@pytest.fixture(scope="module")
def sweep(bench_scale: ModuleType, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A synthetic finished sweep as the benchmark writes it: 3,000 videos, 5 trials (one listing the
    videos in another order), 3,862 classes."""
    run_dir = tmp_path_factory.mktemp("scale") / "sweep"
    bench_scale.write_sweep(run_dir, 3000, 5, seed=4)
    return run_dir


# ---------------------------------------------------------------------------------------------
# Storage


def _old_table(p: artifacts.Predictions) -> pa.Table:
    """A predictions table as the trainer wrote it before (one Python list per row)."""
    return pa.table({
        "id": pa.array(p.ids, pa.string()),
        "classes": pa.array(list(p.classes), pa.list_(pa.int32())),
        "scores": pa.array(list(p.scores), pa.list_(pa.float32())),
        "labels": pa.array([np.asarray(x, np.int32) for x in p.labels], pa.list_(pa.int32())),
    }, schema=artifacts.PREDICTIONS_SCHEMA)  # fmt: skip


def test_predictions_round_trip_and_old_files_read_the_same(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    labels = [np.sort(rng.choice(3862, n, replace=False)).astype(np.int32) for n in rng.integers(0, 6, 50)]
    predictions = artifacts.Predictions([f"v{i}" for i in range(50)], rng.integers(0, 3862, (50, 20)).astype(np.int32),
                                        rng.random((50, 20), dtype=np.float32), labels)
    table = predictions.to_table("epoch001-abc")
    assert table.cast(artifacts.PREDICTIONS_SCHEMA).equals(_old_table(predictions))  # the same file format
    for path, written in ((tmp_path / "new.parquet", table), (tmp_path / "old.parquet", _old_table(predictions))):
        pq.write_table(written, path)
        back, _ = artifacts.read_predictions(str(path))
        assert back.ids == predictions.ids and np.array_equal(back.classes, predictions.classes)
        assert np.array_equal(back.scores, predictions.scores) and back.scores.dtype == np.float32
        assert all(np.array_equal(a, b) for a, b in zip(back.labels, labels)) and len(back.labels) == 50
    assert artifacts.read_predictions_table(str(tmp_path / "new.parquet"))[1] == "epoch001-abc"
    empty = artifacts.Predictions.concat([], 20)
    assert len(artifacts.Predictions.from_table(empty.to_table(), "empty")) == 0


def test_candidates_hold_compact_class_ids_equal_to_the_files(sweep: Path) -> None:
    candidates, sample = ensemble.load_sample(str(sweep), holdout_fraction=0.2)
    assert not sample.subsampled and sample.videos == sample.used == 3000
    ids = candidates[0].video_ids
    assert list(ids) == sorted(ids)
    for c in candidates:
        assert c.classes.dtype == np.int16 and c.scores.dtype == np.float32  # 6 bytes an entry, lossless
        written, _ = artifacts.read_predictions(c.predictions)
        order = np.argsort(np.asarray(written.ids, dtype=object), kind="stable")
        assert np.array_equal(c.classes, written.classes[order]) and np.array_equal(c.scores, written.scores[order])
        assert c.video_ids is ids and c.labels is candidates[0].labels
    # the trial that listed its videos in another order (the benchmark's fourth) is aligned too
    assert artifacts.read_predictions(candidates[3].predictions)[0].ids != artifacts.read_predictions(
        candidates[0].predictions)[0].ids


def test_a_trial_disagreeing_on_a_label_is_refused(sweep: Path, tmp_path: Path) -> None:
    run_dir = _copy_run(sweep, tmp_path)
    best = Path(results.read_trials(str(run_dir))[2].checkpoint)
    table, write_id = artifacts.read_predictions_table(str(best / artifacts.PREDICTIONS_FILE))
    labels = table.column("labels").to_pylist()
    labels[7] = [*labels[7], 3861] if 3861 not in labels[7] else labels[7][:-1]
    table = table.set_column(3, "labels", pa.array(labels, pa.list_(pa.int32())))
    pq.write_table(table.replace_schema_metadata({b"yt8m_search.write_id": write_id.encode()}),
                   best / artifacts.PREDICTIONS_FILE)
    with pytest.raises(ensemble.EnsembleError, match="disagree on the labels of video"):
        ensemble.load_sample(str(run_dir))


# ---------------------------------------------------------------------------------------------
# The subsample


def test_a_large_selection_part_is_subsampled_and_its_gap_has_a_standard_error(sweep: Path) -> None:
    candidates, sample = ensemble.load_sample(str(sweep), holdout_fraction=0.2, max_videos=800, seed=1)
    everything, _ = ensemble.load_sample(str(sweep), holdout_fraction=0.2)
    held = holdout_mask(list(everything[0].video_ids), 0.2)
    assert sample.subsampled and sample.used == 800 and sample.selection == int((~held).sum()) and sample.videos == 3000
    kept = set(candidates[0].video_ids)
    assert len(kept) == 800 and kept <= set(everything[0].video_ids[~held])  # no holdout video chooses
    again, _ = ensemble.load_sample(str(sweep), holdout_fraction=0.2, max_videos=800, seed=1)
    assert list(again[0].video_ids) == list(candidates[0].video_ids)  # seeded
    chosen = ensemble.select(candidates, 10**9, holdout_fraction=0.2, population=sample.selection)
    assert chosen.videos == 800 and chosen.population == sample.selection
    assert 0 < chosen.gap_se < chosen.gap_sd < 0.05
    assert chosen.gap_se == pytest.approx(chosen.gap_sd * math.sqrt(1 - 800 / sample.selection))
    exact = ensemble.select(everything, 10**9, holdout_fraction=0.2)
    assert exact.gap_se == 0 and exact.gap_sd > 0 and exact.population == exact.videos == sample.selection


def _gap_on(candidates: list[ensemble.Candidate], chosen: ensemble.Selection, keep: np.ndarray) -> float:
    """The sparse GAP of ``chosen``'s weights on the videos ``keep`` of ``candidates``."""
    index = {c.trial_id: j for j, c in enumerate(candidates)}
    scorer = Scorer(restrict(candidates, keep), 20, 1)
    return scorer.weighted_gap({index[c.trial_id]: w for c, w in zip(chosen.members, chosen.weights)})[0]


def test_the_subsample_agrees_with_the_exact_selection_within_its_uncertainty(sweep: Path) -> None:
    everything, _ = ensemble.load_sample(str(sweep), holdout_fraction=0.2)
    selection_part = ~holdout_mask(list(everything[0].video_ids), 0.2)
    exact = ensemble.select(everything, 10**9, holdout_fraction=0.2)
    for seed in (0, 1, 2):
        candidates, sample = ensemble.load_sample(str(sweep), holdout_fraction=0.2, max_videos=1000, seed=seed)
        chosen = ensemble.select(candidates, 10**9, holdout_fraction=0.2, population=sample.selection)
        # the estimate: the chosen ensemble's GAP on all the selection videos lies within 3 standard errors
        on_all = _gap_on(everything, chosen, selection_part)
        assert abs(chosen.gap - on_all) <= 3 * chosen.gap_se
        # and the subsample's choice is as good as the exact one's, within the noise of a choice
        assert on_all >= exact.gap - 3 * chosen.gap_sd


def test_a_small_sweep_is_selected_exactly_as_before(fake_run: Path, tmp_path: Path) -> None:  # noqa: F811
    run_dir = _copy_run(fake_run, tmp_path)
    summary = results.read_summary(str(run_dir))
    results.write_summary(dataclasses.replace(summary, data=dataclasses.replace(summary.data, holdout_fraction=0.3)),
                          str(run_dir))
    entry = ensemble.run(str(run_dir))
    assert entry.sample_videos == entry.sample_of == entry.validation_videos == 48 - entry.holdout_videos
    assert entry.selection_gap_se == 0 and entry.selection_gap_sd > 0  # the whole selection part: no sampling error
    assert not any("subsample" in n for n in entry.notes)
    everything = ensemble.load_candidates(str(run_dir))
    if not entry.shipped_best_single:  # no subsample: the same choice
        assert ensemble.select(everything, entry.budget_bytes, holdout_fraction=0.3).gap == entry.selection_gap
    # a summary written before these fields still reads
    raw = json.loads((run_dir / results.SUMMARY_FILE).read_text())
    for key in ("sample_videos", "sample_of", "selection_gap_sd", "selection_gap_se"):
        del raw["ensemble"][key]
    old = results.parse_summary(raw).ensemble
    assert isinstance(old, results.EnsembleSummary) and old.sample_videos == 0 and math.isnan(old.selection_gap_se)


def test_the_step_reports_its_subsample(fake_run: Path, tmp_path: Path) -> None:  # noqa: F811
    run_dir = _copy_run(fake_run, tmp_path)
    entry = ensemble.run(str(run_dir), max_videos=30, seed=5)
    assert entry.sample_videos == 30 and entry.sample_of == 48 and entry.validation_videos == 48
    assert entry.selection_gap_se > 0 and any("subsample (seed 5) of 30 of the 48" in n for n in entry.notes)
    assert results.read_summary(str(run_dir)).ensemble == entry


# ---------------------------------------------------------------------------------------------
# The dense re-score as Ray tasks


def _assert_same_parts(ray_parts: list[dict], driver_parts: list[dict], tol: float = 1e-9) -> None:
    assert len(ray_parts) == len(driver_parts)
    for got, want in zip(ray_parts, driver_parts):
        for part in ("selection", "holdout"):
            assert got[part]["videos"] == want[part]["videos"] > 0
            for name in ("gap", "hit_at_one", "perr", "map"):
                assert got[part][name] == pytest.approx(want[part][name], abs=tol, rel=tol), (part, name)


def test_the_ray_rescore_equals_the_driver_rescore(fake_run: Path, small_data: DataPaths, ray_local: None,  # noqa: F811
                                                   tmp_path: Path) -> None:
    from yt8m_search.rescore import rescore_on_ray

    run_dir = _copy_run(fake_run, tmp_path)
    entry = ensemble.run(str(run_dir))
    single = ensemble.load_candidates(str(run_dir))[0]  # a trial's best/ folder, as a model as shipped
    job = ensemble.RescoreJob(
        (ensemble.Scored(path=entry.path), ensemble.Scored(trial_id=single.trial_id, checkpoint=single.checkpoint,
                                                           write_id=single.write_id, size_bytes=single.size_bytes)),
        small_data.validation, holdout_fraction=0.3, batch_size=16)  # fmt: skip
    lines: list[str] = []
    driver = ensemble.rescore_in_driver(job, lines.append)
    _assert_same_parts(rescore_on_ray(job, lines.append, gpus=False), driver)
    # merged across actors (two half-CPU actors: Ray's two CPUs less the read tasks' share hold them)
    _assert_same_parts(rescore_on_ray(job, lines.append, gpus=False, actors=2, cpus_per_actor=0.5), driver)
    assert any("on Ray: 2 actor(s) on cpu" in line for line in lines)


def test_the_step_takes_the_ray_rescore(fake_run: Path, ray_local: None, tmp_path: Path) -> None:  # noqa: F811
    from yt8m_search.rescore import rescore_on_ray

    in_driver = ensemble.run(str(_copy_run(fake_run, tmp_path / "driver")))
    on_ray = ensemble.run(str(_copy_run(fake_run, tmp_path / "ray")), rescore=rescore_on_ray)
    assert on_ray.members == in_driver.members and on_ray.weights == in_driver.weights
    for name in ("gap", "hit_at_one", "perr", "map"):  # the same batches, summed in another grouping
        assert getattr(on_ray, name) == pytest.approx(getattr(in_driver, name), abs=1e-12)
    assert on_ray.best_single["gap"] == pytest.approx(in_driver.best_single["gap"], abs=1e-12)
    compared = ("path", "seconds", "selection_seconds", "gap", "hit_at_one", "perr", "map", "best_single")
    assert {k: v for k, v in dataclasses.asdict(on_ray).items() if k not in compared} == {
        k: v for k, v in dataclasses.asdict(in_driver).items() if k not in compared}


def test_a_sweep_rescores_on_ray_where_ray_has_somewhere_else_to_run_it(monkeypatch: pytest.MonkeyPatch) -> None:
    import ray

    from yt8m_search import run
    from yt8m_search.rescore import rescore_on_ray

    def cluster(resources: dict[str, float], nodes: int) -> None:
        monkeypatch.setattr(ray, "is_initialized", lambda: True)
        monkeypatch.setattr(ray, "cluster_resources", lambda: resources)
        monkeypatch.setattr(ray, "nodes", lambda: [{"Alive": True}] * nodes + [{"Alive": False}])

    cluster({"CPU": 2.0}, 1)  # a local sweep: the same CPUs, without an actor's process to start
    assert run._ray_rescore() is None
    cluster({"CPU": 2.0, "GPU": 1.0}, 1)
    assert run._ray_rescore() is rescore_on_ray
    cluster({"CPU": 0.0}, 3)  # cluster.yaml's head, which advertises no CPU, and its workers
    assert run._ray_rescore() is rescore_on_ray
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    assert run._ray_rescore() is None
