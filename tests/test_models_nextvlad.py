"""NeXtVLAD and MixNeXtVLAD: the paper's sizes, the layer against a per-video loop written from the
spec, masking, the distillation loss, reverse whitening, every option combination. (Shapes, gradients
and counts of the tiny variants: test_models.py, for every family.)"""

from __future__ import annotations

import itertools
import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from yt8m_search.constants import AUDIO_DIM, FEATURE_DIM, MAX_FRAMES, RGB_DIM
from yt8m_search.models import (
    MixtureOutput,
    build,
    count,
    hyperparameters,
    load_eigenvals,
    module_count,
    param_count,
    set_eigenvalues,
    size_bytes,
    upgrade_hparams,
)
from yt8m_search.models.layers import bce_loss
from yt8m_search.models.mix_nextvlad import MixNeXtVLADModel
from yt8m_search.models.nextvlad import NeXtVLAD, NeXtVLADModel, gather_frames

REAL_EIGENVALS = Path("/work/shared/data/yt8m_pca_eigenvals.npy")
TINY = dict(groups=4, clusters=8, hidden_size=16, gating_reduction=4, num_classes=20)


def _batch(b: int = 3, t: int = 6, lengths: list[int] | None = None, seed: int = 0, dtype=torch.float32):
    """Random features [B, T, 1152] with garbage in the padded frames, and the prefix mask [B, T]."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, t, FEATURE_DIM, generator=g, dtype=dtype)
    lengths = lengths or [t - i % t for i in range(b)]
    mask = torch.arange(t)[None, :] < torch.tensor(lengths)[:, None]
    x[~mask] = 7.0  # padding must be ignored whatever its value
    return x, mask


def _pad(x: torch.Tensor, mask: torch.Tensor, extra: int) -> tuple[torch.Tensor, torch.Tensor]:
    b = x.shape[0]
    return (
        torch.cat([x, torch.full((b, extra, x.shape[2]), -3.0, dtype=x.dtype)], dim=1),
        torch.cat([mask, torch.zeros(b, extra, dtype=torch.bool)], dim=1),
    )


@pytest.fixture(scope="module")
def fake_eigenvals() -> np.ndarray:
    """Synthetic eigenvalues in the official layout (2048, 1) float32."""
    return np.linspace(10.0, 0.01, 2048, dtype=np.float32).reshape(2048, 1)


def _build(name: str, eigenvals: np.ndarray | None = None, **hparams) -> torch.nn.Module:
    """build() with reverse whitening on and filled when ``eigenvals`` is given."""
    model = build(name, reverse_whitening=eigenvals is not None, **hparams)
    if eigenvals is not None:
        set_eigenvalues(model, eigenvals)
    return model


def _randomize_bn(model: torch.nn.Module, seed: int = 0) -> None:
    """Non-trivial BN moving statistics and affine parameters, so eval mode tests something."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm1d):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.3)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.2)


# ---------------------------------------------------------------------------------------------
# Sizes (spec §7), analytic only: the big models are never built here


def test_paper_sizes_exact_and_within_one_percent() -> None:
    local = param_count("nextvlad", groups=8, clusters=128, hidden_size=2048, gating_reduction=8)
    branch = param_count("nextvlad", groups=8, clusters=112, hidden_size=2048, gating_reduction=16)
    mixture = param_count("mix_nextvlad")  # defaults: the final submission
    assert local == 88_889_378 and abs(local / 89e6 - 1) < 0.01  # Table 1, 8G/128K/2048H
    assert branch == 78_643_170 and abs(branch / 79e6 - 1) < 0.01  # Table 2, one branch
    assert mixture == 235_935_273 and abs(mixture / 237e6 - 1) < 0.01  # Table 2 "237M"
    stored = size_bytes("mix_nextvlad", dtype="float32")
    assert stored == 944_603_556 and abs(stored / 944e6 - 1) < 0.01  # §4.3 "about 944M bytes"
    assert count("mix_nextvlad").stats == 215_616
    assert size_bytes("mix_nextvlad", dtype="float32", clusters=128) == 1_061_377_956
    assert param_count("nextvlad", classifier="moe", num_mixtures=4) == 152_175_972
    assert param_count("nextvlad", groups=16) == 53_268_014  # the code-consistent 16G/32G sizes
    assert param_count("nextvlad", groups=32) == 38_731_334
    # the whitening scales are stored (1024 floats), once per model, not per branch
    assert count("mix_nextvlad", reverse_whitening=True).stats == 215_616 + RGB_DIM
    assert count("nextvlad", reverse_whitening=True).params == local


def _random_configs(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    configs = []
    for _ in range(n):
        groups = rng.choice([2, 4, 8])
        classifier = rng.choice(["logistic", "moe"])
        reduction = rng.choice([1, 2, 4, 8])
        configs.append(
            dict(
                groups=groups,
                clusters=rng.choice([2, 4, 6, 10]),
                expansion=rng.choice([1, 2]),
                hidden_size=reduction * rng.randint(2, 6),
                gating_reduction=reduction,
                dropout=rng.choice([0.0, 0.5]),
                classifier=classifier,
                num_mixtures=rng.randint(1, 3),
                prob_gating=classifier == "moe" and rng.random() < 0.5,
                num_classes=rng.randint(3, 25),
            )
        )
    return configs


@pytest.mark.parametrize("config", _random_configs(8, seed=1))
def test_analytic_count_equals_built(config: dict) -> None:
    for whitening in (False, True):
        assert module_count(build("nextvlad", reverse_whitening=whitening, **config)) == count(
            "nextvlad", reverse_whitening=whitening, **config
        )
    mix = dict(config, num_branches=random.Random(config["num_classes"]).randint(1, 3))
    for whitening in (False, True):
        assert module_count(build("mix_nextvlad", reverse_whitening=whitening, **mix)) == count(
            "mix_nextvlad", reverse_whitening=whitening, **mix
        )


# ---------------------------------------------------------------------------------------------
# The layer against a per-video loop written straight from spec §3.2


def _loop_reference(layer: NeXtVLAD, x: torch.Tensor, mask: torch.Tensor, training: bool) -> torch.Tensor:
    """One video, one frame, one group at a time: y_jk = Σ_t Σ_g α_g α_gk (x̃_tgj − c_jk)."""
    g_, k_, ng = layer.groups, layer.clusters, layer.group_size
    we, be = layer.expand.weight, layer.expand.bias
    wa, ba = layer.attention.weight, layer.attention.bias
    wc = layer.cluster_weights.weight  # row g·K + k = (group g, cluster k)
    c2 = layer.cluster_weights2  # [Ng, K]
    cbn, vbn = layer.cluster_bn, layer.vlad_bn

    def bn(v: torch.Tensor, m: torch.nn.BatchNorm1d, mean: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
        return (v - mean) / torch.sqrt(var + m.eps) * m.weight + m.bias

    expanded = [x[b][mask[b]] @ we.T + be for b in range(x.shape[0])]  # per video [n, λN]
    logits = [e @ wc.T for e in expanded]  # [n, G·K]
    if training:  # statistics of the valid frames of the whole batch, biased variance
        rows = torch.cat(logits)
        c_mean, c_var = rows.mean(0), rows.var(0, unbiased=False)
    else:
        c_mean, c_var = cbn.running_mean, cbn.running_var
    out = []
    for e, lg in zip(expanded, logits):
        lg = bn(lg, cbn, c_mean, c_var)
        v = torch.zeros(ng, k_, dtype=x.dtype)
        for t in range(e.shape[0]):
            att = torch.sigmoid(e[t] @ wa.T + ba)  # [G]
            for g in range(g_):
                alpha = torch.softmax(lg[t, g * k_ : (g + 1) * k_], dim=0)  # [K]
                xs = e[t, g * ng : (g + 1) * ng]  # [Ng]
                v += att[g] * alpha[None, :] * (xs[:, None] - c2)
        v = v / v.norm(dim=0, keepdim=True).clamp(min=1e-12)
        out.append(torch.stack([v[j, k] for j in range(ng) for k in range(k_)]))  # index j·K + k
    flat = torch.stack(out)
    if training:
        return bn(flat, vbn, flat.mean(0), flat.var(0, unbiased=False))
    return bn(flat, vbn, vbn.running_mean, vbn.running_var)


@pytest.mark.parametrize("training", [False, True])
def test_layer_matches_per_video_loop(training: bool) -> None:
    torch.manual_seed(0)
    layer = NeXtVLAD(feature_size=12, groups=3, clusters=5, expansion=2).double()
    _randomize_bn(layer)
    layer.train(training)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 6, 12, generator=g, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0], [1, 0, 0, 0, 0, 0], [1, 1, 0, 1, 1, 0]]).bool()
    x[~mask] = 5.0
    expected = _loop_reference(layer, x, mask, training)
    got = layer(x, mask)
    assert got.shape == (4, layer.group_size * 5)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)


def test_cluster_bn_statistics_exclude_padding() -> None:
    torch.manual_seed(0)
    layer = NeXtVLAD(feature_size=8, groups=2, clusters=4).double().train()
    x, mask = _batch(3, 5, [5, 2, 3], dtype=torch.float64)
    x = x[..., :8].contiguous()
    layer(x, mask)
    valid_logits = layer.cluster_weights(layer.expand(x[mask]))
    m = layer.cluster_bn.momentum
    torch.testing.assert_close(layer.cluster_bn.running_mean, m * valid_logits.mean(0), rtol=1e-9, atol=1e-12)


# ---------------------------------------------------------------------------------------------
# Models: padding invariance, the mixture's frame mean


@pytest.mark.parametrize("whitening", [False, True])
@pytest.mark.parametrize("name", ["nextvlad", "mix_nextvlad"])
def test_eval_output_invariant_to_appended_padding(name: str, whitening: bool, fake_eigenvals: np.ndarray) -> None:
    torch.manual_seed(0)
    extra = {"num_branches": 3} if name == "mix_nextvlad" else {}
    model = _build(name, fake_eigenvals if whitening else None, **TINY, **extra).eval()
    _randomize_bn(model)
    x, mask = _batch(3, 6, [6, 4, 2])
    with torch.no_grad():
        before = model.logits(model(x, mask))
        after = model.logits(model(*_pad(x, mask, 9)))
        trimmed = model.logits(model(x[:, :4], mask[:, :4]))  # video 0 truncated: only others compared
    torch.testing.assert_close(after, before, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(trimmed[1:], before[1:], atol=1e-5, rtol=1e-5)


def test_mixture_frame_mean_emulates_the_fixed_300_frame_mean(fake_eigenvals: np.ndarray) -> None:
    """The original: whiten all 300 frames (padding = 0 before the transform), mean over 300."""
    model = _build("mix_nextvlad", fake_eigenvals, **TINY).double()
    x, mask = _batch(3, 7, [7, 4, 1], dtype=torch.float64)
    full = torch.zeros(3, MAX_FRAMES, FEATURE_DIM, dtype=torch.float64)
    full[:, :7] = x * mask[..., None]
    e = fake_eigenvals.reshape(-1)[:RGB_DIM]
    scale = torch.from_numpy(np.sqrt(e).astype(np.float32) + 1e-4).double()
    full[..., :RGB_DIM] = (full[..., :RGB_DIM] - 4 / 512) * scale
    expected = full.mean(dim=1)
    frames = gather_frames(x, mask)
    frames = frames._replace(rows=model.whitening(frames.rows, None))
    torch.testing.assert_close(model.frame_mean(frames), expected, rtol=1e-10, atol=1e-12)
    plain = build("mix_nextvlad", **TINY).double()
    torch.testing.assert_close(
        plain.frame_mean(gather_frames(x, mask)),
        (x * mask[..., None]).sum(1) / MAX_FRAMES,
        rtol=1e-10,
        atol=1e-12,
    )


# ---------------------------------------------------------------------------------------------
# Mixture loss


def _mixture_output(model: MixNeXtVLADModel, seed: int = 0) -> tuple[MixtureOutput, torch.Tensor]:
    torch.manual_seed(seed)
    x, mask = _batch(4, 5, [5, 4, 3, 2], seed=seed)
    labels = (torch.rand(4, 20) < 0.3).float()
    return model.train()(x, mask), labels


def test_mixture_loss_without_distillation_is_the_sum_of_bces() -> None:
    torch.manual_seed(0)
    model = build("mix_nextvlad", temperature=0.0, **TINY)
    assert model.distill_weight == 0.0
    out, labels = _mixture_output(model)
    plain = bce_loss(out.logits, labels)
    for z in out.branch_logits:
        plain = plain + bce_loss(z, labels)
    assert torch.equal(model.loss(out, labels), plain)
    assert model.distillation_loss(out).item() == 0.0


def test_mixture_distillation_term() -> None:
    torch.manual_seed(0)
    model = build("mix_nextvlad", temperature=2.0, **TINY)
    assert model.distill_weight == 4.0  # λ defaults to T²
    assert build("mix_nextvlad", temperature=2.0, distill_weight=0.5, **TINY).distill_weight == 0.5
    assert hyperparameters("mix_nextvlad")["temperature"] == 3.0
    out, labels = _mixture_output(model)
    kl = model.distillation_loss(out)
    assert kl.item() > 0  # independent branches differ
    bces = bce_loss(out.logits, labels) + sum(bce_loss(z, labels) for z in out.branch_logits)
    torch.testing.assert_close(model.loss(out, labels), bces + 4.0 * kl)
    # The KL written the original's way (softmax, log with +1e-8), summed over branches, mean over videos.
    qe = torch.softmax(out.logits / 2.0, -1)
    qm = torch.softmax(out.branch_logits / 2.0, -1)
    original = (qe * (torch.log(qe + 1e-8) - torch.log(qm + 1e-8))).sum(-1).sum(0).mean()
    torch.testing.assert_close(kl, original, rtol=1e-4, atol=1e-6)
    # No stop-gradient on the teacher: the gate learns from the KL term alone.
    kl.backward()
    assert model.gate.weight.grad is not None and model.gate.weight.grad.abs().sum() > 0


def test_mixture_kl_vanishes_for_identical_branches() -> None:
    torch.manual_seed(0)
    model = build("mix_nextvlad", temperature=3.0, dropout=0.0, **TINY)
    for branch in model.branches[1:]:
        branch.load_state_dict(model.branches[0].state_dict())
    out, _ = _mixture_output(model)
    assert torch.allclose(out.branch_logits[0], out.branch_logits[2])
    assert abs(model.distillation_loss(out).item()) < 1e-6  # zero up to float32 round-off
    assert len(model.l2_parameters()) == 2 * 3


# ---------------------------------------------------------------------------------------------
# Reverse whitening with the real eigenvalues


@pytest.mark.skipif(not REAL_EIGENVALS.exists(), reason="YouTube-8M PCA eigenvalues not available")
def test_reverse_whitening_with_real_eigenvalues() -> None:
    e = np.load(REAL_EIGENVALS).reshape(-1)
    assert e.shape == (2048,) and math.isclose(float(e[0]), 14.7385, rel_tol=1e-4)
    model = _build("nextvlad", load_eigenvals(REAL_EIGENVALS), **TINY)
    expected_scale = torch.from_numpy(np.sqrt(e[:RGB_DIM]) + 1e-4).float()
    torch.testing.assert_close(model.whitening.scale, expected_scale)
    assert math.isclose(model.whitening.scale[0].item(), math.sqrt(14.7385) + 1e-4, rel_tol=1e-5)
    x, mask = _batch(2, 4, [4, 2])
    rows = model.prepare(x, mask).rows  # valid frames only, transformed
    valid = x[mask]
    torch.testing.assert_close(rows[:, :RGB_DIM], (valid[:, :RGB_DIM] - 4 / 512) * expected_scale)
    assert torch.equal(rows[:, RGB_DIM:], valid[:, RGB_DIM:])  # audio untouched
    assert rows.shape == (6, FEATURE_DIM)
    assert module_count(model).stats == count("nextvlad", reverse_whitening=True, **TINY).stats
    mix = _build("mix_nextvlad", load_eigenvals(str(REAL_EIGENVALS)), num_branches=2, **TINY)
    assert all(b.whitening is None for b in mix.branches) and mix.whitening is not None
    torch.testing.assert_close(mix.whitening.scale, expected_scale)


def test_whitening_placeholder_until_the_eigenvalues_arrive(fake_eigenvals: np.ndarray) -> None:
    """Built with reverse_whitening, the scale is sqrt(1) + 1e-4 (no file is read); set_eigenvalues
    fills it in place, and a state dict carries it to a fresh model (how bundles load)."""
    model = build("nextvlad", reverse_whitening=True, **TINY).eval()
    assert torch.equal(model.whitening.scale, torch.full((RGB_DIM,), 1.0 + 1e-4))
    buffer = model.whitening.scale
    set_eigenvalues(model, fake_eigenvals)
    expected = torch.from_numpy(np.sqrt(fake_eigenvals.reshape(-1)[:RGB_DIM]) + 1e-4).float()
    assert model.whitening.scale is buffer  # filled in place
    torch.testing.assert_close(model.whitening.scale, expected)
    fresh = build("nextvlad", reverse_whitening=True, **TINY).eval()
    fresh.load_state_dict(model.state_dict())
    torch.testing.assert_close(fresh.whitening.scale, expected)
    x, mask = _batch(2, 4, [4, 2])
    with torch.no_grad():
        torch.testing.assert_close(fresh(x, mask), model(x, mask), rtol=0, atol=0)
    set_eigenvalues(model.double(), fake_eigenvals.reshape(-1))  # (N,) works too; the dtype is kept
    assert model.whitening.scale.dtype == torch.float64


def test_set_eigenvalues_rejects_unusable_values() -> None:
    model = build("mix_nextvlad", reverse_whitening=True, **TINY)
    for bad, what in [(np.ones(100), "100"), (-np.ones(2048), "non-negative"), (np.full(2048, np.nan), "finite")]:
        with pytest.raises(ValueError, match=f"pca_eigenvals: .*{what}"):
            set_eigenvalues(model, bad)
    with pytest.raises(ValueError, match="NeXtVLADModel has no reverse whitening"):
        set_eigenvalues(build("nextvlad", **TINY), np.ones(2048))


def test_old_pca_eigenvals_hparams() -> None:
    """The old path hyperparameter is gone (models take values) and upgrade_hparams translates it."""
    with pytest.raises(ValueError, match="unknown hyperparameter.*pca_eigenvals.*reverse_whitening"):
        build("nextvlad", pca_eigenvals="/data/eigenvals.npy", **TINY)
    for name in ("nextvlad", "mix_nextvlad"):
        on = build(name, **upgrade_hparams(name, dict(TINY, pca_eigenvals="/data/eigenvals.npy")))
        off = build(name, **upgrade_hparams(name, dict(TINY, pca_eigenvals=None)))
        assert on.whitening is not None and off.whitening is None
        assert "whitening.scale" in on.state_dict()  # the key old checkpoints and bundles carry


# ---------------------------------------------------------------------------------------------
# Every option combination, and argument validation


@pytest.mark.parametrize(
    "classifier, prob_gating", [("logistic", False), ("moe", False), ("moe", True)]
)
def test_every_option_combination_builds(classifier: str, prob_gating: bool, fake_eigenvals: np.ndarray) -> None:
    for (groups, clusters), whitening in itertools.product([(2, 2), (2, 6), (4, 4), (8, 16)], [False, True]):
        hp = dict(
            groups=groups, clusters=clusters, hidden_size=8, gating_reduction=2, classifier=classifier,
            num_mixtures=2, prob_gating=prob_gating, reverse_whitening=whitening, num_classes=7,
        )  # fmt: skip
        model = build("nextvlad", **hp).train()
        if whitening:
            set_eigenvalues(model, fake_eigenvals)
        x, mask = _batch(2, 3, [3, 1])
        logits = model(x, mask)
        assert logits.shape == (2, 7) and torch.isfinite(logits).all()
        assert module_count(model) == count("nextvlad", **hp)
        assert isinstance(model, NeXtVLADModel)
        assert model.video.output_size == clusters * 2 * RGB_DIM // groups
        assert model.audio.output_size == (clusters // 2) * (2 * AUDIO_DIM // (groups // 2))


@pytest.mark.parametrize(
    "hp, message",
    [
        (dict(groups=3), "groups must be even"),
        (dict(groups=0), "groups must be even"),
        (dict(clusters=5), "clusters must be even"),
        (dict(groups=6), "must divide"),
        (dict(expansion=0), "expansion"),
        (dict(hidden_size=30, gating_reduction=4), "divisible by gating_reduction"),
        (dict(dropout=1.0), "dropout"),
        (dict(dropout=-0.1), "dropout"),
        (dict(classifier="svm"), "classifier"),
        (dict(prob_gating=True), "prob_gating"),
        (dict(classifier="moe", num_mixtures=0), "num_mixtures"),
    ],
)
def test_invalid_arguments_are_reported(hp: dict, message: str) -> None:
    for name in ("nextvlad", "mix_nextvlad"):
        with pytest.raises(ValueError, match=message):
            param_count(name, **hp)
        with pytest.raises(ValueError, match=message):
            build(name, **hp)


@pytest.mark.parametrize(
    "hp, message",
    [
        (dict(num_branches=0), "num_branches"),
        (dict(temperature=-1.0), "temperature"),
        (dict(distill_weight=-1.0), "distill"),
    ],
)
def test_invalid_mixture_arguments(hp: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        param_count("mix_nextvlad", **hp)
    with pytest.raises(ValueError, match=message):
        build("mix_nextvlad", **hp)


def test_missing_eigenvalue_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="pca_eigenvals"):
        load_eigenvals(str(tmp_path / "missing.npy"))
    with pytest.raises(ValueError, match="missing.npy"):
        load_eigenvals(tmp_path / "missing.npy")
    short = tmp_path / "short.npy"
    np.save(short, np.ones(10, np.float32))
    with pytest.raises(ValueError, match=f"pca_eigenvals: {short} must hold >= {RGB_DIM}"):
        load_eigenvals(short)
    official = tmp_path / "eigenvals.npy"  # the official layout, (2048, 1) float32
    np.save(official, np.linspace(10.0, 0.01, 2048, dtype=np.float32).reshape(2048, 1))
    values = load_eigenvals(official)
    assert values.shape == (RGB_DIM,) and values.dtype == np.float32 and values[0] == 10.0


def test_loss_gradient_flows_to_masked_frames_only() -> None:
    """Padded input frames get exactly zero gradient; valid ones do not."""
    torch.manual_seed(0)
    model = build("nextvlad", dropout=0.0, **TINY).train()
    x, mask = _batch(3, 5, [5, 3, 2])
    x.requires_grad_(True)
    F.softplus(model(x, mask)).sum().backward()
    assert torch.all(x.grad[~mask] == 0)
    assert torch.all(x.grad[mask].abs().sum(-1) > 0)
