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


def test_evaluation_batch_norm_divides_the_initial_statistics_out() -> None:
    torch.manual_seed(0)
    bn, plain = layers.batch_norm(6), torch.nn.BatchNorm1d(6, eps=1e-3, momentum=1e-3)
    batches = [torch.randn(64, 6) * 3 + 5 for _ in range(40)]
    bn.train(), plain.train()
    for x in batches:
        bn(x), plain(x)
    bn.eval(), plain.eval()
    probe = torch.randn(8, 6) * 3 + 5
    # the exponential average of 40 batches, its start (mean 0, variance 1) divided out
    decay = 1 - 1e-3
    weights = torch.tensor([(1 - decay) * decay ** (39 - i) for i in range(40)], dtype=torch.float64)
    mean = sum(w * x.double().mean(0) for w, x in zip(weights, batches)) / weights.sum()
    var = sum(w * x.double().var(0) for w, x in zip(weights, batches)) / weights.sum()  # unbiased, as BN tracks
    expected = (probe.double() - mean) / torch.sqrt(var + 1e-3)
    assert torch.allclose(bn(probe).double(), expected, atol=1e-4)
    assert not torch.allclose(plain(probe), bn(probe), atol=0.1)  # the plain one still sees mostly (0, 1)
    bn.num_batches_tracked.fill_(100_000)  # a paper-length run: the start weighs nothing, the same as plain
    plain.running_mean.copy_(bn.running_mean), plain.running_var.copy_(bn.running_var)
    assert torch.allclose(bn(probe), plain(probe), atol=1e-5)
    fresh, fresh_plain = layers.batch_norm(6).eval(), torch.nn.BatchNorm1d(6, eps=1e-3).eval()
    assert torch.equal(fresh(probe), fresh_plain(probe))  # untrained: the initial statistics, as plain


def test_heads_start_at_the_average_label_rate() -> None:
    assert 1 / (1 + math.exp(-layers.prior_logit(3862))) == pytest.approx(3 / 3862)
    assert layers.prior_logit(4) == 0.0  # a rate above one half is capped there
    h = torch.zeros(5, 16)
    logistic = layers.LogisticHead(16, 3862)
    assert torch.allclose(torch.sigmoid(logistic(h)), torch.full((5, 3862), 3 / 3862))
    moe = layers.MoeHead(16, 2, 3862)
    # two experts at the rate and the dummy at 0, gated equally: two thirds of the rate
    assert torch.allclose(torch.sigmoid(moe(h)), torch.full((5, 3862), 2 / 3 * 3 / 3862), rtol=1e-4)


def test_folded_statistics_evaluate_the_same_in_any_batch_norm_and_survive_bf16() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 6), layers.batch_norm(6))
    model.train()
    for _ in range(30):  # a short run: the raw running variance is ~0.97 + 0.03 * v
        model(torch.randn(32, 4) * 2 + 1)
    model.eval()
    probe = torch.randn(8, 4)
    expected = model(probe)
    folded = layers.folded_statistics(model, model.state_dict())
    assert int(folded["1.num_batches_tracked"]) == 0 and int(model[1].num_batches_tracked) == 30  # a copy
    plain = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.BatchNorm1d(6, eps=1e-3)).eval()
    plain.load_state_dict(folded)
    assert torch.allclose(plain(probe), expected, atol=1e-5)
    same = torch.nn.Sequential(torch.nn.Linear(4, 6), layers.batch_norm(6)).eval()
    same.load_state_dict(folded)
    assert torch.allclose(same(probe), expected, atol=1e-5)

    def through_bf16(state: dict[str, torch.Tensor]) -> float:
        same.load_state_dict({k: v.to(torch.bfloat16).float() if v.is_floating_point() else v
                              for k, v in state.items()})  # fmt: skip
        return (same(probe) - expected).abs().max().item()

    folded_error, raw_error = through_bf16(folded), through_bf16(model.state_dict())
    assert folded_error < 0.2 * raw_error  # raw statistics lose the correction's precision in bf16
