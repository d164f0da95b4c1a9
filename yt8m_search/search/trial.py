"""One Tune trial: ``train.fit`` with ``tune.report`` as its report. A one-worker trial trains in the
trial's own process, a multi-worker one through a TorchTrainer (``fit`` decides). A trial's run
name is ``trial-<tune trial id>``: deterministic, so a retried or restored trial resumes from its
checkpoint.

Each trial trains with its own seed, ``trial_seed(search.seed, number)``: the sweep seed and the
trial's Optuna number (``space.NUMBER``) fed to numpy's ``SeedSequence``, its first 32-bit word
masked to 31 bits. Stable across runs, machines and Python versions (no ``hash()``), different for
every trial of a sweep, and recorded as the ``seed`` column of ``trials.csv``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from ray import tune

from yt8m_search.config import Spec, TrialSettings, trial_settings
from yt8m_search.data import fs
from yt8m_search.data.prepare import DataPaths
from yt8m_search.search.space import NUMBER, model_of
from yt8m_search.train import TrainConfig, fit


def trial_seed(sweep_seed: int, number: int | None) -> int:
    """The seed of trial ``number`` of a sweep seeded ``sweep_seed`` (in [0, 2**31)); a trial without
    a number (started by a version before trials were numbered) keeps the sweep seed, as it trained."""
    if number is None:
        return sweep_seed
    return int(np.random.SeedSequence([sweep_seed, number]).generate_state(1)[0]) & 0x7FFF_FFFF


@dataclass(frozen=True)
class SweepContext:
    """What every trial needs besides its sampled values (passed with tune.with_parameters)."""

    spec: Spec
    data: DataPaths
    run_dir: str

    @property
    def trials_dir(self) -> str:
        return fs.join(self.run_dir, "trials")

    def train_config(self, values: dict[str, Any]) -> TrainConfig:
        family, hparams = model_of(values, self.spec.parameters)
        return TrainConfig.from_settings(
            trial_settings(self.spec, values),  # the space's (fixed or sampled) > its family's recipe > the defaults
            model=family,
            hparams=hparams,
            storage_dtype=self.spec.budget.storage_dtype,
            seed=trial_seed(self.spec.search.seed, values.get(NUMBER)),
            pca_eigenvals=self.spec.data.pca_eigenvals,
            holdout_fraction=self.spec.data.holdout_fraction,
        )


def run_trial(config: dict[str, Any], context: SweepContext) -> None:
    """One Tune trial: train its config (the searcher hands Tune feasible configurations only)."""
    if not config.get("feasible", True):
        raise ValueError(f"trial {config.get(NUMBER)} is infeasible ({config.get('infeasible_reason')}): "
                         "the searcher should have rejected it")  # fmt: skip
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
