"""The typed space: what a validated space file says (``Spec`` and its sections).

Built only by ``config.space.parse``/``load``, which check every value first; the dataclasses
themselves trust their inputs.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from yt8m_search.config.trial import TrialSettings
from yt8m_search.data.cache import ShardCache

DEFAULT_CACHE = "~/.cache/yt8m_search"
DEFAULT_SHARD_CACHE = DEFAULT_CACHE + "/shards"
DEFAULT_SHARD_CACHE_GB = 50.0


class SpecError(ValueError):
    """Every problem found in a space file, each with its key path."""

    def __init__(self, errors: Sequence[str], source: str = "") -> None:
        self.errors = list(errors)
        self.source = source
        where = f"{source}: " if source else ""
        super().__init__(f"{where}{len(self.errors)} error(s):\n" + "\n".join(f"  - {e}" for e in self.errors))


@dataclass(frozen=True)
class SyntheticSpec:
    """A seeded synthetic YouTube-8M-like dataset, generated on first use into ``cache``."""

    train_videos: int = 2000
    validation_videos: int = 500
    shards: int = 4
    seed: int = 0
    num_classes: int = 3862
    max_frames: int = 300  # videos have 1..max_frames frames; fewer frames train faster on CPUs
    cache: str = DEFAULT_CACHE

    def key(self) -> str:
        """A short hash of everything that determines the data (not where it is cached)."""
        fields = {k: v for k, v in asdict(self).items() if k != "cache"}
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:12]


@dataclass(frozen=True)
class DataSpec:
    """Either Parquet shard locations (local or s3://) or a synthetic dataset.

    ``pca_eigenvals``: the YouTube-8M PCA eigenvalues (.npy) that NeXtVLAD's reverse whitening
    needs; the trainer reads it once per trial and copies it into the models (models take values,
    never paths).

    ``holdout_fraction``: the share of validation videos (``metrics.holdout``, by a hash of the id)
    that chooses nothing: every choice (best epoch, TPE, ASHA, the ensemble) is made on the rest, the
    selection part, and the holdout part reports figures those choices did not inflate.

    ``shard_cache``: off (None) unless the space file asks for it; then remote shards are read from
    S3 once per node into that local directory (see ``yt8m_search.data.cache``)."""

    train: str | None = None
    validation: str | None = None
    synthetic: SyntheticSpec | None = None
    pca_eigenvals: str | None = None
    shard_cache: ShardCache | None = None
    holdout_fraction: float = 0.2  # of the validation videos, by id hash: reported on, never chosen on


@dataclass(frozen=True)
class Distribution:
    """A searched value: ``int`` / ``float`` in [low, high] (``log``, ``step``) or a ``choice``."""

    kind: str  # "int" | "float" | "choice"
    low: float | None = None
    high: float | None = None
    step: float | None = None
    log: bool = False
    choices: tuple[Any, ...] = ()

    def candidates(self, dense: int = 64) -> list[Any]:
        """Values to try when checking the budget: all choices, or a grid over the range."""
        if self.kind == "choice":
            return list(self.choices)
        assert self.low is not None and self.high is not None
        if self.kind == "int":
            step = int(self.step or 1)
            values = list(range(int(self.low), int(self.high) + 1, step))
            if len(values) > dense:
                values = sorted({values[round(i * (len(values) - 1) / (dense - 1))] for i in range(dense)})
            return values
        return [self.low, (self.low + self.high) / 2, self.high]


@dataclass(frozen=True)
class Parameter:
    """One named value of a trial: fixed or searched, possibly present only under a condition.

    ``name`` is the flat name Optuna, the trial config and W&B use; ``path`` where it is written.
    ``when`` maps other parameters' names to the values under which this one exists.
    """

    name: str
    path: str
    section: str  # "model" (the family), "hparams" or "trial"
    value: Any = None
    distribution: Distribution | None = None
    when: tuple[tuple[str, tuple[Any, ...]], ...] = ()

    def active(self, values: dict[str, Any]) -> bool:
        return all(name in values and values[name] in allowed for name, allowed in self.when)

    def possible_values(self) -> list[Any]:
        return self.distribution.candidates() if self.distribution else [self.value]


@dataclass(frozen=True)
class AshaSpec:
    """Successive halving at epoch rungs (``search.rungs``): a trial stops only when its GAP is below
    the rung's cutoff by more than ``noise_margin`` standard errors of a GAP difference."""

    grace_period: int = 1
    reduction_factor: int = 2
    noise_margin: float = 2.0


# the search's objectives: validation GAP (maximised), then the minimised costs a space may add
# after it: stored bytes (``size``) and forward FLOPs per video (``flops``)
OBJECTIVES = ("gap", "size", "flops")
SAMPLERS = ("tpe", "random", "grid")  # grid: every combination of the choices, each once


@dataclass(frozen=True)
class SearchSpec:
    num_samples: int = 8
    max_concurrent: int | None = None  # None: as many as the cluster holds at the start; set: that many (autoscaling)
    seed: int = 0
    # "gap" first (maximised), then none, one or both of the minimised costs (``OBJECTIVES``)
    objectives: tuple[str, ...] = ("gap",)
    asha: AshaSpec | None = AshaSpec()
    startup_trials: int = 4  # random trials before TPE models the space
    sampler: str = "tpe"  # tpe | random (a baseline: what TPE gains) | grid (choices only)
    max_failures: int = 1  # Tune-level retries of a crashed trial (resumes from its checkpoint)


@dataclass(frozen=True)
class BudgetSpec:
    max_model_bytes: int | None = None  # per trained model, at storage_dtype; None: no limit
    ensemble_bytes: int = 10**9  # the 2nd YouTube-8M challenge's 1 GB, as 10^9 bytes
    storage_dtype: str = "bfloat16"
    max_flops: int | None = None  # per trained model: forward FLOPs of one 300-frame video (models.flops)
    ensemble_flops: int | None = None  # the ensemble's distinct members' FLOPs together; None: no limit


@dataclass(frozen=True)
class WandbSpec:
    project: str = "yt8m-search"
    mode: str = "offline"  # offline | online | disabled; online needs WANDB_API_KEY
    entity: str | None = None


@dataclass(frozen=True)
class Spec:
    data: DataSpec
    parameters: tuple[Parameter, ...] = ()  # topologically sorted: conditions before dependents
    trial: TrialSettings = TrialSettings()  # the fixed trial settings; searched ones are Parameters
    # the settings ``trial:`` fixes explicitly; a trial's others come from its family's recipe, then
    # TrialSettings' defaults (``config.recipe.trial_settings``)
    trial_explicit: frozenset[str] = frozenset()
    search: SearchSpec = SearchSpec()
    budget: BudgetSpec = BudgetSpec()
    storage: str = "runs"
    wandb: WandbSpec = WandbSpec()
    name: str = "space"
    source: str = ""
    raw: dict[str, Any] | None = None

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.raw, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def grid(self) -> dict[str, list[Any]]:
        """``search.sampler: grid``'s points: every searched parameter's choices (the parser checks
        that each is a choice)."""
        return {p.name: list(p.distribution.choices) for p in self.parameters if p.distribution is not None}

    def parameter(self, name: str) -> Parameter:
        return next(p for p in self.parameters if p.name == name)

    @property
    def families(self) -> list[str]:
        return [str(v) for v in self.parameter("family").possible_values()]

    @property
    def multi_objective(self) -> bool:
        return len(self.search.objectives) > 1


__all__ = [
    "DEFAULT_CACHE",
    "DEFAULT_SHARD_CACHE",
    "DEFAULT_SHARD_CACHE_GB",
    "OBJECTIVES",
    "SAMPLERS",
    "AshaSpec",
    "BudgetSpec",
    "DataSpec",
    "Distribution",
    "Parameter",
    "SearchSpec",
    "Spec",
    "SpecError",
    "SyntheticSpec",
    "WandbSpec",
]
