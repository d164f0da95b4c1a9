"""The starter's FrameLevelLogisticModel: the mean of a video's valid frames, then a logistic (or MoE)
head. It sees which features a video has on average and nothing of how they are arranged in time, so
it is the baseline that temporal aggregation (NeXtVLAD and the NetVLAD family) has to beat.

features [B, T, 1152], mask [B, T] -> masked mean [B, 1152] -> head -> logits [B, C]. No input
normalisation, as in the starter.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from yt8m_search.constants import FEATURE_DIM, NUM_CLASSES
from yt8m_search.models.layers import (
    CLASSIFIERS,
    Count,
    classifier_flops,
    classifier_params,
    make_classifier,
    masked_mean,
)
from yt8m_search.models.registry import VideoModel, register

__all__ = ["FrameLogistic", "frame_logistic"]


def frame_logistic_errors(*, classifier: str, num_mixtures: int, num_classes: int) -> list[str]:
    """Every problem with the hyperparameters (empty when they make a model)."""
    errors = []
    if classifier not in CLASSIFIERS:
        errors.append(f"classifier must be one of {CLASSIFIERS}, got {classifier!r}")
    if classifier == "moe" and num_mixtures < 1:
        errors.append(f"num_mixtures must be >= 1, got {num_mixtures}")
    if num_classes < 1:
        errors.append(f"num_classes must be >= 1, got {num_classes}")
    return errors


def _check(hparams: dict[str, Any]) -> None:
    errors = frame_logistic_errors(**hparams)
    if errors:
        raise ValueError("frame_logistic: " + "; ".join(errors))


class FrameLogistic(VideoModel):
    def __init__(self, classifier: str, num_mixtures: int, num_classes: int) -> None:
        super().__init__()
        _check(dict(classifier=classifier, num_mixtures=num_mixtures, num_classes=num_classes))
        self.classifier = make_classifier(classifier, FEATURE_DIM, num_classes, num_mixtures, prob_gating=False)

    def forward(self, features: Tensor, mask: Tensor | None = None) -> Tensor:
        return self.classifier(masked_mean(features, mask))  # [B, 1152] -> [B, C]


def frame_logistic_count(**hparams: Any) -> Count:
    _check(hparams)
    return classifier_params(hparams["classifier"], FEATURE_DIM, hparams["num_classes"], hparams["num_mixtures"],
                             prob_gating=False)  # fmt: skip


def frame_logistic_flops(**hparams: Any) -> int:
    """The head alone: the mean over frames is additions (FlopCounterMode counts matmuls)."""
    _check(hparams)
    return classifier_flops(hparams["classifier"], FEATURE_DIM, hparams["num_classes"], hparams["num_mixtures"],
                            prob_gating=False)  # fmt: skip


@register("frame_logistic", counter=frame_logistic_count, flops=frame_logistic_flops,
          tiny=dict(num_classes=10))  # fmt: skip
def frame_logistic(*, classifier: str = "logistic", num_mixtures: int = 2,
                   num_classes: int = NUM_CLASSES) -> FrameLogistic:  # fmt: skip
    """Mean-pooled frames and a logistic (or ``moe`` with ``num_mixtures`` experts) head."""
    return FrameLogistic(classifier, num_mixtures, num_classes)
