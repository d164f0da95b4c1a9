"""A failed ensemble step still leaves a complete run folder: ``summary.json`` records the failure
("Type: message", one line), ``report.html`` shows it where the ensemble would be, the final lines
say ``ensemble: failed: ...`` and the command exits 1 with the cause on its last line. The step is
forced to fail on a finished run folder prepared by hand (no sweep runs)."""

from __future__ import annotations

from pathlib import Path

import pytest

from yt8m_search import ensemble, results, run
from yt8m_search.results import TrialRow

from .test_report import IMPORTANCES, rows, summary_for  # noqa: F401  (rows: a fixture)

SMOKE = Path(__file__).resolve().parents[1] / "search_spaces" / "smoke.yaml"
FAILURES = [
    (RuntimeError("boom <b>not bold</b>\n  on two lines"), "RuntimeError: boom <b>not bold</b> on two lines"),
    (ensemble.EnsembleError("no trained trial fits the budget"), "EnsembleError: no trained trial fits the budget"),
]  # fmt: skip


def failing_step(monkeypatch: pytest.MonkeyPatch, error: Exception) -> None:
    def fail(run_dir: str, *args: object, **kwargs: object) -> results.EnsembleSummary:
        assert results.read_summary(run_dir).ensemble is None  # the step reads the sweep's summary
        raise error

    monkeypatch.setattr(ensemble, "run", fail)


@pytest.mark.parametrize("error, recorded", FAILURES, ids=["unexpected", "ensemble-error"])
def test_a_failed_step_is_recorded_and_reported(tmp_path: Path, rows: list[TrialRow],  # noqa: F811
                                                monkeypatch: pytest.MonkeyPatch, error: Exception,
                                                recorded: str) -> None:
    failing_step(monkeypatch, error)
    summary = run.finish(str(tmp_path), rows, summary_for(rows, ensemble=False), IMPORTANCES)
    assert summary.ensemble == results.EnsembleFailure(recorded)
    assert results.read_summary(str(tmp_path)).ensemble == results.EnsembleFailure(recorded)
    page = (tmp_path / "report.html").read_text()
    escaped = recorded.replace("<", "&lt;").replace(">", "&gt;")
    assert f"The ensemble step failed:</b> {escaped}</p>" in page and "member(s)" not in page
    assert "<b>not bold</b>" not in page


@pytest.mark.parametrize("error, recorded", FAILURES, ids=["unexpected", "ensemble-error"])
def test_the_command_writes_everything_then_exits_1_with_the_cause(
    tmp_path: Path, rows: list[TrialRow], monkeypatch: pytest.MonkeyPatch,  # noqa: F811
    capsys: pytest.CaptureFixture[str], error: Exception, recorded: str,
) -> None:
    failing_step(monkeypatch, error)
    folder = tmp_path / "run"

    def sweep(spec: object, run_dir: str, resume: bool, overrides: object = ()) -> results.RunSummary:
        assert run_dir == str(folder)  # the sweep's end, on a finished run folder
        return run.finish(run_dir, rows, summary_for(rows, ensemble=False), IMPORTANCES)

    monkeypatch.setattr(run, "sweep", sweep)
    assert run.main([str(SMOKE), "--output", str(folder)]) == 1
    out, err = capsys.readouterr()
    assert f"ensemble: failed: {recorded}" in out.splitlines()
    assert out.strip().splitlines()[-2].startswith("run folder: ")  # the summary's lines are all there
    assert err.strip().splitlines()[-1] == f"error: the ensemble step failed: {recorded}"
    assert (folder / "report.html").exists() and (folder / "summary.json").exists()
    assert results.read_summary(str(folder)).ensemble == results.EnsembleFailure(recorded)
