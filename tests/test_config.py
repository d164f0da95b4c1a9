"""Space-file parsing: typed spec, overrides, and every error reported at once with its key path."""

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from yt8m_search import config
from yt8m_search.config import TrialSettings
from yt8m_search.data.cache import ShardCache

SMOKE = Path(__file__).resolve().parents[1] / "search_spaces" / "smoke.yaml"


def test_smoke_space_parses() -> None:
    spec = config.load(SMOKE)
    assert spec.data.synthetic is not None
    assert spec.data.synthetic.train_videos > spec.data.synthetic.validation_videos > 0


def test_overrides_change_values_by_dotted_path() -> None:
    spec = config.load(SMOKE, ["data.synthetic.train_videos=123", "data.synthetic.seed=9"])
    assert spec.data.synthetic is not None
    assert (spec.data.synthetic.train_videos, spec.data.synthetic.seed) == (123, 9)


def test_synthetic_key_ignores_cache_folder() -> None:
    a = config.SyntheticSpec(cache="/a")
    assert a.key() == config.SyntheticSpec(cache="/b").key()
    assert a.key() != config.SyntheticSpec(seed=1).key()


def test_every_error_is_reported_with_its_key_path(tmp_path: Path) -> None:
    space = tmp_path / "bad.yaml"
    space.write_text(
        "data:\n"
        "  synthetic:\n"
        "    train_videos: many\n"
        "    shards: 0\n"
        "    colour: red\n"
        "  train: /x\n"
        "modle: {}\n"
    )
    with pytest.raises(config.SpecError) as info:
        config.load(space)
    errors = "\n".join(info.value.errors)
    assert "data.synthetic.train_videos: expected an integer" in errors
    assert "data.synthetic.shards: must be >= 1" in errors
    assert "data.synthetic.colour: unknown key" in errors
    assert "data: give either synthetic or train/validation" in errors
    assert "modle: unknown key" in errors
    assert "model.family: missing" in errors


@pytest.mark.parametrize(
    "text, message",
    [
        ("data: [1, 2]\n", "data: expected a mapping"),
        ("data:\n  train: /only/train\n", "needs both train and validation"),
        ("- a\n- b\n", "<top level>: expected a mapping"),
        ("data: {synthetic: {seed: 1}\n", "not valid YAML"),
    ],
)
def test_malformed_spaces(tmp_path: Path, text: str, message: str) -> None:
    space = tmp_path / "bad.yaml"
    space.write_text(text)
    with pytest.raises(config.SpecError, match=message):
        config.load(space)


def test_bad_overrides_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(config.SpecError, match="expected key.path=value"):
        config.load(SMOKE, ["data.synthetic.seed"])
    with pytest.raises(config.SpecError, match="cannot read the space file"):
        config.load(tmp_path / "missing.yaml")


def test_placement_strategy_is_checked_and_kept() -> None:
    with pytest.raises(config.SpecError, match="trial.placement_strategy: must be one of PACK, SPREAD"):
        config.load(SMOKE, ["trial.placement_strategy=spread"])
    spec = config.load(SMOKE, ["trial.placement_strategy=SPREAD"])
    assert spec.trial.placement_strategy == "SPREAD"


# ---------------------------------------------------------------------------------------------
# Trial settings: one definition for the space parser and the trainer

MINIMAL = {"data": {"synthetic": {"train_videos": 10, "validation_videos": 5}}, "model": {"family": "nextvlad"}}


def _errors(raw: dict[str, Any]) -> str:
    with pytest.raises(config.SpecError) as info:
        config.parse(raw)
    return "\n".join(info.value.errors)


def test_the_space_defaults_are_the_trial_settings_defaults() -> None:
    spec = config.parse(MINIMAL)
    assert isinstance(spec.trial, TrialSettings) and spec.trial == TrialSettings()
    assert (spec.trial.epochs, spec.trial.max_failures) == (3, 2)
    assert not [p for p in spec.parameters if p.section == "trial"]


@pytest.mark.parametrize("name", TrialSettings.searchable_names())
def test_every_searchable_setting_can_be_searched(name: str) -> None:
    default = getattr(TrialSettings(), name)
    kind = "int" if isinstance(default, int) else "float"
    low = default // 2 if kind == "int" else default / 2
    spec = config.parse({**MINIMAL, "trial": {name: {kind: [low, default]}}})
    param = spec.parameter(name)
    assert (param.section, param.path, param.distribution.kind) == ("trial", f"trial.{name}", kind)
    assert spec.trial == TrialSettings()  # the fixed settings keep the default; the trial gets the sample
    assert spec.trial.replace(**{name: low}) == dataclasses.replace(TrialSettings(), **{name: low})


@pytest.mark.parametrize("name", [n for n in TrialSettings.names() if n not in TrialSettings.searchable_names()])
def test_a_setting_that_is_not_searchable_says_so_with_its_key_path(name: str) -> None:
    errors = _errors({**MINIMAL, "trial": {name: {"choice": [1, 2]}}})
    assert f"trial.{name}: cannot be searched (searchable: {', '.join(TrialSettings.searchable_names())})" in errors


def test_trial_rules_report_every_problem_with_its_key_path() -> None:
    errors = _errors({**MINIMAL, "trial": {
        "epochs": 0, "cpus_per_worker": 0, "batch_size": 15, "num_workers": 2, "pad_to": 400, "shuffle_buffer": "x",
        "lr_decay": {"float": [0.5, 1.5]}, "learning_rate": 0, "max_failures": 1.5, "colour": 1,
    }})
    for expected in (
        "trial.epochs: must be >= 1, got 0",
        "trial.cpus_per_worker: must be > 0, got 0 (a trial's resource request must be non-zero)",
        "trial.batch_size: 15 is not divisible by num_workers 2 (the global batch is split evenly)",
        "trial.pad_to: must lie in [1, 300], got 400",
        "trial.shuffle_buffer: expected a number, got 'x'",
        "trial.lr_decay: must lie in (0, 1], got 1.5",  # a searched range's ends, against the same rule
        "trial.learning_rate: must be > 0, got 0",
        "trial.max_failures: expected an integer, got 1.5",
        "trial.colour: unknown key",
    ):
        assert expected in errors
    assert "trial.average_last" in _errors({**MINIMAL, "trial": {"epochs": 2, "average_last": 3}})


def test_replace_validates_and_coerces_sampled_values() -> None:
    settings = TrialSettings().replace(lr_decay_examples=1234567.8, learning_rate=1e-3)
    assert settings.lr_decay_examples == 1234567 and isinstance(settings.lr_decay_examples, int)
    assert settings.learning_rate == 1e-3 and TrialSettings().learning_rate == 2e-4  # frozen: a copy
    with pytest.raises(ValueError, match=r"trial.lr_decay: must lie in \(0, 1\], got 2"):
        TrialSettings().replace(lr_decay=2.0)
    with pytest.raises(ValueError, match="unknown trial setting"):
        TrialSettings().replace(colour=1)
    assert TrialSettings(epochs=0, batch_size=7, num_workers=2).validate() == [
        "trial.epochs: must be >= 1, got 0", "trial.batch_size: 7 is not divisible by num_workers 2 "
        "(the global batch is split evenly)"]
    assert TrialSettings(epochs=4.0, cpus_per_worker=2).epochs == 4  # lossless: 4.0 -> 4, 2 -> 2.0
    assert isinstance(TrialSettings(cpus_per_worker=2).cpus_per_worker, float)


# ---------------------------------------------------------------------------------------------
# The PCA eigenvalues file of reverse whitening


def _whitening_space(reverse_whitening: Any, eigenvals: str | None) -> dict[str, Any]:
    data = {**MINIMAL["data"], **({"pca_eigenvals": eigenvals} if eigenvals is not None else {})}
    return {"data": data, "model": {"family": {"choice": ["nextvlad", "mix_nextvlad"]},
                                    "hparams": {"reverse_whitening": reverse_whitening}}}


def test_reverse_whitening_needs_the_eigenvalues_file(tmp_path: Path) -> None:
    needs = "model.hparams.reverse_whitening: can be true, which needs data.pca_eigenvals"
    assert needs in _errors(_whitening_space(True, None))
    assert needs in _errors(_whitening_space({"choice": [False, True]}, None))
    assert config.parse(_whitening_space(False, None)).data.pca_eigenvals is None
    missing = tmp_path / "missing.npy"
    assert f"data.pca_eigenvals: no such file: {missing}" in _errors(_whitening_space(True, str(missing)))
    np.save(tmp_path / "eigenvals.npy", np.ones(1024, np.float32))
    spec = config.parse(_whitening_space({"choice": [False, True]}, str(tmp_path / "eigenvals.npy")))
    assert spec.data.pca_eigenvals == str(tmp_path / "eigenvals.npy")


def test_the_old_eigenvalues_hyperparameter_points_to_its_new_place() -> None:
    space = {**MINIMAL, "model": {"family": "nextvlad", "hparams": {"pca_eigenvals": "/x.npy"}}}
    assert "data.pca_eigenvals with reverse_whitening: true" in _errors(space)


# ---------------------------------------------------------------------------------------------
# data.shard_cache: the node-local cache of remote shards (off unless asked for)


def _with_shard_cache(value: Any) -> dict[str, Any]:
    return {**MINIMAL, "data": {**MINIMAL["data"], "shard_cache": value}}


def test_the_shard_cache_is_off_by_default_and_opt_in(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    assert config.parse(MINIMAL).data.shard_cache is None
    assert config.parse(_with_shard_cache(None)).data.shard_cache is None
    assert config.parse(_with_shard_cache(False)).data.shard_cache is None
    default = config.parse(_with_shard_cache(True)).data.shard_cache
    assert default == ShardCache(str(tmp_path / ".cache/yt8m_search/shards"), 50 * 10**9)
    chosen = config.parse(_with_shard_cache({"dir": "~/shards", "max_gb": 0.5})).data.shard_cache
    assert chosen == ShardCache(str(tmp_path / "shards"), 5 * 10**8)
    monkeypatch.chdir(tmp_path)  # a relative folder is made absolute: Ray workers run elsewhere
    assert config.parse(_with_shard_cache({"dir": "rel"})).data.shard_cache == ShardCache(
        str(tmp_path / "rel"), 50 * 10**9)


def test_shard_cache_overrides_switch_it_on(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    spec = config.load(SMOKE, [f"data.shard_cache.dir={tmp_path}/c", "data.shard_cache.max_gb=2"])
    assert spec.data.shard_cache == ShardCache(f"{tmp_path}/c", 2 * 10**9)
    assert config.load(SMOKE, ["data.shard_cache=true"]).data.shard_cache is not None


@pytest.mark.parametrize(("value", "message"), [
    (5, "data.shard_cache: expected true, false, null or a mapping with dir and max_gb, got 5"),
    ({"size": 1}, "data.shard_cache.size: unknown key (valid: dir, max_gb)"),
    ({"dir": 3}, "data.shard_cache.dir: expected a string, got 3"),
    ({"dir": "s3://b/cache"}, "data.shard_cache.dir: must be a local directory, got 's3://b/cache'"),
    ({"max_gb": 0}, "data.shard_cache.max_gb: expected a positive number of gigabytes (10^9 bytes), got 0"),
    ({"max_gb": "lots"}, "data.shard_cache.max_gb: expected a positive number of gigabytes"),
    ({"max_gb": float("inf")}, "data.shard_cache.max_gb: expected a positive number of gigabytes"),
    ({"max_gb": True}, "data.shard_cache.max_gb: expected a positive number of gigabytes"),
])
def test_a_bad_shard_cache_is_reported_with_its_key_path(value: Any, message: str) -> None:
    assert message in _errors(_with_shard_cache(value))
