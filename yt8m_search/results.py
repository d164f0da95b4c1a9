"""A sweep's results as typed records: the trials table (``trials.csv``) and the run summary
(``summary.json``). This module is their only reader and writer, and it holds the one Pareto rule.

Every record is frozen and every field is required when a file is read back: a missing or renamed
column or key raises ``ResultsError`` naming the file and the field, instead of turning into a NaN
three modules later. No ray, optuna or wandb here: the ensemble step and the report read results
without a cluster.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from yt8m_search.data import fs

TRIALS_FILE = "trials.csv"
SUMMARY_FILE = "summary.json"


class ResultsError(ValueError):
    """A results file that cannot be read as this version writes it (names the file and the field)."""


class TrialState(StrEnum):
    """Where a trial stands. ``stopped``: ended early by ASHA; ``infeasible``: over the per-model
    budget (or not a valid model), never trained."""

    COMPLETE = "complete"
    STOPPED = "stopped"
    INFEASIBLE = "infeasible"
    ERROR = "error"
    RUNNING = "running"
    PENDING = "pending"


TRAINED_STATES = frozenset({TrialState.COMPLETE, TrialState.STOPPED})
# The states a finished sweep's table can hold, in the order the summary counts and the report lists them.
TABLE_STATES = (TrialState.COMPLETE, TrialState.STOPPED, TrialState.INFEASIBLE, TrialState.ERROR, TrialState.PENDING)
# The live view's states: a running sweep also has running trials; infeasible configurations are
# never Tune trials (the searcher rejects them), so the live view has none.
LIVE_STATES = (TrialState.RUNNING, *(s for s in TABLE_STATES if s is not TrialState.INFEASIBLE))


@dataclass(frozen=True)
class TrialRow:
    """One trial of a sweep, as ``trials.csv`` holds it. ``number`` is the creation order (0-based);
    ``config`` the trial's sampled and fixed parameter values by flat name (``config.<name>`` columns);
    metrics are NaN and paths empty for a trial that did not train. ``flops`` (analytic, every trial),
    the measured ``latency_ms`` and ``device``, and the training ``seed`` came later: a table without
    them reads as 0, NaN, empty and -1."""

    number: int
    trial_id: str
    state: TrialState
    model: str
    hparams: dict[str, Any]
    config: dict[str, Any]
    gap: float
    gap_last: float
    hit_at_one: float
    perr: float
    map: float
    epochs: int
    best_epoch: int
    params: int
    size_bytes: int  # analytic stored size; 0 when the configuration is not a valid model
    samples_per_s: float
    checkpoint: str  # the trial's best/ folder
    predictions: str  # its validation predictions
    reason: str  # why it is infeasible, or the first line of its error
    flops: int = 0  # analytic forward FLOPs of one 300-frame video (models.flops); 0 when unknown or not a valid model
    latency_ms: float = math.nan  # measured: ms per video at eval_batch_size (the forward alone), last epoch
    device: str = ""  # where latency_ms was measured, e.g. "cpu (1 thread)" or "cuda (NVIDIA H200)"
    seed: int = -1  # the trial's training seed (search.trial.trial_seed); -1: unknown (a table from before)
    holdout_gap: float = math.nan  # the best epoch's GAP on the holdout videos (metrics.holdout): chose nothing

    @property
    def trained(self) -> bool:
        return self.state in TRAINED_STATES


_FLOATS = ("gap", "gap_last", "hit_at_one", "perr", "map", "samples_per_s", "latency_ms", "holdout_gap")
_INTS = ("number", "epochs", "best_epoch", "params", "size_bytes", "flops", "seed")
_COLUMNS = [f.name for f in dataclasses.fields(TrialRow) if f.name != "config"]
# columns added after the first version, with what a table written before them reads as (``number``:
# its line order, set by the reader)
_LATER_COLUMNS = {"number": "", "flops": "0", "latency_ms": "", "device": "", "seed": "-1", "holdout_gap": ""}
_CONFIG_PREFIX = "config."


def _columns(rows: Sequence[TrialRow]) -> list[str]:
    """The fixed columns with the union of the rows' ``config.<name>`` columns after ``hparams``."""
    names: list[str] = []
    for row in rows:
        names.extend(name for name in row.config if name not in names)
    at = _COLUMNS.index("hparams") + 1
    return _COLUMNS[:at] + [_CONFIG_PREFIX + n for n in names] + _COLUMNS[at:]


def _cell(name: str, row: TrialRow) -> Any:
    if name.startswith(_CONFIG_PREFIX):
        return row.config.get(name.removeprefix(_CONFIG_PREFIX), "")
    value = getattr(row, name)
    if name == "hparams":
        return json.dumps(value, sort_keys=True)
    return value.value if isinstance(value, TrialState) else value


def trials_text(rows: Sequence[TrialRow]) -> str:
    """``trials.csv``'s text: one row per trial in creation order."""
    columns = _columns(rows)
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(columns)
    for row in sorted(rows, key=lambda r: r.number):
        writer.writerow([_cell(c, row) for c in columns])
    return text.getvalue()


def write_trials(rows: Sequence[TrialRow], run_dir: str) -> str:
    """Write ``<run_dir>/trials.csv`` atomically; returns its path."""
    path = fs.join(run_dir, TRIALS_FILE)
    with fs.atomic_output(path) as f:
        f.write(trials_text(rows).encode())
    return path


def _scalar(text: str) -> Any:
    """A ``config.<name>`` cell back to its value: int, float, bool, null (empty) or string."""
    if text == "":
        return None
    if text in ("True", "False"):
        return text == "True"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _number(text: str, kind: type, where: str) -> Any:
    try:
        return kind(float(text)) if kind is int else (float(text) if text != "" else math.nan)
    except ValueError:
        raise ResultsError(f"{where}: expected a number, got {text!r}") from None


def parse_trials(text: str, source: str = TRIALS_FILE) -> list[TrialRow]:
    """``trials.csv`` text back to rows; ``ResultsError`` for a missing column or a bad value."""
    reader = csv.DictReader(io.StringIO(text))
    # a table from before trials were numbered lists them in creation order: its line order is their number
    numbered = "number" in (reader.fieldnames or [])
    missing = [c for c in _COLUMNS if c not in (reader.fieldnames or []) and c not in _LATER_COLUMNS]
    if missing:
        raise ResultsError(f"{source}: missing column(s) {', '.join(missing)} (written by another version?)")
    later = {c: v for c, v in _LATER_COLUMNS.items() if c not in (reader.fieldnames or [])}
    rows = []
    for line, record in enumerate(reader, start=2):
        where = f"{source}, line {line}"
        record.update(later)
        if not numbered:
            record["number"] = str(line - 2)
        values: dict[str, Any] = {c: record[c] for c in _COLUMNS}
        for name in _INTS:
            values[name] = _number(record[name], int, f"{where}, {name}")
        for name in _FLOATS:
            values[name] = _number(record[name], float, f"{where}, {name}")
        try:
            values["state"] = TrialState(record["state"])
            values["hparams"] = json.loads(record["hparams"] or "{}")
        except ValueError as err:
            raise ResultsError(f"{where}: {err}") from None
        values["config"] = {k.removeprefix(_CONFIG_PREFIX): _scalar(v) for k, v in record.items()
                            if k.startswith(_CONFIG_PREFIX) and v != ""}  # fmt: skip
        rows.append(TrialRow(**values))
    return rows


def read_trials(run_dir: str) -> list[TrialRow]:
    """The rows of ``<run_dir>/trials.csv`` in creation order."""
    path = fs.join(run_dir, TRIALS_FILE)
    if not fs.exists(path):
        raise FileNotFoundError(f"{path} not found: is {run_dir} a finished sweep's run folder?")
    return parse_trials(fs.read_bytes(path).decode(), path)


# the minimised objectives (``search.objectives`` after gap) -> the TrialRow field each one reads
COSTS = {"size": "size_bytes", "flops": "flops"}


def pareto_costs(objectives: Sequence[str]) -> tuple[str, ...]:
    """The costs a sweep's Pareto front weighs against GAP: its minimised objectives, else size."""
    return tuple(o for o in objectives if o in COSTS) or ("size",)


def pareto_front(rows: Iterable[TrialRow], costs: Sequence[str] = ("size",)) -> list[TrialRow]:
    """Fully trained trials not dominated in (GAP up, each of ``costs`` down: ``size``, ``flops``).
    Stopped trials never qualify (their GAP is a truncated run's), nor do trials of unknown cost (0)."""
    fields = [COSTS[c] for c in costs]
    done = [r for r in rows if r.state is TrialState.COMPLETE and math.isfinite(r.gap)
            and all(getattr(r, f) > 0 for f in fields)]  # fmt: skip
    keys = {id(r): (r.gap, *(-getattr(r, f) for f in fields)) for r in done}  # larger is better in each

    def dominated(r: TrialRow) -> bool:
        mine = keys[id(r)]
        return any(all(a >= b for a, b in zip(keys[id(o)], mine)) and keys[id(o)] != mine for o in done)

    return [r for r in done if not dominated(r)]


def best_trial(rows: Iterable[TrialRow]) -> TrialRow | None:
    """The highest-GAP fully trained trial; the highest stopped one when none finished."""
    trained = [r for r in rows if r.trained]
    pool = [r for r in trained if r.state is TrialState.COMPLETE] or trained
    return max(pool, key=lambda r: r.gap) if pool else None


def count_states(rows: Iterable[TrialRow]) -> dict[str, int]:
    counts = {s.value: 0 for s in TABLE_STATES}
    for r in rows:
        counts[r.state.value] = counts.get(r.state.value, 0) + 1
    return counts


# ---------------------------------------------------------------------------------------------
# The run summary


@dataclass(frozen=True)
class BestTrial:
    trial_id: str
    config: dict[str, Any]
    model: str
    hparams: dict[str, Any]
    gap: float
    epochs: int
    params: int
    size_bytes: int
    checkpoint: str
    predictions: str
    flops: int = 0  # analytic forward FLOPs per video (0: a summary written before they were recorded)
    latency_ms: float = math.nan  # measured, ms per video at eval_batch_size on ``device``
    device: str = ""
    holdout_gap: float = math.nan  # on the holdout videos, which chose nothing (``gap``: the selection part's)

    @classmethod
    def of(cls, row: TrialRow) -> BestTrial:
        return cls(trial_id=row.trial_id, config=dict(row.config), model=row.model, hparams=dict(row.hparams),
                   gap=row.gap, epochs=row.epochs, params=row.params, size_bytes=row.size_bytes,
                   checkpoint=row.checkpoint, predictions=row.predictions, flops=row.flops,
                   latency_ms=row.latency_ms, device=row.device, holdout_gap=row.holdout_gap)


@dataclass(frozen=True)
class BudgetSummary:
    max_model_bytes: int | None
    ensemble_bytes: int
    storage_dtype: str
    max_flops: int | None = None  # per model, FLOPs per video; None: no limit
    ensemble_flops: int | None = None  # the ensemble's distinct members together


@dataclass(frozen=True)
class DataSummary:
    train: str
    validation: str
    holdout_fraction: float = 0.0  # metrics.holdout: 0 in a summary written before the holdout existed


@dataclass(frozen=True)
class EnsembleSummary:
    """The ensemble step's entry (``summary["ensemble"]``). ``gap`` (and hit_at_one, perr, map) is the
    bundle's own GAP from its stored weights on the selection part of the validation set
    (``validation_videos`` videos), ``holdout_gap`` on the holdout part (``holdout_videos``; NaN
    without one), ``selection_gap`` the selection's sparse estimate. ``best_single``: the best
    candidate on the selection part scored as shipped (a one-member bundle at the storage dtype):
    ``{trial_id, gap, holdout_gap}``; ``shipped_best_single``: the ensemble scored below it, so the
    bundle is that model alone. The fields after ``budget_flops`` have defaults: a summary from before
    them still reads."""

    members: list[str]
    weights: list[int]
    models: list[str]
    member_gaps: list[float | None]
    member_bytes: list[int]
    gap: float
    selection_gap: float
    best_single: dict[str, Any]
    hit_at_one: float
    perr: float
    map: float | None
    validation_videos: int
    size_bytes: int
    file_bytes: int
    budget_bytes: int
    storage_dtype: str
    path: str
    format_version: int
    strategy: str
    curve: list[list[float]]
    steps: list[str]  # the trial added (or re-weighted) at each greedy step
    local_moves: list[str]  # the local search's moves, e.g. "swap a -> b"
    candidates: int
    evaluations: int
    selection_seconds: float
    seconds: float
    notes: list[str]
    flops: int = 0  # the distinct members' forward FLOPs per video together (models.flops)
    member_flops: list[int] = dataclasses.field(default_factory=list)
    budget_flops: int | None = None  # budget.ensemble_flops; None: no limit
    holdout_gap: float = math.nan  # the bundle's GAP on the holdout part; NaN: no holdout
    holdout_videos: int = 0
    holdout_fraction: float = 0.0  # data.holdout_fraction the parts were split by
    method: str = ""  # "greedy" (one run) or "bagged"; empty in a summary from before bagging
    bags: int = 0
    resamples: int = 0  # paired-bootstrap resamples of the selection videos behind each step's noise test
    noise_z: float = math.nan  # a step is kept when its gain exceeds noise_z bootstrap sds
    noise_sd: float = math.nan  # the median bootstrap sd of the gains tested
    min_gain: float = math.nan  # the median threshold (noise_z * sd) they were tested against
    noise_tests: int = 0
    noise_rejections: int = 0  # steps refused as noise (each ends its greedy run)
    shipped_best_single: bool = False
    # what selection_gap is worth: the selection scored ``sample_videos`` selection videos, all of them
    # or a seeded uniform subsample of the ``sample_of`` (0 in a summary from before); its bootstrap sd
    # over them, and its standard error against the sparse GAP on all ``sample_of`` (0 when all were used)
    sample_videos: int = 0
    sample_of: int = 0
    selection_gap_sd: float = math.nan
    selection_gap_se: float = math.nan


@dataclass(frozen=True)
class EnsembleFailure:
    """The ensemble step could not produce a bundle (e.g. no trained trial fits the budget)."""

    error: str


@dataclass(frozen=True)
class RunSummary:
    space: str
    space_hash: str
    version: str
    run_dir: str
    objectives: list[str]
    trials: dict[str, int]
    budget: BudgetSummary
    data: DataSummary
    best: BestTrial | None
    pareto: list[str]
    ensemble: EnsembleSummary | EnsembleFailure | None = None
    # the class-prior ranking's GAP on each part of the validation videos (search.summary): what a
    # model's GAP is worth; empty in a summary written before it was recorded
    baselines: dict[str, float] = dataclasses.field(default_factory=dict)

    def with_ensemble(self, ensemble: EnsembleSummary | EnsembleFailure | None) -> RunSummary:
        return dataclasses.replace(self, ensemble=ensemble)


def _json_safe(value: Any) -> Any:
    """NaN and infinities as JSON null (the summary is read by other tools)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def summary_dict(summary: RunSummary) -> dict[str, Any]:
    return _json_safe(dataclasses.asdict(summary))


def write_summary(summary: RunSummary, run_dir: str) -> str:
    """Write ``<run_dir>/summary.json`` atomically; returns its path."""
    path = fs.join(run_dir, SUMMARY_FILE)
    with fs.atomic_output(path) as f:
        f.write((json.dumps(summary_dict(summary), indent=2, default=str) + "\n").encode())
    return path


def _record(cls: type, raw: Any, where: str) -> Any:
    """``cls`` from a JSON mapping: every field required, unknown keys refused (a renamed field fails)."""
    if not isinstance(raw, Mapping):
        raise ResultsError(f"{where}: expected an object, got {type(raw).__name__}")
    names = [f.name for f in dataclasses.fields(cls)]
    required = [f.name for f in dataclasses.fields(cls)
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]  # fmt: skip
    missing = [n for n in required if n not in raw]
    unknown = [k for k in raw if k not in names]
    if missing or unknown:
        parts = ([f"missing {', '.join(missing)}"] if missing else []) + (
            [f"unknown {', '.join(unknown)}"] if unknown else [])
        raise ResultsError(f"{where}: {'; '.join(parts)}")
    # a float written as null (NaN: no value) reads back as NaN; fields typed "float | None" keep None
    floats = {f.name for f in dataclasses.fields(cls) if f.type == "float"}
    return {n: (math.nan if n in floats and raw[n] is None else raw[n]) for n in names if n in raw}


def parse_summary(raw: Any, source: str = SUMMARY_FILE) -> RunSummary:
    values = _record(RunSummary, raw, source)
    values["budget"] = BudgetSummary(**_record(BudgetSummary, values["budget"], f"{source}: budget"))
    values["data"] = DataSummary(**_record(DataSummary, values["data"], f"{source}: data"))
    if values["best"] is not None:
        values["best"] = BestTrial(**_record(BestTrial, values["best"], f"{source}: best"))
    ensemble = values.get("ensemble")
    if isinstance(ensemble, Mapping) and set(ensemble) == {"error"}:
        values["ensemble"] = EnsembleFailure(str(ensemble["error"]))
    elif ensemble is not None:
        values["ensemble"] = EnsembleSummary(**_record(EnsembleSummary, ensemble, f"{source}: ensemble"))
    return RunSummary(**values)


def read_summary(run_dir: str) -> RunSummary:
    path = fs.join(run_dir, SUMMARY_FILE)
    if not fs.exists(path):
        raise FileNotFoundError(f"{path} not found: is {run_dir} a finished sweep's run folder?")
    try:
        raw = json.loads(fs.read_bytes(path))
    except ValueError as err:
        raise ResultsError(f"{path}: not valid JSON: {err}") from None
    return parse_summary(raw, path)


__all__ = [
    "COSTS",
    "LIVE_STATES",
    "SUMMARY_FILE",
    "TABLE_STATES",
    "TRAINED_STATES",
    "TRIALS_FILE",
    "BestTrial",
    "BudgetSummary",
    "DataSummary",
    "EnsembleFailure",
    "EnsembleSummary",
    "ResultsError",
    "RunSummary",
    "TrialRow",
    "TrialState",
    "best_trial",
    "count_states",
    "pareto_costs",
    "pareto_front",
    "parse_summary",
    "parse_trials",
    "read_summary",
    "read_trials",
    "summary_dict",
    "trials_text",
    "write_summary",
    "write_trials",
]
