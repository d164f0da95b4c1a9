"""The ensemble bundle: the one file the platform delivers (export, format version, load).

One ``torch.save`` file, written atomically, holding::

    format          "yt8m_search.ensemble"
    format_version  2 (1: hyperparameters in the old vocabulary, e.g. NeXtVLAD's ``pca_eigenvals`` path)
    dtype           the storage dtype of the members' floating tensors (bfloat16 unless the space says float32)
    num_classes     what every member predicts
    members         per member: trial_id, model, hparams (complete), weight (an integer repeat count),
                    size_bytes (its stored tensors' bytes), state_dict (at ``dtype``, batch-norm
                    statistics and the reverse-whitening scale included)
    selection       what the ensemble step chose it by (gap, size_bytes, budget_bytes, strategy)

Its size on disk is checked against the budget before it becomes visible (``export_bundle`` refuses,
writing nothing). ``load_bundle`` casts the weights back to float32 and ``Bundle.predict`` mixes the
members' probabilities in float32. Loading writes no files: a member's reverse-whitening values come
from its state dict, never from the eigenvalue file. No ray, optuna or wandb here: a submission needs
only torch.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from yt8m_search import models
from yt8m_search.constants import NUM_CLASSES
from yt8m_search.data import fs
from yt8m_search.data.batch import VideoBatch
from yt8m_search.metrics import MetricAccumulator
from yt8m_search.metrics.holdout import PARTS, holdout_mask, update_parts

__all__ = [
    "BUNDLE_NAME",
    "FORMAT",
    "FORMAT_VERSION",
    "Bundle",
    "BundleError",
    "BundleMember",
    "BundleTooLargeError",
    "accumulate_parts",
    "build_bundle",
    "evaluate_bundle",
    "evaluate_parts",
    "export_bundle",
    "load_bundle",
    "part_results",
    "resolve_device",
    "storage_state",
]

FORMAT = "yt8m_search.ensemble"
# 2: hyperparameters in the models' current vocabulary (``reverse_whitening: bool``); 1 is still read.
FORMAT_VERSION = 2
BUNDLE_NAME = "ensemble.pt"


class BundleError(ValueError):
    """A bundle that cannot be written or read (not a bundle, unknown version, inconsistent members)."""


class BundleTooLargeError(BundleError):
    """The bundle file would exceed the budget; nothing was written."""

    def __init__(self, message: str, file_bytes: int, budget_bytes: int) -> None:
        super().__init__(message)
        self.file_bytes = file_bytes
        self.budget_bytes = budget_bytes


@dataclass(frozen=True)
class BundleMember:
    """One member to export: a trained trial's model and its (integer) mixing weight."""

    trial_id: str
    model: str
    hparams: dict[str, Any]
    weight: int
    size_bytes: int  # its stored tensors' bytes at the bundle's dtype
    state_dict: Mapping[str, Tensor] = field(repr=False)


def resolve_device(name: str | None) -> str:
    """``name`` checked (``cuda`` needs a CUDA device), or cuda when available, else cpu."""
    if name is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available")
    return name


# ---------------------------------------------------------------------------------------------
# Export


def _compact(tensor: Tensor) -> Tensor:
    """``tensor`` owning exactly its bytes (``torch.save`` writes a view's whole storage)."""
    tensor = tensor.detach().contiguous()
    whole = tensor.storage_offset() == 0 and tensor.untyped_storage().nbytes() == tensor.numel() * tensor.element_size()
    return tensor if whole else tensor.clone()


def storage_state(state: Mapping[str, Tensor], dtype: str | torch.dtype) -> dict[str, Tensor]:
    """A state dict as a bundle stores it: floating tensors (weights, batch-norm statistics, the
    whitening scale) cast to the storage ``dtype``, others as they are. Idempotent, and cheap the
    second time, so a caller may cast each member as it loads it (one float32 state dict alive at a time)."""
    torch_dtype = dtype if isinstance(dtype, torch.dtype) else getattr(torch, str(dtype).removeprefix("torch."))
    return {k: _compact(v.to(torch_dtype) if v.is_floating_point() else v) for k, v in state.items()}


def _member_record(member: BundleMember, dtype: torch.dtype) -> dict[str, Any]:
    return {
        "trial_id": member.trial_id,
        "model": member.model,
        "hparams": models.resolve(member.model, **member.hparams),
        "weight": int(member.weight),
        "size_bytes": int(member.size_bytes),
        "state_dict": storage_state(member.state_dict, dtype),
    }


def _num_classes(records: Sequence[Mapping[str, Any]]) -> int:
    found = {int(r["hparams"].get("num_classes", NUM_CLASSES)) for r in records}
    if len(found) != 1:
        raise BundleError(f"members predict different numbers of classes: {sorted(found)}")
    return found.pop()


def export_bundle(
    members: Sequence[BundleMember],
    path: str,
    dtype: str = "bfloat16",
    *,
    budget_bytes: int,
    selection: Mapping[str, Any],
) -> int:
    """Write ``members`` into one bundle file at ``path`` (atomically); returns its size in bytes.

    ``selection``: how they were chosen (stored as is). Raises BundleTooLargeError, writing nothing,
    when the file would exceed ``budget_bytes``.
    """
    if not members:
        raise BundleError("a bundle needs at least one member")
    models.storage_itemsize(dtype)  # ValueError for anything but float32, bfloat16, float16
    dtype_name = str(dtype).removeprefix("torch.")
    records = [_member_record(m, getattr(torch, dtype_name)) for m in members]
    blob = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "dtype": dtype_name,
        "num_classes": _num_classes(records),
        "members": records,
        "selection": dict(selection),
    }
    budget = int(budget_bytes)
    tensor_bytes = sum(int(m.size_bytes) for m in members)
    with fs.atomic_output(path) as f:
        torch.save(blob, f)
        written = f.tell()
        if written > budget:  # raised inside the block: the temporary file is dropped, nothing appears
            raise BundleTooLargeError(
                f"refusing to write {path}: the bundle would take {written:,} bytes on disk, over the budget of "
                f"{budget:,} bytes (members' tensors: {tensor_bytes:,} bytes at {dtype_name}, file "
                f"overhead: {written - tensor_bytes:,} bytes); choose a smaller ensemble or budget",
                written, budget,
            )  # fmt: skip
    return fs.file_size(path)


# ---------------------------------------------------------------------------------------------
# Load


class Bundle(nn.Module):
    """The exported ensemble: ``predict(features [B, T, 1152], mask [B, T]) -> probabilities [B, C]``,
    the weighted mean of the members' sigmoid(logits), in float32.

    ``info``: the file's fields but the state dicts (members' trial_id, model, hparams, weight,
    size_bytes; dtype, num_classes, selection, format_version)."""

    def __init__(self, members: Sequence[models.VideoModel], weights: Sequence[int], info: dict[str, Any]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)
        total = float(sum(weights))
        self.register_buffer("mix", torch.tensor([w / total for w in weights], dtype=torch.float32))
        self.weights = [int(w) for w in weights]
        self.info = info
        self.num_classes = int(info["num_classes"])
        self.storage_dtype = str(info["dtype"])
        self.trial_ids = [m["trial_id"] for m in info["members"]]

    @torch.no_grad()
    def predict(self, features: Tensor, mask: Tensor | None = None) -> Tensor:
        out: Tensor | None = None
        for w, member in zip(self.mix, self.members):
            probs = torch.sigmoid(member.logits(member(features.float(), mask)).float())
            out = probs.mul_(w) if out is None else out.add_(probs, alpha=float(w))
        assert out is not None
        return out

    def forward(self, features: Tensor, mask: Tensor | None = None) -> Tensor:
        return self.predict(features, mask)


def _members_v1(members: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Version 1: hyperparameters in the old vocabulary (``pca_eigenvals``: a path), translated."""
    return [{**m, "hparams": models.upgrade_hparams(m["model"], m["hparams"])} for m in members]


def _members_v2(members: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return members


_MEMBER_READERS = {1: _members_v1, 2: _members_v2}


def _read_blob(path: str) -> dict[str, Any]:
    blob = torch.load(io.BytesIO(fs.read_bytes(path)), map_location="cpu", weights_only=True)
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise BundleError(f"{path} is not an ensemble bundle")
    version = blob.get("format_version")
    if version not in _MEMBER_READERS:
        raise BundleError(f"{path}: unsupported bundle format version {version} "
                          f"(this code reads versions {', '.join(map(str, sorted(_MEMBER_READERS)))})")
    return {**blob, "members": _MEMBER_READERS[version](list(blob["members"]))}


def _build_member(member: Mapping[str, Any]) -> models.VideoModel:
    """Build a member and load its weights (float32). The reverse-whitening scale, if any, is a
    buffer of the state dict: no eigenvalue file is read, none is written."""
    model = models.build(member["model"], **member["hparams"])
    state = {k: v.float() if v.is_floating_point() else v for k, v in member["state_dict"].items()}
    model.load_state_dict(state)
    return model


def build_bundle(members: Sequence[BundleMember], dtype: str = "bfloat16",
                 device: str | torch.device = "cpu") -> Bundle:
    """The bundle ``export_bundle`` then ``load_bundle`` would give, built in memory: the members'
    weights cast to the storage ``dtype`` and back to float32 (e.g. a model scored as shipped)."""
    if not members:
        raise BundleError("a bundle needs at least one member")
    models.storage_itemsize(dtype)
    dtype_name = str(dtype).removeprefix("torch.")
    records = [_member_record(m, getattr(torch, dtype_name)) for m in members]
    return _assemble({"format": FORMAT, "format_version": FORMAT_VERSION, "dtype": dtype_name,
                      "num_classes": _num_classes(records), "members": records, "selection": {}}, device)


def load_bundle(path: str, device: str | torch.device = "cpu") -> Bundle:
    """Load a bundle written by ``export_bundle`` (any supported format version): weights cast back to
    float32, eval mode, on ``device``."""
    return _assemble(_read_blob(path), device)


def _assemble(blob: Mapping[str, Any], device: str | torch.device) -> Bundle:
    built = [_build_member(m) for m in blob["members"]]
    info = {k: v for k, v in blob.items() if k != "members"}
    info["members"] = [{k: v for k, v in m.items() if k != "state_dict"} for m in blob["members"]]
    bundle = Bundle(built, [m["weight"] for m in blob["members"]], info)
    return bundle.to(device).eval()


def evaluate_bundle(bundle: Bundle, batches: Iterable[VideoBatch], *, top_k: int = 20) -> dict[str, Any]:
    """``{"gap", "hit_at_one", "perr", "map", "videos"}`` of ``bundle`` (``load_bundle``)
    over ``batches``; probabilities in float32 (bf16 outputs would create ties, spec §2.3)."""
    device = next(bundle.parameters()).device
    acc = MetricAccumulator(num_classes=bundle.num_classes, top_k=top_k)
    with torch.inference_mode():
        for batch in batches:
            batch = batch.to(device)
            probs = bundle.predict(batch.features, batch.mask).float()
            acc.update(probs.cpu().numpy(), batch.labels.cpu().numpy())
    if acc.num_videos == 0:
        raise ValueError("no videos to evaluate")
    return {**acc.result(), "videos": acc.num_videos}


def _part_result(acc: MetricAccumulator) -> dict[str, Any]:
    if acc.num_videos == 0:  # an empty part (no holdout): no figures
        return {"gap": float("nan"), "hit_at_one": float("nan"), "perr": float("nan"), "map": float("nan"),
                "videos": 0}
    return {**acc.result(), "videos": acc.num_videos}


def accumulate_parts(bundles: Sequence[Bundle], batches: Iterable[VideoBatch], *, holdout_fraction: float,
                     top_k: int = 20) -> list[dict[str, MetricAccumulator]]:
    """Per bundle, one ``MetricAccumulator`` per part (``metrics.holdout.PARTS``) over one pass of
    ``batches``: each video goes to the part ``holdout_mask`` gives its id. Accumulators of several
    workers' batches merge (``MetricAccumulator.merge``) into those of all the batches."""
    parts = [{name: MetricAccumulator(b.num_classes, top_k) for name in PARTS} for b in bundles]
    with torch.inference_mode():
        for batch in batches:
            held = holdout_mask(batch.ids, holdout_fraction)
            labels = batch.labels.cpu().numpy()
            moved_to: dict[torch.device, VideoBatch] = {}  # each batch moved (and dequantized) once per device
            for bundle, accs in zip(bundles, parts):
                device = next(bundle.parameters()).device
                if device not in moved_to:
                    moved_to[device] = batch.to(device)
                moved = moved_to[device]
                probs = bundle.predict(moved.features, moved.mask).float().cpu().numpy()
                update_parts(accs, held, probs, labels)
    return parts


def part_results(parts: Sequence[Mapping[str, MetricAccumulator]]) -> list[dict[str, dict[str, Any]]]:
    """``accumulate_parts``' accumulators as ``evaluate_parts`` reports them."""
    if not any(acc.num_videos for accs in parts[:1] for acc in accs.values()):
        raise ValueError("no videos to evaluate")
    return [{name: _part_result(acc) for name, acc in accs.items()} for accs in parts]


def evaluate_parts(bundles: Sequence[Bundle], batches: Iterable[VideoBatch], *, holdout_fraction: float,
                   top_k: int = 20) -> list[dict[str, dict[str, Any]]]:
    """Per bundle, ``{"selection": metrics, "holdout": metrics}`` (``evaluate_bundle``'s keys) over one
    pass of ``batches``: each video goes to the part ``metrics.holdout.holdout_mask`` gives its id.
    An empty part's figures are NaN with ``videos`` 0."""
    return part_results(accumulate_parts(bundles, batches, holdout_fraction=holdout_fraction, top_k=top_k))
