"""Each model family's training-recipe defaults: registered with the family, resolved per trial
(the space's value > the family's recipe > ``TrialSettings``' default), checked before the
cluster, shown by the dry run and reaching the optimizer."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import optuna
import pytest

from yt8m_search import config, models, run, search
from yt8m_search.config import TrialSettings
from yt8m_search.data.prepare import DataPaths
from yt8m_search.search.trial import SweepContext
from yt8m_search.train.recipe import learning_rate, make_optimizer

SPACES = Path(__file__).resolve().parents[1] / "search_spaces"

# The papers' recipes (spec 4.3-4.4, 5, 6). NeXtVLAD's is TrialSettings' defaults.
PAPER_RECIPES = {
    "frame_logistic": {},  # the baseline: no paper recipe, it trains as the space and the defaults say
    "nextvlad": {},
    "mix_nextvlad": {},
    "netvlad": {"batch_size": 80, "lr_decay": 0.8, "lr_decay_examples": 4_000_000, "l2": 1e-6},
    "netrvlad": {"batch_size": 80, "lr_decay": 0.8, "lr_decay_examples": 4_000_000, "l2": 1e-6},
    "soft_bof": {"batch_size": 80, "lr_decay": 0.8, "lr_decay_examples": 4_000_000, "l2": 1e-8},
    "gru": {"batch_size": 128, "lr_decay": 0.9, "lr_decay_examples": 4_000_000, "l2": 1e-6},
    "nonlocal_netvlad": {"batch_size": 80, "lr_decay": 0.8, "l2": 1e-8},
}


def _space(family: Any, **trial: Any) -> dict[str, Any]:
    return {"data": {"train": "/tmp/t", "validation": "/tmp/v"}, "model": {"family": family}, "trial": trial}


def _settings(spec: config.Spec, **values: Any) -> TrialSettings:
    return config.trial_settings(spec, values)


@pytest.mark.parametrize("name", models.list_models())
def test_every_recipe_names_trial_settings_with_valid_values(name: str) -> None:
    recipe = models.recipe_defaults(name)
    assert set(recipe) <= set(TrialSettings.names()), set(recipe) - set(TrialSettings.names())
    for key, value in recipe.items():
        assert TrialSettings.value_problem(key, value) is None, (key, value)
    TrialSettings().replace(**recipe)  # and together (raises on a problem between settings)
    recipe["batch_size"] = -1  # a copy: the registry's recipe is not the caller's to change
    assert models.recipe_defaults(name).get("batch_size") != -1


def test_the_recipes_are_the_papers() -> None:
    assert {name: models.recipe_defaults(name) for name in models.list_models()} == PAPER_RECIPES
    d = TrialSettings()  # the NeXtVLAD recipe (spec 3.5, 6)
    assert (d.batch_size, d.learning_rate, d.lr_decay, d.lr_decay_examples, d.l2) == (160, 2e-4, 0.8, 2_000_000, 1e-5)


def test_the_family_recipe_beats_the_defaults_and_the_space_beats_both() -> None:
    # nothing set: the family's recipe, then the defaults
    spec = config.parse(_space({"choice": ["nextvlad", "netvlad", "gru"]}))
    assert spec.trial_explicit == frozenset()
    netvlad = _settings(spec, family="netvlad")
    assert (netvlad.batch_size, netvlad.l2, netvlad.lr_decay, netvlad.lr_decay_examples) == (80, 1e-6, 0.8, 4_000_000)
    gru = _settings(spec, family="gru")
    assert (gru.batch_size, gru.lr_decay, gru.l2) == (128, 0.9, 1e-6)
    assert _settings(spec, family="nextvlad") == TrialSettings()
    # fixed in the space: for every family, whatever its recipe
    spec = config.parse(_space({"choice": ["nextvlad", "netvlad"]}, batch_size=96, l2=3e-5))
    assert spec.trial_explicit == {"batch_size", "l2"}
    netvlad = _settings(spec, family="netvlad")
    assert (netvlad.batch_size, netvlad.l2, netvlad.lr_decay_examples) == (96, 3e-5, 4_000_000)
    assert (_settings(spec, family="nextvlad").batch_size, _settings(spec, family="nextvlad").l2) == (96, 3e-5)


def test_searched_and_conditional_settings_beat_the_recipe_only_where_active() -> None:
    spec = config.parse(_space({"choice": ["nextvlad", "netvlad", "nonlocal_netvlad"]},
                               l2={"logfloat": [1e-7, 1e-4]},
                               lr_decay={"value": 0.95, "when": {"family": "netvlad"}}))
    # searched: the sampled value, whatever the family
    assert _settings(spec, family="netvlad", l2=2e-7, lr_decay=0.95).l2 == 2e-7
    assert _settings(spec, family="nonlocal_netvlad", l2=5e-5).l2 == 5e-5
    # a conditional value: where active it wins; elsewhere the family's recipe, then the default
    assert _settings(spec, family="netvlad", l2=1e-6, lr_decay=0.95).lr_decay == 0.95
    assert _settings(spec, family="nonlocal_netvlad", l2=1e-6).lr_decay == 0.8  # its recipe
    assert _settings(spec, family="nonlocal_netvlad", l2=1e-6).lr_decay_examples == 2_000_000  # the default
    with pytest.raises(ValueError, match="lr_decay"):
        _settings(spec, family="netvlad", l2=1e-6, lr_decay=1.5)  # still validated


def test_a_mixed_space_resolves_each_sampled_trial_by_its_family(tmp_path: Path) -> None:
    """vlad_family.yaml through the sweep's own path (sampler, space, SweepContext.train_config)."""
    spec = config.load(SPACES / "vlad_family.yaml")
    context = SweepContext(spec=spec, data=DataPaths(train="/t", validation="/v"), run_dir=str(tmp_path))
    space = search.SearchSpace(spec.parameters, spec.budget.max_model_bytes, spec.budget.storage_dtype)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(40):
        trial = study.ask()
        extra = space(trial)
        values = {**trial.params, **{k: v for k, v in extra.items() if k not in search.EXTRA_KEYS}}
        cfg = context.train_config(values)
        recipe = {**dataclasses.asdict(TrialSettings()), **PAPER_RECIPES[cfg.model]}
        for key in ("batch_size", "lr_decay", "lr_decay_examples", "l2"):
            assert getattr(cfg, key) == recipe[key], (cfg.model, key)
        assert cfg.learning_rate == values["learning_rate"]  # searched: the space's
        assert cfg.epochs == 5 and cfg.num_workers == 1  # fixed: the space's
        seen.add(cfg.model)
        study.tell(trial, 0.0)
    assert {"nextvlad", "netvlad", "gru", "nonlocal_netvlad"} <= seen


def test_the_resolved_recipe_reaches_the_optimizer_and_the_schedule(tmp_path: Path) -> None:
    spec = config.parse(_space({"choice": ["netvlad", "gru"]}))
    context = SweepContext(spec=spec, data=DataPaths(train="/t", validation="/v"), run_dir=str(tmp_path))
    hparams = {**models.tiny_hparams("netvlad"), "classifier": "moe"}
    cfg = context.train_config({"family": "netvlad", **hparams})
    model = models.build("netvlad", **hparams)
    decayed = [g for g in make_optimizer(model, cfg).param_groups if g["weight_decay"]]
    assert len(decayed) == 1 and decayed[0]["weight_decay"] == 1e-6
    assert {id(p) for p in decayed[0]["params"]} == {id(p) for p in model.l2_parameters()}  # MoE gates, experts
    assert learning_rate(cfg, 3_999_999) == 2e-4 and learning_rate(cfg, 4_000_000) == pytest.approx(2e-4 * 0.8)
    gru = context.train_config({"family": "gru", **models.tiny_hparams("gru")})
    assert learning_rate(gru, 4_000_000) == pytest.approx(2e-4 * 0.9) and gru.batch_size == 128


def test_a_recipe_that_breaks_a_rule_is_reported_before_the_cluster() -> None:
    with pytest.raises(config.SpecError) as info:
        config.parse(_space({"choice": ["nextvlad", "netvlad", "gru"]}, num_workers=3, epochs=0))
    errors = info.value.errors
    assert "trial.epochs: must be >= 1, got 0" in errors  # reported together with the space's own errors
    assert any(e.startswith("trial.batch_size: 80 is not divisible by num_workers 3") and "netvlad's recipe" in e
               for e in errors), errors
    assert any(e.startswith("trial.batch_size: 128 is not divisible") and "gru's recipe" in e for e in errors)
    # an explicit batch size that fits every family's workers
    config.parse(_space({"choice": ["nextvlad", "netvlad", "gru"]}, num_workers=3, batch_size=96))


def test_the_dry_run_shows_each_familys_settings(capsys: pytest.CaptureFixture[str]) -> None:
    assert run.main([str(SPACES / "vlad_family.yaml"), "--dry-run", "trial.l2=2.0e-6"]) == 0
    out = capsys.readouterr().out
    assert "trial settings by family (the space's > the family's recipe > the defaults):" in out
    assert "  netvlad: batch_size=80 (recipe), lr_decay=0.8 (recipe), lr_decay_examples=4000000 (recipe)" in out
    assert "  gru: batch_size=128 (recipe), lr_decay=0.9 (recipe), lr_decay_examples=4000000 (recipe)" in out
    assert "  nextvlad: batch_size=160, lr_decay=0.8, lr_decay_examples=2000000" in out
    trial_line = next(line for line in out.splitlines() if line.startswith("trial: "))
    assert "l2=2e-06" in trial_line and " batch_size=" not in trial_line  # explicit: one value for all
