"""The GPU path, on a CUDA device only (skipped elsewhere; run them where a GPU is at hand, beside
``benchmarks/gpu_check.sh``): every registered family's recipe step under bf16 autocast, against the
same step in fp32 on the CPU; the loop's random state restoring a GPU's dropout; and the ensemble's
dense re-score on a GPU Ray actor, against the driver's on the same GPU and on the CPU."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import pytest
import torch

from yt8m_search import ensemble, models
from yt8m_search.constants import FEATURE_DIM
from yt8m_search.data.batch import VideoBatch
from yt8m_search.data.prepare import DataPaths
from yt8m_search.train import TrainConfig, make_optimizer, train_step
from yt8m_search.train.recipe import rng_state, set_rng_state

from .test_ensemble import _copy_run, fake_run  # noqa: F401  (fake_run: a fixture)
from .test_ensemble_scale import _assert_same_parts

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
CUDA = torch.device("cuda")


def _batch(name: str, size: int = 8, frames: int = 12) -> VideoBatch:
    """uint8 frames as the loader hands a GPU worker (every other video shorter), ~3 labels each."""
    num_classes = models.resolve(name, **models.tiny_hparams(name))["num_classes"]
    gen = torch.Generator().manual_seed(0)
    lengths = torch.tensor([frames if i % 2 else frames // 2 for i in range(size)])
    labels = torch.zeros(size, num_classes)
    labels.scatter_(1, torch.randint(num_classes, (size, 3), generator=gen), 1.0)
    return VideoBatch(features=torch.randint(0, 256, (size, frames, FEATURE_DIM), dtype=torch.uint8, generator=gen),
                      mask=torch.arange(frames)[None] < lengths[:, None], num_frames=lengths,
                      num_audio_frames=lengths.clone(), labels=labels, ids=[f"v{i}" for i in range(size)])  # fmt: skip


@pytest.mark.parametrize("name", models.list_models())
def test_every_family_trains_under_bf16_autocast_on_the_gpu(name: str) -> None:
    torch.manual_seed(0)
    # no random draws in the step (dropout, frame sampling): the CPU and the GPU see the same network
    off = {k: 0 for k in ("dropout", "sample_frames") if k in models.hyperparameters(name)}
    cfg = TrainConfig(model=name, hparams={**models.tiny_hparams(name), **off}, batch_size=8, learning_rate=1e-2)
    model = models.build(name, **cfg.hparams).train()
    on_gpu = copy.deepcopy(model).to(CUDA)
    batch = _batch(name)
    cpu_loss = train_step(model, make_optimizer(model, cfg), batch.to("cpu"), cfg, 0).item()  # fp32, dequantized
    optimizer = make_optimizer(on_gpu, cfg)
    losses = [train_step(on_gpu, optimizer, batch.to(CUDA), cfg, 0).item() for _ in range(30)]
    # the first step's loss (before any update) is the CPU's within bf16's 3 significant digits
    assert losses[0] == pytest.approx(cpu_loss, rel=3e-2)
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in on_gpu.parameters())
    assert losses[-1] < 0.8 * losses[0], losses  # it fits the one batch: the bf16 updates are real


def test_a_restored_random_state_replays_the_gpus_dropout() -> None:
    torch.zeros(1, device=CUDA)  # CUDA initialised, as in a GPU trial
    state = rng_state()
    assert "cuda" in state
    first = torch.nn.functional.dropout(torch.ones(4096, device=CUDA), 0.5)
    set_rng_state(state)
    assert torch.equal(torch.nn.functional.dropout(torch.ones(4096, device=CUDA), 0.5), first)


def test_the_ray_rescore_on_a_gpu_equals_the_driver_rescore(fake_run: Path, small_data: DataPaths,  # noqa: F811
                                                            ray_local: None, tmp_path: Path) -> None:
    import ray

    from yt8m_search.rescore import rescore_on_ray

    assert ray.cluster_resources().get("GPU", 0) >= 1
    run_dir = _copy_run(fake_run, tmp_path)
    job = ensemble.RescoreJob((ensemble.Scored(path=ensemble.run(str(run_dir)).path),), small_data.validation,
                              holdout_fraction=0.3, batch_size=16)  # fmt: skip
    lines: list[str] = []
    on_ray = rescore_on_ray(job, lines.append)  # the cluster has a GPU: one actor on it
    assert any("on Ray: 1 actor(s) on cuda" in line for line in lines), lines
    # the same GPU, batches padded alike or not (kernels may sum in another order): float32 rounding
    _assert_same_parts(on_ray, ensemble.rescore_in_driver(dataclasses.replace(job, device="cuda"), lines.append),
                       tol=1e-6)
    # and the CPU's figures: float32 probabilities from other kernels, so only near-ties may swap
    _assert_same_parts(on_ray, ensemble.rescore_in_driver(dataclasses.replace(job, device="cpu"), lines.append),
                       tol=1e-4)
