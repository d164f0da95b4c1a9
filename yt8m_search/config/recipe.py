"""Each model family's training-recipe defaults, resolved per trial.

One trial's setting takes, in order:

1. the value the space sets: fixed in ``trial:``, or a ``trial`` parameter active for the trial
   (searched, or ``{value: x, when: ...}``);
2. the default its model family registered (``models.recipe_defaults``: WILLOW's batch 80 and MoE
   L2 1e-6, the GRU's batch 128 and decay 0.9, ...);
3. ``TrialSettings``' default (the NeXtVLAD recipe).

A conditional space can mix families, so this is resolved per trial, from its sampled family. The
registry (and so torch, about 2 s) is imported by the functions that use it, as in ``config.budget``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Mapping
from typing import Any

from yt8m_search.config.checker import Checker
from yt8m_search.config.spec import Parameter, Spec
from yt8m_search.config.trial import TrialSettings

SPACE, SEARCHED, RECIPE, DEFAULT = "space", "searched", "recipe", "default"  # where a value comes from


def family_recipe(family: str) -> dict[str, Any]:
    """The recipe defaults the family registered (trial-setting name -> value)."""
    from yt8m_search import models  # torch: see the module docstring

    return models.recipe_defaults(family)


def _given(parameters: Collection[Parameter], values: Mapping[str, Any]) -> dict[str, Any]:
    """The trial's values of its active ``trial`` parameters."""
    return {p.name: values[p.name] for p in parameters if p.section == "trial" and p.name in values}


def family_settings(
    fixed: TrialSettings, explicit: Collection[str], family: str
) -> tuple[TrialSettings, dict[str, Any]]:
    """``fixed`` with the family's recipe defaults for every setting not in ``explicit``, unvalidated,
    and the recipe values it took."""
    taken = {k: v for k, v in family_recipe(family).items() if k not in explicit}
    return dataclasses.replace(fixed, **taken), taken


def trial_settings(spec: Spec, values: Mapping[str, Any]) -> TrialSettings:
    """One trial's settings from its flat values (its ``family`` and its active ``trial`` parameters):
    the space's value > the family's recipe default > ``TrialSettings``' default. Raises ValueError
    listing every problem."""
    given = _given(spec.parameters, values)
    settings, _ = family_settings(spec.trial, spec.trial_explicit | set(given), str(values["family"]))
    return settings.replace(**given)


def _family_parameters(parameters: Collection[Parameter], family: str) -> dict[str, Parameter]:
    """The ``trial`` parameters whose family condition (if any) admits ``family``, by name."""
    return {p.name: p for p in parameters if p.section == "trial"
            and all(family in allowed for name, allowed in p.when if name == "family")}


def _explicit_for(spec_explicit: Collection[str], parameters: Collection[Parameter], family: str) -> set[str]:
    """The settings the space sets for trials of ``family``: fixed ones and its admitted parameters."""
    return set(spec_explicit) | set(_family_parameters(parameters, family))


def setting_sources(spec: Spec, family: str) -> dict[str, tuple[Any, str]]:
    """Every setting of a ``family`` trial with where it comes from (space, searched, recipe or
    default); a searched setting's value is its parameter's path. For the dry run."""
    searched = _family_parameters(spec.parameters, family)
    settings, taken = family_settings(spec.trial, spec.trial_explicit | set(searched), family)
    out: dict[str, tuple[Any, str]] = {}
    for name in TrialSettings.names():
        if name in searched:
            p = searched[name]
            out[name] = (p.value if p.distribution is None else p.path, SPACE if p.distribution is None else SEARCHED)
        else:
            source = SPACE if name in spec.trial_explicit else RECIPE if name in taken else DEFAULT
            out[name] = (getattr(settings, name), source)
    return out


def check_recipes(families: Collection[str], fixed: TrialSettings, explicit: Collection[str],
                  parameters: Collection[Parameter], check: Checker) -> None:
    """Each family's recipe names real settings and, with the space's own values, breaks no rule
    (batch 80 over 3 workers does): reported like the space's own values, naming the family."""
    own = set(fixed.problems())
    for family in families:
        try:
            recipe = family_recipe(family)
        except ValueError:  # not a registered family: check_families reports it
            continue
        unknown = sorted(set(recipe) - set(TrialSettings.names()))
        if unknown:
            check.errors.append(f"model.family: {family}'s recipe names unknown trial setting(s) {', '.join(unknown)}")
            continue
        settings, taken = family_settings(fixed, _explicit_for(explicit, parameters, family), family)
        for name, message in settings.problems():
            if (name, message) not in own:
                shown = ", ".join(f"{k}={v}" for k, v in taken.items())
                check.errors.append(f"trial.{name}: {message} (with {family}'s recipe defaults {shown}; "
                                    f"set trial.{name} in the space to override)")


__all__ = ["DEFAULT", "RECIPE", "SEARCHED", "SPACE", "check_recipes", "family_recipe", "family_settings",
           "setting_sources", "trial_settings"]
