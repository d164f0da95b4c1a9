"""The paper-scale spaces: reverse whitening on with a configurable eigenvalues file whose absence is
reported before the cluster, and ``paper_nextvlad.yaml``, the NeXtVLAD paper's two configurations
with its recipe and no search (per-condition fixed values, the grid sampler)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest

from yt8m_search import config, models, run, search
from yt8m_search.data import fs
from yt8m_search.data.prepare import DataPaths
from yt8m_search.search.trial import SweepContext

ROOT = Path(__file__).resolve().parents[1]
SPACES = ROOT / "search_spaces"
PAPER = SPACES / "paper_nextvlad.yaml"
PAPER_SCALE = ["nextvlad.yaml", "vlad_family.yaml", "paper_nextvlad.yaml"]
REAL_EIGENVALS = Path("/work/shared/data/yt8m_pca_eigenvals.npy")  # read here, never copied
WHITENED = ("nextvlad", "mix_nextvlad")  # the families with NeXtVLAD's reverse whitening


# ---------------------------------------------------------------------------------------------
# Reverse whitening at paper scale


@pytest.mark.parametrize("name", PAPER_SCALE)
def test_paper_scale_spaces_whiten_every_nextvlad(name: str) -> None:
    spec = config.load(SPACES / name)
    assert spec.data.pca_eigenvals == "s3://my-yt8m-bucket/yt8m_pca/eigenvals.npy"
    configs, _ = config.configurations(spec.parameters)
    whitened = [c for c in configs if c["family"] in WHITENED]
    assert whitened and all(c.get("reverse_whitening") is True for c in whitened)
    # the WILLOW-style families never had it (and have no such hyperparameter)
    assert all("reverse_whitening" not in c for c in configs if c["family"] not in WHITENED)


def test_the_synthetic_space_stays_without_whitening() -> None:
    spec = config.load(SPACES / "smoke.yaml")
    assert spec.data.pca_eigenvals is None
    assert not any(c.get("reverse_whitening") for c in config.configurations(spec.parameters)[0])


def test_a_missing_eigenvalues_file_is_reported_with_every_other_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "yt8m_pca" / "eigenvals.npy"
    overrides = [f"data.pca_eigenvals={missing}", "trial.epochs=0", "search.num_samples=0"]
    with pytest.raises(config.SpecError) as info:
        config.load(SPACES / "nextvlad.yaml", overrides)
    errors = info.value.errors
    wanted = f"data.pca_eigenvals: no such file: {missing} (the YouTube-8M PCA eigenvalues"
    assert any(e.startswith(wanted) and "http://data.yt8m.org/yt8m_pca.tgz" in e for e in errors), errors
    assert any(e.startswith("trial.epochs") for e in errors) and any(e.startswith("search.num_samples") for e in errors)
    # the dry run says the same, exits 2 and starts nothing
    assert run.main([str(SPACES / "nextvlad.yaml"), "--dry-run", *overrides]) == 2
    err = capsys.readouterr().err
    assert wanted in err and "trial.epochs" in err and "yt8m_pca.tgz" in err
    # unset while a configuration whitens: the same pointer to the files
    with pytest.raises(config.SpecError, match="can be true, which needs data.pca_eigenvals .the YouTube-8M PCA"):
        config.load(SPACES / "vlad_family.yaml", ["data.pca_eigenvals=null"])


@pytest.mark.skipif(not REAL_EIGENVALS.is_file(), reason="the real YouTube-8M eigenvalues are not here")
def test_the_real_eigenvalues_file_passes_and_reaches_the_trial(tmp_path: Path) -> None:
    spec = config.load(PAPER, [f"data.pca_eigenvals={REAL_EIGENVALS}"])
    values = models.load_eigenvals(str(REAL_EIGENVALS))
    assert values.shape == (1024,) and values[0] == pytest.approx(14.7385, abs=1e-3)  # spec 3.1
    context = SweepContext(spec=spec, data=DataPaths(train="/t", validation="/v"), run_dir=str(tmp_path))
    for family, cfg in _paper_trials(spec).items():
        train = context.train_config(cfg)
        assert train.reverse_whitening and train.pca_eigenvals == str(REAL_EIGENVALS), family


def test_a_missing_remote_eigenvalues_file_stops_the_run_before_ray(s3_bucket: str, tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    uri = f"{s3_bucket}/yt8m_pca/eigenvals.npy"
    output = tmp_path / "run"
    assert run.main([str(PAPER), f"data.pca_eigenvals={uri}", "--output", str(output)]) == 2
    err = capsys.readouterr().err
    assert f"data.pca_eigenvals: no such file: {uri}" in err and "yt8m_pca.tgz" in err
    assert not output.exists()  # nothing started, nothing written
    buffer = io.BytesIO()
    np.save(buffer, np.ones((2048, 1), np.float32))
    with fs.atomic_output(uri) as out:
        out.write(buffer.getvalue())
    assert config.missing_eigenvalues(uri) is None


# ---------------------------------------------------------------------------------------------
# paper_nextvlad.yaml: the paper's two configurations, no search


def _paper_trials(spec: config.Spec) -> dict[str, dict[str, Any]]:
    """The sweep's trials as its sampler and space produce them, by family."""
    space = search.SearchSpace(spec.parameters, spec.budget.max_model_bytes, spec.budget.storage_dtype)
    study = optuna.create_study(sampler=search.make_sampler(spec))
    trials = {}
    for _ in range(spec.search.num_samples):
        trial = study.ask()
        extra = space(trial)
        assert extra["feasible"], extra
        values = {**trial.params, **{k: v for k, v in extra.items() if k not in search.EXTRA_KEYS}}
        trials[values["family"]] = values
        study.tell(trial, 0.5)  # the grid does not stop the study (Tune's num_samples does)
    return trials


def test_the_paper_space_trains_each_configuration_once_with_its_recipe(tmp_path: Path) -> None:
    spec = config.load(PAPER)
    assert spec.search.sampler == "grid" and spec.search.num_samples == 2 and spec.search.asha is None
    assert not [p for p in spec.parameters if p.distribution is not None and p.name != "family"]  # no search
    trials = _paper_trials(spec)
    assert set(trials) == {"nextvlad", "mix_nextvlad"}
    single, mixture = (search.model_of(trials[f], spec.parameters)[1] for f in ("nextvlad", "mix_nextvlad"))
    paper = dict(groups=8, expansion=2, hidden_size=2048, dropout=0.5, classifier="logistic", reverse_whitening=True)
    assert single == {**paper, "clusters": 128, "gating_reduction": 8}  # Table 1 (spec 3.5)
    assert mixture == {**paper, "clusters": 112, "gating_reduction": 16, "num_branches": 3, "temperature": 3.0,
                       "distill_weight": 9.0}  # Table 2, the final script (spec 3.4-3.5)
    context = SweepContext(spec=spec, data=DataPaths(train="/t", validation="/v"), run_dir=str(tmp_path))
    recipes = {f: context.train_config(v) for f, v in trials.items()}
    for cfg in recipes.values():  # spec 6: Adam 2e-4, x0.8 staircase, batch 160 over 2 GPUs, L2 1e-5, clip 1
        assert (cfg.batch_size, cfg.num_workers, cfg.gpus_per_worker, cfg.learning_rate, cfg.lr_decay, cfg.l2,
                cfg.clip_norm, cfg.epochs, cfg.average_last) == (160, 2, 1, 2e-4, 0.8, 1e-5, 1.0, 15, 0)
    assert recipes["nextvlad"].lr_decay_examples == 2_000_000 and recipes["mix_nextvlad"].lr_decay_examples == 2_500_000


def test_the_sweeps_searcher_suggests_both_configurations_at_once() -> None:
    """Through Tune's OptunaSearch, both trials asked before either ends (max_concurrent 2)."""
    spec = config.load(PAPER)
    searcher = search.make_searcher(spec)
    first, second = searcher.suggest("a"), searcher.suggest("b")
    assert {first["family"], second["family"]} == {"nextvlad", "mix_nextvlad"}
    assert first["feasible"] and second["feasible"]
    for trial_id in ("a", "b"):  # the grid's last point does not stop (and break) the study
        searcher.on_trial_complete(trial_id, {"gap_best": 0.8, "epoch": spec.trial.epochs})


def test_the_paper_configurations_have_the_papers_sizes() -> None:
    spec = config.load(PAPER)
    trials = {f: search.model_of(v, spec.parameters)[1] for f, v in _paper_trials(spec).items()}
    single = models.count("nextvlad", **trials["nextvlad"])
    mixture = models.count("mix_nextvlad", **trials["mix_nextvlad"])
    # Table 1: 89M; spec 7: 88,889,378 (+ the 1024 stored whitening scales)
    assert single.params == 88_889_378 and round(single.params / 1e6) == 89
    # Table 2: 237M (spec 7: 235,935,273 reproduces every part; the table rounds up), "about 944M bytes"
    assert mixture.params == 235_935_273 and abs(mixture.params / 237e6 - 1) < 0.01
    size = models.size_bytes("mix_nextvlad", dtype=spec.budget.storage_dtype, **trials["mix_nextvlad"])
    assert spec.budget.storage_dtype == "float32"
    assert size == (235_935_273 + 215_616 + 1024) * 4 == 944_607_652  # + BN statistics + whitening scale
    assert round(size / 1e6) == 945 and size <= spec.budget.max_model_bytes == 10**9  # the budget holds it
    assert models.size_bytes("nextvlad", dtype="float32", **trials["nextvlad"]) == 355_885_192
    # the K = 128 mixture would not have fitted (spec 7: 1,061.4 MB): why the paper chose 112
    assert models.size_bytes("mix_nextvlad", dtype="float32", **{**trials["mix_nextvlad"], "clusters": 128}) > 10**9


def test_the_paper_space_passes_the_dry_run(capsys: pytest.CaptureFixture[str]) -> None:
    assert run.main([str(PAPER), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "first 2 sampled configurations:" in out and "INFEASIBLE" not in out
    assert "944.61 MB  ok  {'family': 'mix_nextvlad'" in out and "355.89 MB  ok  {'family': 'nextvlad'" in out
    assert "  nextvlad: lr_decay_examples=2000000" in out and "  mix_nextvlad: lr_decay_examples=2500000" in out


# ---------------------------------------------------------------------------------------------
# The syntax the paper space needs: per-condition fixed values, the grid sampler


def _space(hparams: dict[str, Any], **search_: Any) -> dict[str, Any]:
    return {"data": {"train": "/t", "validation": "/v"},
            "model": {"family": {"choice": ["nextvlad", "mix_nextvlad"]}, "hparams": hparams},
            "search": search_}


def _errors(raw: dict[str, Any]) -> list[str]:
    with pytest.raises(config.SpecError) as info:
        config.parse(raw)
    return info.value.errors


def test_per_condition_values_must_exclude_each_other_and_be_fixed() -> None:
    ok = [{"value": 64, "when": {"family": "nextvlad"}}, {"value": 32, "when": {"family": "mix_nextvlad"}}]
    spec = config.parse(_space({"clusters": ok, "groups": {"value": 4, "when": {"clusters": 32}}}))
    configs = {(c["family"], c["clusters"], c.get("groups")) for c in config.configurations(spec.parameters)[0]}
    assert configs == {("nextvlad", 64, None), ("mix_nextvlad", 32, 4)}  # a condition on them works too
    overlapping = [{"value": 64, "when": {"family": ["nextvlad", "mix_nextvlad"]}},
                   {"value": 32, "when": {"family": "mix_nextvlad"}}]
    assert any(e.startswith("clusters: defined twice (model.hparams.clusters[0], model.hparams.clusters[1])")
               for e in _errors(_space({"clusters": overlapping})))
    searched = [{"int": [8, 64], "when": {"family": "nextvlad"}}, {"value": 32, "when": {"family": "mix_nextvlad"}}]
    assert any(e.startswith("model.hparams.clusters[0]: a per-condition value needs value and when")
               for e in _errors(_space({"clusters": searched})))  # fixed values only
    assert any(e.startswith("model.hparams.clusters[1]: a per-condition value needs value and when")
               for e in _errors(_space({"clusters": [ok[0], {"value": 32}]})))
    trial = {**_space({}), "trial": {"epochs": [{"value": 2, "when": {"family": "nextvlad"}}]}}
    assert any(e.startswith("trial.epochs: cannot take per-condition values") for e in _errors(trial))


def test_the_grid_needs_choices_and_enough_trials() -> None:
    errors = _errors(_space({"dropout": {"float": [0.1, 0.5]}}, sampler="grid", num_samples=8))
    assert "model.hparams.dropout: search.sampler grid needs choices, got a float range" in errors
    errors = _errors(_space({"groups": {"choice": [2, 4]}}, sampler="grid", num_samples=3))
    assert "search.num_samples: 3 trials cannot cover the grid's 4 points" in errors
    spec = config.parse(_space({"groups": {"choice": [2, 4]}}, sampler="grid", num_samples=4))
    study = optuna.create_study(sampler=search.make_sampler(spec))
    points = set()
    for _ in range(4):
        trial = study.ask()
        points.add((trial.suggest_categorical("family", ["nextvlad", "mix_nextvlad"]),
                    trial.suggest_categorical("groups", [2, 4])))
        study.tell(trial, 0.0)
    assert len(points) == 4  # each point once, and telling the last one does not raise
