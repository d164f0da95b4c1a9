"""Non-local NetVLAD (Tang et al. 2018, arXiv 1810.00207; 4th place of the 2018 challenge): an
embedded-Gaussian non-local block over the K cluster descriptors of a (R)VLAD pooling, inserted
before the intra-normalisation ("beforeNorm"). Built by composition on netvlad.py: the pooling
gets the block as its residual transform, and the model is the shared ``WillowModel``.

Block (spec §5), residuals R [B, K, D] -> R + Y:
    θ = R Wθ,  φ = R Wφ,  g = R Wg          W* [D, K'], no bias, init N(0, 1/sqrt(D))
    A = softmax(θ φᵀ / temperature)        [B, K, K], rows sum to 1 (over the attended clusters)
    Y = (A g) Wout                         Wout [K', D], init N(0, 1/sqrt(K')); no BN, no zero-init
The value path is g. The cleaned release's ``NetVLAD_NonLocal`` and ``nonLocal_block`` (used by the
early-fused and NetRVLAD variants) reshape φ instead of g, leaving Wg unused; that bug is NOT
reproduced here: every variant uses g (its Wg is counted either way).

Variants (``variant``), each with the release's hard-coded defaults:
    "late"     LFNL-NetVLAD, the main model: video NL-NetVLAD(1024, K=64) ‖ audio NL-NetVLAD(128,
               K/2), K' = the stream's K, temperature 64; H 1024, no relu (hidden bias), Context
               Gating, MoE-8 + prob gating: 154,958,464 parameters (spec: 154.96M).
    "early"    EFNL-NetVLAD: one NL-NetVLAD on the fused 1152-d frame, K 64, K' = K, temperature
               sqrt(1152) (scaling D^-0.5); MoE-2 + prob gating: 111,697,852.
    "netrvlad" LFNL-NetRVLAD: the block on sum_t a_k x_t (no centres), K' = D/2 per stream,
               temperature sqrt(D); MoE-4 + prob gating: 125,087,272.
An explicit ``embedding_size`` sets K' of the video (or fused) block; the audio block keeps the
default ratio (late K'/2, netrvlad K'/8). An explicit ``nonlocal_temperature`` applies to every block.
Frame handling, masking and the other hyperparameters are those of netvlad.py (module docstring).

Video length: a deliberate deviation from the release
------------------------------------------------------
The release always aggregates 300 frames sampled with replacement, so R has the scale of a sum over
300 frames whatever the video's length. Summed over the n valid frames instead (``sample_frames=0``),
R would scale with n, θφᵀ with n², and the block would attend more sharply to long videos than to
short ones: with trained-like weights, repeating every frame of a video (same frames, n doubled)
moved the paper-size late-fusion logits by 1.6e-2 to 9.5e-2 and the early-fusion ones by 6e-3 to
2e-2 (issue 16 measured 3.2e-2 and 2.3e-2), while plain NetVLAD, which normalises the scale away,
moved by < 4e-7. So every valid frame is weighted 300/n
(``pooling.select_frames``): R is the expectation of the release's 300-frame sum, and the output
depends on the distribution of a video's frames, not their count (repeating every frame changes
nothing beyond float error, for every variant). The release is stochastic at evaluation; this is
its deterministic expectation at the level of R, not of the block's output.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from yt8m_search.constants import AUDIO_DIM, FEATURE_DIM, NUM_CLASSES, RGB_DIM
from yt8m_search.models.layers import Count, dense_flops
from yt8m_search.models.netvlad import (
    StreamSpec,
    WillowModel,
    WillowSpec,
    raise_errors,
    two_streams,
    willow_count,
    willow_errors,
    willow_flops,
)
from yt8m_search.models.registry import register

VARIANTS = ("late", "early", "netrvlad")
DEFAULT_MIXTURES = {"late": 8, "early": 2, "netrvlad": 4}
LATE_TEMPERATURE = 64.0  # "t64" of the main model
AUDIO_EMBEDDING_DIVISOR = {"late": 2, "netrvlad": 8}  # audio K' relative to the video block's


class NonLocalBlock(nn.Module):
    """Embedded-Gaussian non-local block over clusters: R [B, K, D] -> R + (softmax(θφᵀ/t) g) Wout."""

    def __init__(self, feature_size: int, embedding_size: int, temperature: float) -> None:
        super().__init__()
        self.temperature = temperature
        self.theta = nn.Linear(feature_size, embedding_size, bias=False)
        self.phi = nn.Linear(feature_size, embedding_size, bias=False)
        self.g = nn.Linear(feature_size, embedding_size, bias=False)
        self.out = nn.Linear(embedding_size, feature_size, bias=False)
        for proj in (self.theta, self.phi, self.g):
            nn.init.normal_(proj.weight, std=1 / math.sqrt(feature_size))
        nn.init.normal_(self.out.weight, std=1 / math.sqrt(embedding_size))

    def attention(self, r: Tensor) -> Tensor:
        """A [B, K, K]: row i is the distribution of cluster i's attention over all clusters."""
        logits = torch.bmm(self.theta(r), self.phi(r).transpose(1, 2)) / self.temperature
        return torch.softmax(logits, dim=-1)

    def forward(self, r: Tensor) -> Tensor:
        y = torch.bmm(self.attention(r), self.g(r))  # [B, K, K'] -- the value path is g, not φ
        return r + self.out(y)  # [B, K, D]


@dataclass(frozen=True)
class NonLocalSpec:
    """A ``pooling.ResidualBlock``: the block's shape, buildable and countable."""

    feature_size: int
    embedding_size: int
    temperature: float

    def build(self) -> NonLocalBlock:
        return NonLocalBlock(self.feature_size, self.embedding_size, self.temperature)

    def count(self) -> Count:
        return Count(4 * self.feature_size * self.embedding_size, 0)  # θ, φ, g, out

    def flops(self, clusters: int) -> int:
        """θ, φ, g and out on K rows [K, D] <-> [K, K']; θφᵀ [K, K'] @ [K', K]; A g [K, K] @ [K, K']."""
        d, e, k = self.feature_size, self.embedding_size, clusters
        return 4 * dense_flops(d, e, rows=k) + 2 * dense_flops(e, k, rows=k)


def nonlocal_streams(
    variant: str, clusters: int, audio: bool, embedding_size: int | None, nonlocal_temperature: float | None
) -> tuple[StreamSpec, ...]:
    """The pooling streams of a (validated) variant, each with its non-local block."""

    def block(dim: int, default_embedding: int, audio_stream: bool, default_temperature: float) -> NonLocalSpec:
        if embedding_size is None:
            emb = default_embedding
        else:
            emb = max(1, embedding_size // AUDIO_EMBEDDING_DIVISOR[variant]) if audio_stream else embedding_size
        temp = default_temperature if nonlocal_temperature is None else float(nonlocal_temperature)
        return NonLocalSpec(dim, emb, temp)

    if variant == "early":
        dim = FEATURE_DIM if audio else RGB_DIM
        return (StreamSpec(0, dim, "netvlad", clusters, block=block(dim, clusters, False, math.sqrt(dim))),)
    if variant == "late":
        k_audio = clusters // 2
        blocks = (
            block(RGB_DIM, clusters, False, LATE_TEMPERATURE),
            block(AUDIO_DIM, k_audio, True, LATE_TEMPERATURE),
        )
        return two_streams("netvlad", clusters, audio, blocks=blocks)
    blocks = (  # netrvlad
        block(RGB_DIM, RGB_DIM // 2, False, math.sqrt(RGB_DIM)),
        block(AUDIO_DIM, AUDIO_DIM // 2, True, math.sqrt(AUDIO_DIM)),
    )
    return two_streams("netrvlad", clusters, audio, blocks=blocks)


def nonlocal_spec(
    *,
    variant: str,
    clusters: int,
    hidden_size: int,
    embedding_size: int | None,
    nonlocal_temperature: float | None,
    gating: str,
    gating_reduction: int,
    classifier: str,
    num_mixtures: int | None,
    prob_gating: bool,
    dropout: float,
    input_bn: bool,
    hidden_bn_relu: bool,
    sample_frames: int,
    audio: bool,
    num_classes: int,
    input_gating: bool,
) -> WillowSpec:
    """Validated structure of a non-local NetVLAD model."""
    errors = []
    if variant not in VARIANTS:
        errors.append(f"variant must be one of {VARIANTS}, got {variant!r}")
        raise_errors("nonlocal_netvlad", errors)
    if embedding_size is not None and embedding_size < 1:
        errors.append(f"embedding_size must be >= 1 or None (variant default), got {embedding_size}")
    if nonlocal_temperature is not None and not nonlocal_temperature > 0:
        errors.append(f"nonlocal_temperature must be > 0 or None (variant default), got {nonlocal_temperature}")
    mixtures = DEFAULT_MIXTURES[variant] if num_mixtures is None else num_mixtures
    errors += willow_errors(
        clusters=clusters, min_clusters=4 if audio and variant != "early" else 2, hidden_size=hidden_size,
        gating=gating, gating_reduction=gating_reduction, classifier=classifier, num_mixtures=mixtures,
        prob_gating=prob_gating, dropout=dropout, sample_frames=sample_frames, num_classes=num_classes,
    )  # fmt: skip
    raise_errors("nonlocal_netvlad", errors)
    streams = nonlocal_streams(variant, clusters, audio, embedding_size, nonlocal_temperature)
    return WillowSpec(
        streams=streams, hidden_size=hidden_size, hidden_bn_relu=hidden_bn_relu, gating=gating,
        gating_reduction=gating_reduction, classifier=classifier, num_mixtures=mixtures, prob_gating=prob_gating,
        dropout=dropout, input_bn=input_bn, sample_frames=sample_frames, num_classes=num_classes,
        input_gating=input_gating,
    )  # fmt: skip


# Builder and counter take identical keywords and forward ``locals()`` (taken first thing).


def nonlocal_netvlad_count(**hparams: Any) -> Count:
    return willow_count(nonlocal_spec(**hparams))


def nonlocal_netvlad_flops(**hparams: Any) -> int:
    return willow_flops(nonlocal_spec(**hparams))


TINY = dict(clusters=4, hidden_size=16, num_classes=10)  # the late variant: two blocks, MoE-8, prob gating


@register("nonlocal_netvlad", counter=nonlocal_netvlad_count, tiny=TINY,  # recipe: the release (spec 5)
          flops=nonlocal_netvlad_flops,
          recipe={"batch_size": 80, "lr_decay": 0.8, "l2": 1e-8})
def nonlocal_netvlad(
    *,
    variant: str = "late",
    clusters: int = 64,
    hidden_size: int = 1024,
    embedding_size: int | None = None,
    nonlocal_temperature: float | None = None,
    gating: str = "context",
    gating_reduction: int = 8,
    classifier: str = "moe",
    num_mixtures: int | None = None,
    prob_gating: bool = True,
    dropout: float = 0.0,
    input_bn: bool = True,
    hidden_bn_relu: bool = False,
    sample_frames: int = 0,
    audio: bool = True,
    num_classes: int = NUM_CLASSES,
    input_gating: bool = False,
) -> WillowModel:
    """Non-local NetVLAD (Tencent/Fudan 2018): NetVLAD with an embedded-Gaussian non-local block over
    the cluster residuals, before intra-normalisation.

    variant 'late' (LFNL-NetVLAD, main model: 154,958,464 parameters at the defaults) | 'early'
    (EFNL-NetVLAD, fused 1152-d input) | 'netrvlad' (LFNL-NetRVLAD, no centres). embedding_size K'
    (None: late K, early K, netrvlad D/2); nonlocal_temperature t of softmax(θφᵀ/t) (None: late 64,
    early/netrvlad sqrt(D)); num_mixtures (None: late 8, early 2, netrvlad 4). clusters K (audio
    K/2), hidden_size, gating, classifier, prob_gating, dropout, input_bn, hidden_bn_relu,
    sample_frames, audio, input_gating: as ``netvlad``.
    """
    return WillowModel(nonlocal_spec(**locals()))
