"""MixNeXtVLAD (spec §3.4; linrongc ``MixNeXtVladModel``): M NeXtVLAD branches mixed in logit space by
a gate on the frame mean, trained with on-the-fly knowledge distillation from the mixture.

    fm  = frame mean of the model input             [B, 1152]
    w   = softmax(Linear(BN_mix(fm)))               [B, M]       Eq. 13
    z_e = Σ_m w_m z_m                               [B, C]       Eq. 12, logit space
    L   = BCE(z_e) + Σ_m BCE(z_m) + λ · mean_b Σ_m KL(softmax(z_e/T) ‖ softmax(z_m/T))   Eq. 16, λ = T²

The frame mean. The original averaged over all 300 frames of the (reverse-whitened) input, padding
included, and a padded frame after reverse whitening is the non-zero constant
p = -(4/512)(√e + 1e-4) for rgb, 0 for audio (0 everywhere without whitening). We reproduce that
mean exactly without materialising the padding: fm = (Σ_valid x̂ + (300 − n)·p) / 300 for a video of
n ≤ 300 valid frames (n > 300, which the reader never produces, falls back to the plain mean). It is
a function of the valid frames alone, so it does not change when padding frames are appended, and it
does not depend on what ``ReverseWhitening`` writes into padded rows (which are never used here).

The KL uses log_softmax (the original computes log(q + 1e-8) of softmax outputs: the same up to that
epsilon), and like the original there is no stop-gradient on the teacher q_e.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from yt8m_search.constants import FEATURE_DIM, MAX_FRAMES, NUM_CLASSES
from yt8m_search.models.layers import (
    Count,
    batch_norm,
    batch_norm_params,
    bce_loss,
    dense,
    dense_flops,
    dense_params,
)
from yt8m_search.models.nextvlad import (
    Frames,
    NeXtVLADModel,
    branch_structure,
    gather_frames,
    nextvlad_branch_count,
    nextvlad_branch_flops,
    validate_nextvlad,
)
from yt8m_search.models.registry import MixtureOutput, ModelOutput, VideoModel, register
from yt8m_search.models.whitening import ReverseWhitening, reverse_whitening_params, upgrade_pca_eigenvals


def _validate_mixture(num_branches: int, temperature: float, distill_weight: float | None) -> None:
    errors = []
    if num_branches < 1:
        errors.append(f"num_branches must be >= 1, got {num_branches}")
    if not temperature >= 0.0:
        errors.append(f"temperature must be >= 0 (0 turns distillation off), got {temperature}")
    if distill_weight is not None and not distill_weight >= 0.0:
        errors.append(f"distill_weight must be >= 0 or None (= temperature**2), got {distill_weight}")
    if errors:
        raise ValueError("mix_nextvlad: " + "; ".join(errors))


class MixNeXtVLADModel(VideoModel):
    """M NeXtVLADModel branches + frame-mean gate; forward -> MixtureOutput(z_e [B, C], z_m [M, B, C])."""

    def __init__(
        self,
        *,
        num_branches: int,
        temperature: float,
        distill_weight: float | None,
        reverse_whitening: bool = False,
        **branch_hparams: Any,
    ) -> None:
        super().__init__()
        _validate_mixture(num_branches, temperature, distill_weight)
        self.temperature = float(temperature)
        self.distill_weight = float(temperature) ** 2 if distill_weight is None else float(distill_weight)
        # The input transform is shared: applied once here, branches get the transformed frames.
        self.whitening = ReverseWhitening() if reverse_whitening else None  # filled by set_eigenvalues
        self.branches = nn.ModuleList(NeXtVLADModel(**branch_hparams) for _ in range(num_branches))
        self.gate_bn = batch_norm(FEATURE_DIM)
        self.gate = dense(FEATURE_DIM, num_branches)

    def frame_mean(self, frames: Frames) -> Tensor:
        """The original's mean over a fixed 300 frames, padding included (see module doc): [B, 1152]."""
        rows, b, t = frames.rows, frames.batch, frames.time
        if frames.mask is None:
            total = rows.reshape(b, t, -1).sum(dim=1)  # [B, F]
            n = torch.full((b, 1), float(t), dtype=rows.dtype, device=rows.device)
        else:
            video = frames.mask.nonzero()[:, 0]  # [Nv] video index of each valid row
            total = rows.new_zeros(b, rows.shape[1]).index_add_(0, video, rows)  # [B, F]
            n = frames.mask.sum(dim=1, keepdim=True).to(rows.dtype)  # [B, 1]
        denom = n.clamp(min=MAX_FRAMES)
        if self.whitening is None:  # padded frames are zeros
            return total / denom
        pad = self.whitening(rows.new_zeros(1, FEATURE_DIM), None)  # [1, F]: what a padded frame becomes
        return (total + (MAX_FRAMES - n).clamp(min=0) * pad) / denom

    def forward(self, features: Tensor, mask: Tensor | None = None) -> MixtureOutput:
        """features [B, T, 1152], mask [B, T] bool or None -> MixtureOutput."""
        if features.shape[-1] != FEATURE_DIM:
            raise ValueError(f"features must have {FEATURE_DIM} columns, got {features.shape[-1]}")
        frames = gather_frames(features, mask)  # rows [Nv, 1152]
        if self.whitening is not None:
            frames = frames._replace(rows=self.whitening(frames.rows, None))
        weights = torch.softmax(self.gate(self.gate_bn(self.frame_mean(frames))), dim=-1)  # [B, M]
        branch_logits = torch.stack([branch.forward_frames(frames) for branch in self.branches])  # [M, B, C]
        logits = torch.einsum("bm,mbc->bc", weights.to(branch_logits.dtype), branch_logits)  # [B, C]
        return MixtureOutput(logits=logits, branch_logits=branch_logits)

    def distillation_loss(self, output: MixtureOutput) -> Tensor:
        """mean_b Σ_m KL(softmax(z_e/T) ‖ softmax(z_m/T)); 0 when T = 0."""
        if self.temperature == 0.0:
            return output.logits.new_zeros((), dtype=torch.float32)
        log_qe = F.log_softmax(output.logits.float() / self.temperature, dim=-1)  # [B, C]
        log_qm = F.log_softmax(output.branch_logits.float() / self.temperature, dim=-1)  # [M, B, C]
        kl = (log_qe.exp() * (log_qe - log_qm)).sum(dim=-1)  # [M, B]
        return kl.sum(dim=0).mean()

    def loss(self, output: ModelOutput, labels: Tensor) -> Tensor:
        if not isinstance(output, MixtureOutput):
            raise TypeError("MixNeXtVLADModel.loss expects the MixtureOutput of its forward")
        loss = bce_loss(output.logits, labels)
        for z in output.branch_logits:
            loss = loss + bce_loss(z, labels)
        if self.temperature > 0.0 and self.distill_weight > 0.0:
            loss = loss + self.distill_weight * self.distillation_loss(output)
        return loss

    def l2_parameters(self) -> list[nn.Parameter]:
        """Every branch's classifier (the original regularised each branch's LogisticModel)."""
        return [p for branch in self.branches for p in branch.l2_parameters()]


def mix_nextvlad_count(**hparams: Any) -> Count:
    _validate_mixture(hparams["num_branches"], hparams["temperature"], hparams["distill_weight"])
    num_branches = hparams["num_branches"]
    return (
        nextvlad_branch_count(**branch_structure(hparams)) * num_branches
        + dense_params(FEATURE_DIM, num_branches)
        + batch_norm_params(FEATURE_DIM)
        + reverse_whitening_params(hparams["reverse_whitening"])
    )


def mix_nextvlad_flops(**hparams: Any) -> int:
    """M branches, the gate 1152 -> M on the frame mean, and the logit mixture Σ_m w_m z_m: a bmm,
    except for one branch, where einsum multiplies element-wise (not counted)."""
    _validate_mixture(hparams["num_branches"], hparams["temperature"], hparams["distill_weight"])
    m = hparams["num_branches"]
    mixing = dense_flops(FEATURE_DIM, m) + (dense_flops(m, hparams["num_classes"]) if m > 1 else 0)
    return nextvlad_branch_flops(**branch_structure(hparams)) * m + mixing


TINY = dict(num_branches=2, groups=2, clusters=4, expansion=1, hidden_size=8, gating_reduction=2, num_classes=10)


@register(
    "mix_nextvlad", counter=mix_nextvlad_count, flops=mix_nextvlad_flops, tiny=TINY, upgrade=upgrade_pca_eigenvals
)
def mix_nextvlad(
    *,
    num_branches: int = 3,
    temperature: float = 3.0,
    distill_weight: float | None = None,
    groups: int = 8,
    clusters: int = 112,
    expansion: int = 2,
    hidden_size: int = 2048,
    gating_reduction: int = 16,
    dropout: float = 0.5,
    classifier: str = "logistic",
    num_mixtures: int = 4,
    prob_gating: bool = False,
    reverse_whitening: bool = False,
    num_classes: int = NUM_CLASSES,
    input_gating: bool = False,
) -> MixNeXtVLADModel:
    """Mixture of num_branches NeXtVLAD models with on-the-fly distillation (linrongc final submission).

    temperature T of the distillation softmax (0: no distillation, the loss is the sum of the
    1 + M BCEs); distill_weight λ of the KL term (None: T², the paper's Eq. 16). The remaining
    hyperparameters are each branch's (see ``nextvlad``; reverse_whitening is applied once, before
    the gate and the branches; input_gating gates each branch's input with its own gate); defaults
    are the final submission's 3 × (8G / 112K / 2048H / r16), 235,935,273 parameters, 944.6 MB in
    fp32 with BN statistics.
    """
    _validate_mixture(num_branches, temperature, distill_weight)
    validate_nextvlad(
        groups=groups, clusters=clusters, expansion=expansion, hidden_size=hidden_size,
        gating_reduction=gating_reduction, dropout=dropout, classifier=classifier,
        num_mixtures=num_mixtures, prob_gating=prob_gating, num_classes=num_classes,
    )  # fmt: skip
    return MixNeXtVLADModel(
        num_branches=num_branches, temperature=temperature, distill_weight=distill_weight,
        reverse_whitening=reverse_whitening,
        groups=groups, clusters=clusters, expansion=expansion, hidden_size=hidden_size,
        gating_reduction=gating_reduction, dropout=dropout, classifier=classifier,
        num_mixtures=num_mixtures, prob_gating=prob_gating, num_classes=num_classes, input_gating=input_gating,
    )  # fmt: skip
