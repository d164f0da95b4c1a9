"""Shared model blocks: the heads' logits, gating, initialisers, and the registry's checks."""

import math

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from yt8m_search.models import layers, registry


def _moe_probabilities(head: layers.MoeHead, h: torch.Tensor) -> torch.Tensor:
    """WILLOW's MoeModel written the obvious way, in probability space."""
    b, c, m = h.shape[0], head.num_classes, head.num_mixtures
    gates = torch.softmax(head.gates(h).view(b, c, m + 1), dim=-1)
    experts = torch.sigmoid(head.experts(h).view(b, c, m))
    p = (gates[..., :m] * experts).sum(-1)
    if head.prob_gating:
        p = p * torch.sigmoid(head.gate_bn(head.gate_fc(p)))
    return p


@pytest.mark.parametrize("prob_gating", [False, True])
@pytest.mark.parametrize("num_mixtures", [1, 4])
def test_moe_logits_are_exact_log_odds(prob_gating: bool, num_mixtures: int) -> None:
    torch.manual_seed(0)
    head = layers.MoeHead(24, num_mixtures, num_classes=30, prob_gating=prob_gating).double().eval()
    h = torch.randn(8, 24, dtype=torch.float64) * 3
    logits = head(h)
    assert torch.allclose(torch.sigmoid(logits), _moe_probabilities(head, h), atol=1e-12)
    assert torch.isfinite(logits).all()


def test_moe_logits_stay_finite_at_extremes() -> None:
    head = layers.MoeHead(4, 2, num_classes=5)
    with torch.no_grad():
        head.experts.weight.fill_(50.0)
    logits = head(torch.full((2, 4), 10.0))
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize(
    "classifier, mixtures, gating", [("logistic", 1, False), ("moe", 2, False), ("moe", 3, True)]
)
def test_classifier_counts_match_built(classifier: str, mixtures: int, gating: bool) -> None:
    head = layers.make_classifier(classifier, 16, 11, mixtures, gating)
    assert layers.module_count(head) == layers.classifier_params(classifier, 16, 11, mixtures, gating)


def test_gating_counts_and_shapes() -> None:
    se, cg = layers.SEGating(32, 4), layers.ContextGating(32)
    assert layers.module_count(se) == layers.se_gating_params(32, 4)
    assert layers.module_count(cg) == layers.context_gating_params(32)
    h = torch.randn(5, 32)
    assert se(h).shape == cg(h).shape == (5, 32)
    with pytest.raises(ValueError, match="divisible"):
        layers.SEGating(30, 4)


@pytest.mark.parametrize(
    "classifier, mixtures, gating", [("logistic", 1, False), ("moe", 2, False), ("moe", 3, True)]
)
def test_head_and_gating_flops_match_flop_counter_mode(classifier: str, mixtures: int, gating: bool) -> None:
    def measured(module: torch.nn.Module, *args: object) -> int:
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            module.eval()(*args)
        return counter.get_total_flops()

    h = torch.randn(1, 32)  # one video
    head = layers.make_classifier(classifier, 32, 11, mixtures, gating)
    assert measured(head, h) == layers.classifier_flops(classifier, 32, 11, mixtures, gating)
    for name in layers.GATINGS:
        assert measured(layers.make_gating(name, 32, 4), h) == layers.gating_flops(name, 32, 4)
    frames = torch.randn(1, 300, 12)
    assert measured(layers.InputGating(12), frames, None) == layers.input_gating_flops(12) == 2 * 12 * 12
    assert layers.module_count(layers.InputGating(12)) == layers.input_gating_params(12)


def test_variance_scaling_matches_tf_slim() -> None:
    torch.manual_seed(0)
    w = layers.dense(1000, 500).weight
    std = math.sqrt(2.6 / 1000)
    assert w.abs().max() <= 2 * std + 1e-7  # truncated at two standard deviations
    # a normal truncated at 2 sigma has std 0.8796 sigma: TF's 1.3 factor undoes it
    assert abs(w.std().item() - 0.8796 * std) < 0.02 * std


def test_batch_norm_follows_slim_defaults() -> None:
    bn = layers.batch_norm(7)
    assert (bn.eps, bn.momentum) == (1e-3, 1e-3)


def test_masked_batch_norm_ignores_padding() -> None:
    torch.manual_seed(0)
    x = torch.randn(3, 6, 4)
    mask = torch.tensor([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1], [1, 0, 0, 0, 0, 0]], dtype=torch.bool)
    a, b = layers.batch_norm(4), layers.batch_norm(4)
    out = layers.masked_batch_norm(a, x, mask)
    assert torch.allclose(out[mask], b(x[mask]))
    assert (out[~mask] == 0).all()
    assert torch.allclose(a.running_mean, b.running_mean)


def test_bce_loss_sums_classes_and_averages_videos() -> None:
    logits = torch.tensor([[0.0, 0.0], [2.0, -1.0]])
    labels = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    expected = (2 * math.log(2) + (math.log1p(math.exp(2)) + math.log1p(math.exp(1)))) / 2
    assert layers.bce_loss(logits, labels).item() == pytest.approx(expected, rel=1e-6)


def test_registry_rejects_unknown_names_with_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="unknown model 'nope'; valid models: .*nextvlad"):
        registry.build("nope")
    with pytest.raises(ValueError, match="unknown hyperparameter.*colour.*valid for nextvlad: groups"):
        registry.param_count("nextvlad", colour=3)
    with pytest.raises(ValueError, match="groups='8' is not of type"):
        registry.param_count("nextvlad", groups="8")
    with pytest.raises(ValueError, match="storage dtype"):
        registry.size_bytes("nextvlad", dtype="int8")
