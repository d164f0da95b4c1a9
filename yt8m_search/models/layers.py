"""Building blocks shared by the model families: TF-faithful initialisers and batch norm, the
classifier heads (logistic, mixture of experts), the gating layers, input normalisation and gating,
the loss.

Every head returns *logits*, so that the mixture model can mix branches in logit space and every
family trains with the same numerically stable BCE-with-logits. The MoE head computes its logit
exactly from log-probabilities (never ``log(p / (1 - p))`` of a rounded probability).

Parameter counts: every module here has a ``*_params`` twin that returns ``Count(params, stats)``
analytically: ``params`` are trainable values, ``stats`` the stored non-trainable floats (batch-norm
moving statistics, whitening scales) that an exported model also carries. Forward cost: the
``*_flops`` twins return the FLOPs of one video as ``torch.utils.flop_counter.FlopCounterMode``
counts them (2 per multiply-accumulate of a matmul; element-wise work is free), see
``registry.flops``.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from yt8m_search.constants import NUM_CLASSES

CLASSIFIERS = ("logistic", "moe")
GATINGS = ("context", "se", "none")  # of a hidden vector: WILLOW's Context Gating, NeXtVLAD's SE gate, none


class Count(NamedTuple):
    """Analytic size of a module: trainable parameters and stored statistics (floats)."""

    params: int
    stats: int

    def __add__(self, other: object) -> Count:  # type: ignore[override]
        assert isinstance(other, Count)
        return Count(self.params + other.params, self.stats + other.stats)

    def __mul__(self, factor: object) -> Count:  # type: ignore[override]
        assert isinstance(factor, int)
        return Count(self.params * factor, self.stats * factor)


def module_count(module: nn.Module) -> Count:
    """The same two numbers measured on a built module (what the analytic counts must equal)."""
    params = sum(p.numel() for p in module.parameters())
    stats = sum(b.numel() for name, b in module.named_buffers() if not name.endswith("num_batches_tracked"))
    return Count(params, stats)


# ---------------------------------------------------------------------------------------------
# Initialisation and batch norm, as TF-slim did them


def variance_scaling_(weight: Tensor, fan_in: int) -> Tensor:
    """slim's ``variance_scaling_initializer()``: factor 2, FAN_IN, truncated normal.

    TF's truncated normal uses stddev sqrt(1.3 * 2 / fan_in) and cuts at two standard deviations.
    """
    std = math.sqrt(2.6 / fan_in)
    with torch.no_grad():
        return nn.init.trunc_normal_(weight, std=std, a=-2 * std, b=2 * std)


def dense(in_features: int, out_features: int, bias: bool = True) -> nn.Linear:
    """A Linear layer initialised as NeXtVLAD's code asks slim.fully_connected to (variance scaling,
    zero bias); slim's own default, which the MoE heads keep, is ``xavier_dense``."""
    layer = nn.Linear(in_features, out_features, bias=bias)
    variance_scaling_(layer.weight, in_features)
    if bias:
        nn.init.zeros_(layer.bias)
    return layer


def dense_params(in_features: int, out_features: int, bias: bool = True) -> Count:
    return Count(in_features * out_features + (out_features if bias else 0), 0)


def dense_flops(in_features: int, out_features: int, rows: int = 1) -> int:
    """x [rows, in] @ W [in, out]: 2 per multiply-accumulate; FlopCounterMode ignores addmm's bias add."""
    return 2 * rows * in_features * out_features


def xavier_dense(in_features: int, out_features: int, bias: bool = True) -> nn.Linear:
    """A Linear layer initialised like slim.fully_connected's default (xavier_initializer, zero bias).

    Glorot uniform, U(-a, a) with a = sqrt(6 / (fan_in + fan_out)): what the starter's and WILLOW's
    MoeModel get, as neither passes a weights_initializer.
    """
    layer = nn.Linear(in_features, out_features, bias=bias)
    nn.init.xavier_uniform_(layer.weight)  # symmetric in fan_in and fan_out, so [out, in] is fine
    if bias:
        nn.init.zeros_(layer.bias)
    return layer


def batch_norm(num_features: int) -> nn.BatchNorm1d:
    """slim.batch_norm defaults (decay 0.999, epsilon 1e-3) in PyTorch's momentum convention."""
    return nn.BatchNorm1d(num_features, eps=1e-3, momentum=1e-3)


def batch_norm_params(num_features: int) -> Count:
    return Count(2 * num_features, 2 * num_features)


def masked_batch_norm(bn: nn.BatchNorm1d, x: Tensor, mask: Tensor | None) -> Tensor:
    """Batch norm over the valid rows only: x [B, T, F], mask [B, T] -> [B, T, F].

    Padded frames are excluded from the batch statistics (the TF originals always saw 300 frames,
    so their padding share was fixed; ours varies with the batch's longest video). Padded rows come
    back as zeros.
    """
    if mask is None:
        return bn(x.reshape(-1, x.shape[-1])).view_as(x)
    out = x.new_zeros(x.shape)
    out[mask] = bn(x[mask])
    return out


# ---------------------------------------------------------------------------------------------
# Classifier heads: hidden [B, H] -> logits [B, C]


class LogisticHead(nn.Module):
    """The starter's LogisticModel: one affine layer, L2-regularised (weight and bias)."""

    def __init__(self, hidden_size: int, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.fc = dense(hidden_size, num_classes)

    def forward(self, h: Tensor) -> Tensor:
        return self.fc(h)  # [B, C]

    def l2_parameters(self) -> list[nn.Parameter]:
        return [self.fc.weight, self.fc.bias]


class MoeHead(nn.Module):
    """WILLOW's MoeModel: per class a softmax gate over M experts plus a dummy expert predicting 0.

    p = sum_m gate_m * sigmoid(expert_m). With ``prob_gating`` the "gated MoE" of the first-challenge
    winner multiplies p by sigmoid(BN(p @ W)), a learned class-to-class gate. Gate and expert weights
    are Glorot uniform (``xavier_dense``): neither the starter's nor WILLOW's MoeModel passes an
    initializer to slim.fully_connected.
    """

    def __init__(
        self, hidden_size: int, num_mixtures: int, num_classes: int = NUM_CLASSES, prob_gating: bool = False
    ) -> None:
        super().__init__()
        if num_mixtures < 1:
            raise ValueError(f"num_mixtures must be >= 1, got {num_mixtures}")
        self.num_classes = num_classes
        self.num_mixtures = num_mixtures
        self.gates = xavier_dense(hidden_size, num_classes * (num_mixtures + 1), bias=False)
        self.experts = xavier_dense(hidden_size, num_classes * num_mixtures)
        self.prob_gating = prob_gating
        if prob_gating:
            self.gate_fc = dense(num_classes, num_classes, bias=False)
            self.gate_bn = batch_norm(num_classes)

    def forward(self, h: Tensor) -> Tensor:
        b, c, m = h.shape[0], self.num_classes, self.num_mixtures
        log_gates = F.log_softmax(self.gates(h).view(b, c, m + 1), dim=-1)  # [B, C, M+1]
        experts = self.experts(h).view(b, c, m)  # expert logits [B, C, M]
        # log p and log(1 - p) straight from log-space terms: the dummy expert's gate is pure "no".
        log_p = torch.logsumexp(log_gates[..., :m] + F.logsigmoid(experts), dim=-1)  # [B, C]
        log_q = torch.logsumexp(
            torch.cat([log_gates[..., :m] + F.logsigmoid(-experts), log_gates[..., m:]], dim=-1), dim=-1
        )
        if not self.prob_gating:
            return log_p - log_q
        p = log_p.exp()
        log_p = log_p + F.logsigmoid(self.gate_bn(self.gate_fc(p)))
        # log(1 - p') for p' = exp(log_p) < 1, stable near both ends.
        log_q = torch.log(-torch.expm1(log_p.clamp(max=-1e-7)))
        return log_p - log_q

    def l2_parameters(self) -> list[nn.Parameter]:
        return [self.gates.weight, self.experts.weight]


def make_classifier(
    classifier: str, hidden_size: int, num_classes: int, num_mixtures: int, prob_gating: bool
) -> LogisticHead | MoeHead:
    if classifier == "logistic":
        if prob_gating:
            raise ValueError("prob_gating applies to the 'moe' classifier only")
        return LogisticHead(hidden_size, num_classes)
    if classifier == "moe":
        return MoeHead(hidden_size, num_mixtures, num_classes, prob_gating)
    raise ValueError(f"classifier must be one of {CLASSIFIERS}, got {classifier!r}")


def classifier_params(
    classifier: str, hidden_size: int, num_classes: int, num_mixtures: int, prob_gating: bool
) -> Count:
    if classifier == "logistic":
        return dense_params(hidden_size, num_classes)
    count = dense_params(hidden_size, num_classes * (num_mixtures + 1), bias=False) + dense_params(
        hidden_size, num_classes * num_mixtures
    )
    if prob_gating:
        count = count + dense_params(num_classes, num_classes, bias=False) + batch_norm_params(num_classes)
    return count


def classifier_flops(
    classifier: str, hidden_size: int, num_classes: int, num_mixtures: int, prob_gating: bool
) -> int:
    """One video's head: logistic H -> C; MoE gates H -> C(M+1), experts H -> CM, prob gate C -> C."""
    if classifier == "logistic":
        return dense_flops(hidden_size, num_classes)
    flops = dense_flops(hidden_size, num_classes * (2 * num_mixtures + 1))
    return flops + (dense_flops(num_classes, num_classes) if prob_gating else 0)


# ---------------------------------------------------------------------------------------------
# Gating: h [B, H] -> h * gate [B, H]


class SEGating(nn.Module):
    """NeXtVLAD's squeeze-and-excitation context gating (code version: no BN after the 2nd FC)."""

    def __init__(self, hidden_size: int, reduction: int) -> None:
        super().__init__()
        if hidden_size % reduction:
            raise ValueError(f"hidden_size ({hidden_size}) must be divisible by gating_reduction ({reduction})")
        self.squeeze = dense(hidden_size, hidden_size // reduction, bias=False)
        self.bn = batch_norm(hidden_size // reduction)
        self.excite = dense(hidden_size // reduction, hidden_size, bias=False)

    def forward(self, h: Tensor) -> Tensor:
        g = F.relu(self.bn(self.squeeze(h)))  # [B, H/r]
        return h * torch.sigmoid(self.excite(g))


def se_gating_params(hidden_size: int, reduction: int) -> Count:
    r = hidden_size // reduction
    return dense_params(hidden_size, r, bias=False) + batch_norm_params(r) + dense_params(r, hidden_size, bias=False)


def se_gating_flops(hidden_size: int, reduction: int) -> int:
    return 2 * dense_flops(hidden_size, hidden_size // reduction)  # squeeze H -> H/r, excite H/r -> H


class ContextGating(nn.Module):
    """WILLOW's Context Gating, h * sigmoid(BN(h @ W)); batch norm stands in for the bias."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.fc = nn.Linear(hidden_size, hidden_size, bias=False)
        nn.init.normal_(self.fc.weight, std=1 / math.sqrt(hidden_size))
        self.bn = batch_norm(hidden_size)

    def forward(self, h: Tensor) -> Tensor:
        return h * torch.sigmoid(self.bn(self.fc(h)))


def context_gating_params(hidden_size: int) -> Count:
    return dense_params(hidden_size, hidden_size, bias=False) + batch_norm_params(hidden_size)


def context_gating_flops(hidden_size: int) -> int:
    return dense_flops(hidden_size, hidden_size)


def make_gating(gating: str, size: int, reduction: int) -> nn.Module:
    if gating == "context":
        return ContextGating(size)
    if gating == "se":
        return SEGating(size, reduction)
    if gating == "none":
        return nn.Identity()
    raise ValueError(f"gating must be one of {GATINGS}, got {gating!r}")


def gating_params(gating: str, size: int, reduction: int) -> Count:
    if gating == "context":
        return context_gating_params(size)
    if gating == "se":
        return se_gating_params(size, reduction)
    return Count(0, 0)


def gating_flops(gating: str, size: int, reduction: int) -> int:
    if gating == "context":
        return context_gating_flops(size)
    if gating == "se":
        return se_gating_flops(size, reduction)
    return 0


# ---------------------------------------------------------------------------------------------
# Input normalisation: features [B, T, 1152] -> [B, T, 1152] (NeXtVLAD's reverse whitening: whitening.py)


def l2_normalize_frames(x: Tensor) -> Tensor:
    """The starter/WILLOW input normalisation: each 1152-d frame (rgb and audio jointly) to unit L2."""
    return F.normalize(x, dim=-1, eps=1e-12)


def masked_mean(x: Tensor, mask: Tensor | None) -> Tensor:
    """x [B, T, D], mask [B, T] bool or None (all valid) -> mean over each video's valid frames [B, D].

    A video without valid frames gets 0. A sum and a division, no matmul: FlopCounterMode counts
    nothing here (``input_gating_flops`` relies on that).
    """
    if mask is None:
        return x.mean(dim=1)
    weight = mask.to(x.dtype).unsqueeze(-1)  # [B, T, 1]
    return (x * weight).sum(dim=1) / weight.sum(dim=1).clamp(min=1)


class InputGating(nn.Module):
    """S3D-G's self-gating of features (Xie et al. 2018): every frame times sigmoid(W x̄ + b), x̄ the
    video's mean frame. One gate per channel and video, so channels that matter for this video are
    kept and the rest damped before any aggregation sees them. Weights as ``dense``.
    """

    def __init__(self, feature_size: int) -> None:
        super().__init__()
        self.fc = dense(feature_size, feature_size)

    def gate(self, pooled: Tensor) -> Tensor:
        """The temporally pooled input [B, D] -> the gate [B, D] in (0, 1)."""
        return torch.sigmoid(self.fc(pooled))

    def forward(self, x: Tensor, mask: Tensor | None) -> Tensor:
        """x [B, T, D], mask [B, T] bool or None -> gated x [B, T, D]; padded frames stay what they were
        times the gate (the mask, not the value, marks padding)."""
        return x * self.gate(masked_mean(x, mask)).unsqueeze(1)


def input_gating_params(feature_size: int) -> Count:
    return dense_params(feature_size, feature_size)


def input_gating_flops(feature_size: int) -> int:
    return dense_flops(feature_size, feature_size)  # once per video; the gating itself is element-wise


# ---------------------------------------------------------------------------------------------
# Loss


def bce_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """The starter's CrossEntropyLoss: binary cross-entropy summed over classes, mean over videos."""
    return F.binary_cross_entropy_with_logits(logits.float(), labels.float(), reduction="none").sum(dim=1).mean()

