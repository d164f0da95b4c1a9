"""The pooling layers of the WILLOW family (netvlad.py) and of the non-local NetVLAD
(nonlocal_netvlad.py), and the frame selection in front of them.

Notation: B batch, T frames, D input dim of a stream, K clusters, S sampled frames.

One shared soft assignment, three aggregations:
a_t = softmax(BN(x_t Wc))                                   [K] per frame; BN replaces a bias
NetVLAD : R_k = sum_t a_tk x_t - (sum_t a_tk) c_k           residuals [K, D], centres C2 [D, K]
NetRVLAD: R_k = sum_t a_tk x_t                              no centres
          an optional residual block (the non-local block of nonlocal_netvlad.py) maps R -> R'
          v = l2norm(R' over D, per cluster) -> flatten D-major (index d*K + k) -> global l2norm
Soft-BoF: s = l2norm(sum_t a_t)  [K]  (+ l2norm(max_t a_t) when ``maxpool``)

The assignment BN uses valid (or sampled) frames only (``layers.masked_batch_norm``) and padded
frames get zero assignment weight, so appending padding never changes an eval output. Frame
sampling and the aggregation weight (``select_frames``: the sums always stand for as many frames as
the release aggregated, 300 or S, whatever a video's length) are described in netvlad.py's module
docstring. Initialisation follows
WILLOW: cluster weights and centres N(0, 1/sqrt(D)).
"""

from __future__ import annotations

import math
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from yt8m_search.constants import MAX_FRAMES
from yt8m_search.models.layers import Count, batch_norm, masked_batch_norm

# ---------------------------------------------------------------------------------------------
# Pooling modules: x [B, T, D], mask [B, T] bool, weight [B, T] (0 on padding) -> [B, out]


class SoftAssignment(nn.Module):
    """a = softmax(BN(x Wc)) over K clusters, BN on the valid frames; a_t scaled by weight_t."""

    def __init__(self, feature_size: int, clusters: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(feature_size, clusters))  # Wc [D, K]
        nn.init.normal_(self.weight, std=1 / math.sqrt(feature_size))
        self.bn = batch_norm(clusters)

    def forward(self, x: Tensor, mask: Tensor, weight: Tensor) -> Tensor:
        logits = masked_batch_norm(self.bn, x @ self.weight, mask)  # [B, T, K]
        return torch.softmax(logits, dim=-1) * weight.unsqueeze(-1)  # [B, T, K], zero on padding


class ResidualBlock(Protocol):
    """What a VLAD residual transform spec provides (the non-local block's spec is one)."""

    def build(self) -> nn.Module: ...  # module mapping residuals [B, K, D] -> [B, K, D]

    def count(self) -> Count: ...

    def flops(self, clusters: int) -> int: ...  # on residuals [K, D] of one video


class VladPooling(nn.Module):
    """NetVLAD (``centres``) or NetRVLAD (no centres), with an optional residual block."""

    def __init__(self, feature_size: int, clusters: int, centres: bool = True, block: nn.Module | None = None) -> None:
        super().__init__()
        self.feature_size, self.clusters = feature_size, clusters
        self.assign = SoftAssignment(feature_size, clusters)
        self.centres: nn.Parameter | None = None
        if centres:
            self.centres = nn.Parameter(torch.empty(feature_size, clusters))  # C2 [D, K]
            nn.init.normal_(self.centres, std=1 / math.sqrt(feature_size))
        self.block = block

    @property
    def output_size(self) -> int:
        return self.feature_size * self.clusters

    def residuals(self, x: Tensor, mask: Tensor, weight: Tensor) -> Tensor:
        """Per-cluster aggregates before any normalisation: [B, K, D]."""
        a = self.assign(x, mask, weight)  # [B, T, K]
        r = torch.bmm(a.transpose(1, 2), x)  # sum_t a_tk x_t  [B, K, D]
        if self.centres is not None:
            r = r - a.sum(dim=1).unsqueeze(-1) * self.centres.t()  # - (sum_t a_tk) c_k
        return r

    def forward(self, x: Tensor, mask: Tensor, weight: Tensor) -> Tensor:
        r = self.residuals(x, mask, weight)
        if self.block is not None:
            r = self.block(r)  # e.g. the non-local block, before intra-normalisation
        v = F.normalize(r, dim=2)  # intra-normalisation over D, per cluster
        v = v.transpose(1, 2).reshape(r.shape[0], -1)  # D-major, as WILLOW's reshape of [B, D, K]
        return F.normalize(v, dim=1)  # [B, D·K]


class SoftBoFPooling(nn.Module):
    """SoftDBoF: l2norm(sum_t a_t), optionally concatenated with l2norm(max_t a_t)."""

    def __init__(self, feature_size: int, clusters: int, maxpool: bool = False) -> None:
        super().__init__()
        self.clusters, self.maxpool = clusters, maxpool
        self.assign = SoftAssignment(feature_size, clusters)

    @property
    def output_size(self) -> int:
        return self.clusters * (2 if self.maxpool else 1)

    def forward(self, x: Tensor, mask: Tensor, weight: Tensor) -> Tensor:
        a = self.assign(x, mask, weight)  # [B, T, K]; padding rows are 0, below any softmax value
        s = F.normalize(a.sum(dim=1), dim=1)
        if not self.maxpool:
            return s
        return torch.cat([s, F.normalize(a.amax(dim=1), dim=1)], dim=1)  # [B, 2K]


# ---------------------------------------------------------------------------------------------
# Frame selection


def select_frames(x: Tensor, mask: Tensor, sample_frames: int, training: bool) -> tuple[Tensor, Tensor, Tensor]:
    """x [B, T, F], mask [B, T] -> (frames, mask, aggregation weight), see netvlad.py's docstring.

    Training with S > 0: S indices floor(U[0,1) * n) into each video's valid frames (with
    replacement) -> [B, S, F], all valid, weight 1 (a video without frames stays all masked).
    Otherwise the input itself, each valid frame weighted F/n (padding 0), F = S or, with S = 0,
    300: a sum over the n valid frames then has the scale of the release's sum over F sampled
    frames, independent of n (the non-local block's input; the other poolings normalise it away).
    """
    n = mask.sum(dim=1)  # [B] valid frames
    if sample_frames > 0 and training:
        b, s = x.shape[0], sample_frames
        order = torch.argsort((~mask).to(torch.uint8), dim=1, stable=True)  # valid positions first
        idx = (torch.rand(b, s, device=x.device) * n.unsqueeze(1)).long()  # floor(U n)
        idx = torch.minimum(idx, (n - 1).clamp(min=0).unsqueeze(1))  # guard U*n rounding up to n
        pos = order.gather(1, idx)  # [B, S] frame positions
        frames = x.gather(1, pos.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
        sampled_mask = (n > 0).unsqueeze(1).expand(b, s).contiguous()
        return frames, sampled_mask, sampled_mask.to(x.dtype)
    # the expectation of the sum over F frames sampled with replacement (S in training, the release's 300)
    aggregated = sample_frames if sample_frames > 0 else MAX_FRAMES
    weight = mask.to(x.dtype) * (aggregated / n.clamp(min=1).to(x.dtype)).unsqueeze(1)  # [B, T]
    return x, mask, weight
