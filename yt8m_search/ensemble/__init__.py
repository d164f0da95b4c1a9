"""Budgeted ensemble selection: the sweep's deliverable for the 2nd YouTube-8M challenge (1 GB).

From a finished sweep (``RUN_DIR/trials.csv``), choose the multiset of trained trials whose weighted
mean of sigmoid probabilities maximises GAP@20 on the selection part of the validation set subject to
the stored size of the distinct members being at most the budget (10^9 bytes by default; members
stored at the sweep's storage dtype, bfloat16 unless the space says float32), export it as one bundle
file and re-score it on the selection and holdout parts, against the best single model as shipped.

- ``candidates``: the trained trials and their saved top-k validation predictions, aligned by video,
  read one file at a time (``load_sample``: on a large sweep, a seeded subsample of the selection
  videos, whose GAP's standard error the selection reports);
- ``scoring``: the fast GAP of a weighted sum of sparse top-k predictions;
- ``bootstrap``: the paired bootstrap over videos that a selection step's gain must beat;
- ``selection``: sorted initialisation, greedy forward selection with replacement, bagging
  (``select``);
- ``rescoring``: the dense re-score as a job and a function the step takes (``rescore_in_driver`` by
  default; ``yt8m_search.rescore.rescore_on_ray`` runs it as Ray Data actors);
- ``step``: the whole step (``run``): select, export (``yt8m_search.bundle``), re-score like for like,
  record it in summary.json;
- ``__main__``: ``python -m yt8m_search.ensemble RUN_DIR [--budget BYTES]``.

No ray, optuna or wandb: the step runs on a finished sweep's files alone.
"""

from __future__ import annotations

from yt8m_search.bundle import BUNDLE_NAME, FORMAT_VERSION, Bundle, load_bundle
from yt8m_search.ensemble.candidates import Candidate, Sample, load_candidates, load_sample
from yt8m_search.ensemble.errors import BudgetError, BundleTooLargeError, EnsembleError
from yt8m_search.ensemble.rescoring import Rescore, RescoreJob, Scored, rescore_in_driver
from yt8m_search.ensemble.scoring import TOP_K, ensemble_gap
from yt8m_search.ensemble.selection import DEFAULT_BAGS, DEFAULT_BUDGET, DEFAULT_SAMPLE_VIDEOS, Selection, select
from yt8m_search.ensemble.step import export_bundle, run

__all__ = [
    "BUNDLE_NAME",
    "DEFAULT_BAGS",
    "DEFAULT_BUDGET",
    "DEFAULT_SAMPLE_VIDEOS",
    "FORMAT_VERSION",
    "TOP_K",
    "Bundle",
    "BudgetError",
    "BundleTooLargeError",
    "Candidate",
    "EnsembleError",
    "Rescore",
    "RescoreJob",
    "Sample",
    "Scored",
    "Selection",
    "ensemble_gap",
    "export_bundle",
    "load_bundle",
    "load_candidates",
    "load_sample",
    "rescore_in_driver",
    "run",
    "select",
]
