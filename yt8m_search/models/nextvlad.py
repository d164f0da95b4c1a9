"""NeXtVLAD (Lin, Xiao & Fan, 2018; linrongc/youtube-8m ``nextvlad.py``): the aggregation layer and
the two-stream single model with SE context gating.

Notation (spec §3): B batch, T frames, N input dim (1024 rgb / 128 audio), λ expansion, G groups,
K clusters, Ng = λN / G, H hidden size, r gating reduction, C classes.

Masking, and the one deliberate deviation from the TF original
---------------------------------------------------------------
The original always saw T = 300 frames and masked padding only through the group attention; its
cluster batch norm took statistics over all B·300 rows, padding included. Here only the *valid*
frames are gathered (``x[mask]`` -> [Nv, N]) before the expansion FC, the attention, the cluster
matmul and the cluster BN; the results are scattered back to zero-filled [B, T, ...] tensors for
the per-video aggregation. So padded frames contribute nothing (as the attention mask did), the
cluster BN statistics come from valid frames only (our T varies per batch, so the original's fixed
padding share cannot be reproduced anyway), short videos cost less compute, and in eval mode the
output does not change when padding frames are appended.

Reverse whitening (§3.1) is applied to the gathered valid rows, so padded frames are never
transformed at all. ``input_gating`` (not in the paper, off by default) gates every frame with
S3D-G's feature gating (``layers.InputGating``) on the mean of the video's valid (transformed)
frames, per branch, before both streams.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from yt8m_search.constants import AUDIO_DIM, FEATURE_DIM, MAX_FRAMES, NUM_CLASSES, RGB_DIM
from yt8m_search.models.layers import (
    CLASSIFIERS,
    Count,
    InputGating,
    SEGating,
    batch_norm,
    batch_norm_params,
    classifier_flops,
    classifier_params,
    dense,
    dense_flops,
    dense_params,
    input_gating_flops,
    input_gating_params,
    make_classifier,
    se_gating_flops,
    se_gating_params,
    variance_scaling_,
)
from yt8m_search.models.registry import VideoModel, register
from yt8m_search.models.whitening import ReverseWhitening, reverse_whitening_params, upgrade_pca_eigenvals


class Frames(NamedTuple):
    """The valid frames of a batch, gathered once and shared by both streams (and mixture branches).

    ``rows`` [Nv, F] holds the valid frames in (video, time) order; ``mask`` [B, T] says where they
    came from, or is None when every one of the B·T frames is valid (then Nv = B·T, no scatter).
    """

    rows: Tensor
    mask: Tensor | None
    batch: int
    time: int


def gather_frames(features: Tensor, mask: Tensor | None) -> Frames:
    """features [B, T, F], mask [B, T] (bool, True = real frame) -> Frames with rows [Nv, F]."""
    if features.dim() != 3:
        raise ValueError(f"features must be [B, T, F], got shape {tuple(features.shape)}")
    b, t, f = features.shape
    if mask is not None:
        if mask.shape != (b, t):
            raise ValueError(f"mask must be [B, T] = {(b, t)}, got {tuple(mask.shape)}")
        mask = mask.bool()
        if bool(mask.all()):  # nothing to drop: skip the gather/scatter copies
            mask = None
    if mask is None:
        return Frames(features.reshape(b * t, f), None, b, t)
    return Frames(features[mask], mask, b, t)  # [Nv, F]


def _scatter(rows: Tensor, frames: Frames) -> Tensor:
    """rows [Nv, *S] -> [B, T, *S], padded frames zero."""
    if frames.mask is None:
        return rows.view(frames.batch, frames.time, *rows.shape[1:])
    out = rows.new_zeros((frames.batch, frames.time, *rows.shape[1:]))
    out[frames.mask] = rows
    return out


# ---------------------------------------------------------------------------------------------
# The aggregation layer


class NeXtVLAD(nn.Module):
    """One NeXtVLAD stream (§3.2): frames [B, T, N] (+ mask) -> descriptor [B, Ng·K].

    Conventions of the original: column g·K + k of ``cluster_weights`` is (group g, cluster k);
    group g of an expanded frame is the slice [g·Ng, (g+1)·Ng); the output is flattened Ng-major
    (index j·K + k); intra-normalisation over Ng per cluster, then BN; no global L2.
    """

    def __init__(self, feature_size: int, groups: int, clusters: int, expansion: int = 2) -> None:
        super().__init__()
        wide = expansion * feature_size
        if groups < 1 or clusters < 1 or expansion < 1 or wide % groups:
            raise ValueError(
                f"NeXtVLAD: need groups, clusters, expansion >= 1 and groups dividing expansion*N "
                f"= {wide}; got groups={groups}, clusters={clusters}, expansion={expansion}"
            )
        self.feature_size, self.groups, self.clusters, self.expansion = feature_size, groups, clusters, expansion
        self.group_size = wide // groups  # Ng
        self.expand = dense(feature_size, wide)  # N -> λN, bias
        self.attention = dense(wide, groups)  # λN -> G, bias
        self.cluster_weights = dense(wide, groups * clusters, bias=False)  # Wc^T [G·K, λN]
        self.cluster_bn = batch_norm(groups * clusters)
        self.cluster_weights2 = nn.Parameter(torch.empty(self.group_size, clusters))  # C2 [Ng, K]
        variance_scaling_(self.cluster_weights2, self.group_size)  # TF fan_in of [1, Ng, K] is Ng
        self.vlad_bn = batch_norm(self.group_size * clusters)

    @property
    def output_size(self) -> int:
        return self.group_size * self.clusters

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """x [B, T, N], mask [B, T] bool or None (all valid) -> [B, Ng·K]."""
        return self.aggregate(gather_frames(x, mask))

    def aggregate(self, frames: Frames) -> Tensor:
        """Frames with rows [Nv, N] (any row stride) -> [B, Ng·K]."""
        g, k, ng = self.groups, self.clusters, self.group_size
        b, t = frames.batch, frames.time
        xd = self.expand(frames.rows)  # [Nv, λN]
        att = torch.sigmoid(self.attention(xd))  # [Nv, G]  group attention, from the expanded input
        act = self.cluster_bn(self.cluster_weights(xd))  # [Nv, G·K]  BN over valid frames only
        act = torch.softmax(act.view(-1, g, k), dim=-1) * att.unsqueeze(-1)  # [Nv, G, K]  α_g·α_gk
        act = _scatter(act, frames).view(b, t * g, k)  # [B, T·G, K]  row t·G + g; padding rows 0
        xg = _scatter(xd, frames).view(b, t * g, ng)  # [B, T·G, Ng]  row t·G + g = slice g of frame t
        a = act.sum(dim=1, keepdim=True) * self.cluster_weights2  # [B, 1, K] * [Ng, K] -> [B, Ng, K]
        vlad = torch.bmm(xg.transpose(1, 2), act) - a  # [B, Ng, T·G] @ [B, T·G, K] -> [B, Ng, K]
        vlad = F.normalize(vlad, dim=1)  # intra-normalisation over Ng, per cluster
        return self.vlad_bn(vlad.reshape(b, ng * k))  # [B, Ng·K]  Ng-major: index j·K + k


def nextvlad_stream_params(feature_size: int, groups: int, clusters: int, expansion: int) -> Count:
    wide = expansion * feature_size
    ng = wide // groups
    return (
        dense_params(feature_size, wide)
        + dense_params(wide, groups)
        + dense_params(wide, groups * clusters, bias=False)
        + batch_norm_params(groups * clusters)
        + Count(ng * clusters, 0)
        + batch_norm_params(ng * clusters)
    )


def pooled_width(groups: int, clusters: int, expansion: int) -> int:
    """D = Ng·K of the video stream + Ng·K of the audio stream (half the groups and clusters)."""
    return (expansion * RGB_DIM // groups) * clusters + (expansion * AUDIO_DIM // (groups // 2)) * (clusters // 2)


def nextvlad_stream_flops(feature_size: int, groups: int, clusters: int, expansion: int) -> int:
    """Expansion, attention and cluster FCs on each of the 300 frames, then xgᵀ [Ng, T·G] @ act [T·G, K]."""
    wide, t = expansion * feature_size, MAX_FRAMES
    per_frame = dense_flops(feature_size, wide) + dense_flops(wide, groups) + dense_flops(wide, groups * clusters)
    return t * per_frame + dense_flops(t * groups, clusters, rows=wide // groups)


# ---------------------------------------------------------------------------------------------
# The single model


def validate_nextvlad(
    *,
    groups: int,
    clusters: int,
    expansion: int,
    hidden_size: int,
    gating_reduction: int,
    dropout: float,
    classifier: str,
    num_mixtures: int,
    prob_gating: bool,
    num_classes: int,
) -> None:
    """Every problem with a NeXtVLAD configuration, reported at once (ValueError)."""
    errors = []
    if groups < 2 or groups % 2:
        errors.append(f"groups must be even and >= 2 (the audio stream uses groups/2), got {groups}")
    if clusters < 2 or clusters % 2:
        errors.append(f"clusters must be even and >= 2 (the audio stream uses clusters/2), got {clusters}")
    if expansion < 1:
        errors.append(f"expansion must be >= 1, got {expansion}")
    elif groups >= 2 and groups % 2 == 0:
        if (expansion * RGB_DIM) % groups:
            errors.append(f"groups ({groups}) must divide expansion*{RGB_DIM} = {expansion * RGB_DIM}")
        if (expansion * AUDIO_DIM) % (groups // 2):
            errors.append(
                f"groups/2 ({groups // 2}) must divide expansion*{AUDIO_DIM} = {expansion * AUDIO_DIM} (audio stream)"
            )
    if hidden_size < 1:
        errors.append(f"hidden_size must be >= 1, got {hidden_size}")
    if gating_reduction < 1:
        errors.append(f"gating_reduction must be >= 1, got {gating_reduction}")
    elif hidden_size >= 1 and hidden_size % gating_reduction:
        errors.append(f"hidden_size ({hidden_size}) must be divisible by gating_reduction ({gating_reduction})")
    if not 0.0 <= dropout < 1.0:
        errors.append(f"dropout must be in [0, 1), got {dropout}")
    if classifier not in CLASSIFIERS:
        errors.append(f"classifier must be one of {CLASSIFIERS}, got {classifier!r}")
    elif classifier == "moe" and num_mixtures < 1:
        errors.append(f"num_mixtures must be >= 1, got {num_mixtures}")
    elif classifier == "logistic" and prob_gating:
        errors.append("prob_gating applies to the 'moe' classifier only")
    if num_classes < 1:
        errors.append(f"num_classes must be >= 1, got {num_classes}")
    if errors:
        raise ValueError("nextvlad: " + "; ".join(errors))


class NeXtVLADModel(VideoModel):
    """The two-stream NeXtVLAD model (§3.3): features [B, T, 1152], mask [B, T] -> logits [B, C].

    video NeXtVLAD(1024, G, K) ‖ audio NeXtVLAD(128, G/2, K/2) -> dropout -> FC (no bias) -> BN
    (no activation) -> SE context gating -> logistic or MoE head.
    """

    def __init__(
        self,
        *,
        groups: int = 8,
        clusters: int = 128,
        expansion: int = 2,
        hidden_size: int = 2048,
        gating_reduction: int = 8,
        dropout: float = 0.5,
        classifier: str = "logistic",
        num_mixtures: int = 4,
        prob_gating: bool = False,
        reverse_whitening: bool = False,
        num_classes: int = NUM_CLASSES,
        input_gating: bool = False,
    ) -> None:
        super().__init__()
        validate_nextvlad(
            groups=groups, clusters=clusters, expansion=expansion, hidden_size=hidden_size,
            gating_reduction=gating_reduction, dropout=dropout, classifier=classifier,
            num_mixtures=num_mixtures, prob_gating=prob_gating, num_classes=num_classes,
        )  # fmt: skip
        # The scale is a placeholder until set_eigenvalues (or a state dict) fills it.
        self.whitening = ReverseWhitening() if reverse_whitening else None
        self.input_gating = InputGating(FEATURE_DIM) if input_gating else None
        self.video = NeXtVLAD(RGB_DIM, groups, clusters, expansion)
        self.audio = NeXtVLAD(AUDIO_DIM, groups // 2, clusters // 2, expansion)
        self.dropout = nn.Dropout(dropout)
        self.hidden = dense(self.video.output_size + self.audio.output_size, hidden_size, bias=False)
        self.hidden_bn = batch_norm(hidden_size)
        self.gating = SEGating(hidden_size, gating_reduction)
        self.classifier = make_classifier(classifier, hidden_size, num_classes, num_mixtures, prob_gating)

    def forward(self, features: Tensor, mask: Tensor | None = None) -> Tensor:
        """features [B, T, 1152] (rgb then audio), mask [B, T] bool or None -> logits [B, C]."""
        return self.forward_frames(self.prepare(features, mask))

    def prepare(self, features: Tensor, mask: Tensor | None) -> Frames:
        """Gather the valid frames [Nv, 1152] and apply the input transform to them."""
        if features.shape[-1] != FEATURE_DIM:
            raise ValueError(f"features must have {FEATURE_DIM} columns, got {features.shape[-1]}")
        frames = gather_frames(features, mask)
        if self.whitening is not None:
            frames = frames._replace(rows=self.whitening(frames.rows, None))  # rgb rescaled, audio kept
        return frames

    def forward_frames(self, frames: Frames) -> Tensor:
        """Prepared frames (rows [Nv, 1152]) -> logits [B, C]."""
        if self.input_gating is not None:  # the gate needs each video's frames: [B, T, 1152] and back
            frames = gather_frames(self.input_gating(_scatter(frames.rows, frames), frames.mask), frames.mask)
        rows = frames.rows
        v = self.video.aggregate(frames._replace(rows=rows[:, :RGB_DIM]))  # [B, K·2048/G]
        a = self.audio.aggregate(frames._replace(rows=rows[:, RGB_DIM:]))  # [B, K·256/G]
        h = self.dropout(torch.cat([v, a], dim=1))  # [B, D]
        h = self.hidden_bn(self.hidden(h))  # [B, H]  no activation, as in the code
        h = self.gating(h)  # [B, H]
        return self.classifier(h)  # [B, C]


def nextvlad_branch_count(
    *,
    groups: int,
    clusters: int,
    expansion: int,
    hidden_size: int,
    gating_reduction: int,
    classifier: str,
    num_mixtures: int,
    prob_gating: bool,
    num_classes: int,
    input_gating: bool,
) -> Count:
    """One NeXtVLADModel without the input transform."""
    gate = input_gating_params(FEATURE_DIM) if input_gating else Count(0, 0)
    video = nextvlad_stream_params(RGB_DIM, groups, clusters, expansion)
    audio = nextvlad_stream_params(AUDIO_DIM, groups // 2, clusters // 2, expansion)
    d = pooled_width(groups, clusters, expansion)
    return (
        gate
        + video
        + audio
        + dense_params(d, hidden_size, bias=False)
        + batch_norm_params(hidden_size)
        + se_gating_params(hidden_size, gating_reduction)
        + classifier_params(classifier, hidden_size, num_classes, num_mixtures, prob_gating)
    )


def nextvlad_branch_flops(
    *,
    groups: int,
    clusters: int,
    expansion: int,
    hidden_size: int,
    gating_reduction: int,
    classifier: str,
    num_mixtures: int,
    prob_gating: bool,
    num_classes: int,
    input_gating: bool,
) -> int:
    """One NeXtVLADModel's forward FLOPs on one video of 300 frames (the input transform is free)."""
    d = pooled_width(groups, clusters, expansion)
    return (
        (input_gating_flops(FEATURE_DIM) if input_gating else 0)
        + nextvlad_stream_flops(RGB_DIM, groups, clusters, expansion)
        + nextvlad_stream_flops(AUDIO_DIM, groups // 2, clusters // 2, expansion)
        + dense_flops(d, hidden_size)
        + se_gating_flops(hidden_size, gating_reduction)
        + classifier_flops(classifier, hidden_size, num_classes, num_mixtures, prob_gating)
    )


VALIDATED = (
    "groups", "clusters", "expansion", "hidden_size", "gating_reduction", "dropout", "classifier", "num_mixtures",
    "prob_gating", "num_classes",
)  # fmt: skip


def branch_structure(hparams: Mapping[str, Any]) -> dict[str, Any]:
    """The keywords of ``nextvlad_branch_count`` / ``_flops`` taken from complete hyperparameters (of
    nextvlad or mix_nextvlad), validated first (ValueError)."""
    validate_nextvlad(**{k: hparams[k] for k in VALIDATED})
    structure = {k: hparams[k] for k in VALIDATED if k != "dropout"}  # no parameters, no FLOPs
    return {**structure, "input_gating": hparams["input_gating"]}


def nextvlad_count(**hparams: Any) -> Count:
    return nextvlad_branch_count(**branch_structure(hparams)) + reverse_whitening_params(hparams["reverse_whitening"])


def nextvlad_flops(**hparams: Any) -> int:
    return nextvlad_branch_flops(**branch_structure(hparams))


TINY = dict(groups=2, clusters=4, expansion=1, hidden_size=8, gating_reduction=2, num_classes=10)


@register("nextvlad", counter=nextvlad_count, flops=nextvlad_flops, tiny=TINY, upgrade=upgrade_pca_eigenvals)
def nextvlad(
    *,
    groups: int = 8,
    clusters: int = 128,
    expansion: int = 2,
    hidden_size: int = 2048,
    gating_reduction: int = 8,
    dropout: float = 0.5,
    classifier: str = "logistic",
    num_mixtures: int = 4,
    prob_gating: bool = False,
    reverse_whitening: bool = False,
    num_classes: int = NUM_CLASSES,
    input_gating: bool = False,
) -> NeXtVLADModel:
    """NeXtVLAD two-stream model with SE context gating (linrongc, 2nd YouTube-8M challenge).

    groups G and clusters K of the video stream (audio uses G/2, K/2); expansion λ; hidden_size H;
    gating_reduction r of the SE gate; dropout on the concatenated descriptors; classifier
    'logistic' (the paper's) or 'moe' (num_mixtures experts, optional prob_gating);
    reverse_whitening: undo the PCA whitening of rgb (the paper's input); the model then holds the
    scale buffer, filled by ``models.set_eigenvalues`` (or a state dict), never read from a file.
    input_gating: S3D-G feature gating of every frame before both streams (+1152² + 1152 params).
    Defaults: the paper's local configuration 8G / 128K / 2048H / r8 (88,889,378 parameters).
    """
    validate_nextvlad(
        groups=groups, clusters=clusters, expansion=expansion, hidden_size=hidden_size,
        gating_reduction=gating_reduction, dropout=dropout, classifier=classifier,
        num_mixtures=num_mixtures, prob_gating=prob_gating, num_classes=num_classes,
    )  # fmt: skip
    return NeXtVLADModel(
        groups=groups, clusters=clusters, expansion=expansion, hidden_size=hidden_size,
        gating_reduction=gating_reduction, dropout=dropout, classifier=classifier,
        num_mixtures=num_mixtures, prob_gating=prob_gating, reverse_whitening=reverse_whitening,
        num_classes=num_classes, input_gating=input_gating,
    )  # fmt: skip
