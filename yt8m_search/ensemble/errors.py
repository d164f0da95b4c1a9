"""The ensemble step's errors: one base, ``EnsembleError``, that ``run`` callers catch (``run.py``
records it in summary.json as the step's failure instead of failing the sweep)."""

from __future__ import annotations

from yt8m_search import bundle


class EnsembleError(ValueError):
    """The ensemble step cannot proceed (no candidates, inconsistent predictions, ...)."""


class BudgetError(EnsembleError):
    """The budget is smaller than every candidate."""


class BundleTooLargeError(EnsembleError, bundle.BundleTooLargeError):
    """The bundle file would exceed the budget; nothing was written (``bundle.BundleTooLargeError``
    as the ensemble step raises it)."""


__all__ = ["BudgetError", "BundleTooLargeError", "EnsembleError"]
