"""The space's model checks: names against each family's vocabulary, the per-model budget over the
configurations the space can produce, and what reverse whitening needs from the data section.

Sizes are analytic (``models.size_bytes``): no model is built, so a paper-scale space is checked
in a fraction of a second. The registry (and so torch, about 2 s) is imported by the functions that
use it, not with this module: ``python -m yt8m_search.run --help`` and a malformed space file answer
without it.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Sequence
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


def smallest_config(params: list[Parameter], dtype: str) -> tuple[tuple[float, str], int, int]:
    """((bytes, description) of the smallest valid configuration, configurations checked, valid ones)."""
    from yt8m_search import models  # torch: see the module docstring
    smallest: tuple[float, str] = (float("inf"), "")
    valid = 0
    configs, checked = configurations(params)
    for values in configs:
        hparams = {k: v for k, v in values.items() if k != "family"}
        try:
            size = models.size_bytes(values["family"], dtype=dtype, **hparams)
        except ValueError as err:
            if not smallest[1]:
                smallest = (float("inf"), f"{values['family']}{hparams}: {err}")
            continue
        valid += 1
        if size < smallest[0]:
            smallest = (size, f"{values['family']} {hparams}")
    return smallest, checked, valid


def check_families(family: Parameter, check: Checker) -> None:
    from yt8m_search import models  # torch: see the module docstring
    known = models.list_models()
    for f in family.possible_values():
        if f not in known:
            check.errors.append(f"{family.path}: unknown model {f!r} (valid: {', '.join(known)})")


def check_models(params: list[Parameter], budget: BudgetSpec, check: Checker) -> None:
    """Hyperparameter names against each family's vocabulary, and the per-model budget."""
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
    smallest, checked, valid = smallest_config(params, budget.storage_dtype)
    if valid == 0:
        check.errors.append(f"model: none of the {checked} configurations checked is a valid model "
                            f"(e.g. {smallest[1]})")
    elif budget.max_model_bytes is not None and smallest[0] > budget.max_model_bytes:
        check.errors.append(
            f"budget.max_model_bytes: {budget.max_model_bytes:,} bytes is below every configuration "
            f"({checked} checked); the smallest needs {smallest[0]:,} bytes at {budget.storage_dtype}: {smallest[1]}"
        )


def check_eigenvalues(params: Sequence[Parameter], data: DataSpec, check: Checker) -> None:
    """Reverse whitening scales rgb by the PCA eigenvalues: a space that can turn it on must name
    their file (``data.pca_eigenvals``), and a local file must exist (a trial would fail only once
    trained far enough to build its model)."""
    path = data.pca_eigenvals
    if path is None:
        for p in params:
            if p.section == "hparams" and p.name == "reverse_whitening" and True in p.possible_values():
                check.errors.append(f"{p.path}: can be true, which needs data.pca_eigenvals (the PCA eigenvalues "
                                    "file, .npy); set it or keep reverse_whitening false")
    elif fs.is_local(path) and not Path(path.removeprefix("file://")).is_file():
        check.errors.append(f"data.pca_eigenvals: no such file: {path}")


__all__ = ["check_eigenvalues", "check_families", "check_models", "configurations", "smallest_config"]
