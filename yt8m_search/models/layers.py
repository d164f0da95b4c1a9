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
from collections.abc import Mapping
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


class DebiasedBatchNorm1d(nn.BatchNorm1d):
    """BatchNorm1d whose evaluation uses bias-corrected running statistics.

    The running averages start at mean 0, variance 1 and move by ``momentum`` per training batch, so
    after t batches the start still weighs ``(1 - momentum)^t``: with slim's decay of 0.999 that is
    95% after 50 batches and 37% after 1,000. Evaluated on those, a model trained for a few hundred
    steps (every short trial of a sweep, and ASHA's early rungs) predicts from statistics that are
    mostly the initial ones, and its GAP says nothing about what it learned. Dividing the start's
    share out (as Adam corrects its moments, and as slim's ``zero_debias_moving_mean`` does for the
    mean) gives the average of the batches seen. After 20,000 batches the start weighs 2e-9: the
    papers' long runs evaluate as the originals did. Training is unchanged.
    """

    def forward(self, x: Tensor) -> Tensor:
        # momentum None is PyTorch's cumulative average: it holds no trace of the start
        if self.training or self.momentum is None or self.running_mean is None or self.running_var is None \
                or not self.num_batches_tracked:
            return super().forward(x)
        start = (1.0 - float(self.momentum)) ** int(self.num_batches_tracked)  # the initial statistics' share
        mean = self.running_mean / (1.0 - start)
        var = ((self.running_var - start) / (1.0 - start)).clamp(min=0.0)
        return F.batch_norm(x, mean, var, self.weight, self.bias, False, 0.0, self.eps)


def folded_statistics(model: nn.Module, state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """``state`` (a state dict of ``model``'s structure) with every ``DebiasedBatchNorm1d``'s bias
    correction folded into its running statistics, and its batch count 0, so that they evaluate the
    same in any BatchNorm1d, here and wherever the weights go.

    What a trial ships (``best/``, the bundle) is folded: stored in bf16, raw statistics lose the
    correction's precision (the corrected variance of a short run is the small difference of two
    numbers near 1, and bf16 keeps 3 significant digits), while folded ones keep their own."""
    out = dict(state)
    for name, module in model.named_modules():
        if not isinstance(module, DebiasedBatchNorm1d) or module.momentum is None:
            continue
        prefix = f"{name}." if name else ""
        count = int(out[f"{prefix}num_batches_tracked"])
        if count == 0:
            continue
        start = (1.0 - float(module.momentum)) ** count
        mean, var = out[f"{prefix}running_mean"], out[f"{prefix}running_var"]
        out[f"{prefix}running_mean"] = mean / (1.0 - start)
        out[f"{prefix}running_var"] = ((var - start) / (1.0 - start)).clamp(min=0.0)
        out[f"{prefix}num_batches_tracked"] = torch.zeros_like(out[f"{prefix}num_batches_tracked"])
    return out


def batch_norm(num_features: int) -> nn.BatchNorm1d:
    """slim.batch_norm defaults (decay 0.999, epsilon 1e-3) in PyTorch's momentum convention, with
    bias-corrected running statistics at evaluation (``DebiasedBatchNorm1d``)."""
    return DebiasedBatchNorm1d(num_features, eps=1e-3, momentum=1e-3)


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


LABELS_PER_VIDEO = 3.0  # YouTube-8M's average: 3,862 classes, about 3 labels per video


def prior_logit(num_classes: int) -> float:
    """The log-odds of an average class's label rate, ``LABELS_PER_VIDEO / num_classes``.

    The heads' output biases start here, not at 0 as in the TF originals (Lin et al. 2017 start
    theirs at a rare class's prior the same way). At 0 every class starts at p = 0.5 and Adam,
    which moves each bias by about the learning rate per step whatever its gradient, pulls all
    3,862 biases down in lockstep for the first hundreds of steps: until then the ranking of the
    classes is the random weights', and a short trial's GAP is near 0 (a random ranking's). Starting
    at the average rate, the first steps learn which classes a video has. Over the papers'
    100k-step runs the start is forgotten."""
    rate = min(0.5, LABELS_PER_VIDEO / max(num_classes, 1))
    return math.log(rate / (1.0 - rate))


class LogisticHead(nn.Module):
    """The starter's LogisticModel: one affine layer, L2-regularised (weight and bias); its bias
    starts at ``prior_logit``."""

    def __init__(self, hidden_size: int, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.fc = dense(hidden_size, num_classes)
        nn.init.constant_(self.fc.bias, prior_logit(num_classes))

    def forward(self, h: Tensor) -> Tensor:
        return self.fc(h)  # [B, C]

    def l2_parameters(self) -> list[nn.Parameter]:
        return [self.fc.weight, self.fc.bias]


class MoeHead(nn.Module):
    """WILLOW's MoeModel: per class a softmax gate over M experts plus a dummy expert predicting 0.

    p = sum_m gate_m * sigmoid(expert_m). With ``prob_gating`` the "gated MoE" of the first-challenge
    winner multiplies p by sigmoid(BN(p @ W)), a learned class-to-class gate. Gate and expert weights
    are Glorot uniform (``xavier_dense``): neither the starter's nor WILLOW's MoeModel passes an
    initializer to slim.fully_connected. The experts' biases start at ``prior_logit``.
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
        nn.init.constant_(self.experts.bias, prior_logit(num_classes))  # see prior_logit
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

