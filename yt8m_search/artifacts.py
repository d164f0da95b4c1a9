"""A trained trial's artifacts: the best epoch's model, its metadata and its validation predictions.

They live in the trial's ``best/`` folder (local or s3://)::

    model.pt             torch.save({"model", "hparams", "state_dict", "meta"})
    meta.json            TrialMeta as JSON (readable without torch)
    predictions.parquet  id, classes and scores (top-k, best first), labels; the write id in the schema metadata

The trainer rewrites the folder whenever an epoch beats the best so far, three files one after
another, and a reader may come at any time (the ensemble step of a resumed sweep, a node lost
mid-write). So every write carries one ``write_id`` (the epoch and a random suffix) in all three
files, and ``read_best`` refuses a folder whose files come from different writes instead of pairing
one epoch's weights with another epoch's predictions. No ray, optuna or wandb here.
"""

from __future__ import annotations

import dataclasses
import io
import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch import Tensor

from yt8m_search import models
from yt8m_search.data import fs

MODEL_FILE = "model.pt"
META_FILE = "meta.json"
PREDICTIONS_FILE = "predictions.parquet"
_WRITE_ID_KEY = b"yt8m_search.write_id"
PREDICTIONS_SCHEMA = pa.schema([
    ("id", pa.string()),
    ("classes", pa.list_(pa.int32())),  # top-k class ids, best first
    ("scores", pa.list_(pa.float32())),  # their sigmoid probabilities (float32: bf16 would create ties)
    ("labels", pa.list_(pa.int32())),  # the video's true class ids
])  # fmt: skip


class ArtifactError(ValueError):
    """A trial's artifacts are missing, unreadable or inconsistent (names the folder and the file)."""


@dataclass(frozen=True)
class TrialMeta:
    """What a trial's best model is: enough to rebuild it and to know where its numbers come from."""

    model: str
    hparams: dict[str, Any]
    epoch: int
    params: int
    stats: int  # stored non-trainable tensors (batch-norm statistics, whitening scale)
    size_bytes: int  # stored size at storage_dtype (models.size_bytes)
    storage_dtype: str
    metrics: dict[str, Any]
    averaged_epochs: int = 0  # >0: the weights are the mean of the last N epochs' (they scored higher)
    write_id: str = ""
    # inference cost (0 / None / "" in a meta.json written before they were recorded): analytic forward
    # FLOPs of one 300-frame video (models.flops), and the latency measured in this epoch's evaluation,
    # ms per video at eval_batch_size, on ``device``
    flops: int = 0
    latency_ms: float | None = None
    device: str = ""

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], where: str) -> TrialMeta:
        names = {f.name for f in dataclasses.fields(cls)}
        missing = [f.name for f in dataclasses.fields(cls)
                   if f.default is dataclasses.MISSING and f.name not in raw]  # fmt: skip
        if missing:
            raise ArtifactError(f"{where}: missing {', '.join(missing)}")
        values = {k: v for k, v in raw.items() if k in names}
        values["hparams"] = models.upgrade_hparams(str(values["model"]), dict(values["hparams"]))
        return cls(**values)


@dataclass(frozen=True)
class Predictions:
    """Top-k validation predictions of V videos: ``classes``/``scores`` ``[V, k]``, best first."""

    ids: list[str]
    classes: np.ndarray  # [V, k] int32
    scores: np.ndarray  # [V, k] float32
    labels: list[np.ndarray] = field(repr=False)  # V arrays of class ids

    def __len__(self) -> int:
        return len(self.ids)

    @classmethod
    def concat(cls, parts: Sequence[Predictions], top_k: int) -> Predictions:
        """Several workers' predictions, in the given order."""
        if not parts or not any(len(p) for p in parts):
            return cls([], np.zeros((0, top_k), np.int32), np.zeros((0, top_k), np.float32), [])
        used = [p for p in parts if len(p)]
        return cls([i for p in used for i in p.ids], np.concatenate([p.classes for p in used]),
                   np.concatenate([p.scores for p in used]), [lab for p in used for lab in p.labels])

    def to_table(self, write_id: str = "") -> pa.Table:
        # list columns from flat values and offsets: a list of 1.1M row arrays costs seconds per column
        table = pa.table({
            "id": pa.array(self.ids, pa.string()),
            "classes": _fixed_lists(self.classes, np.int32),
            "scores": _fixed_lists(self.scores, np.float32),
            "labels": _ragged_lists(self.labels),
        }, schema=PREDICTIONS_SCHEMA)  # fmt: skip
        return table.replace_schema_metadata({_WRITE_ID_KEY: write_id.encode()}) if write_id else table

    @classmethod
    def from_table(cls, table: pa.Table, where: str) -> Predictions:
        missing = [n for n in PREDICTIONS_SCHEMA.names if n not in table.column_names]
        if missing:
            raise ArtifactError(f"{where}: not a predictions file: missing column(s) {', '.join(missing)}")
        classes = _fixed_width(table.column("classes"), np.int32, "classes", where)
        scores = _fixed_width(table.column("scores"), np.float32, "scores", where)
        if classes.shape != scores.shape:
            raise ArtifactError(f"{where}: classes {classes.shape} and scores {scores.shape} differ in shape")
        ids = [str(i) for i in table.column("id").to_pylist()]
        return cls(ids, classes, scores, _label_lists(table.column("labels")))


def _fixed_lists(values: np.ndarray, dtype: type) -> pa.ListArray:
    """``[V, k]`` -> a list column of V rows of k values."""
    rows, width = values.shape if values.ndim == 2 else (len(values), 0)
    offsets = pa.array(np.arange(rows + 1, dtype=np.int32) * width, pa.int32())
    return pa.ListArray.from_arrays(offsets, pa.array(np.ascontiguousarray(values, dtype).reshape(-1)))


def _ragged_lists(rows: Sequence[np.ndarray]) -> pa.ListArray:
    """V arrays of class ids -> a list column."""
    lengths = np.fromiter((len(x) for x in rows), np.int64, len(rows))
    offsets = pa.array(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32), pa.int32())
    values = np.concatenate([np.asarray(x, np.int32).reshape(-1) for x in rows]) if len(rows) else np.zeros(0, np.int32)
    return pa.ListArray.from_arrays(offsets, pa.array(values, pa.int32()))


def _fixed_width(column: pa.ChunkedArray, dtype: type, name: str, where: str) -> np.ndarray:
    """A list column whose rows all have the same, non-zero length -> ``[rows, width]``."""
    array = column.combine_chunks()
    lengths = np.diff(array.offsets.to_numpy())
    if lengths.size == 0:
        return np.zeros((0, 0), dtype)
    if np.any(lengths != lengths[0]) or lengths[0] == 0:
        raise ArtifactError(f"{where}: every row's {name} must have the same, non-zero length")
    values = array.flatten().to_numpy(zero_copy_only=False).astype(dtype, copy=False)
    return values.reshape(len(array), int(lengths[0]))


def _label_lists(column: pa.ChunkedArray) -> list[np.ndarray]:
    array = column.combine_chunks()
    offsets = array.offsets.to_numpy()
    values = array.flatten().to_numpy(zero_copy_only=False).astype(np.int32, copy=False)
    return np.split(values, offsets[1:-1] - offsets[0]) if len(array) else []


# ---------------------------------------------------------------------------------------------
# Writing


def new_write_id(epoch: int) -> str:
    return f"epoch{epoch:03d}-{uuid.uuid4().hex[:8]}"


def write_best(best_dir: str, state_dict: Mapping[str, Tensor], meta: TrialMeta, predictions: Predictions) -> TrialMeta:
    """Write the three files of ``best_dir`` under one new write id; returns the meta as written.

    Predictions first and the metadata last: a reader that sees the new meta.json sees the new model
    and predictions too, and one that comes in between is refused by ``read_best``."""
    meta = dataclasses.replace(meta, write_id=new_write_id(meta.epoch))
    with fs.atomic_output(fs.join(best_dir, PREDICTIONS_FILE)) as f:
        pq.write_table(predictions.to_table(meta.write_id), f, compression="zstd")
    blob = {"model": meta.model, "hparams": meta.hparams, "state_dict": dict(state_dict),
            "meta": dataclasses.asdict(meta)}
    with fs.atomic_output(fs.join(best_dir, MODEL_FILE)) as f:
        torch.save(blob, f)
    with fs.atomic_output(fs.join(best_dir, META_FILE)) as f:
        f.write(json.dumps(dataclasses.asdict(meta), indent=2, default=str).encode())
    return meta


# ---------------------------------------------------------------------------------------------
# Reading


def _read(path: str) -> bytes:
    try:
        return fs.read_bytes(path)
    except FileNotFoundError:
        raise ArtifactError(f"{path} not found") from None


def read_meta(best_dir: str) -> TrialMeta:
    path = fs.join(best_dir, META_FILE)
    try:
        raw = json.loads(_read(path))
    except ValueError as err:
        raise ArtifactError(f"{path}: not valid JSON: {err}") from None
    return TrialMeta.from_dict(raw, path)


def read_predictions_table(path: str, columns: Sequence[str] | None = None) -> tuple[pa.Table, str]:
    """A predictions file as its Arrow table (only ``columns``, when given) and the write id it was
    written under: for readers that keep a few rows of a large file (``Predictions.from_table``
    converts the rest)."""
    filesystem, inner = fs.resolve(path)
    try:
        table = pq.read_table(inner, filesystem=filesystem, columns=list(columns) if columns else None)
    except FileNotFoundError:
        raise ArtifactError(f"{path} not found") from None
    except (pa.ArrowException, OSError) as err:
        raise ArtifactError(f"{path}: unreadable Parquet file: {err}") from None
    missing = [n for n in (columns or PREDICTIONS_SCHEMA.names) if n not in table.column_names]
    if missing:
        raise ArtifactError(f"{path}: not a predictions file: missing column(s) {', '.join(missing)}")
    return table, (table.schema.metadata or {}).get(_WRITE_ID_KEY, b"").decode()


def read_predictions(path: str) -> tuple[Predictions, str]:
    """A predictions file and the write id it was written under."""
    table, write_id = read_predictions_table(path)
    return Predictions.from_table(table, path), write_id


def read_model_file(best_dir: str) -> tuple[dict[str, Tensor], TrialMeta]:
    """``model.pt``'s state dict (on the CPU) and the meta stored inside it."""
    path = fs.join(best_dir, MODEL_FILE)
    raw = io.BytesIO(_read(path))  # S3 streams are not seekable
    try:
        blob = torch.load(raw, map_location="cpu", weights_only=False)  # our own trainer's file
    except Exception as err:  # noqa: BLE001 - torch raises many kinds on a damaged file
        raise ArtifactError(f"{path}: unreadable: {type(err).__name__}: {err}") from None
    return blob["state_dict"], TrialMeta.from_dict(blob["meta"], path)


@dataclass(frozen=True)
class BestArtifacts:
    meta: TrialMeta
    state_dict: dict[str, Tensor] = field(repr=False)
    predictions: Predictions = field(repr=False)


def check_same_write(best_dir: str, ids: Mapping[str, str]) -> None:
    """ArtifactError unless every file named in ``ids`` (file name -> its write id) comes from one write."""
    if len(set(ids.values())) > 1:
        found = ", ".join(f"{name} from {value or 'an untagged write'}" for name, value in ids.items())
        raise ArtifactError(f"{best_dir}: the files come from different writes ({found}): the trial is still "
                            "writing its best epoch, or a write was cut short; read it again once it has finished")


def read_best(best_dir: str, *, with_predictions: bool = True) -> BestArtifacts:
    """The model, metadata and predictions of ``best_dir``, verified to come from one write."""
    meta = read_meta(best_dir)
    state_dict, model_meta = read_model_file(best_dir)
    ids = {META_FILE: meta.write_id, MODEL_FILE: model_meta.write_id}
    predictions = Predictions([], np.zeros((0, 0), np.int32), np.zeros((0, 0), np.float32), [])
    if with_predictions:
        predictions, ids[PREDICTIONS_FILE] = read_predictions(fs.join(best_dir, PREDICTIONS_FILE))
    check_same_write(best_dir, ids)
    return BestArtifacts(meta, state_dict, predictions)


def load_model(best_dir: str, device: str | torch.device = "cpu") -> tuple[models.VideoModel, TrialMeta]:
    """Rebuild the model saved in ``best_dir`` in eval mode on ``device`` (its meta and weights checked
    to come from one write)."""
    best = read_best(best_dir, with_predictions=False)
    model = models.build(best.meta.model, **best.meta.hparams)
    model.load_state_dict(best.state_dict)
    return model.to(device).eval(), best.meta


__all__ = [
    "META_FILE",
    "MODEL_FILE",
    "PREDICTIONS_FILE",
    "PREDICTIONS_SCHEMA",
    "ArtifactError",
    "BestArtifacts",
    "Predictions",
    "TrialMeta",
    "check_same_write",
    "load_model",
    "new_write_id",
    "read_best",
    "read_meta",
    "read_model_file",
    "read_predictions",
    "read_predictions_table",
    "write_best",
]
