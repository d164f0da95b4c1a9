"""Space files and trial settings.

- ``spec``: the typed space (``Spec`` and its sections, ``Parameter``, ``Distribution``, ``SpecError``);
- ``space``: the YAML reader (``load``, ``parse``, ``apply_overrides``), every error with its key path;
- ``trial``: ``TrialSettings``, the one definition of every trial setting (default, rule, searchable);
- ``recipe``: a trial's settings per its model family (space > the family's recipe > the defaults);
- ``budget``: the model checks (vocabulary, per-model budgets of bytes and FLOPs, reverse whitening's eigenvalues file);
- ``checker``: typed access to YAML values that records errors instead of raising.
"""

from yt8m_search.config.budget import PCA_SOURCE, Survey, configurations, missing_eigenvalues, survey
from yt8m_search.config.checker import Checker
from yt8m_search.config.recipe import setting_sources, trial_settings
from yt8m_search.config.space import apply_overrides, load, parse
from yt8m_search.config.spec import (
    DEFAULT_CACHE,
    OBJECTIVES,
    SAMPLERS,
    AshaSpec,
    BudgetSpec,
    DataSpec,
    Distribution,
    Parameter,
    SearchSpec,
    Spec,
    SpecError,
    SyntheticSpec,
    WandbSpec,
)
from yt8m_search.config.trial import Rule, TrialSettings

__all__ = [
    "DEFAULT_CACHE",
    "OBJECTIVES",
    "PCA_SOURCE",
    "SAMPLERS",
    "AshaSpec",
    "BudgetSpec",
    "Checker",
    "DataSpec",
    "Distribution",
    "Parameter",
    "Rule",
    "SearchSpec",
    "Spec",
    "SpecError",
    "Survey",
    "SyntheticSpec",
    "TrialSettings",
    "WandbSpec",
    "apply_overrides",
    "configurations",
    "load",
    "missing_eigenvalues",
    "parse",
    "setting_sources",
    "survey",
    "trial_settings",
]
