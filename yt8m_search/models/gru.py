"""WILLOW's GruModel (also the Tencent ensemble's GRU): stacked GRUs over the valid frames, the final
state of every layer concatenated, then (optional gating and) a MoE or logistic head.

features [B, T, 1152] -> per-frame joint L2 (``input_l2``, WILLOW train.py) -> valid frames packed
(pack_padded_sequence, lengths from the mask) -> nn.GRU(1152, H, L) -> h_n of layers 1..L
concatenated [B, L·H] (TF MultiRNNCell with state_is_tuple=False) -> dropout -> gating -> head.

Differences from TF's GRUCell, kept on purpose (PyTorch's cuDNN-compatible GRU):
* PyTorch applies the reset gate after the recurrent matmul, n = tanh(W_in x + b_in + r ⊙ (W_hn h +
  b_hn)), where TF computes tanh(W [x, r ⊙ h] + b); PyTorch also carries a second bias vector, so
  each layer has 3H more parameters than TF's (counted exactly by ``gru_count``).
* Initialisation mimics TF: Glorot-uniform kernels over TF's fused shapes (gates [in+H, 2H],
  candidate [in+H, H]), gate biases 1, candidate and recurrent biases 0.
A video with no valid frame is run on its first (padding) frame (length clamped to 1). Valid frames
need not be a prefix: they are compacted to the front first.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence

from yt8m_search.constants import FEATURE_DIM, MAX_FRAMES, NUM_CLASSES
from yt8m_search.models.layers import (
    Count,
    classifier_flops,
    classifier_params,
    dense_flops,
    gating_flops,
    gating_params,
    l2_normalize_frames,
    make_classifier,
    make_gating,
)
from yt8m_search.models.netvlad import raise_errors, willow_errors
from yt8m_search.models.registry import VideoModel, register


def _init_like_tf(rnn: nn.GRU) -> None:
    h = rnn.hidden_size
    for layer in range(rnn.num_layers):
        w_ih, w_hh = getattr(rnn, f"weight_ih_l{layer}"), getattr(rnn, f"weight_hh_l{layer}")
        b_ih, b_hh = getattr(rnn, f"bias_ih_l{layer}"), getattr(rnn, f"bias_hh_l{layer}")
        fan_in = w_ih.shape[1] + h
        gate_limit = math.sqrt(6.0 / (fan_in + 2 * h))
        cand_limit = math.sqrt(6.0 / (fan_in + h))
        with torch.no_grad():
            for w in (w_ih, w_hh):  # rows: reset r, update z, candidate n
                w[: 2 * h].uniform_(-gate_limit, gate_limit)
                w[2 * h :].uniform_(-cand_limit, cand_limit)
            b_ih.zero_()
            b_ih[: 2 * h].fill_(1.0)
            b_hh.zero_()


def compact_valid_frames(x: Tensor, mask: Tensor) -> Tensor:
    """Move each video's valid frames to the front (order kept); x [B, T, F] -> [B, T, F]."""
    if bool((mask.cummin(dim=1).values == mask).all()):  # already a prefix (the reader's layout)
        return x
    order = torch.argsort((~mask).to(torch.uint8), dim=1, stable=True)
    return x.gather(1, order.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


class GruModel(VideoModel):
    def __init__(
        self,
        *,
        hidden_size: int,
        num_layers: int,
        classifier: str,
        num_mixtures: int,
        prob_gating: bool,
        gating: str,
        gating_reduction: int,
        dropout: float,
        input_l2: bool,
        num_classes: int,
    ) -> None:
        super().__init__()
        self.input_l2 = input_l2
        self.rnn = nn.GRU(FEATURE_DIM, hidden_size, num_layers, batch_first=True)
        _init_like_tf(self.rnn)
        state = num_layers * hidden_size
        self.dropout = nn.Dropout(dropout)
        self.gating = make_gating(gating, state, gating_reduction)
        self.classifier = make_classifier(classifier, state, num_classes, num_mixtures, prob_gating)

    def state(self, features: Tensor, mask: Tensor | None = None) -> Tensor:
        """features [B, T, 1152], mask [B, T] bool or None -> final states [B, L·H]."""
        if features.dim() != 3 or features.shape[-1] != FEATURE_DIM:
            raise ValueError(f"features must be [B, T, {FEATURE_DIM}], got shape {tuple(features.shape)}")
        b, t, _ = features.shape
        x = l2_normalize_frames(features) if self.input_l2 else features
        if mask is None:
            lengths = torch.full((b,), t, dtype=torch.long)
        else:
            if mask.shape != (b, t):
                raise ValueError(f"mask must be [B, T] = {(b, t)}, got {tuple(mask.shape)}")
            mask = mask.bool()
            x = compact_valid_frames(x, mask)
            lengths = mask.sum(dim=1).clamp(min=1).cpu()
        packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        _, h_n = self.rnn(packed)  # [L, B, H], in the original batch order
        return h_n.transpose(0, 1).reshape(b, -1)  # [B, L·H]: layer 1 then layer 2

    def forward(self, features: Tensor, mask: Tensor | None = None) -> Tensor:
        h = self.gating(self.dropout(self.state(features, mask)))
        return self.classifier(h)  # [B, C]


def gru_errors(
    *,
    hidden_size: int,
    num_layers: int,
    classifier: str,
    num_mixtures: int,
    prob_gating: bool,
    gating: str,
    gating_reduction: int,
    dropout: float,
    num_classes: int,
) -> list[str]:
    errors = []
    if hidden_size < 1:
        errors.append(f"hidden_size must be >= 1, got {hidden_size}")
    if num_layers < 1:
        errors.append(f"num_layers must be >= 1, got {num_layers}")
    if errors:
        return errors
    return willow_errors(
        clusters=None, min_clusters=1, hidden_size=num_layers * hidden_size, size_name="num_layers*hidden_size",
        gating=gating, gating_reduction=gating_reduction, classifier=classifier, num_mixtures=num_mixtures,
        prob_gating=prob_gating, dropout=dropout, sample_frames=0, num_classes=num_classes,
    )  # fmt: skip


def gru_count(**hparams: Any) -> Count:
    hp = hparams
    raise_errors("gru", gru_errors(**{k: v for k, v in hp.items() if k != "input_l2"}))
    h, layers = hp["hidden_size"], hp["num_layers"]
    rnn = sum(3 * h * (FEATURE_DIM if layer == 0 else h) + 3 * h * h + 6 * h for layer in range(layers))
    state = layers * h
    return (
        Count(rnn, 0)
        + gating_params(hp["gating"], state, hp["gating_reduction"])
        + classifier_params(hp["classifier"], state, hp["num_classes"], hp["num_mixtures"], hp["prob_gating"])
    )


def gru_flops(**hparams: Any) -> int:
    """Per frame and layer: the input matmul [in] -> [3H] and the recurrent one [H] -> [3H]."""
    hp = hparams
    raise_errors("gru", gru_errors(**{k: v for k, v in hp.items() if k != "input_l2"}))
    h, layers = hp["hidden_size"], hp["num_layers"]
    rnn = sum(
        dense_flops(FEATURE_DIM if layer == 0 else h, 3 * h, rows=MAX_FRAMES) + dense_flops(h, 3 * h, rows=MAX_FRAMES)
        for layer in range(layers)
    )
    state = layers * h
    return (
        rnn
        + gating_flops(hp["gating"], state, hp["gating_reduction"])
        + classifier_flops(hp["classifier"], state, hp["num_classes"], hp["num_mixtures"], hp["prob_gating"])
    )


TINY = dict(hidden_size=8, num_layers=2, num_classes=10)  # two layers: the state concatenation is exercised


@register("gru", counter=gru_count, tiny=TINY,  # recipe: WILLOW README GRU command (spec 4.3, 4.4)
          flops=gru_flops,
          recipe={"batch_size": 128, "lr_decay": 0.9, "lr_decay_examples": 4_000_000, "l2": 1e-6})
def gru(
    *,
    hidden_size: int = 1200,
    num_layers: int = 2,
    classifier: str = "moe",
    num_mixtures: int = 2,
    prob_gating: bool = False,
    gating: str = "none",
    gating_reduction: int = 8,
    dropout: float = 0.0,
    input_l2: bool = True,
    num_classes: int = NUM_CLASSES,
) -> GruModel:
    """WILLOW GruModel: num_layers stacked GRUs of hidden_size units over the valid frames, final states
    concatenated [B, L·H] -> dropout -> gating ('none' | 'context' | 'se' with gating_reduction) ->
    classifier ('moe' with num_mixtures / prob_gating, or 'logistic'). input_l2: per-frame joint L2
    of the input (WILLOW's train.py). Defaults: 2 × 1200, MoE-2 (the README / Tencent GRU).
    """
    hp = locals()  # exactly the keyword arguments
    raise_errors("gru", gru_errors(**{k: v for k, v in hp.items() if k != "input_l2"}))
    return GruModel(**hp)
