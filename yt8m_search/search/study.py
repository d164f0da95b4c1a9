"""The sweep's live Optuna study: ``optuna.journal``, and the parameter importances the report plots.

The searcher's study lives in a ``JournalStorage``: every ask, per-epoch report and tell is appended
to the journal as the sweep runs, so ``optuna-dashboard RUN/optuna.journal`` shows the sweep while it
runs, after it ends and after a crash. For a local run folder the searcher writes
``RUN/optuna.journal`` itself. Object stores cannot append, so for an ``s3://`` run folder the
searcher writes a local copy (``journal_path``) and ``JournalSync`` uploads it in one piece as trials
report (at most every ``SYNC_SECONDS``) and when the sweep ends; ``--resume`` starts from the run
folder's copy. This module is the one place that knows where the journal is.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
import warnings
from typing import Any

import optuna
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from ray import tune

from yt8m_search.config import Spec
from yt8m_search.data import fs
from yt8m_search.results import TrialState

JOURNAL_FILE = "optuna.journal"
# the least time between two uploads of an s3:// run's journal (each one is the whole file)
SYNC_SECONDS = 5.0


def journal_path(spec: Spec, run_dir: str) -> str:
    """The local file the searcher's journal is written to: ``RUN/optuna.journal`` for a local run
    folder; for a remote one, a local file named after the run folder (the same path in every
    process of the sweep: a resumed searcher, unpickled by Tune, reopens the path it was made with)."""
    if fs.is_local(run_dir):
        return os.path.join(run_dir, JOURNAL_FILE)
    key = hashlib.sha1(run_dir.encode()).hexdigest()[:12]
    return os.path.join(tempfile.gettempdir(), "yt8m_search", f"{spec.name}-{key}", JOURNAL_FILE)


def journal_storage(path: str) -> JournalStorage:
    """A journal storage on the local file ``path`` (created with its folder when missing)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    return JournalStorage(JournalFileBackend(path))


def prepare_journal(spec: Spec, run_dir: str, resume: bool) -> str:
    """The local journal file, ready for the sweep's searcher. A new sweep starts without one: a file
    already there belongs to something else (``run`` refuses a folder that holds a sweep unless
    ``--resume``). A resumed sweep of a remote run folder goes on from the run folder's copy, unless
    this machine's own copy is as long: a journal only grows, and the local one may hold the last
    seconds that had not been uploaded when the sweep died."""
    path = journal_path(spec, run_dir)
    if not resume:
        if os.path.exists(path):
            os.remove(path)
        return path
    remote = fs.join(run_dir, JOURNAL_FILE)
    if fs.is_local(run_dir) or not fs.exists(remote):
        return path
    if not os.path.exists(path) or os.path.getsize(path) < fs.file_size(remote):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        partial = f"{path}.download"
        with open(partial, "wb") as f:
            f.write(fs.read_bytes(remote))
        os.replace(partial, path)  # the searcher never reads half a journal
    return path


def fail_unfinished(spec: Spec, path: str) -> list[int]:
    """Tell FAIL the study's trials still running once the sweep is over: asked, but no Tune trial ran
    them to an end (one asked just before the sweep died, whose Tune trial the restored state lacks:
    on an s3:// run folder the searcher's checkpoint can reach storage before the trials' state).
    Nothing else would ever tell them. Returns their numbers."""
    if not os.path.exists(path):
        return []
    study = optuna.load_study(study_name=spec.name, storage=journal_storage(path))
    running = [t.number for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))]
    for number in running:
        study.tell(number, state=optuna.trial.TrialState.FAIL)
    return running


def upload_journal(local: str, run_dir: str) -> None:
    """Copy the local journal into a remote run folder, in one piece (nothing to do for a local one)."""
    if fs.is_local(run_dir) or not os.path.exists(local):
        return
    with open(local, "rb") as src:
        data = src.read()
    with fs.atomic_output(fs.join(run_dir, JOURNAL_FILE)) as f:
        f.write(data)


class JournalSync(tune.Callback):
    """Keeps a remote run folder's ``optuna.journal`` up to date while the sweep runs: after a trial
    reports or ends (at most every ``interval`` seconds; a change left over goes up at the next step
    of Tune's loop once the interval has passed) and always when the sweep ends. Tune stores this
    callback with the sweep, so a resumed sweep syncs the same files. The searcher calls ``flush``
    before each of its checkpoints, so the remote journal never lags the searcher state a resumed
    sweep restores (on a new head node, with no local copy)."""

    def __init__(self, local: str, run_dir: str, interval: float = SYNC_SECONDS) -> None:
        self.local, self.run_dir, self.interval = local, run_dir, interval
        self.setup()

    def setup(self, **info: Any) -> None:
        self.synced_at, self.pending = -float("inf"), False

    def sync(self, force: bool = False) -> None:
        """Upload the journal when it changed and the interval has passed (or ``force``)."""
        now = time.monotonic()
        if force or (self.pending and now - self.synced_at >= self.interval):
            upload_journal(self.local, self.run_dir)
            self.synced_at, self.pending = now, False

    def flush(self) -> None:
        """Upload the journal now."""
        self.sync(force=True)

    def on_trial_result(self, iteration: int, trials: list[Any], trial: Any, result: dict, **info: Any) -> None:
        self.pending = True
        self.sync()

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self.pending = True
        self.sync()

    def on_step_end(self, iteration: int, trials: list[Any], **info: Any) -> None:
        self.sync()

    def on_experiment_end(self, trials: list[Any], **info: Any) -> None:
        self.sync(force=True)


def read_study(spec: Spec, run_dir: str) -> optuna.Study:
    """The sweep's study, read from its journal (the local copy of a remote run folder's, fetched
    when missing)."""
    path = journal_path(spec, run_dir)
    if not os.path.exists(path):
        prepare_journal(spec, run_dir, resume=True)
    return optuna.load_study(study_name=spec.name, storage=journal_storage(path))


def importances(study: optuna.Study) -> dict[str, float]:
    """Parameter importance for GAP over fully trained trials (empty when too few)."""
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE
                and t.user_attrs.get("state") == TrialState.COMPLETE.value]  # fmt: skip
    if len(complete) < 3:
        return {}
    sub = optuna.create_study(directions=study.directions)
    sub.add_trials(complete)
    # GAP negated: Optuna's default evaluator (PED-ANOVA) ranks parameters by how they reach *low*
    # target values, and warns that it does
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "PedAnova.*low `target`")
            return optuna.importance.get_param_importances(sub, target=lambda t: -t.values[0])
    except (RuntimeError, ValueError, ZeroDivisionError):
        return {}
