"""``TrainConfig``: everything one trial's training needs besides the data.

The trial settings (``config.TrialSettings``: their defaults and rules are defined there, once)
plus the model, its storage dtype, the seed and the PCA eigenvalues file for reverse whitening.
Built by the search from the space (``TrainConfig.from_settings``) or directly with keywords.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from yt8m_search import models
from yt8m_search.config.trial import TrialSettings
from yt8m_search.constants import NUM_CLASSES


@dataclass(frozen=True, kw_only=True)
class TrainConfig(TrialSettings):
    """The trial settings plus the model and how it is stored; invalid values raise ValueError
    listing every problem."""

    model: str
    hparams: dict[str, Any] = field(default_factory=dict)
    storage_dtype: str = "bfloat16"  # what size_bytes counts (models.STORAGE_DTYPES)
    seed: int = 0
    pca_eigenvals: str | None = None  # .npy for reverse whitening: read by fit, copied into every worker's model
    holdout_fraction: float = 0.0  # metrics.holdout: the validation videos reported on, never chosen on

    def __post_init__(self) -> None:
        super().__post_init__()
        errors = [f"{name} {message}" for name, message in self.problems()]
        if self.storage_dtype not in models.STORAGE_DTYPES:
            errors.append(f"storage_dtype must be one of {sorted(models.STORAGE_DTYPES)}, got {self.storage_dtype!r}")
        try:
            resolved = models.resolve(self.model, **self.hparams)
        except ValueError as err:
            errors.append(str(err))
        else:
            if resolved.get("reverse_whitening") and self.pca_eigenvals is None:
                errors.append("hparams reverse_whitening needs pca_eigenvals (the PCA eigenvalues .npy file)")
        if errors:
            raise ValueError("invalid training config: " + "; ".join(errors))

    @classmethod
    def from_settings(cls, settings: TrialSettings, *, model: str, **extra: Any) -> TrainConfig:
        """A trial's settings (``spec.trial.replace(**sampled)``) with its model and ``extra`` fields
        of this class (``hparams``, ``storage_dtype``, ``seed``, ``pca_eigenvals``,
        ``holdout_fraction``)."""
        values = {name: getattr(settings, name) for name in TrialSettings.names()}
        return cls(model=model, **extra, **values)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        return cls(**values)

    def resolved_hparams(self) -> dict[str, Any]:
        """Every hyperparameter of the model, defaults filled in."""
        return models.resolve(self.model, **self.hparams)

    @property
    def num_classes(self) -> int:
        return int(self.resolved_hparams().get("num_classes", NUM_CLASSES))

    @property
    def reverse_whitening(self) -> bool:
        """The model whitens its input back and so needs the eigenvalues (``pca_eigenvals``)."""
        return bool(self.resolved_hparams().get("reverse_whitening", False))


__all__ = ["TrainConfig"]
