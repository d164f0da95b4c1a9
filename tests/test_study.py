"""The sweep's live Optuna study: the searcher writes ``optuna.journal`` as trials progress (creation
order, per-epoch GAP, standard constraints, end states), it survives Tune's searcher checkpoint and
``--resume``, an s3:// run folder gets it as it grows, and a real optuna-dashboard shows it."""

from __future__ import annotations

import datetime
import json
import pickle
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState as OptunaState

from yt8m_search import config, search
from yt8m_search.data import fs

SMOKE = Path(__file__).resolve().parents[1] / "search_spaces" / "smoke.yaml"
EPOCHS = 3  # the smoke space's trial.epochs


def _read(journal: str | Path, name: str = "smoke") -> optuna.Study:
    """The study as another process sees it: a fresh storage on the file."""
    return optuna.load_study(study_name=name, storage=JournalStorage(JournalFileBackend(str(journal))))


def _train(searcher: search.FidelityAwareOptunaSearch, trial_id: str, gaps: list[float],
           first: int = 1) -> dict[str, Any]:  # fmt: skip
    """Report epochs ``first``..n of ``trial_id``, whose GAPs are ``gaps``, the way Tune does; the last result."""
    result: dict[str, Any] = {}
    for epoch, gap in enumerate(gaps[first - 1:], first):
        result = {"epoch": epoch, "gap": gap, "gap_best": max(gaps[:epoch]), "training_iteration": epoch}
        searcher.on_trial_result(trial_id, result)
    return result


def _sweep(spec: config.Spec, journal: Path, trials: int = 4) -> tuple[search.FidelityAwareOptunaSearch, dict]:
    """A searcher on ``journal`` asked for ``trials`` Tune trials (the smoke budget rejects some draws)."""
    searcher = search.make_searcher(spec, str(journal))
    return searcher, {f"t{i}": searcher.suggest(f"t{i}") for i in range(trials)}


def test_the_searcher_writes_the_journal_as_trials_progress(tmp_path: Path) -> None:
    started = datetime.datetime.now()
    spec = config.load(SMOKE)
    journal = tmp_path / "optuna.journal"
    searcher, configs = _sweep(spec, journal)
    assert searcher.infeasible, "the smoke budget should reject some of the first draws"
    _train(searcher, "t0", [0.10, 0.20])

    live = _read(journal)  # mid-sweep: every trial so far, t0 with its first two epochs
    assert [t.number for t in live.trials] == list(range(len(configs) + len(searcher.infeasible)))
    assert live.trials[configs["t0"]["number"]].intermediate_values == {1: 0.10, 2: 0.20}
    assert {t.state for t in live.trials} == {OptunaState.RUNNING, OptunaState.PRUNED}

    searcher.on_trial_complete("t0", _train(searcher, "t0", [0.10, 0.20, 0.15], first=3))  # fully trained
    searcher.on_trial_complete("t1", _train(searcher, "t1", [0.05]))  # stopped by ASHA after epoch 1
    searcher.on_trial_complete("t2", None, error=True)
    study = _read(journal)
    assert study.metric_names == ["gap"] and study.direction == optuna.study.StudyDirection.MAXIMIZE
    expected = {"t0": (OptunaState.COMPLETE, "complete"), "t1": (OptunaState.PRUNED, "stopped"),
                "t2": (OptunaState.FAIL, "error"), "t3": (OptunaState.RUNNING, None)}  # fmt: skip
    for trial_id, config_ in configs.items():
        trial = study.trials[config_["number"]]
        assert (trial.state, trial.user_attrs.get("state")) == expected[trial_id]
        assert trial.user_attrs["trial_id"] == trial_id and trial.user_attrs["model"] == config_["family"]
        assert (trial.user_attrs["size_bytes"], trial.user_attrs["flops"]) == (config_["size_bytes"], config_["flops"])
        # Optuna's standard constraints, by name and as the list optuna-dashboard reads: all <= 0
        assert trial.constraints["size_over_budget"] <= 0 and trial.system_attrs["constraints"] == [
            trial.constraints["size_over_budget"]]  # fmt: skip
    t0 = study.trials[configs["t0"]["number"]]
    assert t0.value == 0.20 and t0.intermediate_values == {1: 0.10, 2: 0.20, 3: 0.15}  # per-epoch GAP, step = epoch
    assert study.trials[configs["t1"]["number"]].intermediate_values == {1: 0.05}
    for rejected in searcher.infeasible:  # PRUNED (never COMPLETE with a made-up GAP), constraints > 0
        trial = study.trials[rejected.number]
        assert trial.state == OptunaState.PRUNED and trial.values is None and trial.intermediate_values == {}
        assert trial.user_attrs["state"] == "infeasible"
        assert trial.user_attrs["trial_id"] == f"infeasible-{trial.number}"
        assert trial.constraints["size_over_budget"] > 0 and trial.system_attrs["constraints"][0] > 0
    starts = [t.datetime_start for t in study.trials]
    assert starts == sorted(starts) and started <= starts[0] <= datetime.datetime.now()  # real times
    assert all(t.datetime_complete for t in study.trials if t.state.is_finished())


def test_a_multi_objective_journal_keeps_the_per_epoch_gap_in_a_user_attr(tmp_path: Path) -> None:
    spec = config.load(SMOKE, ["search.objectives=[gap, flops]", "budget.max_flops=1.4e9"])
    journal = tmp_path / "optuna.journal"
    searcher, configs = _sweep(spec, journal, trials=2)
    searcher.on_trial_complete("t0", {**_train(searcher, "t0", [0.1, 0.3, 0.2]), "flops": configs["t0"]["flops"]})
    study = _read(journal)
    assert study.metric_names == ["gap", "flops"] and len(study.directions) == 2
    trial = study.trials[configs["t0"]["number"]]
    assert trial.values == [0.3, configs["t0"]["flops"]] and trial.intermediate_values == {}  # Optuna refuses them
    assert trial.user_attrs[search.GAP_BY_EPOCH] == {"1": 0.1, "2": 0.3, "3": 0.2}
    assert set(trial.constraints) >= {"size_over_budget", "flops_over_budget"}
    assert len(trial.system_attrs["constraints"]) == 2


@pytest.mark.parametrize("how", ["tune checkpoint", "pickle"])
def test_a_restored_searcher_appends_to_the_same_journal(tmp_path: Path, how: str) -> None:
    """Tune's searcher checkpoint (``save`` pickles ``__dict__``; ``restore`` on the searcher the
    resumed sweep rebuilds) and a plain pickle round trip: the same file grows, numbers go on."""
    spec = config.load(SMOKE)
    journal = tmp_path / "optuna.journal"
    searcher, configs = _sweep(spec, journal, trials=2)
    _train(searcher, "t0", [0.1])
    if how == "pickle":
        restored = pickle.loads(pickle.dumps(searcher))
    else:
        searcher.save(str(tmp_path / "searcher.pkl"))
        # after the checkpoint, before the kill: a new trial, and t1 told; the journal is ahead
        searcher.suggest("lost")  # no restored Tune trial holds it
        searcher.on_trial_complete("t1", _train(searcher, "t1", [0.4, 0.5, 0.6]))
        restored = search.make_searcher(spec, str(journal))
        restored.restore(str(tmp_path / "searcher.pkl"))
        # Tune runs t1 again from its last epoch checkpoint: its journal entry (the first tell) stands
        restored.on_trial_complete("t1", _train(restored, "t1", [0.4, 0.5, 0.7], first=3))
    before = len(_read(journal).trials)
    restored.on_trial_complete("t0", _train(restored, "t0", [0.1, 0.2, 0.3], first=2))  # running at the checkpoint
    nxt = restored.suggest("t2")
    assert nxt is not None and nxt["number"] >= before  # numbering continues in the same journal
    study = _read(journal)
    assert [t.number for t in study.trials] == list(range(len(study.trials)))
    t0 = study.trials[configs["t0"]["number"]]
    assert t0.state == OptunaState.COMPLETE and t0.intermediate_values == {1: 0.1, 2: 0.2, 3: 0.3}
    assert study.trials[nxt["number"]].user_attrs["trial_id"] == "t2"
    lost = [t for t in study.trials if t.user_attrs.get("trial_id") == "lost"]
    t1 = study.trials[configs["t1"]["number"]]
    if how == "tune checkpoint":  # told FAIL on restore: not shown running for ever
        assert [t.state for t in lost] == [OptunaState.FAIL]
        assert (t1.state, t1.value, t1.intermediate_values) == (OptunaState.COMPLETE, 0.6, {1: 0.4, 2: 0.5, 3: 0.6})
    else:
        assert t1.state == OptunaState.RUNNING  # still held: told later


def test_trials_still_running_when_the_sweep_is_over_are_told_fail(tmp_path: Path) -> None:
    """A trial that the restored searcher holds but the restored Tune state lacks (an s3:// run
    folder's searcher checkpoint reached storage before the trials' state) is told by no one: once
    every Tune trial has ended, ``run_sweep`` tells it FAIL, and nothing else."""
    spec = config.load(SMOKE)
    journal = tmp_path / "optuna.journal"
    searcher, configs = _sweep(spec, journal, trials=2)
    searcher.on_trial_complete("t0", _train(searcher, "t0", [0.1, 0.2, 0.3]))
    assert search.fail_unfinished(spec, str(journal)) == [configs["t1"]["number"]]
    study = _read(journal)
    assert study.trials[configs["t1"]["number"]].state == OptunaState.FAIL
    assert study.trials[configs["t0"]["number"]].state == OptunaState.COMPLETE
    assert search.fail_unfinished(spec, str(journal)) == []
    assert search.fail_unfinished(spec, str(tmp_path / "none.journal")) == []


def test_a_new_sweep_never_continues_a_stale_journal(tmp_path: Path) -> None:
    spec = config.load(SMOKE)
    run_dir = str(tmp_path / "run")
    path = search.journal_path(spec, run_dir)
    assert path == str(tmp_path / "run" / "optuna.journal")
    _sweep(spec, Path(path), trials=1)
    assert search.prepare_journal(spec, run_dir, resume=True) == path and len(_read(path).trials) >= 1
    assert search.prepare_journal(spec, run_dir, resume=False) == path and not Path(path).exists()
    _, configs = _sweep(spec, Path(path), trials=1)
    assert _read(path).trials[0].user_attrs["trial_id"] in ("t0", "infeasible-0")


def test_read_study_gives_the_importances_over_fully_trained_trials(tmp_path: Path) -> None:
    spec = config.load(SMOKE, ["budget.max_model_bytes=1e9"])  # every draw trains
    run_dir = str(tmp_path)
    searcher, configs = _sweep(spec, Path(search.journal_path(spec, run_dir)), trials=8)
    for i, (trial_id, config_) in enumerate(configs.items()):
        gap = 0.5 if config_["family"] == "nextvlad" else 0.1
        epochs = EPOCHS if i < 6 else 1  # the last two stopped: not counted
        searcher.on_trial_complete(trial_id, _train(searcher, trial_id, [gap + 0.01 * i] * epochs))
    study = search.read_study(spec, run_dir)
    assert sum(t.user_attrs["state"] == "complete" for t in study.trials) == 6
    ranked = search.importances(study)
    assert ranked and set(ranked) <= {p.name for p in spec.parameters if p.distribution}


def test_an_s3_run_folder_gets_the_journal_as_it_grows(s3_bucket: str, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # the local copy: under this test's folder
    monkeypatch.setattr("tempfile.tempdir", None)
    spec = config.load(SMOKE)
    run_dir = f"{s3_bucket}/runs/smoke"
    remote = fs.join(run_dir, "optuna.journal")
    local = search.prepare_journal(spec, run_dir, resume=False)
    assert local.startswith(str(tmp_path)) and not fs.is_local(remote)
    sync = search.JournalSync(local, run_dir, interval=0.5)
    searcher = search.make_searcher(spec, local, before_save=sync.flush)
    number = searcher.suggest("t0")["number"]  # type: ignore[index]
    searcher.on_trial_result("t0", {"epoch": 1, "gap": 0.1, "gap_best": 0.1})
    sync.on_trial_result(0, [], None, {})
    assert fs.read_bytes(remote) == Path(local).read_bytes()  # the first change goes up at once
    searcher.on_trial_result("t0", {"epoch": 2, "gap": 0.2, "gap_best": 0.2})
    sync.on_trial_result(0, [], None, {})
    assert fs.read_bytes(remote) != Path(local).read_bytes()  # throttled: within the interval
    time.sleep(0.6)
    sync.on_step_end(0, [])
    assert fs.read_bytes(remote) == Path(local).read_bytes()  # the left-over change, once it passed
    last = {"epoch": 3, "gap": 0.3, "gap_best": 0.3}
    searcher.on_trial_result("t0", last)
    searcher.on_trial_complete("t0", last)
    sync.on_experiment_end([])
    assert fs.read_bytes(remote) == Path(local).read_bytes()  # always at the end
    searcher.suggest("t1")  # no callback: the searcher's checkpoint uploads it first
    assert fs.read_bytes(remote) != Path(local).read_bytes()
    searcher.save(str(tmp_path / "searcher.pkl"))
    assert fs.read_bytes(remote) == Path(local).read_bytes()

    searcher.suggest("t2")  # after the last upload: --resume on this machine keeps its longer copy
    longer = Path(local).read_bytes()
    assert search.prepare_journal(spec, run_dir, resume=True) == local and Path(local).read_bytes() == longer
    Path(local).unlink()  # --resume on another machine: the run folder's copy is the start
    assert search.prepare_journal(spec, run_dir, resume=True) == local
    trial = search.read_study(spec, run_dir).trials[number]
    assert trial.state == OptunaState.COMPLETE and trial.intermediate_values == {1: 0.1, 2: 0.2, 3: 0.3}
    restored = search.make_searcher(spec, local)
    restored.restore(str(tmp_path / "searcher.pkl"))  # the state saved with that upload: t1 is there
    restored.on_trial_complete("t1", {"epoch": 3, "gap": 0.4, "gap_best": 0.4})
    t1 = [t for t in search.read_study(spec, run_dir).trials if t.user_attrs["trial_id"] == "t1"]
    assert [(t.state, t.value, t.user_attrs["state"]) for t in t1] == [(OptunaState.COMPLETE, 0.4, "complete")]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def _dashboard_trials(base: str, study_id: int, want: dict[int, str], timeout: float = 30) -> dict[int, dict]:
    """The dashboard's trials by number once their states are ``want`` (it re-reads every 2 s)."""
    deadline = time.monotonic() + timeout
    while True:
        trials = {t["number"]: t for t in _get(f"{base}/api/studies/{study_id}")["trials"]}
        if {n: trials[n]["state"] for n in want if n in trials} == want or time.monotonic() > deadline:
            return trials
        time.sleep(0.5)


def test_optuna_dashboard_shows_the_journal_during_and_after_the_sweep(tmp_path: Path) -> None:
    """A real ``optuna-dashboard RUN/optuna.journal`` on 127.0.0.1, read through its HTTP API."""
    executable = Path(sys.executable).with_name("optuna-dashboard")
    if not executable.exists():
        pytest.fail("optuna-dashboard is not installed: bash scripts/setup.sh installs the dev extras")
    spec = config.load(SMOKE)
    journal = tmp_path / "optuna.journal"
    searcher, configs = _sweep(spec, journal, trials=2)
    _train(searcher, "t0", [0.1, 0.2])
    port = _free_port()
    server = subprocess.Popen([str(executable), str(journal), "--host", "127.0.0.1", "--port", str(port), "--quiet"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                studies = _get(f"{base}/api/studies")["study_summaries"]
                break
            except OSError:
                if server.poll() is not None:
                    pytest.fail(f"optuna-dashboard exited: {server.stderr.read().decode()[-2000:]}")  # type: ignore[union-attr]
                time.sleep(0.1)
        else:
            pytest.fail("optuna-dashboard did not answer in 30 s")
        assert [s["study_name"] for s in studies] == ["smoke"]
        study_id = studies[0]["study_id"]
        n0, n1 = configs["t0"]["number"], configs["t1"]["number"]
        during = _dashboard_trials(base, study_id, {n0: "Running", n1: "Running"})
        assert [{"step": 1, "value": 0.1}, {"step": 2, "value": 0.2}] == during[n0]["intermediate_values"]

        searcher.on_trial_complete("t0", _train(searcher, "t0", [0.1, 0.2, 0.3], first=3))
        searcher.on_trial_complete("t1", _train(searcher, "t1", [0.05]))
        after = _dashboard_trials(base, study_id, {n0: "Complete", n1: "Pruned"})
        assert sorted(after) == list(range(len(configs) + len(searcher.infeasible)))
        assert (after[n0]["state"], after[n1]["state"]) == ("Complete", "Pruned")
        assert after[n0]["values"] == [0.3] and len(after[n0]["intermediate_values"]) == 3
        assert all(c <= 0 for c in after[n0]["constraints"]) and after[n0]["constraints"]
        attrs = {a["key"]: a["value"] for a in after[n0]["user_attrs"]}
        assert attrs["trial_id"] == "t0" and attrs["state"] == "complete" and attrs["model"] == configs["t0"]["family"]
        for rejected in searcher.infeasible:  # infeasible: pruned, its constraint > 0
            shown = after[rejected.number]
            assert shown["state"] == "Pruned" and shown["constraints"][0] > 0 and "values" not in shown
    finally:
        server.terminate()
        server.wait(timeout=10)
