"""The ensemble step on a finished sweep: select, export the bundle, re-score it, record it.

The budgets (bytes, and FLOPs per video when the sweep set ``budget.ensemble_flops``), the storage
dtype, the validation data and its holdout fraction come from the sweep's ``summary.json``
(``results.RunSummary``) unless given. The selection sees only the selection part of the validation
videos (``metrics.holdout``). The bundle file adds a little to its members' bytes (the container,
names); when that tips it over the budget the selection runs again under the budget less that
overhead.

At scale: the trials' predictions are read one file at a time (``candidates.load_sample``), and a
selection part larger than ``max_videos`` (``DEFAULT_SAMPLE_VIDEOS``) is selected on a seeded subsample
of that many of its videos; the entry's ``sample_videos``/``sample_of``, ``selection_gap_sd`` and
``selection_gap_se`` (and a note) say what the sparse ``selection_gap`` is then worth. Small sweeps are
selected on all their videos, exactly as before.

Like for like: the bundle and the best single candidate as shipped (a one-member bundle, its weights
at the storage dtype) are scored densely in one pass over the validation data, each video counted
in its part, by the ``rescore`` function given (``rescoring``: in this process by default; the sweep
passes ``yt8m_search.rescore.rescore_on_ray``, Ray Data actors on the cluster's GPUs or CPUs).
The bundle's selection-part GAP is the step's ``gap``, its holdout GAP ``holdout_gap``,
the selection's sparse estimate ``selection_gap``. When the bundle scores below the best single on
the selection part, the best single alone is exported at the same path instead (with a note). The
entry (``results.EnsembleSummary``) is returned and stored as summary.json's ``ensemble``.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from yt8m_search import artifacts, bundle, results
from yt8m_search.data import fs
from yt8m_search.data.inference import DEFAULT_BATCH_SIZE, data_files
from yt8m_search.ensemble.candidates import Candidate, Sample, load_sample
from yt8m_search.ensemble.errors import BudgetError, BundleTooLargeError, EnsembleError
from yt8m_search.ensemble.rescoring import (
    PartMetrics,
    Rescore,
    RescoreJob,
    Scored,
    member_from_checkpoint,
    rescore_in_driver,
)
from yt8m_search.ensemble.selection import DEFAULT_BUDGET, DEFAULT_SAMPLE_VIDEOS, Selection, select

__all__ = ["export_bundle", "run"]

Log = Callable[[str], None]


def _member(candidate: Candidate, weight: int, dtype: str) -> bundle.BundleMember:
    """A selected candidate's weights at the storage dtype, from the write its predictions came from."""
    return member_from_checkpoint(candidate.trial_id, candidate.checkpoint, candidate.write_id, weight,
                                  candidate.size_bytes, dtype)


def export_bundle(selection: Selection, path: str, dtype: str = "bfloat16", *, budget_bytes: int | None = None) -> int:
    """Write the selected members into one bundle at ``path`` (``bundle.export_bundle``, atomically);
    returns its size in bytes.

    Raises BundleTooLargeError, writing nothing, when the file would exceed the budget
    (``selection.budget_bytes`` unless given).
    """
    budget = int(selection.budget_bytes if budget_bytes is None else budget_bytes)
    members = [_member(c, w, dtype) for c, w in zip(selection.members, selection.weights)]
    chosen = {"gap": float(selection.gap), "size_bytes": int(selection.size_bytes), "budget_bytes": budget,
              "strategy": selection.strategy}  # fmt: skip
    try:
        return bundle.export_bundle(members, path, dtype, budget_bytes=budget, selection=chosen)
    except bundle.BundleTooLargeError as err:
        raise BundleTooLargeError(str(err), err.file_bytes, err.budget_bytes) from err
    except bundle.BundleError as err:
        raise EnsembleError(str(err)) from err


@dataclass(frozen=True)
class _Settings:
    budget: int
    dtype: str
    validation: str
    budget_flops: int | None = None  # the distinct members' FLOPs per video together; None: no limit
    holdout_fraction: float = 0.0


def _settings(run_dir: str, budget: int | None, validation: str | None, budget_flops: int | None = None) -> _Settings:
    """Budgets, storage dtype and validation data: the arguments, else the sweep's summary.json."""
    summary = results.read_summary(run_dir)
    budget = int(budget if budget is not None else summary.budget.ensemble_bytes or DEFAULT_BUDGET)
    if budget <= 0:
        raise EnsembleError(f"the budget must be a positive number of bytes, got {budget}")
    budget_flops = budget_flops if budget_flops is not None else summary.budget.ensemble_flops
    if budget_flops is not None and budget_flops <= 0:
        raise EnsembleError(f"the FLOPs budget must be a positive number of FLOPs per video, got {budget_flops}")
    validation = validation or summary.data.validation
    if not validation:
        raise EnsembleError(f"{fs.join(run_dir, results.SUMMARY_FILE)} names no validation data (data.validation), "
                            "needed to re-score the bundle")
    try:
        data_files(validation)
    except FileNotFoundError as err:
        raise EnsembleError(f"cannot re-score the bundle: {err}") from err
    return _Settings(budget, summary.budget.storage_dtype or "bfloat16", validation, budget_flops,
                     float(summary.data.holdout_fraction))


def _select_and_export(candidates: list[Candidate], settings: _Settings, path: str, *, workers: int | None,
                       sample: Sample, say: Log) -> tuple[Selection, int]:
    """Select under the budget and export; when the file's own overhead tips it over, select again
    under the budget less that overhead (three tries)."""
    budget, limit = settings.budget, settings.budget
    for attempt in range(3):
        try:
            selection = select(candidates, limit, budget_flops=settings.budget_flops,
                               holdout_fraction=settings.holdout_fraction, workers=workers,
                               population=sample.selection if sample.subsampled else None,
                               seed=sample.seed, log=say)
        except BudgetError as err:
            if limit == budget:
                raise
            raise BudgetError(f"{err} (the budget of {budget:,} bytes less {budget - limit:,} bytes for the "
                              "bundle file's own overhead)") from err
        try:
            return selection, export_bundle(selection, path, settings.dtype, budget_bytes=budget)
        except BundleTooLargeError as err:
            if attempt == 2:
                raise
            limit -= err.file_bytes - budget + 4096
            say(f"{err}; selecting again under {limit:,} bytes")
    raise AssertionError("unreachable")


def _json_number(value: float | None) -> float | None:
    """NaN (no value) as JSON null."""
    return None if value is None or not math.isfinite(float(value)) else float(value)


def _nan(value: float) -> float:
    """Non-finite as ``math.nan`` itself: it reads back from JSON null as that object, so a round trip
    compares equal."""
    return float(value) if math.isfinite(float(value)) else math.nan


def _entry(selection: Selection, parts: PartMetrics, single: PartMetrics, settings: _Settings, *, path: str,
           file_bytes: int, candidates: int, notes: list[str], seconds: float,
           shipped_single: bool) -> results.EnsembleSummary:
    metrics, holdout = parts["selection"], parts["holdout"]
    return results.EnsembleSummary(
        members=[c.trial_id for c in selection.members], weights=list(selection.weights),
        models=[c.model for c in selection.members], member_gaps=[_json_number(c.gap) for c in selection.members],
        member_bytes=[c.size_bytes for c in selection.members],
        gap=_nan(metrics["gap"]), selection_gap=selection.gap,
        best_single={"trial_id": selection.best_single[0], "gap": _json_number(single["selection"]["gap"]),
                     "holdout_gap": _json_number(single["holdout"]["gap"])},
        hit_at_one=_nan(metrics["hit_at_one"]), perr=_nan(metrics["perr"]), map=_json_number(metrics["map"]),
        validation_videos=metrics["videos"], size_bytes=selection.size_bytes, file_bytes=file_bytes,
        budget_bytes=settings.budget, storage_dtype=settings.dtype, path=path, format_version=bundle.FORMAT_VERSION,
        strategy=selection.strategy, curve=[[int(s), float(g)] for s, g in selection.curve], steps=selection.steps,
        local_moves=[], candidates=candidates, evaluations=selection.evaluations,
        selection_seconds=round(selection.seconds, 3), seconds=round(seconds, 3), notes=notes,
        flops=selection.flops, member_flops=[c.flops for c in selection.members], budget_flops=settings.budget_flops,
        holdout_gap=_nan(holdout["gap"]), holdout_videos=holdout["videos"],
        holdout_fraction=settings.holdout_fraction, method=selection.method, bags=selection.bags,
        resamples=selection.resamples, noise_z=_nan(selection.noise_z), noise_sd=_nan(selection.noise_sd),
        min_gain=_nan(selection.min_gain), noise_tests=selection.noise_tests,
        noise_rejections=selection.noise_rejections, shipped_best_single=shipped_single,
        selection_gap_sd=_nan(selection.gap_sd), selection_gap_se=_nan(selection.gap_se),
        sample_videos=selection.videos, sample_of=selection.population,
    )  # fmt: skip


def run(
    run_dir: str,
    budget: int | None = None,
    *,
    budget_flops: int | None = None,
    output: str | None = None,
    validation: str | None = None,
    device: str | None = None,
    batch_size: int | None = None,
    workers: int | None = None,
    progress: bool = False,
    max_videos: int | None = DEFAULT_SAMPLE_VIDEOS,
    seed: int = 0,
    rescore: Rescore | None = None,
    log: Log | None = None,
) -> results.EnsembleSummary:
    """Select, export and re-score the ensemble of a finished sweep; record it in summary.json.

    ``budget`` (bytes) and ``budget_flops`` (FLOPs per video) default to the sweep's budgets.
    Returns the entry stored as ``summary["ensemble"]``: members, weights, models, gap and holdout_gap
    (the bundle's GAP on the selection and holdout parts, from its stored weights), selection_gap,
    best_single (as shipped), hit_at_one, perr, map, size_bytes, file_bytes, budget_bytes,
    storage_dtype, path, curve, notes, flops, budget_flops, the noise figures, ...

    ``max_videos``: a selection part larger than this is selected on a seeded (``seed``) subsample of
    that many of its videos (``candidates.load_sample``; the entry's ``sample_videos``, ``sample_of``
    and ``selection_gap_se`` say so); None: on all. ``rescore``: the dense re-score
    (``rescoring.rescore_in_driver`` unless given, e.g. ``yt8m_search.rescore.rescore_on_ray``).
    """
    say = log or (lambda _: None)
    started = time.perf_counter()
    with _as_ensemble_errors():
        return _run(run_dir, budget, started, say, output=output, validation=validation, device=device,
                    batch_size=batch_size, workers=workers, progress=progress, budget_flops=budget_flops,
                    max_videos=max_videos, seed=seed, rescore=rescore or rescore_in_driver)


@contextlib.contextmanager
def _as_ensemble_errors() -> Iterator[None]:
    """An unreadable results file or bundle is the step's failure (``EnsembleError``), which the
    sweep records instead of failing as a whole."""
    try:
        yield
    except EnsembleError:
        raise
    except (results.ResultsError, bundle.BundleError, artifacts.ArtifactError) as err:
        raise EnsembleError(str(err)) from err


def _run(run_dir: str, budget: int | None, started: float, say: Log, *, output: str | None, validation: str | None,
         device: str | None, batch_size: int | None, workers: int | None, progress: bool, budget_flops: int | None,
         max_videos: int | None, seed: int, rescore: Rescore) -> results.EnsembleSummary:
    settings = _settings(run_dir, budget, validation, budget_flops)
    candidates, sample = load_sample(run_dir, storage_dtype=settings.dtype, holdout_fraction=settings.holdout_fraction,
                                     max_videos=max_videos, seed=seed)
    path = output or fs.join(run_dir, bundle.BUNDLE_NAME)
    selection, file_bytes = _select_and_export(candidates, settings, path, workers=workers, sample=sample, say=say)
    say(f"bundle: {path}, {file_bytes:,} bytes on disk (budget {settings.budget:,})")
    job = RescoreJob(_scored(selection, settings, path), settings.validation, settings.holdout_fraction,
                     batch_size or DEFAULT_BATCH_SIZE, device, progress)
    scored = rescore(job, say)
    parts, single = scored[0], scored[-1]
    notes = [n for c in selection.members for n in c.notes] + _sample_notes(selection, sample)
    shipped_single = parts["selection"]["gap"] < single["selection"]["gap"]
    if shipped_single:
        notes.append(f"the ensemble scored {parts['selection']['gap']:.6f} on the selection part, below the best "
                     f"single model as shipped, trial {selection.best_single[0]} ({single['selection']['gap']:.6f}): "
                     "that model alone is the bundle")
        selection = selection.as_best_single()
        file_bytes = export_bundle(selection, path, settings.dtype, budget_bytes=settings.budget)
        parts = single
    scored_videos = parts["selection"]["videos"] + parts["holdout"]["videos"]
    if scored_videos != sample.videos:
        notes.append(f"the validation data holds {scored_videos} videos, the trials' predictions {sample.videos}")
    entry = _entry(selection, parts, single, settings, path=path, file_bytes=file_bytes, candidates=len(candidates),
                   notes=notes, seconds=time.perf_counter() - started, shipped_single=shipped_single)
    # re-read: keep whatever else was written meanwhile
    results.write_summary(results.read_summary(run_dir).with_ensemble(entry), run_dir)
    return entry


def _sample_notes(selection: Selection, sample: Sample) -> list[str]:
    if not sample.subsampled:
        return []
    return [f"selected on a seeded subsample (seed {sample.seed}) of {sample.used:,} of the {sample.selection:,} "
            f"selection videos: its sparse GAP {selection.gap:.5f} is an estimate, standard error "
            f"{selection.gap_se:.5f} against all of them (bootstrap sd {selection.gap_sd:.5f}); the gap and "
            "holdout_gap are dense, on every video"]


def _scored(selection: Selection, settings: _Settings, path: str) -> tuple[Scored, ...]:
    """The exported bundle and, unless it is that model alone, the best single candidate as shipped (a
    one-member bundle at the storage dtype): the re-score's job, scored like for like in one pass."""
    single = selection.single
    if single is None or (len(selection.members) == 1 and selection.members[0] is single):
        return (Scored(path=path),)
    return (Scored(path=path), Scored(trial_id=single.trial_id, checkpoint=single.checkpoint,
                                      write_id=single.write_id, size_bytes=single.size_bytes, dtype=settings.dtype))
