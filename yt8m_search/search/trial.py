"""One Tune trial: ``train.fit`` with ``tune.report`` as its report. A one-worker trial trains in the
trial's own process, a multi-worker one through a TorchTrainer (``fit`` decides). A trial's run
name is ``trial-<tune trial id>``: deterministic, so a retried or restored trial resumes from its
checkpoint."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ray import tune

from yt8m_search.config import Spec, TrialSettings, trial_settings
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
        """The trial's settings: the space's (fixed or sampled) > its family's recipe > the defaults."""
        return trial_settings(self.spec, values)

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
    """One Tune trial: report an infeasible config at once, else train it."""
    if not config["feasible"]:
        tune.report({"gap": 0.0, "gap_best": 0.0, "epoch": context.spec.trial.epochs, "infeasible": 1,
                     "size_bytes": max(config["size_bytes"], 0), "flops": max(config.get("flops", 0), 0)})  # fmt: skip
        return
    trial_id = tune.get_context().get_trial_id()
    fit(
        context.train_config(config),
        context.data.train,
        context.data.validation,
        context.trials_dir,
        f"trial-{trial_id}",
        report=tune.report,
        cache=context.spec.data.shard_cache,
    )


def trial_resources(settings: TrialSettings) -> dict[str, float]:
    """What a trial asks Tune for. In-process (one worker): the worker's CPUs and GPUs. A TorchTrainer
    trial: a token CPU (a request must be non-zero), its workers ask for their own."""
    if settings.num_workers == 1:
        gpus = {"gpu": settings.gpus_per_worker} if settings.gpus_per_worker else {}
        return {"cpu": settings.cpus_per_worker, **gpus}
    return {"cpu": 0.01}
