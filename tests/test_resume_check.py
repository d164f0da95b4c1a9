"""``--resume`` continues the sweep the run folder holds and no other: the space as resolved at the
start (``space.json``) against the one given now, refused with every differing key (exit 2) before
Ray starts. No sweep runs here: the run folders are prepared by hand, and anything past the check
(the data, Ray) is replaced by a stand-in that says it was reached."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from yt8m_search import config, run, space_record

SMOKE = Path(__file__).resolve().parents[1] / "search_spaces" / "smoke.yaml"
OVERRIDES = ["trial.epochs=2", "search.num_samples=4", "data.synthetic.num_classes=40",
             "model.hparams.num_classes=40"]  # fmt: skip


class PastTheCheck(Exception):
    """Raised by the stand-ins for what comes after the check."""


@pytest.fixture()
def stop_past_the_check(monkeypatch: pytest.MonkeyPatch) -> None:
    def reached(*args: object, **kwargs: object) -> None:
        raise PastTheCheck("past the check")

    monkeypatch.setattr(run, "prepare_data", reached)  # the first step after the checks
    monkeypatch.setattr(run, "_init_ray", reached)


def prepared_run(tmp_path: Path, overrides: list[str] = OVERRIDES, record: bool = True) -> Path:
    """A run folder as a started sweep leaves it: its space record and Tune's restorable state."""
    folder = tmp_path / "run"
    (folder / "tune").mkdir(parents=True)
    (folder / "tune" / "tuner.pkl").write_bytes(b"")  # what Tuner.can_restore looks for
    if record:
        space_record.write(config.load(SMOKE, overrides), overrides, str(folder))
    return folder


def test_differences_name_every_changed_key_old_to_new() -> None:
    recorded = space_record.resolved(config.load(SMOKE, OVERRIDES))
    changed = config.load(SMOKE, [*OVERRIDES, "trial.epochs=3", "search.num_samples=6", "search.asha=null",
                                  "model.hparams.num_mixtures={int: [2, 4], when: {classifier: moe}}"])
    assert space_record.differences(recorded, changed) == [
        "model.hparams.num_mixtures.int: [2, 3] -> [2, 4]",
        "trial.epochs: 2 -> 3",
        "search.num_samples: 4 -> 6",
        "search.asha.grace_period: 1 -> (unset)",
        "search.asha.reduction_factor: 2 -> (unset)",
        "search.asha: (unset) -> null",
    ]
    assert space_record.differences(recorded, config.load(SMOKE, [*OVERRIDES, "data.shard_cache=true"])) == [
        "data.shard_cache: (unset) -> true"]  # a key the file leaves to its default, now set


def test_the_same_space_by_another_path_or_override_order_has_no_differences(tmp_path: Path) -> None:
    recorded = space_record.resolved(config.load(SMOKE, OVERRIDES))
    copy = tmp_path / "smoke.yaml"
    shutil.copy(SMOKE, copy)
    assert space_record.differences(recorded, config.load(copy, OVERRIDES[::-1])) == []
    # the same value given as the file has it: not a change
    assert space_record.differences(recorded, config.load(SMOKE, [*OVERRIDES, "trial.batch_size=64"])) == []


def test_a_renamed_space_is_a_difference(tmp_path: Path) -> None:
    recorded = space_record.resolved(config.load(SMOKE, OVERRIDES))
    renamed = tmp_path / "tiny.yaml"
    shutil.copy(SMOKE, renamed)
    assert space_record.differences(recorded, config.load(renamed, OVERRIDES)) == ["name: smoke -> tiny"]


def test_resume_with_a_changed_override_exits_2_naming_the_keys_before_ray(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], stop_past_the_check: None
) -> None:
    folder = prepared_run(tmp_path)
    before = (folder / "space.json").read_bytes()
    overrides = [*OVERRIDES, "trial.epochs=5", "search.num_samples=8"]
    assert run.main([str(SMOKE), *overrides, "--resume", "--output", str(folder)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (f"error: --resume: the space differs from the run's ({folder / 'space.json'}): "
                       "trial.epochs: 2 -> 5, search.num_samples: 4 -> 8")
    assert (folder / "space.json").read_bytes() == before  # the run's record stays the run's
    assert sorted(p.name for p in folder.iterdir()) == ["space.json", "tune"]  # nothing else written


def test_resume_with_the_same_space_passes_the_check(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], stop_past_the_check: None
) -> None:
    folder = prepared_run(tmp_path)
    assert run.main([str(SMOKE), *OVERRIDES[::-1], "--resume", "--output", str(folder)]) == 1
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1] == "error: PastTheCheck: past the check" and "warning" not in err


def test_resume_of_a_run_from_before_the_record_warns_and_continues(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], stop_past_the_check: None
) -> None:
    folder = prepared_run(tmp_path, record=False)
    assert run.main([str(SMOKE), *OVERRIDES, "trial.epochs=5", "--resume", "--output", str(folder)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    warnings = [line for line in err if line.startswith("warning:")]
    assert warnings == [f"warning: --resume: {folder / 'space.json'} not found (a run from an older version): "
                        "cannot check that the space and overrides are the run's"]
    assert err[-1] == "error: PastTheCheck: past the check"
    assert not (folder / "space.json").exists()


def test_a_new_sweep_records_its_resolved_space_first(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], stop_past_the_check: None
) -> None:
    folder = tmp_path / "run"
    assert run.main([str(SMOKE), *OVERRIDES, "--output", str(folder)]) == 1
    assert capsys.readouterr().err.strip().splitlines()[-1] == "error: PastTheCheck: past the check"
    written = json.loads((folder / "space.json").read_text())
    spec = config.load(SMOKE, OVERRIDES)
    assert written["space"] == str(SMOKE) and written["overrides"] == OVERRIDES and written["hash"] == spec.digest()
    assert written["values"]["trial.epochs"] == 2 and written["values"]["name"] == "smoke"
    assert written["values"]["model.family.choice"] == ["nextvlad", "mix_nextvlad"]
    assert space_record.read(str(folder)) == written["values"]


def test_an_unreadable_record_is_an_error_naming_it(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                    stop_past_the_check: None) -> None:
    folder = prepared_run(tmp_path)
    (folder / "space.json").write_text("{not json")
    assert run.main([str(SMOKE), *OVERRIDES, "--resume", "--output", str(folder)]) == 1
    assert f"{folder / 'space.json'}: not valid JSON" in capsys.readouterr().err.strip().splitlines()[-1]


def test_the_record_lives_in_an_s3_run_folder(s3_bucket: str) -> None:
    spec = config.load(SMOKE, OVERRIDES)
    folder = f"{s3_bucket}/runs/smoke"
    assert space_record.read(folder) is None
    assert space_record.write(spec, OVERRIDES, folder) == f"{folder}/space.json"
    recorded = space_record.read(folder)
    assert recorded == space_record.resolved(spec)
    assert space_record.differences(recorded, config.load(SMOKE, [*OVERRIDES, "trial.epochs=3"])) == [
        "trial.epochs: 2 -> 3"]
