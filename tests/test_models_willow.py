"""WILLOW family (netvlad, netrvlad, soft_bof), non-local NetVLAD and the GRU: published sizes, exact
analytic counts, masking, frame sampling, gradients, and reference computations. (The generic checks
of every family's tiny variant: test_models.py.)"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from yt8m_search import models
from yt8m_search.models import netvlad as nv
from yt8m_search.models import nonlocal_netvlad as nl
from yt8m_search.models import pooling
from yt8m_search.models.layers import module_count

C = 20  # classes in the tiny models
SMALL = {"hidden_size": 16, "num_classes": C}
HEADS = [("logistic", 1, False), ("moe", 3, False), ("moe", 2, True)]


def _batch(lengths: list[int], t: int | None = None, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    t = t or max(lengths)
    x = torch.randn(len(lengths), t, 1152, generator=g)
    mask = torch.arange(t)[None] < torch.tensor(lengths)[:, None]
    return x * mask[..., None], mask  # zero padding, as the reader writes it


def _randomise_bn(model: nn.Module, seed: int = 1) -> None:
    """Non-trivial running statistics and affine parameters, so eval-mode BN is really exercised."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm1d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)


# ---------------------------------------------------------------------------------------------
# Published sizes (computed analytically, nothing big is built)


def test_paper_netvlad_128k_2048h_is_297m() -> None:
    # NeXtVLAD paper Table 1 "NetVLAD (128K, 2048H) 297M": two streams (video K 128, audio K 64),
    # input BN on 1152, hidden 2048 without bias + BN (+ relu6), full Context Gating, logistic head.
    kw = {"clusters": 128, "hidden_size": 2048, "hidden_bn_relu": True, "classifier": "logistic"}
    assert models.param_count("netvlad", **kw) == 297_609_622
    assert round(models.param_count("netvlad", gating="se", **kw) / 1e5) == 2945  # 294.5M with SE r=8 (§7)


def test_willow_gated_netvlad_256k() -> None:
    # The best WILLOW single model: 256K / 1024H, no relu (hidden bias), CG, MoE-2 + prob gating.
    assert models.param_count("netvlad", clusters=256, prob_gating=True) == 321_528_380
    spec = nv.family_spec("netvlad", **models.resolve("netvlad", clusters=256))
    assert spec.pooled_size == 278_528  # hidden1 alone: 278,528 x 1024 = 285,212,672 weights (§4.4)


def test_paper_netvlad_random_video_only() -> None:
    # "NetVLAD random (256K, 1024H) 274M" = 273,973,782 with BN on all 1152 input columns; our
    # video-only model normalises the 1024 columns it uses, i.e. 256 BN parameters fewer.
    kw = {"clusters": 256, "hidden_bn_relu": True, "classifier": "logistic", "audio": False}
    assert models.param_count("netvlad", **kw) == 273_973_782 - 2 * 128


def test_nonlocal_main_model_is_154_96m() -> None:
    n = models.param_count("nonlocal_netvlad")  # the defaults are the released main model ("late")
    assert n == 154_958_464
    assert abs(n - 154.96e6) / 154.96e6 < 1e-4
    # its parts (§5): MoE-8 67M, hidden layer 71M, the 3862 x 3862 prob gate 14.9M
    without_prob_gate = models.param_count("nonlocal_netvlad", prob_gating=False)
    assert n - without_prob_gate == 3862 * 3862 + 2 * 3862


def test_tencent_table1_model_sizes() -> None:
    """Tang et al. Table 1 sizes reproduce as MiB of fp32 parameters (within 1%), and the six models
    in bfloat16 make the submission's 995M (MiB)."""
    table = [
        ("nonlocal_netvlad", {"variant": "late"}, 593),
        ("nonlocal_netvlad", {"variant": "early"}, 427),
        ("nonlocal_netvlad", {"variant": "netrvlad"}, 478),
        ("soft_bof", {"clusters": 4000}, 109),
        ("soft_bof", {"clusters": 8000}, 143),
        ("gru", {"hidden_size": 1200}, 243),
    ]
    total_bf16 = 0
    for name, kw, mib in table:
        fp32 = models.param_count(name, **kw) * 4 / 2**20
        assert abs(fp32 - mib) / mib < 0.01, (name, kw, fp32)
        total_bf16 += models.size_bytes(name, "bfloat16", **kw)
    assert abs(total_bf16 / 2**20 - 995) / 995 < 0.005


# ---------------------------------------------------------------------------------------------
# Analytic counts == built counts


def _willow_configs():
    families = [("netvlad", {}), ("netrvlad", {}), ("soft_bof", {"maxpool": False}), ("soft_bof", {"maxpool": True})]
    for name, extra in families:
        k = 16 if name == "soft_bof" else 4
        for gating, (cls, mix, pg), bn_relu, input_bn, audio in itertools.product(
            nv.GATINGS, HEADS, (False, True), (False, True), (False, True)
        ):
            yield name, {
                "clusters": k, "gating": gating, "gating_reduction": 4, "classifier": cls, "num_mixtures": mix,
                "prob_gating": pg, "hidden_bn_relu": bn_relu, "input_bn": input_bn, "audio": audio, **extra, **SMALL,
            }  # fmt: skip


def _nonlocal_configs():
    heads = itertools.cycle([*HEADS, ("moe", None, True)])
    gatings = itertools.cycle(nv.GATINGS)
    for variant, emb, temp, audio, bn_relu in itertools.product(
        nl.VARIANTS, (None, 12), (None, 2.0), (False, True), (False, True)
    ):
        cls, mix, pg = next(heads)
        yield "nonlocal_netvlad", {
            "variant": variant, "clusters": 4, "embedding_size": emb, "nonlocal_temperature": temp, "audio": audio,
            "hidden_bn_relu": bn_relu, "gating": next(gatings), "gating_reduction": 4, "classifier": cls,
            "num_mixtures": mix, "prob_gating": pg, **SMALL,
        }  # fmt: skip


def _gru_configs():
    for layers, gating, (cls, mix, pg) in itertools.product((1, 2, 3), nv.GATINGS, HEADS):
        yield "gru", {"hidden_size": 8, "num_layers": layers, "gating": gating, "gating_reduction": 4,
                      "classifier": cls, "num_mixtures": mix, "prob_gating": pg, "num_classes": C}  # fmt: skip


@pytest.mark.parametrize("family", ["willow", "nonlocal", "gru"])
def test_analytic_counts_equal_built_counts(family: str) -> None:
    configs = {"willow": _willow_configs, "nonlocal": _nonlocal_configs, "gru": _gru_configs}[family]()
    seen = 0
    for name, kw in configs:
        model = models.build(name, **kw)
        assert module_count(model) == models.count(name, **kw), (name, kw)
        seen += 1
    assert seen >= 24


def test_default_models_count_without_building() -> None:
    for name in ("netvlad", "netrvlad", "soft_bof", "nonlocal_netvlad", "gru"):
        c = models.count(name)
        assert c.params > 10_000_000 and (c.stats > 0) == (name != "gru")  # the GRU has no batch norm


# ---------------------------------------------------------------------------------------------
# Forward behaviour

MODELS = [
    ("netvlad", {"clusters": 4}),
    ("netvlad", {"clusters": 4, "hidden_bn_relu": True, "gating": "se", "gating_reduction": 4,
                 "classifier": "logistic"}),  # fmt: skip
    ("netrvlad", {"clusters": 6, "prob_gating": True, "dropout": 0.2}),
    ("soft_bof", {"clusters": 16, "maxpool": True, "gating": "context", "prob_gating": True}),
    ("nonlocal_netvlad", {"clusters": 4}),  # late: MoE-8 + prob gating
    ("nonlocal_netvlad", {"variant": "early", "clusters": 4}),
    ("nonlocal_netvlad", {"variant": "netrvlad", "clusters": 4, "embedding_size": 16}),
    ("gru", {"prob_gating": True, "gating": "context"}),
]
IDS = [f"{n}-{i}" for i, (n, _) in enumerate(MODELS)]


def _build(name: str, kw: dict, sample_frames: int = 0) -> models.VideoModel:
    torch.manual_seed(0)
    extra = {"sample_frames": sample_frames} if name != "gru" else {}
    return models.build(name, **kw, **extra, **SMALL)


@pytest.mark.parametrize("name, kw", MODELS, ids=IDS)
def test_gradient_reaches_every_parameter(name: str, kw: dict) -> None:
    model = _build(name, kw, sample_frames=6).train()
    x, mask = _batch([5, 2, 7, 1])
    out = model(x, mask)
    assert out.shape == (4, C) and torch.isfinite(out).all()
    labels = (torch.rand(4, C) < 0.2).float()
    model.loss(out, labels).backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().sum() > 0, f"{pname} receives no gradient"


EVAL_CASES = [(n, kw, s) for n, kw in MODELS for s in ((0,) if n == "gru" else (0, 5))]


@pytest.mark.parametrize("name, kw, sample_frames", EVAL_CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(EVAL_CASES)])
def test_eval_output_ignores_padding(name: str, kw: dict, sample_frames: int) -> None:
    model = _build(name, kw, sample_frames)
    _randomise_bn(model)
    model.eval()
    x, mask = _batch([5, 2, 7])
    with torch.no_grad():
        out = model(x, mask)
        assert out.shape == (3, C) and torch.isfinite(out).all()
        assert torch.equal(out, model(x, mask))  # deterministic evaluation, also with sample_frames
        garbage = torch.randn(3, 4, 1152) * 100  # padding content must not matter either
        x2 = torch.cat([x, garbage], dim=1)
        mask2 = torch.cat([mask, torch.zeros(3, 4, dtype=torch.bool)], dim=1)
        assert torch.allclose(model(x2, mask2), out, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name, kw", MODELS[:7], ids=IDS[:7])
def test_training_samples_only_valid_frames(name: str, kw: dict) -> None:
    model = _build(name, kw, sample_frames=6).train()
    x, mask = _batch([5, 2, 7])
    x2 = torch.cat([x, torch.randn(3, 3, 1152) * 100], dim=1)  # more padding, with garbage in it
    mask2 = torch.cat([mask, torch.zeros(3, 3, dtype=torch.bool)], dim=1)
    torch.manual_seed(7)
    out = model(x, mask)
    torch.manual_seed(7)
    assert torch.allclose(model(x2, mask2), out, atol=1e-5, rtol=1e-5)
    torch.manual_seed(8)
    assert not torch.allclose(model(x, mask), out)  # a different draw of frames


def test_select_frames_draws_uniformly_from_valid_frames() -> None:
    t = 6
    mask = torch.tensor([[1, 0, 1, 1, 0, 0], [0, 0, 0, 0, 0, 1], [1, 1, 1, 1, 1, 1]], dtype=torch.bool)
    x = torch.where(mask, torch.arange(1.0, t + 1), torch.tensor(-1.0)).unsqueeze(-1)  # value = position + 1
    torch.manual_seed(0)
    frames, m, w = pooling.select_frames(x, mask, 3000, training=True)
    assert frames.shape == (3, 3000, 1) and m.all() and (w == 1).all()
    for b in range(3):
        valid = (torch.nonzero(mask[b]).squeeze(1) + 1).float()
        values, counts = frames[b, :, 0].unique(return_counts=True)
        assert torch.equal(values, valid)  # every valid frame, nothing else
        assert counts.min() > 0.8 * 3000 / len(valid)  # roughly uniform
    # eval: all frames, padding weight 0, valid weight S/n (the expected training-time sum)
    frames, m, w = pooling.select_frames(x, mask, 30, training=False)
    assert frames is x and torch.equal(m, mask)
    assert torch.allclose(w, mask.float() * 30 / mask.sum(1, keepdim=True))


def test_eval_frame_weight_cancels_without_a_nonlocal_block() -> None:
    x, mask = _batch([5, 2, 7])
    cases = [
        ("netvlad", {"clusters": 4}),
        ("netrvlad", {"clusters": 4}),
        ("soft_bof", {"clusters": 16, "maxpool": True}),
    ]
    for name, kw in cases:
        a, b = _build(name, kw, sample_frames=0), _build(name, kw, sample_frames=300)
        b.load_state_dict(a.state_dict())
        a.eval(), b.eval()
        assert torch.allclose(a(x, mask), b(x, mask), atol=1e-5)


# ---------------------------------------------------------------------------------------------
# Reference computations


def test_pooling_matches_a_slow_per_video_loop() -> None:
    torch.manual_seed(0)
    d, k, t = 6, 3, 5
    vlad, rvlad = pooling.VladPooling(d, k, centres=True).double(), pooling.VladPooling(d, k, centres=False).double()
    bof = pooling.SoftBoFPooling(d, k, maxpool=True).double()
    for pool in (vlad, rvlad, bof):
        _randomise_bn(pool)
        pool.eval()
    x = torch.randn(2, t, d, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 0, 1, 1, 1]], dtype=torch.bool)  # not a prefix on purpose
    got = {p: p(x, mask, mask.double()) for p in (vlad, rvlad, bof)}

    def assign(pool: nn.Module, frame: torch.Tensor) -> torch.Tensor:
        bn = pool.assign.bn
        logits = frame @ pool.assign.weight
        logits = (logits - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) * bn.weight + bn.bias
        return torch.softmax(logits, dim=0)

    for b in range(2):
        frames = [x[b, i] for i in range(t) if mask[b, i]]
        for pool, centres in ((vlad, True), (rvlad, False)):
            res = [torch.zeros(d, dtype=torch.float64) for _ in range(k)]
            for f in frames:
                a = assign(pool, f)
                for j in range(k):
                    res[j] = res[j] + a[j] * (f - pool.centres[:, j] if centres else f)
            flat = torch.zeros(d * k, dtype=torch.float64)
            for j in range(k):
                normed = res[j] / res[j].norm()
                for i in range(d):
                    flat[i * k + j] = normed[i]  # D-major, as WILLOW's reshape of [B, D, K]
            assert torch.allclose(got[pool][b], flat / flat.norm(), atol=1e-10)
        assigns = torch.stack([assign(bof, f) for f in frames])
        s, m = assigns.sum(0), assigns.max(0).values
        assert torch.allclose(got[bof][b], torch.cat([s / s.norm(), m / m.norm()]), atol=1e-10)


def test_nonlocal_block_uses_g_and_rows_sum_to_one() -> None:
    torch.manual_seed(0)
    block = nl.NonLocalBlock(6, 3, temperature=2.0).double()
    r = torch.randn(2, 4, 6, dtype=torch.float64)
    att = block.attention(r)
    assert att.shape == (2, 4, 4)
    assert torch.allclose(att.sum(-1), torch.ones(2, 4, dtype=torch.float64))
    theta, phi, g = r @ block.theta.weight.T, r @ block.phi.weight.T, r @ block.g.weight.T
    a = torch.softmax(theta @ phi.transpose(1, 2) / 2.0, dim=-1)
    out = block(r)
    assert torch.allclose(out, r + (a @ g) @ block.out.weight.T, atol=1e-12)
    assert not torch.allclose(out, r + (a @ phi) @ block.out.weight.T, atol=1e-3)  # the upstream φ-for-g bug
    with torch.no_grad():
        block.g.weight.add_(0.5)
    assert not torch.allclose(block(r), out, atol=1e-3)


@pytest.mark.parametrize("variant", nl.VARIANTS)
def test_nonlocal_model_output_depends_on_wg(variant: str) -> None:
    model = _build("nonlocal_netvlad", {"variant": variant, "clusters": 4}).eval()
    x, mask = _batch([5, 3])
    with torch.no_grad():
        out = model(x, mask)
        for pool in model.pools:
            pool.block.g.weight.mul_(3.0)
        assert not torch.allclose(model(x, mask), out, atol=1e-4)


def test_nonlocal_variant_defaults() -> None:
    def blocks(**kw):
        spec = nl.nonlocal_spec(**models.resolve("nonlocal_netvlad", **kw))
        return [(s.pooling, s.clusters, s.block.embedding_size, s.block.temperature) for s in spec.streams], spec

    late, spec = blocks()
    assert late == [("netvlad", 64, 64, 64.0), ("netvlad", 32, 32, 64.0)]
    head = (spec.num_mixtures, spec.prob_gating, spec.gating, spec.hidden_bn_relu, spec.hidden_size)
    assert head == (8, True, "context", False, 1024)
    early, spec = blocks(variant="early")
    assert early == [("netvlad", 64, 64, math.sqrt(1152))] and spec.num_mixtures == 2
    rvlad, spec = blocks(variant="netrvlad")
    assert rvlad == [("netrvlad", 64, 512, 32.0), ("netrvlad", 32, 64, math.sqrt(128))] and spec.num_mixtures == 4
    assert [b[2] for b in blocks(embedding_size=16)[0]] == [16, 8]
    assert [b[2] for b in blocks(variant="netrvlad", embedding_size=16)[0]] == [16, 2]
    assert {b[3] for b in blocks(variant="netrvlad", nonlocal_temperature=5.0)[0]} == {5.0}


def test_gru_state_is_the_final_state_of_each_layer_over_valid_frames() -> None:
    model = _build("gru", {"num_layers": 2}).eval()
    x, mask = _batch([5, 2, 7])
    mask[0] = torch.tensor([1, 0, 1, 1, 0, 1, 1], dtype=torch.bool)  # not a prefix: frames compacted in order
    with torch.no_grad():
        got = model.state(x, mask)
        for b in range(3):
            frames = F.normalize(x[b, mask[b]], dim=-1).unsqueeze(0)
            _, h_n = model.rnn(frames)  # [2, 1, H]
            assert torch.allclose(got[b], h_n[:, 0].reshape(-1), atol=1e-6)


# ---------------------------------------------------------------------------------------------
# Hyperparameter checking


def test_unknown_hyperparameter_lists_valid_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown hyperparameter\(s\) cluster_size.*clusters.*hidden_size"):
        models.build("netvlad", cluster_size=64)
    with pytest.raises(ValueError, match=r"unknown.*clusters; valid for gru: hidden_size"):
        models.build("gru", clusters=8)
    with pytest.raises(ValueError, match="embedding_size"):
        models.build("soft_bof", embedding_size=8)


@pytest.mark.parametrize(
    "name, kw, message",
    [
        ("netvlad", {"gating": "full"}, "gating must be one of"),
        ("netvlad", {"clusters": 3}, "clusters must be >= 4"),
        ("soft_bof", {"clusters": 8}, "clusters must be >= 16"),
        ("netrvlad", {"classifier": "logistic", "prob_gating": True}, "prob_gating applies"),
        ("netvlad", {"gating": "se", "hidden_size": 30, "gating_reduction": 8}, "divisible"),
        ("netvlad", {"sample_frames": -1}, "sample_frames"),
        ("nonlocal_netvlad", {"variant": "middle"}, "variant must be one of"),
        ("nonlocal_netvlad", {"embedding_size": 0, "nonlocal_temperature": -1.0}, "embedding_size.*temperature"),
        ("gru", {"num_layers": 0}, "num_layers"),
        ("netvlad", {"clusters": "64"}, "not of type"),
    ],
)
def test_bad_values_are_rejected_by_builder_and_counter(name: str, kw: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        models.param_count(name, **kw)
    with pytest.raises(ValueError, match=message):
        models.build(name, **{**kw, "num_classes": C})
