"""Training throughput of the paper-size NeXtVLAD (8G / 128K / 2048H / r8, logistic): ours vs a
straightforward PyTorch port of the TF code, with model FLOP utilisation against a measured matmul peak.

    .venv/bin/python benchmarks/bench_nextvlad.py [--batch 32] [--iters 4] [--warmup 1]

Two workloads: every video 300 frames long, and lengths drawn uniformly from [120, 300] (YouTube-8M
videos last 120-300 s at 1 frame/s). The straightforward port always computes all 300 frames, as the
TF original did; ours works on valid frames only. MFU counts the *useful* model FLOPs (valid frames
only) as 3 × the forward matmul FLOPs (forward + the two backward matmuls), divided by the time and by
the peak of a large fp32 matmul timed in the same run (bf16 under autocast on a GPU). Steps of the two
implementations are interleaved; samples/s, GFLOP/s and MFU use the best step (the median is shown too),
since a shared machine's other load only ever slows a step down.
"""

from __future__ import annotations

import argparse
import math
import os
import time
from statistics import median

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from yt8m_search.constants import AUDIO_DIM, FEATURE_DIM, MAX_FRAMES, RGB_DIM
from yt8m_search.models import build
from yt8m_search.models.layers import (
    SEGating,
    batch_norm,
    bce_loss,
    dense,
    make_classifier,
    variance_scaling_,
)

CONFIG = dict(groups=8, clusters=128, expansion=2, hidden_size=2048, gating_reduction=8, dropout=0.5)
NUM_CLASSES = 3862


# ---------------------------------------------------------------------------------------------
# The straightforward port: the TF code line by line, full T frames, masking only via attention


class PlainNeXtVLAD(nn.Module):
    def __init__(self, n: int, groups: int, clusters: int, expansion: int) -> None:
        super().__init__()
        self.g, self.k, self.wide = groups, clusters, expansion * n
        self.ng = self.wide // groups
        self.expand = dense(n, self.wide)
        self.attention = dense(self.wide, groups)
        self.cluster_weights = dense(self.wide, groups * clusters, bias=False)
        self.cluster_bn = batch_norm(groups * clusters)
        self.cluster_weights2 = nn.Parameter(torch.empty(self.ng, clusters))
        variance_scaling_(self.cluster_weights2, self.ng)
        self.vlad_bn = batch_norm(self.ng * clusters)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        b, t, _ = x.shape
        xd = self.expand(x)  # [B, T, λN]
        att = torch.sigmoid(self.attention(xd)) * mask.unsqueeze(-1)  # [B, T, G]
        att = att.reshape(b, t * self.g, 1)
        act = self.cluster_bn(self.cluster_weights(xd.reshape(b * t, self.wide)))  # [B·T, G·K]
        act = torch.softmax(act.reshape(b, t * self.g, self.k), dim=-1) * att  # [B, T·G, K]
        a = act.sum(dim=-2, keepdim=True) * self.cluster_weights2  # [B, Ng, K]
        xg = xd.reshape(b, t * self.g, self.ng)  # [B, T·G, Ng]
        vlad = torch.matmul(act.permute(0, 2, 1), xg).permute(0, 2, 1) - a  # [B, Ng, K]
        vlad = F.normalize(vlad, dim=1).reshape(b, self.ng * self.k)
        return self.vlad_bn(vlad)


class PlainNeXtVLADModel(nn.Module):
    def __init__(self, groups, clusters, expansion, hidden_size, gating_reduction, dropout) -> None:
        super().__init__()
        self.video = PlainNeXtVLAD(RGB_DIM, groups, clusters, expansion)
        self.audio = PlainNeXtVLAD(AUDIO_DIM, groups // 2, clusters // 2, expansion)
        self.dropout = nn.Dropout(dropout)
        d = self.video.ng * clusters + self.audio.ng * (clusters // 2)
        self.hidden = dense(d, hidden_size, bias=False)
        self.hidden_bn = batch_norm(hidden_size)
        self.gating = SEGating(hidden_size, gating_reduction)
        self.classifier = make_classifier("logistic", hidden_size, NUM_CLASSES, 1, False)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        mask = mask.to(x.dtype)
        h = torch.cat([self.video(x[:, :, :RGB_DIM], mask), self.audio(x[:, :, RGB_DIM:], mask)], dim=1)
        h = self.gating(self.hidden_bn(self.hidden(self.dropout(h))))
        return self.classifier(h)

    def loss(self, logits: Tensor, labels: Tensor) -> Tensor:
        return bce_loss(logits, labels)


# ---------------------------------------------------------------------------------------------


def forward_matmul_flops(valid_frames: int, batch: int) -> int:
    """Forward matmul FLOPs (2 per multiply-add) of CONFIG for ``valid_frames`` frames in total."""
    g, k, lam, h, r = (CONFIG[key] for key in ("groups", "clusters", "expansion", "hidden_size", "gating_reduction"))
    per_frame = 0
    for n, gs, ks in ((RGB_DIM, g, k), (AUDIO_DIM, g // 2, k // 2)):
        wide = lam * n
        # expansion, attention, cluster logits, aggregation (T·G rows of Ng against K)
        per_frame += 2 * (n * wide + wide * gs + wide * gs * ks + wide * ks)
    d = (lam * RGB_DIM // g) * k + (lam * AUDIO_DIM // (g // 2)) * (k // 2)
    per_video = 2 * (d * h + 2 * h * (h // r) + h * NUM_CLASSES)
    return valid_frames * per_frame + batch * per_video


def matmul_peak(device: torch.device, dtype: torch.dtype, size: int, reps: int) -> float:
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    torch.matmul(a, b)
    best = math.inf
    for _ in range(reps):  # best single product, like the model steps
        sync(device)
        start = time.perf_counter()
        torch.matmul(a, b)
        sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def make_step(model, x, mask, labels, autocast: bool):
    """One forward + backward (no optimizer step), returning its wall time in seconds."""
    device = x.device

    def step() -> float:
        sync(device)
        start = time.perf_counter()
        for p in model.parameters():
            p.grad = None
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            out = model(x, mask)
        model.loss(out, labels).backward()
        sync(device)
        return time.perf_counter() - start

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument(
        "--iters", type=int, default=None, help="timed steps per model (default 4 on CPU, 20 on GPU)",
    )
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--cpu", action="store_true", help="stay on the CPU even if CUDA is available")
    args = parser.parse_args()

    torch.set_num_threads(os.cpu_count() or 1)
    cuda = torch.cuda.is_available() and not args.cpu
    device = torch.device("cuda" if cuda else "cpu")
    iters = args.iters or (20 if cuda else 4)
    precision = "bf16 autocast" if cuda else "fp32"
    print(f"device {device} ({torch.cuda.get_device_name() if cuda else f'{torch.get_num_threads()} threads'}), "
          f"torch {torch.__version__}, {precision}, batch {args.batch}, {iters} timed steps")

    peak_dtype = torch.bfloat16 if cuda else torch.float32
    peak = matmul_peak(device, peak_dtype, 8192 if cuda else 4096, 20 if cuda else 5)
    print(f"measured matmul peak ({str(peak_dtype).removeprefix('torch.')}): {peak / 1e9:,.0f} GFLOP/s")

    torch.manual_seed(0)
    ours = build("nextvlad", **CONFIG).to(device)
    plain = PlainNeXtVLADModel(**CONFIG).to(device)
    plain.load_state_dict(ours.state_dict())  # same parameter names: identical weights
    b, t = args.batch, MAX_FRAMES
    x = torch.randn(b, t, FEATURE_DIM, device=device)
    labels = (torch.rand(b, NUM_CLASSES, device=device) < 0.001).float()
    with torch.no_grad():  # sanity: the two implementations agree (eval mode, all frames valid)
        full = torch.ones(b, t, dtype=torch.bool, device=device)
        diff = (ours.eval()(x[:4], full[:4]) - plain.eval()(x[:4], full[:4])).abs().max().item()
    print(f"max |ours - straightforward| logits, 4 videos: {diff:.2e}")

    generator = torch.Generator().manual_seed(0)
    workloads = {
        "all 300 frames": torch.full((b,), t),
        "lengths U[120, 300]": torch.randint(120, t + 1, (b,), generator=generator),
    }
    print(f"{'workload':<22}{'model':<17}{'samples/s':>10}{'(median)':>10}{'GFLOP/s':>10}{'MFU':>8}")
    for name, lengths in workloads.items():
        mask = (torch.arange(t)[None, :] < lengths[:, None]).to(device)
        flops = 3 * forward_matmul_flops(int(lengths.sum()), b)  # useful fwd + bwd FLOPs per batch
        models = {"ours": ours.train(), "straightforward": plain.train()}
        steps = {label: make_step(model, x, mask, labels, autocast=cuda) for label, model in models.items()}
        times: dict[str, list[float]] = {label: [] for label in models}
        for i in range(args.warmup + iters):  # interleaved, so drift of the machine hits both alike
            for label, step in steps.items():
                elapsed = step()
                if i >= args.warmup:
                    times[label].append(elapsed)
        # best step time: on a shared machine the least disturbed step is the best estimate
        rates = {label: b / min(ts) for label, ts in times.items()}
        for label, rate in rates.items():
            achieved = flops * rate / b
            print(
                f"{name:<22}{label:<17}{rate:>10.2f}{b / median(times[label]):>10.2f}"
                f"{achieved / 1e9:>10,.0f}{achieved / peak:>8.1%}"
            )
        print(f"{'':<22}{'ratio ours/straightforward':<27}{rates['ours'] / rates['straightforward']:>18.2f}x")


if __name__ == "__main__":
    main()
