"""The dense re-score: bundles scored from their stored weights on every validation video, each video
counted in its part (``metrics.holdout``), as ``RescoreJob`` -> one ``PartMetrics`` per bundle.

The step takes the re-score as a function (``Rescore``) so that a caller with a cluster can pass one
that runs there (``yt8m_search.rescore.rescore_on_ray``: Ray Data actors, GPUs when the cluster has
them) while this package stays free of any framework. ``rescore_in_driver`` is the default: one pass in
this process. A job names its bundles by where their weights are (``Scored``: an exported bundle file,
or a trial's ``best/`` folder as a one-member bundle at the storage dtype), so a worker on another
node loads them itself, once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from yt8m_search import artifacts, bundle
from yt8m_search.data.inference import DEFAULT_BATCH_SIZE, iter_batches
from yt8m_search.ensemble.errors import EnsembleError

__all__ = ["PartMetrics", "Rescore", "RescoreJob", "Scored", "member_from_checkpoint", "rescore_in_driver"]

PartMetrics = dict[str, dict[str, Any]]  # {"selection": metrics, "holdout": metrics} (bundle.evaluate_parts)
Log = Callable[[str], None]


def member_from_checkpoint(trial_id: str, checkpoint: str, write_id: str, weight: int, size_bytes: int,
                           dtype: str) -> bundle.BundleMember:
    """A trial's weights from its ``best/`` folder (cast to the storage dtype as they are read), checked
    to come from the write ``write_id`` its predictions came from."""
    if not checkpoint:
        raise EnsembleError(f"trial {trial_id} has no checkpoint to export")
    try:
        best = artifacts.read_best(checkpoint, with_predictions=False)
    except artifacts.ArtifactError as err:
        raise EnsembleError(f"trial {trial_id}: {err}") from err
    if best.meta.write_id != write_id:
        raise EnsembleError(
            f"trial {trial_id}: {checkpoint} was rewritten ({best.meta.write_id or 'untagged'}) "
            f"after its predictions were read ({write_id or 'untagged'}); run the ensemble step again"
        )
    return bundle.BundleMember(
        trial_id=trial_id, model=best.meta.model, hparams=dict(best.meta.hparams), weight=int(weight),
        size_bytes=int(size_bytes), state_dict=bundle.storage_state(best.state_dict, dtype),
    )  # fmt: skip


@dataclass(frozen=True)
class Scored:
    """One bundle to score: the bundle file at ``path``, or (no path) trial ``trial_id``'s ``best/``
    folder ``checkpoint`` (written as ``write_id``) as a one-member bundle at ``dtype``: a model as
    shipped."""

    path: str = ""
    trial_id: str = ""
    checkpoint: str = ""
    write_id: str = ""
    size_bytes: int = 0
    dtype: str = "bfloat16"

    def load(self, device: str | torch.device) -> bundle.Bundle:
        if self.path:
            return bundle.load_bundle(self.path, device)
        member = member_from_checkpoint(self.trial_id, self.checkpoint, self.write_id, 1, self.size_bytes, self.dtype)
        return bundle.build_bundle([member], self.dtype, device)


@dataclass(frozen=True)
class RescoreJob:
    """What to re-score: ``bundles`` on every video of ``validation`` (files, folders or globs),
    split into parts by ``holdout_fraction``; ``device`` None: cuda when available."""

    bundles: tuple[Scored, ...]
    validation: str
    holdout_fraction: float
    batch_size: int = DEFAULT_BATCH_SIZE
    device: str | None = None
    progress: bool = False


Rescore = Callable[[RescoreJob, Log], list[PartMetrics]]


def rescore_in_driver(job: RescoreJob, log: Log) -> list[PartMetrics]:
    """``job`` in this process: every bundle loaded once on the device, one pass over the data."""
    device = bundle.resolve_device(job.device)
    loaded = [scored.load(device) for scored in job.bundles]
    batches = iter_batches(job.validation, batch_size=job.batch_size, num_classes=loaded[0].num_classes,
                           progress=job.progress, desc="re-score", dequantize=torch.device(device).type == "cpu")
    log(f"re-scoring {len(loaded)} bundle(s) on {device} in this process")
    return bundle.evaluate_parts(loaded, batches, holdout_fraction=job.holdout_fraction)
