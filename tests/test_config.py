"""Space-file parsing: typed spec, overrides, and every error reported at once with its key path."""

from pathlib import Path

import pytest

from yt8m_search import config

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
    assert spec.trial["placement_strategy"] == "SPREAD"
