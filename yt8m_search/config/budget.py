"""The space's model checks: names against each family's vocabulary, the per-model budgets (stored
bytes and forward FLOPs) over the configurations the space can produce, and what reverse whitening
needs from the data section.

Sizes and FLOPs are analytic (``models.size_bytes``, ``models.flops``): no model is built, so a
paper-scale space is checked in a fraction of a second. The registry (and so torch, about 2 s) is
imported by the functions that use it, not with this module: ``python -m yt8m_search.run --help``
and a malformed space file answer without it.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from yt8m_search.config.checker import Checker
from yt8m_search.config.spec import BudgetSpec, DataSpec, Parameter
from yt8m_search.data import fs


def configurations(params: Sequence[Parameter], limit: int = 20_000, seed: int = 0) -> tuple[list[dict[str, Any]], int]:
    """Model configurations to check (every choice, a grid over ranges; sampled past ``limit``)."""
    model_params = [p for p in params if p.section in ("model", "hparams")]
    spaces = [p.possible_values() for p in model_params]
    total = 1
    for values in spaces:
        total *= len(values)
    rng = random.Random(seed)
    combos = itertools.product(*spaces) if total <= limit else (
        tuple(rng.choice(v) for v in spaces) for _ in range(limit)
    )
    out = []
    for combo in combos:
        values: dict[str, Any] = {}
        for p, v in zip(model_params, combo):
            if p.active(values):
                values[p.name] = v
        out.append(values)
    return out, min(total, limit)


@dataclass(frozen=True)
class Survey:
    """What the per-model budgets leave of the configurations a space can produce."""

    checked: int
    valid: int  # valid models among those checked
    fitting: int  # valid ones within both per-model budgets (bytes and FLOPs)
    smallest: tuple[float, str]  # (bytes, description) of the smallest valid one; else (inf, an invalid one's error)
    cheapest: tuple[float, str]  # (FLOPs per video, description) of the cheapest valid one; (inf, "") uncounted


def survey(params: Sequence[Parameter], budget: BudgetSpec, *, flops: bool = True) -> Survey:
    """Every configuration's analytic stored size (at ``budget.storage_dtype``) and, with ``flops``,
    forward FLOPs (``models.flops``; a third of a second per 10,000 configurations), against the
    per-model budgets."""
    from yt8m_search import models  # torch: see the module docstring
    inf = float("inf")
    smallest, cheapest = (inf, ""), (inf, "")
    valid = fitting = 0
    configs, checked = configurations(params)
    for values in configs:
        family, hparams = values["family"], {k: v for k, v in values.items() if k != "family"}
        try:
            size = models.size_bytes(family, dtype=budget.storage_dtype, **hparams)
            cost = models.flops(family, **hparams) if flops else 0
        except ValueError as err:
            if not smallest[1]:
                smallest = (inf, f"{family}{hparams}: {err}")
            continue
        valid += 1
        fitting += (size <= (budget.max_model_bytes or inf)) and (cost <= (budget.max_flops or inf))
        if size < smallest[0]:
            smallest = (size, f"{family} {hparams}")
        if flops and cost < cheapest[0]:
            cheapest = (cost, f"{family} {hparams}")
    return Survey(checked, valid, fitting, smallest, cheapest)


def _budget_errors(found: Survey, budget: BudgetSpec) -> list[str]:
    """Why no configuration fits the per-model budgets (bytes, FLOPs, or only not both at once), and
    whether the ensemble's FLOPs budget is below every configuration."""
    (size, small), (flops, cheap), checked = found.smallest, found.cheapest, found.checked
    errors = []
    if budget.max_model_bytes is not None and size > budget.max_model_bytes:
        errors.append(f"budget.max_model_bytes: {budget.max_model_bytes:,} bytes is below every configuration "
                      f"({checked} checked); the smallest needs {size:,} bytes at {budget.storage_dtype}: {small}")
    if budget.max_flops is not None and flops > budget.max_flops:
        errors.append(f"budget.max_flops: {budget.max_flops:,} FLOPs per video is below every configuration "
                      f"({checked} checked); the cheapest needs {flops:,} FLOPs ({flops / 1e9:.3g} GFLOPs): {cheap}")
    if not errors and not found.fitting:
        errors.append(f"budget: no configuration is within both budget.max_model_bytes ({budget.max_model_bytes:,} "
                      f"bytes) and budget.max_flops ({budget.max_flops:,} FLOPs) ({checked} checked): the smallest, "
                      f"{small}, and the cheapest, {cheap}, each exceed the other budget; raise one of them")
    if budget.ensemble_flops is not None and flops > budget.ensemble_flops:
        errors.append(f"budget.ensemble_flops: {budget.ensemble_flops:,} FLOPs per video is below every "
                      f"configuration ({checked} checked): no ensemble could hold the cheapest, {flops:,} FLOPs: "
                      f"{cheap}")
    return errors


def check_families(family: Parameter, check: Checker) -> None:
    from yt8m_search import models  # torch: see the module docstring
    known = models.list_models()
    for f in family.possible_values():
        if f not in known:
            check.errors.append(f"{family.path}: unknown model {f!r} (valid: {', '.join(known)})")


def check_models(params: list[Parameter], budget: BudgetSpec, check: Checker) -> None:
    """Hyperparameter names against each family's vocabulary, and the budgets: some configuration
    within both per-model budgets (bytes, FLOPs), and the ensemble's FLOPs above the cheapest."""
    from yt8m_search import models  # torch: see the module docstring
    families = list(params[0].possible_values())
    for p in params:
        if p.section != "hparams":
            continue
        applies = [f for f in families if all(f in allowed for c, allowed in p.when if c == "family")]
        for f in applies:
            vocabulary = models.hyperparameters(f)
            if p.name not in vocabulary:
                moved = ("; the eigenvalues file is now data.pca_eigenvals with reverse_whitening: true"
                         if p.name == "pca_eigenvals" else "")
                check.errors.append(f"{p.path}: not a hyperparameter of {f} (valid: {', '.join(vocabulary)}); "
                                    f"restrict it with when: {{family: ...}}{moved}")
    if check.errors or not families:
        return
    found = survey(params, budget, flops=budget.max_flops is not None or budget.ensemble_flops is not None)
    if found.valid == 0:
        check.errors.append(f"model: none of the {found.checked} configurations checked is a valid model "
                            f"(e.g. {found.smallest[1]})")
    else:
        check.errors.extend(_budget_errors(found, budget))


# Where reverse whitening's eigenvalues come from, said by every error about their file.
PCA_SOURCE = ("the YouTube-8M PCA eigenvalues: eigenvals.npy of the starter code's PCA matrices, "
              "http://data.yt8m.org/yt8m_pca.tgz (yt8m_pca/eigenvals.npy; see the README, Paper recipes)")


def missing_eigenvalues(path: str) -> str | None:
    """The error for a ``data.pca_eigenvals`` file that does not exist, or None. A local path is
    looked at; an s3:// one is asked of the store (network: the sweep calls this before Ray starts,
    the space parser only for local paths)."""
    found = Path(path.removeprefix("file://")).is_file() if fs.is_local(path) else fs.exists(path)
    return None if found else f"data.pca_eigenvals: no such file: {path} ({PCA_SOURCE})"


def check_eigenvalues(params: Sequence[Parameter], data: DataSpec, check: Checker) -> None:
    """Reverse whitening scales rgb by the PCA eigenvalues: a space that can turn it on must name
    their file (``data.pca_eigenvals``), and a local file must exist (a trial would fail only once
    trained far enough to build its model)."""
    path = data.pca_eigenvals
    if path is None:
        for p in params:
            if p.section == "hparams" and p.name == "reverse_whitening" and True in p.possible_values():
                check.errors.append(f"{p.path}: can be true, which needs data.pca_eigenvals ({PCA_SOURCE}); "
                                    "set it or keep reverse_whitening false")
    elif fs.is_local(path):
        problem = missing_eigenvalues(path)
        if problem:
            check.errors.append(problem)


__all__ = ["PCA_SOURCE", "Survey", "check_eigenvalues", "check_families", "check_models", "configurations",
           "missing_eigenvalues", "survey"]
