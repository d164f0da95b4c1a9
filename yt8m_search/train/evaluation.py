"""Evaluation of a trial every epoch: over the whole validation set, across all workers.

Each worker scores a disjoint set of validation files; the metric states and top-k predictions are
gathered to rank 0, which computes the exact global GAP (not an average of per-worker GAPs) and
keeps the predictions (``artifacts.Predictions``, of every validation video) for the trial's
``best/`` folder.

The metrics are those of the selection part of the validation videos (``metrics.holdout``): they
choose the best epoch and are what the search optimises. The holdout part's GAP is reported beside
them as ``holdout_gap`` (NaN without a holdout), and chooses nothing. ``gap_se`` is the selection
GAP's standard error over its videos (``metrics.noise``), which the search's rungs stop trials on. The averaging
of the last epochs' weights (boliu61's) is evaluated the same way.

The evaluation also measures the model's inference latency, ``latency_ms``: each batch's forward
pass (the model and its logits, in eval mode under ``no_grad`` and the evaluation's autocast; CUDA
synchronised before and after) is timed, without reading, collating or copying the batch to the
device; a batch's time over its videos is its ms per video, and ``latency_ms`` is the median of that
over the full batches (``eval_batch_size`` videos) of every worker, or over all batches when none is
full. It costs no extra forward pass: it times the evaluation that runs anyway. Videos are as long as
the data's (a batch is padded to its longest video, or to ``pad_to``): about 300 frames on
YouTube-8M, where a batch of hundreds almost always holds a full-length video, as ``models.flops``
counts them; on short synthetic videos it is the latency of those.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from yt8m_search import models
from yt8m_search.artifacts import Predictions
from yt8m_search.constants import NUM_CLASSES
from yt8m_search.data.batch import VideoBatch
from yt8m_search.data.cache import ShardCache
from yt8m_search.data.loading import iter_video_batches, read_videos
from yt8m_search.metrics import MetricAccumulator
from yt8m_search.metrics.holdout import PARTS, holdout_mask, update_parts
from yt8m_search.metrics.noise import gap_standard_error
from yt8m_search.train.collective import broadcast, gather
from yt8m_search.train.recipe import autocast, cpu_state
from yt8m_search.train.settings import TrainConfig


@dataclass
class Evaluation:
    """One worker's evaluation of its validation files: the metric states of the selection and the
    holdout videos, plus top-k predictions of all of them."""

    state: dict[str, np.ndarray]  # the selection part's
    holdout_state: dict[str, np.ndarray]
    predictions: Predictions
    timings: list[tuple[float, int]] = field(default_factory=list)  # (seconds, videos) of each batch's forward


def device_name(device: torch.device) -> str:
    """Where a latency was measured: ``cuda (NVIDIA H200)``, ``cpu (2 threads)``."""
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    threads = torch.get_num_threads()
    return f"{device.type} ({threads} thread{'s' if threads > 1 else ''})"


def _timed_forward(model: models.VideoModel, batch: VideoBatch, device: torch.device) -> tuple[Any, Tensor, float]:
    """The model's output and logits for a batch already on ``device``, and the seconds they took."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    started = time.perf_counter()
    output = model(batch.features, batch.mask)
    logits = model.logits(output)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return output, logits, time.perf_counter() - started


def latency_ms(timings: Iterable[tuple[float, int]]) -> float:
    """Median ms per video over the full batches (the largest ones: ``eval_batch_size`` when any
    batch reached it); NaN without batches."""
    timed = [(s, n) for s, n in timings if n > 0]
    if not timed:
        return math.nan
    full = max(n for _, n in timed)
    return 1000.0 * float(np.median([s / n for s, n in timed if n == full]))


def evaluate(
    model: models.VideoModel,
    batches: Iterable[VideoBatch],
    device: torch.device,
    top_k: int,
    num_classes: int = NUM_CLASSES,
    holdout_fraction: float = 0.0,
) -> Evaluation:
    """Score ``batches`` in eval mode; keep the metric states (selection and holdout videos apart)
    and the top-k predictions of every video."""
    model.eval()
    parts = {name: MetricAccumulator(num_classes=num_classes) for name in PARTS}
    ids: list[str] = []
    classes, scores, labels = [], [], []
    timings: list[tuple[float, int]] = []
    with torch.no_grad(), autocast(device):
        for batch in batches:
            batch = batch.to(device)
            output, logits, seconds = _timed_forward(model, batch, device)
            timings.append((seconds, len(batch.ids)))
            loss = model.loss(output, batch.labels).item()
            probs = torch.sigmoid(logits.float())  # scores in fp32: bf16 would create ties
            top = torch.topk(probs, k=min(top_k, probs.shape[1]), dim=1)
            probs_np, labels_np = probs.cpu().numpy(), batch.labels.cpu().numpy()
            update_parts(parts, holdout_mask(batch.ids, holdout_fraction), probs_np, labels_np, loss)
            ids.extend(batch.ids)
            classes.append(top.indices.to(torch.int32).cpu().numpy())
            scores.append(top.values.cpu().numpy())
            labels.extend(np.flatnonzero(row).astype(np.int32) for row in labels_np)
    k = min(top_k, num_classes)
    predictions = Predictions(
        ids=ids,
        classes=np.concatenate(classes) if classes else np.zeros((0, k), np.int32),
        scores=np.concatenate(scores) if scores else np.zeros((0, k), np.float32),
        labels=labels,
    )
    return Evaluation(state=parts["selection"].state(), holdout_state=parts["holdout"].state(),
                      predictions=predictions, timings=timings)


def merged_metrics(evaluations: Iterable[Evaluation]) -> dict[str, Any]:
    """The global metrics of several workers' evaluations (their accumulator states merged), and
    the latency measured over all of them."""
    evaluations = list(evaluations)
    merged = MetricAccumulator.from_states([e.state for e in evaluations])
    held = MetricAccumulator.from_states([e.holdout_state for e in evaluations])
    result = merged.result()
    return {
        "gap": result["gap"],
        "hit_at_one": result["hit_at_one"],
        "perr": result["perr"],
        "map": result["map"],
        "val_loss": result.get("loss", math.nan),
        "val_videos": merged.num_videos,
        "holdout_gap": held.result()["gap"] if held.num_videos else math.nan,
        "holdout_videos": held.num_videos,
        "latency_ms": latency_ms(t for e in evaluations for t in e.timings),
    }


def evaluate_globally(
    model: models.VideoModel, files: list[str], cfg: TrainConfig, device: torch.device,
    cache: ShardCache | None = None,
) -> tuple[dict[str, Any], Predictions | None]:
    """Evaluate this worker's files (through the node's shard ``cache``, if any) and merge every
    worker's state on rank 0.

    Returns the global metrics (on every rank) and the predictions (on rank 0, else None)."""
    batches: Iterable[VideoBatch] = []
    if files:
        batches = iter_video_batches(
            read_videos(files, listed=True, cache=cache),  # listed by fit
            batch_size=cfg.eval_batch_size,
            num_classes=cfg.num_classes,
            pad_to=cfg.pad_to,
            dequantize=device.type == "cpu",
        )
    gathered = gather(evaluate(model, batches, device, cfg.prediction_top_k, cfg.num_classes, cfg.holdout_fraction))
    metrics, predictions = None, None
    if gathered is not None:
        metrics = merged_metrics(gathered)
        predictions = Predictions.concat([e.predictions for e in gathered], cfg.prediction_top_k)
        metrics["gap_se"] = selection_gap_se(predictions, cfg.holdout_fraction)
    return broadcast(metrics), predictions


def selection_gap_se(predictions: Predictions, holdout_fraction: float) -> float:
    """The standard error of the selection part's GAP (``metrics.noise``): how far apart two GAPs on
    these videos must be to tell the models apart."""
    chosen = np.flatnonzero(~holdout_mask(predictions.ids, holdout_fraction))
    return gap_standard_error(predictions.classes[chosen], predictions.scores[chosen],
                              [predictions.labels[i] for i in chosen], [predictions.ids[i] for i in chosen])


def accumulate_average(averaged: dict[str, Any] | None, model: nn.Module) -> dict[str, Any]:
    """Running sum of floating-point state (weights and BN statistics), as in boliu61's averaging."""
    state = cpu_state(model)
    if averaged is None:
        return {"count": 1, "sum": {k: v.double() if v.is_floating_point() else v for k, v in state.items()}}
    for k, v in state.items():
        if v.is_floating_point():
            averaged["sum"][k] += v.double()
        else:
            averaged["sum"][k] = v
    averaged["count"] += 1
    return averaged


def evaluate_average(
    model: models.VideoModel, averaged: dict[str, Any], files: list[str], cfg: TrainConfig, device: torch.device,
    cache: ShardCache | None = None,
) -> tuple[dict[str, Any], dict[str, Tensor], Predictions | None]:
    """Evaluate the averaged weights (then restore the trained ones): metrics, the averaged state and
    its predictions (rank 0)."""
    trained = cpu_state(model)
    n = averaged["count"]
    avg = {k: (v / n).to(trained[k].dtype) if v.is_floating_point() else v for k, v in averaged["sum"].items()}
    model.load_state_dict(avg)
    metrics, predictions = evaluate_globally(model, files, cfg, device, cache)
    model.load_state_dict(trained)
    return metrics, avg, predictions


__all__ = ["Evaluation", "accumulate_average", "device_name", "evaluate", "evaluate_average", "evaluate_globally",
           "latency_ms", "merged_metrics", "selection_gap_se"]
