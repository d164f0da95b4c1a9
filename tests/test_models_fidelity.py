"""Paper fidelity of the models (issue 16): the non-local NetVLAD's invariance to video length, the
MoE head's Xavier initialisation, and S3D-G's input feature gating (``input_gating``) in every VLAD
family and its search space."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from yt8m_search import config, models
from yt8m_search.constants import FEATURE_DIM, MAX_FRAMES, NUM_CLASSES
from yt8m_search.models import layers, pooling
from yt8m_search.models import netvlad as nv
from yt8m_search.models import nonlocal_netvlad as nl

SPACES = Path(__file__).resolve().parents[1] / "search_spaces"
VLAD_FAMILIES = ["nextvlad", "mix_nextvlad", "netvlad", "netrvlad", "soft_bof", "nonlocal_netvlad"]


def _batch(lengths: list[int], seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """float64 features [B, T, 1152] with garbage in the padding, and the prefix mask [B, T]."""
    g = torch.Generator().manual_seed(seed)
    t = max(lengths)
    x = torch.randn(len(lengths), t, FEATURE_DIM, generator=g, dtype=torch.float64)
    return x, torch.arange(t)[None] < torch.tensor(lengths)[:, None]


def _trained_like(model: nn.Module, x: torch.Tensor, mask: torch.Tensor, block_scale: float = 1.5) -> None:
    """Weights as training leaves them, where it matters here: BN running statistics of the data
    (one train-mode pass, cumulative averages) and sharper non-local projections. At init the input BN
    assumes unit variance and shrinks the L2-normalised frames ~34×, hiding the attention's length
    dependence."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm1d):
            m.momentum = None
            m.reset_running_stats()
    model.train()
    with torch.no_grad():
        model(x, mask)
        for m in model.modules():
            if isinstance(m, nl.NonLocalBlock):
                for proj in (m.theta, m.phi, m.g, m.out):
                    proj.weight.mul_(block_scale)
    model.eval()


def _repeat_each_frame(x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The same videos with every frame shown twice in a row: n valid frames -> 2n, same content."""
    return x.repeat_interleave(2, dim=1), mask.repeat_interleave(2, dim=1)


def _weight_per_valid_frame(x: torch.Tensor, mask: torch.Tensor, sample_frames: int, training: bool) -> Any:
    """The aggregation before the fix: a plain sum over the n valid frames (weight 1)."""
    return x, mask, mask.to(x.dtype)


# ---------------------------------------------------------------------------------------------
# Item 2: the non-local NetVLAD does not depend on the video's length


def test_select_frames_weights_the_valid_frames_as_the_release_sums() -> None:
    x, mask = _batch([5, 2, 7])
    n = mask.sum(1, keepdim=True).double()
    for training in (False, True):  # S = 0: all valid frames in both modes, each 300/n
        frames, m, w = pooling.select_frames(x, mask, 0, training=training)
        assert frames is x and torch.equal(m, mask)
        torch.testing.assert_close(w, mask.double() * MAX_FRAMES / n, rtol=0, atol=0)
        assert torch.allclose(w.sum(1), torch.full((3,), float(MAX_FRAMES), dtype=torch.float64))
    _, _, w = pooling.select_frames(x, mask, 30, training=False)  # eval with S: the S-frame sum
    torch.testing.assert_close(w.sum(1), torch.full((3,), 30.0, dtype=torch.float64))
    _, m, w = pooling.select_frames(x, mask, 30, training=True)
    assert torch.equal(w, torch.ones(3, 30, dtype=torch.float64)) and bool(m.all())
    _, _, w = pooling.select_frames(x, torch.zeros_like(mask), 0, training=False)  # no valid frame
    assert torch.equal(w, torch.zeros_like(w))


@pytest.mark.parametrize("variant", nl.VARIANTS)
def test_nonlocal_output_does_not_change_when_every_frame_is_repeated(
    variant: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    torch.manual_seed(0)
    model = models.build("nonlocal_netvlad", variant=variant, clusters=8, hidden_size=16, num_classes=10).double()
    x, mask = _batch([40, 25, 60])
    _trained_like(model, x, mask)
    x2, mask2 = _repeat_each_frame(x, mask)
    with torch.no_grad():
        after = (model(x, mask) - model(x2, mask2)).abs().max().item()
        monkeypatch.setattr(nv, "select_frames", _weight_per_valid_frame)
        before = (model(x, mask) - model(x2, mask2)).abs().max().item()
    assert before > 1e-2  # summed over n frames, the block's input scales with n (the logits' with n²)
    assert after < 1e-11  # float64 error only


@pytest.mark.parametrize("name", ["netvlad", "netrvlad", "soft_bof"])
def test_plain_willow_poolings_never_depended_on_the_length(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    model = models.build(name, **models.tiny_hparams(name)).double()
    x, mask = _batch([40, 25, 60])
    _trained_like(model, x, mask)
    x2, mask2 = _repeat_each_frame(x, mask)
    with torch.no_grad():
        out = model(x, mask)
        assert (out - model(x2, mask2)).abs().max().item() < 1e-11
        monkeypatch.setattr(nv, "select_frames", _weight_per_valid_frame)
        assert (out - model(x2, mask2)).abs().max().item() < 1e-11  # the normalisations cancel any weight


def test_nonlocal_output_does_not_depend_on_the_padding_or_batch_neighbours() -> None:
    torch.manual_seed(0)
    model = models.build("nonlocal_netvlad", clusters=8, hidden_size=16, num_classes=10).double()
    x, mask = _batch([40, 25, 60])
    _trained_like(model, x, mask)
    with torch.no_grad():
        batch = model(x, mask)
        for b, n in enumerate([40, 25, 60]):
            alone = model(x[b : b + 1, :n], mask[b : b + 1, :n])
            torch.testing.assert_close(alone, batch[b : b + 1], rtol=0, atol=1e-12)


# ---------------------------------------------------------------------------------------------
# Item 4: the MoE head's Xavier (Glorot uniform) initialisation


def _old_variance_scaling_std(fan_in: int) -> float:
    """The std of slim's variance scaling (truncated normal, std sqrt(2.6 / fan_in), cut at 2σ)."""
    a = 2.0
    phi = math.exp(-a * a / 2) / math.sqrt(2 * math.pi)
    z = math.erf(a / math.sqrt(2))
    return math.sqrt(2.6 / fan_in) * math.sqrt(1 - 2 * a * phi / z)


@pytest.mark.parametrize(("hidden", "mixtures", "classes"), [(1024, 2, NUM_CLASSES), (300, 4, 500)])
def test_moe_gate_and_expert_weights_are_glorot_uniform(hidden: int, mixtures: int, classes: int) -> None:
    torch.manual_seed(0)
    head = layers.MoeHead(hidden, mixtures, classes, prob_gating=True)
    for weight, fan_out in ((head.gates.weight, classes * (mixtures + 1)), (head.experts.weight, classes * mixtures)):
        assert weight.shape == (fan_out, hidden)
        limit = math.sqrt(6.0 / (hidden + fan_out))  # TF's xavier_initializer(uniform=True)
        w = weight.detach().double()
        assert w.abs().max().item() <= limit and w.abs().max().item() > 0.999 * limit  # fills U(-a, a)
        assert abs(w.mean().item()) < 1e-3 * limit
        assert w.std().item() == pytest.approx(limit / math.sqrt(3), rel=2e-3)  # uniform: a / sqrt(3)
        sample = w.flatten()[:200_000]
        for q in (0.1, 0.25, 0.5, 0.75, 0.9):  # uniform quantiles, not a normal's
            assert torch.quantile(sample, q).item() == pytest.approx(limit * (2 * q - 1), abs=0.01 * limit)
        # what it replaced here: variance scaling gave ~3× the std (~10× the variance)
        assert 2.5 < _old_variance_scaling_std(hidden) / w.std().item() < 4.0
    assert torch.equal(head.experts.bias, torch.full_like(head.experts.bias, layers.prior_logit(classes)))


def test_models_use_the_glorot_moe_head() -> None:
    torch.manual_seed(0)
    model = models.build("netvlad", clusters=4, hidden_size=64, num_classes=50)
    limit = math.sqrt(6.0 / (64 + 50 * 3))
    assert model.classifier.gates.weight.abs().max().item() <= limit
    assert model.classifier.gates.weight.std().item() == pytest.approx(limit / math.sqrt(3), rel=0.05)


# ---------------------------------------------------------------------------------------------
# Item 9: S3D-G input feature gating


def test_input_gating_is_a_per_channel_gate_from_the_masked_mean() -> None:
    torch.manual_seed(0)
    gating = layers.InputGating(6).double()
    x = torch.randn(2, 5, 6, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 0, 1, 1, 1]], dtype=torch.bool)  # not a prefix on purpose
    out = gating(x, mask)
    for b in range(2):
        mean = x[b][mask[b]].mean(0)  # [6], the valid frames only
        gate = torch.sigmoid(mean @ gating.fc.weight.T + gating.fc.bias)
        torch.testing.assert_close(out[b], x[b] * gate, rtol=0, atol=1e-14)  # same gate for every frame
    torch.testing.assert_close(gating(x, None), gating(x, torch.ones(2, 5, dtype=torch.bool)), rtol=0, atol=0)
    x2 = x.clone()
    x2[~mask] = 100.0  # padding never reaches the mean
    torch.testing.assert_close(gating(x2, mask)[mask], out[mask], rtol=0, atol=0)
    no_frames = torch.zeros(2, 5, dtype=torch.bool)
    assert torch.equal(layers.masked_mean(x, no_frames), torch.zeros(2, 6, dtype=torch.float64))


def _gated(name: str, seed: int = 0, **extra: Any) -> models.VideoModel:
    torch.manual_seed(seed)
    return models.build(name, **{**models.tiny_hparams(name), "input_gating": True, **extra})


@pytest.mark.parametrize("name", VLAD_FAMILIES)
def test_input_gating_is_counted_trains_and_ignores_padding(name: str) -> None:
    tiny = {**models.tiny_hparams(name), "input_gating": True}
    model = _gated(name).train()
    assert models.module_count(model) == models.count(name, **tiny)
    branches = models.resolve(name, **tiny).get("num_branches", 1)
    extra = models.param_count(name, **tiny) - models.param_count(name, **models.tiny_hparams(name))
    assert extra == branches * (FEATURE_DIM**2 + FEATURE_DIM)  # one gate on the 1152 columns per branch
    gates = [m for m in model.modules() if isinstance(m, layers.InputGating)]
    assert len(gates) == branches
    x, mask = _batch([6, 3, 4], seed=2)
    x, num_classes = x.float(), tiny["num_classes"]
    out = model(x, mask)
    model.loss(out, (torch.rand(3, num_classes) < 0.3).float()).backward()
    for gate in gates:
        assert gate.fc.weight.grad is not None and gate.fc.weight.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        padded = torch.cat([x, torch.full((3, 4, FEATURE_DIM), 7.0)], dim=1)
        padded_mask = torch.cat([mask, torch.zeros(3, 4, dtype=torch.bool)], dim=1)
        reference = model.logits(model(x, mask))
        torch.testing.assert_close(model.logits(model(padded, padded_mask)), reference, rtol=1e-5, atol=1e-5)
        for gate in gates:
            gate.fc.bias.add_(3.0)  # a different gate changes the prediction: it is in the path
        assert not torch.allclose(model.logits(model(x, mask)), reference, atol=1e-4)


@pytest.mark.parametrize("name", VLAD_FAMILIES)
def test_input_gating_off_keeps_old_state_dicts_loading(name: str) -> None:
    plain = models.build(name, **models.tiny_hparams(name))
    off = models.build(name, **models.tiny_hparams(name), input_gating=False)
    assert models.hyperparameters(name)["input_gating"] is False
    assert list(off.state_dict()) == list(plain.state_dict())
    assert not any("input_gating" in key for key in plain.state_dict())
    off.load_state_dict(plain.state_dict(), strict=True)
    gated_keys = set(_gated(name).state_dict()) - set(plain.state_dict())
    assert gated_keys and all(key.endswith(("input_gating.fc.weight", "input_gating.fc.bias")) for key in gated_keys)


def test_nextvlad_input_gate_sees_the_whitened_valid_frames() -> None:
    model = _gated("nextvlad", reverse_whitening=True).eval()
    x, mask = _batch([6, 3], seed=3)
    x = x.float()
    seen: list[torch.Tensor] = []
    model.input_gating.register_forward_hook(lambda mod, args, out: seen.append(args[0]))
    with torch.no_grad():
        model(x, mask)
    assert seen[0].shape == x.shape
    torch.testing.assert_close(seen[0][mask], model.whitening(x, mask)[mask])  # the transformed frames
    assert torch.count_nonzero(seen[0][~mask]) == 0  # padding rows are zeros, and out of the mean


def test_vlad_family_space_searches_input_gating() -> None:
    spec = config.load(SPACES / "vlad_family.yaml")
    (param,) = [p for p in spec.parameters if p.name == "input_gating"]
    assert param.path == "model.hparams.input_gating" and sorted(param.possible_values()) == [False, True]
    families = dict(param.when)["family"]
    assert set(families) == {"nextvlad", "netvlad", "netrvlad", "soft_bof", "nonlocal_netvlad"}
    assert all("input_gating" in models.hyperparameters(f) for f in families)
    assert "input_gating" not in models.hyperparameters("gru")
