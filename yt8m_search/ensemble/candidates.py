"""The ensemble's candidates: a finished sweep's trained trials with their validation predictions.

The trials come from ``trials.csv`` (``results.read_trials``); each trial's ``best/`` folder is read
through ``artifacts``, one trial at a time (``load_sample``; a full-scale file, 1.1M videos, is about
200 MB in memory while it is read): its metadata (``meta.json``) and its top-k validation predictions,
aligned by video id with Arrow's sort and hash lookups (no Python object per video until the kept ones
are converted), their class ids kept as int16 (lossless below 32,768 classes), checked to
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
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from yt8m_search import artifacts, models, results
from yt8m_search.constants import NUM_CLASSES
from yt8m_search.data import fs
from yt8m_search.ensemble.errors import EnsembleError
from yt8m_search.metrics.holdout import holdout_mask

__all__ = ["Candidate", "Sample", "load_candidates", "load_sample", "restrict", "storage_dtype_of"]


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



@dataclass(frozen=True)
class Sample:
    """Which validation videos the candidates hold: all of them (``used == videos``; the selection
    splits off the holdout itself, exactly as on a small sweep), or a seeded uniform subsample, without
    replacement, of ``used`` of the ``selection`` videos of the selection part (a sweep whose selection
    part exceeds ``max_videos``). A subsample's GAP is an estimate: ``select(population=selection)``
    reports its standard error."""

    videos: int  # videos in the trials' predictions
    selection: int  # of them, in the selection part (``videos`` when not subsampled: ``select`` splits them)
    used: int  # videos the candidates hold
    seed: int = 0

    @property
    def subsampled(self) -> bool:
        return self.used < self.selection


class _Reference:
    """The first candidate's videos in sorted-id order (Arrow arrays: no Python object per video),
    and the positions in that order the candidates keep (``keep`` ``[n]``, sorted)."""

    def __init__(self, table: pa.Table, where: str, trial_id: str, fraction: float, max_videos: int | None,
                 seed: int) -> None:
        self.trial_id = trial_id
        self.raw_ids = table.column("id").combine_chunks()
        self.order = _sorted_order(self.raw_ids, where)  # [V] file rows in sorted-id order
        self.ids = self.raw_ids.take(self.order)
        self.labels = table.column("labels").take(self.order)
        videos = len(self.ids)
        self.keep = np.arange(videos)  # all: the selection splits off the holdout (small sweeps: as ever)
        self.sample = Sample(videos, videos, videos, seed)
        if max_videos is not None and videos > max_videos:
            # the split hashes every id: only when the selection part may be too large
            selection = np.flatnonzero(~holdout_mask(self.ids.to_pylist(), fraction))
            if len(selection) > max_videos:
                self.keep = np.sort(np.random.default_rng(seed).choice(selection, max_videos, replace=False))
                self.sample = Sample(videos, len(selection), max_videos, seed)


def _sorted_order(ids: pa.Array, where: str) -> np.ndarray:
    """File rows in sorted-id order (Arrow compares UTF-8 bytes: code-point order, as Python's sort)."""
    if pc.count_distinct(ids).as_py() != len(ids):
        raise EnsembleError(f"{where} lists a video more than once")
    return pc.sort_indices(ids).to_numpy()


def _read_trial(row: results.TrialRow, path: str, checkpoint: str) -> tuple[artifacts.TrialMeta, pa.Table]:
    """A trial's meta and predictions table, checked to come from one write."""
    try:
        meta = artifacts.read_meta(checkpoint)
        table, write_id = artifacts.read_predictions_table(path)
        artifacts.check_same_write(checkpoint, {artifacts.META_FILE: meta.write_id, path: write_id})
    except artifacts.ArtifactError as err:
        raise EnsembleError(f"trial {row.trial_id}: {err}") from err
    return meta, table


def _aligned_order(reference: _Reference, table: pa.Table, trial_id: str, where: str) -> np.ndarray:
    """``table``'s rows in the reference's video order, checked to hold the same videos and labels."""
    ids = table.column("id").combine_chunks()
    if ids.equals(reference.raw_ids):  # the usual case: every trial wrote the videos in one order
        order = reference.order
    else:
        _sorted_order(ids, where)  # duplicates
        found = pc.index_in(reference.ids, value_set=ids)
        if len(ids) != len(reference.ids) or found.null_count:
            _different_videos(reference, ids, trial_id)
        order = found.to_numpy()
    labels = table.column("labels").take(order)
    if not labels.equals(reference.labels):  # sorted unique ids as the trainer writes them: equal lists
        _check_labels(reference, labels, trial_id)
    return order


def _different_videos(reference: _Reference, ids: pa.Array, trial_id: str) -> None:
    ref_ids, other = reference.ids.to_numpy(zero_copy_only=False), ids.to_numpy(zero_copy_only=False)
    missing, extra = np.setdiff1d(ref_ids, other), np.setdiff1d(other, ref_ids)
    examples = ", ".join(repr(x) for x in [*missing[:3], *extra[:3]])
    raise EnsembleError(
        f"candidates were validated on different video sets: trial {reference.trial_id} has {len(ref_ids)} "
        f"videos, trial {trial_id} has {len(other)} ({len(missing)} missing, {len(extra)} extra; "
        f"e.g. {examples}); ensemble trials of one sweep (one validation set)"
    )


def _check_labels(reference: _Reference, labels: pa.ChunkedArray, trial_id: str) -> None:
    """Per video, the same set of labels (slow: only when the lists differ somewhere)."""
    for i, (a, b) in enumerate(zip(reference.labels.to_pylist(), labels.to_pylist())):
        if set(a) != set(b):
            raise EnsembleError(f"trials {reference.trial_id} and {trial_id} disagree on the labels of "
                                f"video {reference.ids[i].as_py()!r}")


def _candidate(row: results.TrialRow, meta: artifacts.TrialMeta, kept: artifacts.Predictions, path: str,
               checkpoint: str, dtype: str) -> Candidate:
    """One trial's candidate from its kept predictions (class ids as int16 when they fit: lossless)."""
    size = row.size_bytes if row.size_bytes > 0 else models.size_bytes(meta.model, dtype, **meta.hparams)
    # a table or meta.json from before FLOPs were recorded has none: count them from the model
    flops = row.flops or meta.flops or models.flops(meta.model, **meta.hparams)
    classes = kept.classes
    if classes.size == 0 or (classes.min() >= 0 and classes.max() < 2**15):
        classes = classes.astype(np.int16)
    return Candidate(
        trial_id=row.trial_id, model=row.model, hparams=dict(meta.hparams), size_bytes=int(size),
        video_ids=np.asarray(kept.ids, dtype=object), labels=kept.labels, classes=classes, scores=kept.scores,
        gap=row.gap, checkpoint=checkpoint, predictions=path, state=row.state.value,
        notes=_averaging_note(row.trial_id, meta), write_id=meta.write_id, flops=int(flops),
    )  # fmt: skip


def _trial_files(run_dir: str) -> Iterator[tuple[results.TrialRow, str, str]]:
    """The trained trials with their predictions file and best/ folder; others skipped with a line on
    stderr."""
    for row in results.read_trials(run_dir):
        if not row.trained or not row.predictions:
            continue
        predictions = _resolve_path(run_dir, row.predictions)
        checkpoint = _resolve_path(run_dir, row.checkpoint)
        missing = _missing_file(predictions, checkpoint)
        if missing:
            print(f"ensemble: skipping trial {row.trial_id}: {missing} not found", file=sys.stderr)
            continue
        yield row, predictions, checkpoint


def load_sample(run_dir: str, *, storage_dtype: str | None = None, holdout_fraction: float = 0.0,
                max_videos: int | None = None, seed: int = 0) -> tuple[list[Candidate], Sample]:
    """The trained trials of a finished sweep with their validation predictions, aligned by video id
    (sorted), one file at a time: only the videos kept stay in memory.

    With ``max_videos`` and a selection part (``holdout_fraction``: ``metrics.holdout``) larger than
    that, the candidates hold a seeded subsample of ``max_videos`` selection videos (``Sample``);
    otherwise all videos, as ``load_candidates``. Raises EnsembleError as ``load_candidates``.
    """
    if max_videos is not None and max_videos < 1:
        raise EnsembleError(f"max_videos must be a positive number of videos, got {max_videos}")
    dtype = storage_dtype or storage_dtype_of(run_dir)
    loaded: list[Candidate] = []
    reference: _Reference | None = None
    for row, path, checkpoint in _trial_files(run_dir):
        meta, table = _read_trial(row, path, checkpoint)
        if reference is None:
            reference = _Reference(table, path, row.trial_id, holdout_fraction, max_videos, seed)
            order = reference.order
        else:
            order = _aligned_order(reference, table, row.trial_id, path)
        kept = artifacts.Predictions.from_table(table.take(order[reference.keep]), path)
        del table  # one trial's whole file in memory at a time
        candidate = _candidate(row, meta, kept, path, checkpoint, dtype)
        if loaded:  # one shared copy
            candidate.video_ids, candidate.labels = loaded[0].video_ids, loaded[0].labels
        loaded.append(candidate)
    return loaded, (reference.sample if reference is not None else Sample(0, 0, 0, seed))


def load_candidates(run_dir: str, *, storage_dtype: str | None = None) -> list[Candidate]:
    """The trained trials of a finished sweep with their validation predictions, aligned by video id.

    Candidates are the rows of ``trials.csv`` in state complete or stopped whose predictions file,
    ``model.pt`` and ``meta.json`` exist (others are skipped with a line on stderr). Videos are put in
    sorted-id order. Raises EnsembleError when the candidates were validated on different video sets
    (or disagree on a video's labels), or a trial's files come from different writes.
    """
    return load_sample(run_dir, storage_dtype=storage_dtype)[0]
