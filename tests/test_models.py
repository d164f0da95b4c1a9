"""Generic model checks, driven by the registry: every family registered in ``list_models()`` is built
from its tiny registered variant (``tiny_hparams``) and must give logits of the right shape, train
(every parameter gets a gradient), match its analytic counter and stored size, and survive a
state-dict round trip. Family-specific numeric and paper checks live in test_models_<family>.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from yt8m_search import models
from yt8m_search.constants import FEATURE_DIM
from yt8m_search.models import MixtureOutput, registry

NAMES = models.list_models()


def _batch(lengths: list[int], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random features [B, T, 1152] with garbage in the padded frames, and the prefix mask [B, T]."""
    g = torch.Generator().manual_seed(seed)
    t = max(lengths)
    x = torch.randn(len(lengths), t, FEATURE_DIM, generator=g)
    mask = torch.arange(t)[None] < torch.tensor(lengths)[:, None]
    x[~mask] = 5.0  # padding must be ignored whatever its value
    return x, mask


def _tiny(name: str, seed: int = 0) -> models.VideoModel:
    torch.manual_seed(seed)
    return models.build(name, **models.tiny_hparams(name))


def test_every_family_has_a_tiny_variant() -> None:
    assert {"nextvlad", "mix_nextvlad", "netvlad", "netrvlad", "soft_bof", "nonlocal_netvlad", "gru"} <= set(NAMES)
    for name in NAMES:
        tiny = models.tiny_hparams(name)
        assert tiny and set(tiny) <= set(models.hyperparameters(name)), name
        assert models.param_count(name, **tiny) < models.param_count(name) / 10, name
        tiny["num_classes"] = -1  # a copy: the registered variant is not changed by its users
        assert models.tiny_hparams(name)["num_classes"] > 0


@pytest.mark.parametrize("name", NAMES)
def test_forward_shape_and_gradient_on_every_parameter(name: str) -> None:
    model = _tiny(name).train()
    num_classes = models.resolve(name, **models.tiny_hparams(name))["num_classes"]
    x, mask = _batch([5, 2, 7, 1])
    out = model(x, mask)
    logits = model.logits(out)
    assert logits.shape == (4, num_classes) and torch.isfinite(logits).all()
    if isinstance(out, MixtureOutput):
        assert out.branch_logits.dim() == 3 and out.branch_logits.shape[1:] == logits.shape
    labels = (torch.rand(4, num_classes, generator=torch.Generator().manual_seed(1)) < 0.3).float()
    loss = model.loss(out, labels)
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{name}: {pname} has no gradient"
        assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, f"{name}: {pname} receives no gradient"
    assert model.l2_parameters() and all(isinstance(p, torch.nn.Parameter) for p in model.l2_parameters())


@pytest.mark.parametrize("name", NAMES)
def test_all_valid_mask_equals_no_mask(name: str) -> None:
    model = _tiny(name).eval()
    x, _ = _batch([5, 5])
    with torch.no_grad():
        torch.testing.assert_close(
            model.logits(model(x, torch.ones(2, 5, dtype=torch.bool))), model.logits(model(x, None))
        )


@pytest.mark.parametrize("name", NAMES)
def test_analytic_count_equals_built_count(name: str) -> None:
    tiny = models.tiny_hparams(name)
    assert models.module_count(_tiny(name)) == models.count(name, **tiny)
    assert models.param_count(name, **tiny) == sum(p.numel() for p in _tiny(name).parameters())


@pytest.mark.parametrize("name", NAMES)
def test_size_bytes_is_the_stored_tensors(name: str) -> None:
    """size_bytes = every parameter and statistic (not the batch counters) at the storage dtype."""
    model, tiny = _tiny(name), models.tiny_hparams(name)
    c = models.count(name, **tiny)
    for dtype, itemsize in models.STORAGE_DTYPES.items():
        stored = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
        on_disk = sum(t.to(getattr(torch, dtype)).element_size() * t.numel() for t in stored.values())
        assert models.size_bytes(name, dtype, **tiny) == (c.params + c.stats) * itemsize == on_disk, (name, dtype)


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_round_trip(name: str) -> None:
    a, b = _tiny(name, seed=0).eval(), _tiny(name, seed=1).eval()
    x, mask = _batch([4, 1, 3])
    with torch.no_grad():
        assert not torch.allclose(a.logits(a(x, mask)), b.logits(b(x, mask)))  # really different weights
        state = a.state_dict()
        assert {k: v.shape for k, v in state.items()} == {k: v.shape for k, v in b.state_dict().items()}
        b.load_state_dict(state, strict=True)
        torch.testing.assert_close(b.logits(b(x, mask)), a.logits(a(x, mask)), rtol=0, atol=0)


@pytest.mark.parametrize("name", NAMES)
def test_set_eigenvalues_needs_reverse_whitening(name: str) -> None:
    model = _tiny(name)
    with pytest.raises(ValueError, match=f"{type(model).__name__} has no reverse whitening"):
        models.set_eigenvalues(model, np.ones(2048, np.float32))


def test_upgrade_hparams_translates_the_old_vocabulary() -> None:
    for name in ("nextvlad", "mix_nextvlad"):
        old = {"groups": 4, "pca_eigenvals": "/data/yt8m_pca/eigenvals.npy"}
        assert models.upgrade_hparams(name, old) == {"groups": 4, "reverse_whitening": True}
        assert models.upgrade_hparams(name, {"pca_eigenvals": None}) == {"reverse_whitening": False}
        assert old["pca_eigenvals"].endswith(".npy")  # the caller's dict is left alone
        assert models.upgrade_hparams(name, {"reverse_whitening": True}) == {"reverse_whitening": True}
    for name in NAMES:
        tiny = models.tiny_hparams(name)
        upgraded = models.upgrade_hparams(name, tiny)
        assert upgraded == tiny and upgraded is not tiny  # current dicts come back as a copy
    with pytest.raises(ValueError, match="unknown model"):
        models.upgrade_hparams("nope", {})


def test_register_checks_the_tiny_variant() -> None:
    def counter(**hparams: object) -> models.Count:
        return models.Count(0, 0)

    def builder(*, width: int = 4) -> models.VideoModel:
        raise AssertionError("never built")

    def flops(**hparams: object) -> int:
        return 0

    with pytest.raises(TypeError, match="tiny hyperparameters: unknown hyperparameter.*depth"):
        registry.register("_bad_tiny_name", counter, flops=flops, tiny={"depth": 2})(builder)
    with pytest.raises(TypeError, match="tiny hyperparameters: width='2' is not of type"):
        registry.register("_bad_tiny_type", counter, flops=flops, tiny={"width": "2"})(builder)
    assert "_bad_tiny_name" not in models.list_models() and "_bad_tiny_type" not in models.list_models()


def test_register_checks_the_counters_take_the_builders_keywords() -> None:
    def builder(*, width: int = 4) -> models.VideoModel:
        raise AssertionError("never built")

    def counter(*, width: int) -> models.Count:
        return models.Count(width, 0)

    def flops(*, depth: int) -> int:
        return depth

    with pytest.raises(TypeError, match="the FLOP counter takes"):
        registry.register("_bad_flops", counter, flops=flops, tiny={"width": 2})(builder)
    with pytest.raises(TypeError, match="the counter takes"):
        registry.register("_bad_counter", flops, flops=counter, tiny={"width": 2})(builder)  # type: ignore[arg-type]
    assert "_bad_flops" not in models.list_models() and "_bad_counter" not in models.list_models()


@pytest.mark.parametrize("name", NAMES)
def test_flops_checks_hyperparameters_like_param_count(name: str) -> None:
    tiny = models.tiny_hparams(name)
    assert models.flops(name, **tiny) > 0 and isinstance(models.flops(name, **tiny), int)
    assert models.flops(name, **tiny) < models.flops(name)  # the defaults are paper sizes
    with pytest.raises(ValueError, match="unknown hyperparameter"):
        models.flops(name, no_such_thing=1)
    with pytest.raises(ValueError, match="num_classes=.* is not of type"):
        models.flops(name, num_classes="10")
    with pytest.raises(ValueError, match="num_classes must be >= 1"):
        models.flops(name, **{**tiny, "num_classes": 0})
