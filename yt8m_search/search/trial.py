"""One Tune trial: the Train driver that builds a TorchTrainer through ``train.fit`` and relays its
reports to Tune (``relay_to_tune``). A trial's run name is ``trial-<tune trial id>``: deterministic,
so a retried or restored trial resumes from its Train checkpoint."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ray import tune
from ray.train import UserCallback
from ray.util.queue import Queue

from yt8m_search.config import Spec, TrialSettings
from yt8m_search.data import fs
from yt8m_search.data.prepare import DataPaths
from yt8m_search.search.space import model_of
from yt8m_search.train import TrainConfig, fit


@dataclass(frozen=True)
class SweepContext:
    """What every trial needs besides its sampled values (passed with tune.with_parameters)."""

    spec: Spec
    data: DataPaths
    run_dir: str

    @property
    def trials_dir(self) -> str:
        return fs.join(self.run_dir, "trials")

    def settings(self, values: dict[str, Any]) -> TrialSettings:
        """The space's trial settings with the trial's sampled ones."""
        return self.spec.trial.replace(**{k: values[k] for k in TrialSettings.searchable_names() if k in values})

    def train_config(self, values: dict[str, Any]) -> TrainConfig:
        family, hparams = model_of(values, self.spec.parameters)
        return TrainConfig.from_settings(
            self.settings(values),
            model=family,
            hparams=hparams,
            storage_dtype=self.spec.budget.storage_dtype,
            seed=self.spec.search.seed,
            pca_eigenvals=self.spec.data.pca_eigenvals,
        )


def run_trial(config: dict[str, Any], context: SweepContext) -> None:
    """One Tune trial: report an infeasible config at once, else train it with Ray Train."""
    if not config["feasible"]:
        tune.report({"gap": 0.0, "gap_best": 0.0, "epoch": context.spec.trial.epochs, "infeasible": 1,
                     "size_bytes": max(config["size_bytes"], 0)})  # fmt: skip
        return
    trial_id = tune.get_context().get_trial_id()
    relay_to_tune(lambda callback: fit(
        context.train_config(config),
        context.data.train,
        context.data.validation,
        context.trials_dir,
        f"trial-{trial_id}",
        callbacks=[callback],
    ))  # fmt: skip


def relay_to_tune(run: Callable[[Any], Any]) -> None:
    """Run ``run(callback)`` (a Train ``fit``) in a thread and report each of its Train reports to
    Tune from this, the trial's own thread, in order; re-raise what ``run`` raised.

    Why not Ray's ``TuneReportCallback``: it hands reports to the trial actor's *main* thread, which
    puts them on the function session's one-slot result queue. When the driver is slow on one
    result (another trial finishing beside it, a loaded machine), the next report and the end of
    ``fit`` can both come first; the trainable's closing report then takes that slot and the main
    thread blocks on it for ever (Ray 2.60): the trial never ends and neither does the sweep. Here
    the trial's thread is the only one that reports, as Tune's function API expects.
    """
    reports: Queue = Queue(actor_options={"num_cpus": 0})
    failure: list[BaseException] = []

    def train() -> None:
        try:
            run(_ReportToQueue(reports))
        except BaseException as error:  # noqa: BLE001 - re-raised in the trial's thread
            failure.append(error)
        finally:
            reports.put(_END)  # after every report: each put returned before the controller went on

    thread = threading.Thread(target=train, name="train-fit", daemon=True)
    thread.start()
    while (metrics := reports.get()) != _END:
        tune.report(metrics)  # blocks until Tune asks for the next result
    thread.join()
    if failure:
        raise failure[0]


_END = "end of the Train run"


class _ReportToQueue(UserCallback):
    """Train controller callback: each report's metrics (rank 0's, the ones every rank agrees on)
    onto the trial's queue."""

    def __init__(self, reports: Any) -> None:
        self.reports = reports

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
        self.reports.put(dict(metrics[0]))
