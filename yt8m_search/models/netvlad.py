"""The WILLOW pooling family (Miech, Laptev & Sivic 2017; antoine77340/Youtube-8M-WILLOW): NetVLAD,
NetRVLAD ("LightVLAD") and Soft-BoF (SoftDBoF), and the one two-stream model they share.

Notation (spec §4): B batch, T frames, D input dim of a stream (1024 rgb / 128 audio / 1152 fused),
K clusters, H hidden size, C classes, S sampled frames.

Pooling: one shared soft assignment a_t = softmax(BN(x_t Wc)) aggregated three ways (NetVLAD
residuals, NetRVLAD sums, Soft-BoF); the layers and the frame selection live in pooling.py.

Model: per-frame joint L2 of the 1152-d input (WILLOW train.py) -> frame selection -> input BN ->
video pooling on the 1024 rgb columns with K clusters and audio pooling on the 128 audio columns
with K/2 (VLAD) or K/8 (BoF) clusters -> concat -> dropout -> hidden FC (``hidden_bn_relu`` False:
+ bias, no BN, no activation, the README's ``--netvlad_relu=False``; True: no bias, BN, relu6) ->
gating ("context": WILLOW's full Context Gating; "se": NeXtVLAD's SE gate; "none") -> logistic or
MoE head (optional prob gating). The structure is described by a ``WillowSpec``: the model is built
from it and its size is counted from it, so the two cannot drift apart.

Masking, frame sampling, and the deliberate deviations from WILLOW
------------------------------------------------------------------
* WILLOW always draws ``iterations`` frame indices floor(U[0,1) * num_frames) with replacement
  (SampleRandomFrames), at training AND evaluation, so its evaluation is stochastic. Here
  ``sample_frames = 0`` (default) aggregates over all valid frames (mask) in both modes, each
  weighted 300/n (n = valid frames): the expectation of the release's sum over 300 sampled frames.
  ``sample_frames = S > 0`` draws S indices uniformly with replacement from each video's valid
  frames in TRAINING mode only. In EVAL mode every valid frame is used, weighted S/n: the
  expectation of the training-time sampled sum, deterministic. The weight cancels in the
  normalisations of NetVLAD, NetRVLAD and Soft-BoF; it keeps the residual scale (hence the
  attention sharpness) of the non-local variants independent of the video's length, as the
  release's was (``pooling.select_frames``; nonlocal_netvlad.py's docstring).
* Input BN and the assignment BN use valid (or sampled) frames only (``layers.masked_batch_norm``);
  padded frames get zero assignment weight, so appending padding never changes an eval output.
* ``dropout`` (on the concatenated descriptor) is not in WILLOW (default 0 = off), nor is
  ``input_gating`` (S3D-G's feature gating, ``layers.InputGating``, after the input BN; default off).
* ``audio=False`` gives a video-only model whose input BN covers the 1024 rgb columns only (WILLOW
  normalised all 1152 columns before slicing, leaving 256 audio BN parameters unused).
* Initialisation follows WILLOW: cluster weights and centres N(0, 1/sqrt(D)), hidden weights
  N(0, 1/sqrt(K)), hidden bias N(0, 0.01); the heads and gates come from ``layers``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from yt8m_search.constants import FEATURE_DIM, MAX_FRAMES, NUM_CLASSES, RGB_DIM
from yt8m_search.models.layers import (
    CLASSIFIERS,
    GATINGS,
    Count,
    InputGating,
    batch_norm,
    batch_norm_params,
    classifier_flops,
    classifier_params,
    dense_flops,
    dense_params,
    gating_flops,
    gating_params,
    input_gating_flops,
    input_gating_params,
    l2_normalize_frames,
    make_classifier,
    make_gating,
    masked_batch_norm,
)
from yt8m_search.models.pooling import ResidualBlock, SoftBoFPooling, VladPooling, select_frames
from yt8m_search.models.registry import VideoModel, register

POOLINGS = ("netvlad", "netrvlad", "soft_bof")
AUDIO_CLUSTER_DIVISOR = {"netvlad": 2, "netrvlad": 2, "soft_bof": 8}  # audio stream: K/2 or K/8


# ---------------------------------------------------------------------------------------------
# The model's structure, shared by the builder and the counter


@dataclass(frozen=True)
class StreamSpec:
    """One pooling stream over input columns [start, stop)."""

    start: int
    stop: int
    pooling: str  # one of POOLINGS
    clusters: int
    maxpool: bool = False  # soft_bof only
    block: ResidualBlock | None = None  # VLAD only

    @property
    def feature_size(self) -> int:
        return self.stop - self.start

    @property
    def output_size(self) -> int:
        if self.pooling == "soft_bof":
            return self.clusters * (2 if self.maxpool else 1)
        return self.feature_size * self.clusters

    def build(self) -> nn.Module:
        if self.pooling == "soft_bof":
            return SoftBoFPooling(self.feature_size, self.clusters, self.maxpool)
        block = self.block.build() if self.block is not None else None
        return VladPooling(self.feature_size, self.clusters, centres=self.pooling == "netvlad", block=block)

    def count(self) -> Count:
        c = dense_params(self.feature_size, self.clusters, bias=False) + batch_norm_params(self.clusters)
        if self.pooling == "netvlad":
            c = c + Count(self.feature_size * self.clusters, 0)  # centres
        if self.block is not None:
            c = c + self.block.count()
        return c

    def flops(self, frames: int) -> int:
        """Assignment x Wc [T, D] @ [D, K]; VLAD residuals a^T x [K, T] @ [T, D] (+ the block)."""
        f = dense_flops(self.feature_size, self.clusters, rows=frames)
        if self.pooling != "soft_bof":
            f += dense_flops(frames, self.feature_size, rows=self.clusters)
        if self.block is not None:
            f += self.block.flops(self.clusters)
        return f


@dataclass(frozen=True)
class WillowSpec:
    streams: tuple[StreamSpec, ...]
    hidden_size: int
    hidden_bn_relu: bool
    gating: str
    gating_reduction: int
    classifier: str
    num_mixtures: int
    prob_gating: bool
    dropout: float
    input_bn: bool
    sample_frames: int
    num_classes: int
    input_gating: bool = False

    @property
    def input_size(self) -> int:
        """Input columns used (and batch-normalised): [0, input_size)."""
        return max(s.stop for s in self.streams)

    @property
    def pooled_size(self) -> int:
        return sum(s.output_size for s in self.streams)


def two_streams(
    pooling: str,
    clusters: int,
    audio: bool,
    maxpool: bool = False,
    blocks: tuple[ResidualBlock | None, ...] = (None, None),
) -> tuple[StreamSpec, ...]:
    """Video stream on the rgb columns with K clusters (+ audio stream with K/2 or K/8 clusters)."""
    video = StreamSpec(0, RGB_DIM, pooling, clusters, maxpool, blocks[0])
    if not audio:
        return (video,)
    k_audio = clusters // AUDIO_CLUSTER_DIVISOR[pooling]
    return (video, StreamSpec(RGB_DIM, FEATURE_DIM, pooling, k_audio, maxpool, blocks[1]))


def willow_errors(
    *,
    clusters: int | None,
    min_clusters: int,
    hidden_size: int,
    size_name: str = "hidden_size",
    gating: str,
    gating_reduction: int,
    classifier: str,
    num_mixtures: int,
    prob_gating: bool,
    dropout: float,
    sample_frames: int,
    num_classes: int,
) -> list[str]:
    """Every problem with the shared hyperparameters (empty list: fine).

    ``hidden_size`` is the size the gating and the head see (named ``size_name`` in messages);
    ``clusters`` None: no pooling to check.
    """
    errors = []
    if clusters is not None and clusters < min_clusters:
        errors.append(
            f"clusters must be >= {min_clusters} (a stream needs >= 2 clusters: a softmax over one is constant), "
            f"got {clusters}"
        )
    if hidden_size < 1:
        errors.append(f"{size_name} must be >= 1, got {hidden_size}")
    if gating not in GATINGS:
        errors.append(f"gating must be one of {GATINGS}, got {gating!r}")
    if gating_reduction < 1:
        errors.append(f"gating_reduction must be >= 1, got {gating_reduction}")
    elif gating == "se" and hidden_size >= 1 and hidden_size % gating_reduction:
        errors.append(f"{size_name} ({hidden_size}) must be divisible by gating_reduction ({gating_reduction})")
    if classifier not in CLASSIFIERS:
        errors.append(f"classifier must be one of {CLASSIFIERS}, got {classifier!r}")
    elif classifier == "moe" and num_mixtures < 1:
        errors.append(f"num_mixtures must be >= 1, got {num_mixtures}")
    elif classifier == "logistic" and prob_gating:
        errors.append("prob_gating applies to the 'moe' classifier only")
    if not 0.0 <= dropout < 1.0:
        errors.append(f"dropout must be in [0, 1), got {dropout}")
    if sample_frames < 0:
        errors.append(f"sample_frames must be >= 0 (0: all valid frames), got {sample_frames}")
    if num_classes < 1:
        errors.append(f"num_classes must be >= 1, got {num_classes}")
    return errors


def raise_errors(name: str, errors: list[str]) -> None:
    if errors:
        raise ValueError(f"{name}: " + "; ".join(errors))


def willow_count(spec: WillowSpec) -> Count:
    """The exact (parameters, BN statistics) of ``WillowModel(spec)``."""
    c = batch_norm_params(spec.input_size) if spec.input_bn else Count(0, 0)
    if spec.input_gating:
        c = c + input_gating_params(spec.input_size)
    for stream in spec.streams:
        c = c + stream.count()
    c = c + dense_params(spec.pooled_size, spec.hidden_size, bias=not spec.hidden_bn_relu)
    if spec.hidden_bn_relu:
        c = c + batch_norm_params(spec.hidden_size)
    c = c + gating_params(spec.gating, spec.hidden_size, spec.gating_reduction)
    head = classifier_params(spec.classifier, spec.hidden_size, spec.num_classes, spec.num_mixtures, spec.prob_gating)
    return c + head


def willow_flops(spec: WillowSpec) -> int:
    """The forward FLOPs of ``WillowModel(spec)`` on one video of 300 frames (``registry.flops``)."""
    f = input_gating_flops(spec.input_size) if spec.input_gating else 0
    f += sum(stream.flops(MAX_FRAMES) for stream in spec.streams)
    f += dense_flops(spec.pooled_size, spec.hidden_size)
    f += gating_flops(spec.gating, spec.hidden_size, spec.gating_reduction)
    head = classifier_flops(spec.classifier, spec.hidden_size, spec.num_classes, spec.num_mixtures, spec.prob_gating)
    return f + head


# ---------------------------------------------------------------------------------------------
# The model


class WillowModel(VideoModel):
    """The shared two-stream (or fused single-stream) WILLOW model: features [B, T, 1152], mask [B, T]
    -> logits [B, C]. See the module docstring and ``WillowSpec``."""

    def __init__(self, spec: WillowSpec) -> None:
        super().__init__()
        self.spec = spec
        self.input_bn = batch_norm(spec.input_size) if spec.input_bn else None
        self.input_gating = InputGating(spec.input_size) if spec.input_gating else None
        self.pools = nn.ModuleList(stream.build() for stream in spec.streams)
        self.dropout = nn.Dropout(spec.dropout)
        self.hidden = nn.Linear(spec.pooled_size, spec.hidden_size, bias=not spec.hidden_bn_relu)
        nn.init.normal_(self.hidden.weight, std=1 / math.sqrt(spec.streams[0].clusters))
        if self.hidden.bias is not None:
            nn.init.normal_(self.hidden.bias, std=0.01)
        self.hidden_bn = batch_norm(spec.hidden_size) if spec.hidden_bn_relu else None
        self.gating = make_gating(spec.gating, spec.hidden_size, spec.gating_reduction)
        self.classifier = make_classifier(
            spec.classifier, spec.hidden_size, spec.num_classes, spec.num_mixtures, spec.prob_gating
        )

    def pooled(self, features: Tensor, mask: Tensor | None = None) -> Tensor:
        """features [B, T, 1152], mask [B, T] bool or None (all valid) -> descriptor [B, pooled]."""
        if features.dim() != 3 or features.shape[-1] != FEATURE_DIM:
            raise ValueError(f"features must be [B, T, {FEATURE_DIM}], got shape {tuple(features.shape)}")
        b, t, _ = features.shape
        if mask is None:
            mask = torch.ones(b, t, dtype=torch.bool, device=features.device)
        elif mask.shape != (b, t):
            raise ValueError(f"mask must be [B, T] = {(b, t)}, got {tuple(mask.shape)}")
        x = l2_normalize_frames(features)[..., : self.spec.input_size]  # joint L2 over all 1152 dims
        x, mask, weight = select_frames(x, mask.bool(), self.spec.sample_frames, self.training)
        if self.input_bn is not None:
            x = masked_batch_norm(self.input_bn, x, mask)
        if self.input_gating is not None:
            x = self.input_gating(x, mask)
        pooled = [pool(x[..., s.start : s.stop], mask, weight) for s, pool in zip(self.spec.streams, self.pools)]
        return torch.cat(pooled, dim=1)  # [B, sum of the streams' output sizes]

    def forward(self, features: Tensor, mask: Tensor | None = None) -> Tensor:
        h = self.hidden(self.dropout(self.pooled(features, mask)))  # [B, H]
        if self.hidden_bn is not None:
            h = F.relu6(self.hidden_bn(h))
        return self.classifier(self.gating(h))  # [B, C]


# ---------------------------------------------------------------------------------------------
# Registered models


def family_spec(
    pooling: str,
    *,
    clusters: int,
    hidden_size: int,
    gating: str,
    gating_reduction: int,
    classifier: str,
    num_mixtures: int,
    prob_gating: bool,
    dropout: float,
    input_bn: bool,
    hidden_bn_relu: bool,
    sample_frames: int,
    audio: bool,
    num_classes: int,
    input_gating: bool,
    maxpool: bool = False,
) -> WillowSpec:
    """Validated spec of a plain (no residual block) WILLOW model."""
    errors = willow_errors(
        clusters=clusters, min_clusters=2 * AUDIO_CLUSTER_DIVISOR[pooling] if audio else 2, hidden_size=hidden_size,
        gating=gating, gating_reduction=gating_reduction, classifier=classifier, num_mixtures=num_mixtures,
        prob_gating=prob_gating, dropout=dropout, sample_frames=sample_frames, num_classes=num_classes,
    )  # fmt: skip
    raise_errors(pooling, errors)
    return WillowSpec(
        streams=two_streams(pooling, clusters, audio, maxpool),
        hidden_size=hidden_size, hidden_bn_relu=hidden_bn_relu, gating=gating, gating_reduction=gating_reduction,
        classifier=classifier, num_mixtures=num_mixtures, prob_gating=prob_gating, dropout=dropout,
        input_bn=input_bn, sample_frames=sample_frames, num_classes=num_classes, input_gating=input_gating,
    )  # fmt: skip


# Builders and counters take identical keywords; each forwards ``locals()`` (taken first thing,
# i.e. exactly its keyword arguments) to ``family_spec``. The tiny variants: the fewest clusters a
# two-stream model allows (the audio stream gets K/2 or K/8, at least 2), 16 hidden units, 10 classes.

TINY_VLAD = dict(clusters=4, hidden_size=16, num_classes=10)
TINY_BOF = dict(clusters=16, hidden_size=16, num_classes=10)


def netvlad_count(**hparams: Any) -> Count:
    return willow_count(family_spec("netvlad", **hparams))


def netvlad_flops(**hparams: Any) -> int:
    return willow_flops(family_spec("netvlad", **hparams))


@register("netvlad", counter=netvlad_count, tiny=TINY_VLAD,  # recipe: WILLOW README (spec 4.4, 6)
          flops=netvlad_flops,
          recipe={"batch_size": 80, "lr_decay": 0.8, "lr_decay_examples": 4_000_000, "l2": 1e-6})
def netvlad(
    *,
    clusters: int = 64,
    hidden_size: int = 1024,
    gating: str = "context",
    gating_reduction: int = 8,
    classifier: str = "moe",
    num_mixtures: int = 2,
    prob_gating: bool = False,
    dropout: float = 0.0,
    input_bn: bool = True,
    hidden_bn_relu: bool = False,
    sample_frames: int = 0,
    audio: bool = True,
    num_classes: int = NUM_CLASSES,
    input_gating: bool = False,
) -> WillowModel:
    """WILLOW NetVLAD (NetVLADModelLF): video NetVLAD(1024, K) ‖ audio NetVLAD(128, K/2) -> hidden FC
    -> gating -> classifier.

    clusters K; hidden_size H; hidden_bn_relu False: FC + bias, no activation (README) / True: FC,
    BN, relu6; gating 'context' | 'se' (gating_reduction r) | 'none'; classifier 'logistic' | 'moe'
    (num_mixtures, prob_gating); dropout on the pooled descriptor; input_bn on the valid frames;
    sample_frames S > 0: train on S frames sampled with replacement (eval: all valid frames);
    audio False: video stream only; input_gating: S3D-G feature gating of every frame before
    pooling. Best WILLOW single model: clusters=256, prob_gating=True (321,528,380 parameters).
    Paper-Table "NetVLAD 128K 2048H": clusters=128, hidden_size=2048, hidden_bn_relu=True,
    classifier='logistic' (297,609,622).
    """
    return WillowModel(family_spec("netvlad", **locals()))


def netrvlad_count(**hparams: Any) -> Count:
    return willow_count(family_spec("netrvlad", **hparams))


def netrvlad_flops(**hparams: Any) -> int:
    return willow_flops(family_spec("netrvlad", **hparams))


@register("netrvlad", counter=netrvlad_count, tiny=TINY_VLAD,  # recipe: WILLOW README (spec 4.4, 6)
          flops=netrvlad_flops,
          recipe={"batch_size": 80, "lr_decay": 0.8, "lr_decay_examples": 4_000_000, "l2": 1e-6})
def netrvlad(
    *,
    clusters: int = 64,
    hidden_size: int = 1024,
    gating: str = "context",
    gating_reduction: int = 8,
    classifier: str = "moe",
    num_mixtures: int = 2,
    prob_gating: bool = False,
    dropout: float = 0.0,
    input_bn: bool = True,
    hidden_bn_relu: bool = False,
    sample_frames: int = 0,
    audio: bool = True,
    num_classes: int = NUM_CLASSES,
    input_gating: bool = False,
) -> WillowModel:
    """WILLOW NetRVLAD ("LightVLAD", ``--lightvlad``): NetVLAD without cluster centres; otherwise as
    ``netvlad`` (video K clusters, audio K/2)."""
    return WillowModel(family_spec("netrvlad", **locals()))


def soft_bof_count(**hparams: Any) -> Count:
    return willow_count(family_spec("soft_bof", **hparams))


def soft_bof_flops(**hparams: Any) -> int:
    return willow_flops(family_spec("soft_bof", **hparams))


@register("soft_bof", counter=soft_bof_count, tiny=TINY_BOF,  # WILLOW; its command keeps the default moe_l2
          flops=soft_bof_flops,
          recipe={"batch_size": 80, "lr_decay": 0.8, "lr_decay_examples": 4_000_000, "l2": 1e-8})
def soft_bof(
    *,
    clusters: int = 8000,
    hidden_size: int = 1024,
    maxpool: bool = False,
    gating: str = "none",
    gating_reduction: int = 8,
    classifier: str = "moe",
    num_mixtures: int = 2,
    prob_gating: bool = False,
    dropout: float = 0.0,
    input_bn: bool = True,
    hidden_bn_relu: bool = False,
    sample_frames: int = 0,
    audio: bool = True,
    num_classes: int = NUM_CLASSES,
    input_gating: bool = False,
) -> WillowModel:
    """WILLOW Soft-BoF (SoftDbofModelLF): video SoftDBoF(1024, K) ‖ audio SoftDBoF(128, K/8), each
    l2norm(sum_t softmax(BN(x Wc))) (+ the max-pool branch when maxpool) -> hidden FC -> classifier.

    Defaults: the README / Tencent "Soft-BoF-8K" (K 8000, H 1024, no relu, no gating, MoE-2 without
    prob gating: 37,338,492 parameters); other keywords as ``netvlad``.
    """
    return WillowModel(family_spec("soft_bof", **locals()))
