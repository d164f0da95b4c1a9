"""Analytic FLOPs (``models.flops``) against torch's ``FlopCounterMode`` on built models, driven by the
registry: every family, over its tiny variant and variations of every structural hyperparameter,
must agree exactly; and the published paper-size figures."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from yt8m_search import models
from yt8m_search.constants import FEATURE_DIM, MAX_FRAMES

# Variations applied on top of each family's tiny variant: every structural choice at least once.
HEADS: list[dict[str, Any]] = [
    {"classifier": "logistic", "prob_gating": False},
    {"classifier": "moe", "num_mixtures": 3, "prob_gating": False},
    {"classifier": "moe", "num_mixtures": 1, "prob_gating": True},
]
WILLOW: list[dict[str, Any]] = [
    *HEADS,
    {"gating": "se", "gating_reduction": 4},
    {"gating": "none"},
    {"clusters": 8, "hidden_bn_relu": True},
    {"audio": False, "input_gating": True},
    {"input_gating": True, "input_bn": False},
    {"sample_frames": 30},  # evaluation uses every frame: FLOPs do not depend on it
]
VARIATIONS: dict[str, list[dict[str, Any]]] = {
    "frame_logistic": [{"classifier": "moe", "num_mixtures": 3}],
    "nextvlad": [
        *HEADS,
        {"groups": 4, "clusters": 6, "expansion": 2},
        {"hidden_size": 12, "gating_reduction": 3},
        {"input_gating": True},
        {"reverse_whitening": True, "input_gating": True},
    ],
    "mix_nextvlad": [
        *HEADS,
        {"num_branches": 3, "temperature": 0.0},
        {"num_branches": 1, "groups": 4, "clusters": 2},
        {"input_gating": True, "reverse_whitening": True},
    ],
    "netvlad": WILLOW,
    "netrvlad": WILLOW,
    "soft_bof": [*WILLOW[:5], {"maxpool": True}, {"audio": False, "input_gating": True}, {"clusters": 32}],
    "nonlocal_netvlad": [
        *HEADS,
        {"variant": "early"},
        {"variant": "early", "audio": False, "input_gating": True},
        {"variant": "netrvlad"},
        {"variant": "netrvlad", "embedding_size": 6, "nonlocal_temperature": 2.0},
        {"variant": "late", "embedding_size": 3, "gating": "se", "gating_reduction": 2},
        {"input_gating": True, "clusters": 8},
    ],
    "gru": [
        *HEADS,
        {"num_layers": 1},
        {"num_layers": 3, "hidden_size": 5},
        {"gating": "context"},
        {"gating": "se", "gating_reduction": 4, "input_l2": False},
    ],
}
CASES = [(name, {}) for name in models.list_models()] + [
    (name, variation) for name in models.list_models() for variation in VARIATIONS.get(name, [])
]


def measured_flops(model: models.VideoModel, mask: bool = True) -> int:
    """What FlopCounterMode counts for one video of 300 frames (eval mode, CPU)."""
    x = torch.randn(1, MAX_FRAMES, FEATURE_DIM, generator=torch.Generator().manual_seed(0))
    valid = torch.ones(1, MAX_FRAMES, dtype=torch.bool) if mask else None
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model.eval()(x, valid)
    return counter.get_total_flops()


def test_every_family_is_varied() -> None:
    assert set(VARIATIONS) == set(models.list_models())


@pytest.mark.parametrize(("name", "variation"), CASES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(CASES)])
def test_flops_equal_flop_counter_mode(name: str, variation: dict[str, Any]) -> None:
    hparams = {**models.tiny_hparams(name), **variation}
    torch.manual_seed(0)
    model = models.build(name, **hparams)
    assert models.flops(name, **hparams) == measured_flops(model)


@pytest.mark.parametrize("name", models.list_models())
def test_flops_do_not_depend_on_the_mask_argument(name: str) -> None:
    model = models.build(name, **models.tiny_hparams(name))
    assert measured_flops(model, mask=False) == models.flops(name, **models.tiny_hparams(name))


def test_paper_nextvlad_is_2_92_gflop() -> None:
    # 8G / 128K / 2048H / λ2 / r8, logistic over 3862 classes: the two expansion FCs and the cluster
    # FCs on 300 frames (1.26G each), the VLAD bmm, the hidden FC 36,864 -> 2048, gating, head.
    assert models.flops("nextvlad") == 2_922_037_248
    hp = dict(groups=8, clusters=128, hidden_size=2048, expansion=2, gating_reduction=8, classifier="logistic")
    assert models.flops("nextvlad", **hp) == 2_922_037_248
    torch.manual_seed(0)
    assert measured_flops(models.build("nextvlad", **hp)) == 2_922_037_248  # the built paper-size model


def test_paper_size_gflops() -> None:
    """Each family at its paper's configuration (spec §3-5); the figures the README quotes."""
    gflops = {
        "nextvlad": models.flops("nextvlad"),  # Table 1
        "mix_nextvlad": models.flops("mix_nextvlad"),  # Table 2, 3 × (8G / 112K / 2048H / r16)
        "netvlad": models.flops("netvlad", clusters=256, prob_gating=True),  # best WILLOW single model
        "netrvlad": models.flops("netrvlad", clusters=256, prob_gating=True),
        "soft_bof": models.flops("soft_bof"),  # Soft-BoF 8K
        "gru": models.flops("gru"),  # 2 × 1200
        "nonlocal_netvlad": models.flops("nonlocal_netvlad"),  # LFNL-NetVLAD
    }
    gflops = {k: round(v / 1e9, 2) for k, v in gflops.items()}
    assert gflops == {
        "nextvlad": 2.92,
        "mix_nextvlad": 8.16,
        "netvlad": 0.98,
        "netrvlad": 0.98,  # the centres are an element-wise subtraction: same FLOPs as NetVLAD
        "soft_bof": 5.05,
        "gru": 10.36,
        "nonlocal_netvlad": 0.43,
    }


def test_input_gating_costs_one_square_matmul_per_video() -> None:
    for name, dim in [("netvlad", FEATURE_DIM), ("nextvlad", FEATURE_DIM), ("nonlocal_netvlad", FEATURE_DIM)]:
        assert models.flops(name, input_gating=True) - models.flops(name) == 2 * dim * dim
        assert models.param_count(name, input_gating=True) - models.param_count(name) == dim * dim + dim
    video_only = models.flops("netvlad", audio=False, input_gating=True) - models.flops("netvlad", audio=False)
    assert video_only == 2 * 1024 * 1024  # the gate covers the columns the model reads
    assert models.flops("mix_nextvlad", input_gating=True) - models.flops("mix_nextvlad") == 3 * 2 * dim * dim


def test_flops_grow_with_the_structure() -> None:
    assert models.flops("nextvlad", clusters=256) > models.flops("nextvlad")
    assert models.flops("netvlad", classifier="moe", num_mixtures=4) > models.flops("netvlad", num_mixtures=2)
    assert models.flops("gru", num_layers=3) > models.flops("gru")
    early, late = models.flops("nonlocal_netvlad", variant="early"), models.flops("nonlocal_netvlad")
    assert early != late
