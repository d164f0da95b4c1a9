"""The ensemble's candidates: a finished sweep's trained trials with their validation predictions.

The trials come from ``trials.csv`` (``results.read_trials``); each trial's ``best/`` folder is read
through ``artifacts``: its metadata (``meta.json``) and its top-k validation predictions, checked to
come from the same write (a trial still rewriting its best epoch, or a write cut short, would pair one
epoch's predictions with another's model). The weights are not loaded here (only the chosen members'
are, by the export, which checks them against the same write).

Checkpoint averaging: with ``average_last`` the trainer evaluates the mean of a trial's last epochs'
weights and, when that scores higher than every single epoch, saves the average as the trial's model
and predictions (``TrialMeta.averaged_epochs``); the selection and the bundle then use it, and the
candidate carries a note saying so.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from yt8m_search import artifacts, models, results
from yt8m_search.constants import NUM_CLASSES
from yt8m_search.data import fs
from yt8m_search.ensemble.errors import EnsembleError

__all__ = ["Candidate", "load_candidates", "restrict", "storage_dtype_of"]


@dataclass(eq=False)
class Candidate:
    """One trained trial and its validation predictions, aligned with the other candidates'.

    ``classes``/``scores`` ``[V, k]``: the trial's top-k classes (best first) and sigmoid
    probabilities for the videos ``video_ids`` (the same array, in the same order, for every
    candidate of a set); ``labels``: V arrays of true class ids (shared too).
    """

    trial_id: str
    model: str
    hparams: dict[str, Any]
    size_bytes: int
    video_ids: np.ndarray
    labels: Sequence[np.ndarray]
    classes: np.ndarray
    scores: np.ndarray
    gap: float = math.nan  # the sweep's validation GAP of the trial
    checkpoint: str = ""  # the <run>/best folder holding model.pt
    predictions: str = ""
    state: str = ""
    notes: list[str] = field(default_factory=list)
    write_id: str = ""  # the best/ folder's write the predictions come from (the export checks the model's)
    flops: int = 0  # analytic forward FLOPs of one 300-frame video (models.flops)

    @property
    def num_classes(self) -> int:
        try:
            return int(models.resolve(self.model, **self.hparams).get("num_classes", NUM_CLASSES))
        except ValueError:
            return NUM_CLASSES


def restrict(candidates: Sequence[Candidate], keep: np.ndarray) -> list[Candidate]:
    """The aligned ``candidates`` on the videos where ``keep`` (bool ``[V]``) is True, still sharing
    one ids array and one labels list (e.g. the selection part of the validation set)."""
    if not candidates:
        return []
    first = candidates[0]
    ids = first.video_ids[keep]
    labels = [lab for lab, kept in zip(first.labels, keep) if kept]
    return [dataclasses.replace(c, video_ids=ids, labels=labels, classes=c.classes[keep], scores=c.scores[keep])
            for c in candidates]  # fmt: skip


def storage_dtype_of(run_dir: str) -> str:
    """The sweep's storage dtype (summary.json's budget), bfloat16 when the run has no summary."""
    if not fs.exists(fs.join(run_dir, results.SUMMARY_FILE)):
        return "bfloat16"
    return results.read_summary(run_dir).budget.storage_dtype or "bfloat16"


def _resolve_path(run_dir: str, path: str) -> str:
    """A path from trials.csv: as written, or relative to the run folder when that is where it is."""
    if not path or not fs.is_local(path) or os.path.isabs(path) or os.path.exists(path):
        return path
    return fs.join(run_dir, path)


def _missing_file(predictions: str, checkpoint: str) -> str | None:
    """The first of the trial's files that does not exist (None when all do)."""
    if not checkpoint:
        return "no checkpoint"
    for path in (predictions, fs.join(checkpoint, artifacts.MODEL_FILE), fs.join(checkpoint, artifacts.META_FILE)):
        if not fs.exists(path):
            return path
    return None


def _averaging_note(trial_id: str, meta: artifacts.TrialMeta) -> list[str]:
    if meta.averaged_epochs:
        return [f"trial {trial_id}: exports the average of its last {meta.averaged_epochs} epochs "
                "(it beat every single epoch)"]
    return []


def _load_trial(row: results.TrialRow, predictions_path: str, checkpoint: str, dtype: str) -> Candidate:
    """One trial's candidate, its videos in sorted-id order; its meta and predictions from one write."""
    try:
        meta = artifacts.read_meta(checkpoint)
        predictions, write_id = artifacts.read_predictions(predictions_path)
        artifacts.check_same_write(checkpoint, {artifacts.META_FILE: meta.write_id, predictions_path: write_id})
    except artifacts.ArtifactError as err:
        raise EnsembleError(f"trial {row.trial_id}: {err}") from err
    ids = np.asarray(predictions.ids, dtype=object)
    order = np.argsort(ids, kind="stable")
    ids = ids[order]
    if len(np.unique(ids)) != len(ids):
        raise EnsembleError(f"trial {row.trial_id}: {predictions_path} lists a video more than once")
    size = row.size_bytes if row.size_bytes > 0 else models.size_bytes(meta.model, dtype, **meta.hparams)
    # a table or meta.json from before FLOPs were recorded has none: count them from the model
    flops = row.flops or meta.flops or models.flops(meta.model, **meta.hparams)
    return Candidate(
        trial_id=row.trial_id, model=row.model, hparams=dict(meta.hparams), size_bytes=int(size), video_ids=ids,
        labels=[predictions.labels[i] for i in order], classes=predictions.classes[order],
        scores=predictions.scores[order], gap=row.gap, checkpoint=checkpoint, predictions=predictions_path,
        state=row.state.value, notes=_averaging_note(row.trial_id, meta), write_id=meta.write_id, flops=int(flops),
    )  # fmt: skip


def load_candidates(run_dir: str, *, storage_dtype: str | None = None) -> list[Candidate]:
    """The trained trials of a finished sweep with their validation predictions, aligned by video id.

    Candidates are the rows of ``trials.csv`` in state complete or stopped whose predictions file,
    ``model.pt`` and ``meta.json`` exist (others are skipped with a line on stderr). Videos are put in
    sorted-id order. Raises EnsembleError when the candidates were validated on different video sets
    (or disagree on a video's labels), or a trial's files come from different writes.
    """
    dtype = storage_dtype or storage_dtype_of(run_dir)
    loaded: list[Candidate] = []
    for row in results.read_trials(run_dir):
        if not row.trained or not row.predictions:
            continue
        predictions = _resolve_path(run_dir, row.predictions)
        checkpoint = _resolve_path(run_dir, row.checkpoint)
        missing = _missing_file(predictions, checkpoint)
        if missing:
            print(f"ensemble: skipping trial {row.trial_id}: {missing} not found", file=sys.stderr)
            continue
        candidate = _load_trial(row, predictions, checkpoint, dtype)
        if loaded:
            _check_same_videos(loaded[0], candidate)
            candidate.video_ids, candidate.labels = loaded[0].video_ids, loaded[0].labels  # one shared copy
        loaded.append(candidate)
    return loaded


def _check_same_videos(reference: Candidate, candidate: Candidate) -> None:
    ref_ids, ids = reference.video_ids, candidate.video_ids
    if len(ids) != len(ref_ids) or not np.array_equal(ids, ref_ids):
        missing = np.setdiff1d(ref_ids, ids)
        extra = np.setdiff1d(ids, ref_ids)
        examples = ", ".join(repr(x) for x in [*missing[:3], *extra[:3]])
        raise EnsembleError(
            f"candidates were validated on different video sets: trial {reference.trial_id} has {len(ref_ids)} "
            f"videos, trial {candidate.trial_id} has {len(ids)} ({len(missing)} missing, {len(extra)} extra; "
            f"e.g. {examples}); ensemble trials of one sweep (one validation set)"
        )
    for i, (a, b) in enumerate(zip(reference.labels, candidate.labels)):
        if not np.array_equal(np.unique(a), np.unique(b)):
            raise EnsembleError(f"trials {reference.trial_id} and {candidate.trial_id} disagree on the labels of "
                                f"video {ref_ids[i]!r}")
