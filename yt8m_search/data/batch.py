"""Padded torch batches of quantized videos: ``VideoBatch`` and the one collation that builds it.

Both sources of frames, Parquet rows (``collate_table``: training through Ray Data, and inference)
and TFRecord videos (``collate_videos``: inference), hand their uint8 frames to ``collate_frames``,
which writes the ``[B, T, 1152]`` layout, the multi-hot labels and the rgb mask once. So a TFRecord
file and its Parquet conversion give identical batches, and identical predictions.

Dequantization uses the starter's float32 arithmetic (then zeroes the padding), so a batch row
equals ``read_frame_level``'s ``features[:T]`` bit for bit. No ray here: inference and the
ensemble step import this module without a cluster.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch

from yt8m_search.constants import AUDIO_DIM, DEQUANT_BIAS, DEQUANT_SCALE, FEATURE_DIM, MAX_FRAMES, NUM_CLASSES, RGB_DIM
from yt8m_search.data.tfrecord import QuantizedVideo

# The frame-level Parquet columns a batch is built from (see ``yt8m_search.data.parquet.FRAME_SCHEMA``).
COLUMNS = ["id", "labels", "num_frames", "num_audio_frames", "rgb", "audio"]


@dataclass
class VideoBatch:
    """One padded batch. Shapes: features [B, T, 1152] float32 (or uint8 while still quantized),
    mask [B, T] bool (rgb frames), num_frames [B] and num_audio_frames [B] int64, labels [B, C]
    float32 multi-hot, ids: B strings."""

    features: torch.Tensor
    mask: torch.Tensor
    num_frames: torch.Tensor
    num_audio_frames: torch.Tensor
    labels: torch.Tensor
    ids: list[str]

    def __len__(self) -> int:
        return len(self.ids)

    def to(self, device: torch.device | str, non_blocking: bool = True) -> VideoBatch:
        """Move to ``device``; quantized features travel as uint8 (4x fewer bytes) and are
        dequantized there."""
        move = lambda t: t.to(device, non_blocking=non_blocking)  # noqa: E731
        features = move(self.features)
        num_frames, num_audio = move(self.num_frames), move(self.num_audio_frames)
        if features.dtype == torch.uint8:
            features = dequantize_batch(features, num_frames, num_audio)
        return VideoBatch(features, move(self.mask), num_frames, num_audio, move(self.labels), self.ids)


def dequantize_batch(quantized: torch.Tensor, num_frames: torch.Tensor, num_audio_frames: torch.Tensor) -> torch.Tensor:
    """uint8 [B, T, 1152] -> float32, dequantized like the starter, padding zeroed per stream.

    Dequantize first, then zero the padding (the starter pads after dequantizing); two separate
    float32 ops, like numpy's, so the values equal ``read_frame_level``'s exactly.
    """
    frames = quantized.shape[1]
    positions = torch.arange(frames, device=quantized.device)
    rgb_valid = positions[None, :] < num_frames[:, None]  # [B, T]
    audio_valid = positions[None, :] < num_audio_frames[:, None]
    features = quantized.to(torch.float32).mul_(DEQUANT_SCALE).add_(DEQUANT_BIAS)
    features[..., :RGB_DIM].masked_fill_(~rgb_valid[..., None], 0.0)  # +0.0, as the starter's padding
    features[..., RGB_DIM:].masked_fill_(~audio_valid[..., None], 0.0)
    return features


def collate_frames(
    ids: list[str],
    rgb: Sequence[np.ndarray],
    audio: Sequence[np.ndarray],
    label_rows: np.ndarray,
    label_ids: np.ndarray,
    *,
    num_classes: int = NUM_CLASSES,
    pad_to: int | None = None,
    dequantize: bool = True,
) -> VideoBatch:
    """The one collation: per video its quantized ``rgb`` [n, 1024] and ``audio`` [m, 128] uint8
    frames, and the (row, class id) pairs of its labels -> ``VideoBatch``.

    T is the batch's longest video (rgb or audio), or ``pad_to`` (e.g. 300) when given. With
    ``dequantize=False`` the features stay uint8 until ``VideoBatch.to(device)``: the right choice
    for a GPU, where dequantizing on the device is free and the copy is 4x smaller.
    """
    batch = len(ids)
    num_rgb = np.fromiter((len(r) for r in rgb), np.int64, batch)
    num_audio = np.fromiter((len(a) for a in audio), np.int64, batch)
    longest = int(max(num_rgb.max(initial=0), num_audio.max(initial=0), 1))
    frames = pad_to if pad_to is not None else longest
    if frames < longest or frames > MAX_FRAMES:
        raise ValueError(f"pad_to={pad_to} must lie in [{longest}, {MAX_FRAMES}] for this batch")

    quantized = np.zeros((batch, frames, FEATURE_DIM), dtype=np.uint8)
    for i in range(batch):
        quantized[i, : num_rgb[i], :RGB_DIM] = rgb[i]
        quantized[i, : num_audio[i], RGB_DIM:] = audio[i]
    rgb_t, audio_t = torch.from_numpy(num_rgb), torch.from_numpy(num_audio)
    features = torch.from_numpy(quantized)
    if dequantize:
        features = dequantize_batch(features, rgb_t, audio_t)

    labels = np.zeros((batch, num_classes), dtype=np.float32)
    labels[label_rows, label_ids] = 1.0
    return VideoBatch(
        features=features,
        mask=torch.arange(frames)[None, :] < rgb_t[:, None],
        num_frames=rgb_t,
        num_audio_frames=audio_t,
        labels=torch.from_numpy(labels),
        ids=ids,
    )


def _binary_parts(column: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(offsets [B+1] int64, data uint8) of a binary column without copying row by row."""
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    array = array.cast(pa.large_binary())
    _, offsets, data = array.buffers()
    offsets_np = np.frombuffer(offsets, dtype=np.int64)[array.offset : array.offset + len(array) + 1]
    data_np = np.frombuffer(data, dtype=np.uint8) if data is not None else np.zeros(0, np.uint8)
    return offsets_np, data_np


def _frame_views(column: pa.ChunkedArray | pa.Array, counts: np.ndarray, dim: int) -> list[np.ndarray]:
    """Each row's first ``counts[i]`` frames of ``dim`` bytes, as ``[counts[i], dim]`` views (no copy)."""
    offsets, data = _binary_parts(column)
    return [data[start : start + n * dim].reshape(n, dim) for start, n in zip(offsets[:-1].tolist(), counts.tolist())]


def collate_table(
    table: pa.Table, *, num_classes: int = NUM_CLASSES, pad_to: int | None = None, dequantize: bool = True
) -> VideoBatch:
    """Arrow batch of Parquet rows (``COLUMNS``) -> ``VideoBatch`` (see ``collate_frames``).

    Frames past 300 never reach the shards (the converter keeps the first 300, like the starter).
    """
    num_rgb = table.column("num_frames").to_numpy().astype(np.int64)
    num_audio = table.column("num_audio_frames").to_numpy().astype(np.int64)
    label_lists = table.column("labels").combine_chunks()
    rows = np.repeat(np.arange(len(num_rgb)), np.diff(label_lists.offsets.to_numpy()))
    return collate_frames(
        table.column("id").to_pylist(),
        _frame_views(table.column("rgb"), num_rgb, RGB_DIM),
        _frame_views(table.column("audio"), num_audio, AUDIO_DIM),
        rows,
        label_lists.flatten().to_numpy(),
        num_classes=num_classes,
        pad_to=pad_to,
        dequantize=dequantize,
    )


def collate_videos(
    videos: Sequence[QuantizedVideo], *, num_classes: int = NUM_CLASSES, pad_to: int | None = None,
    dequantize: bool = True,
) -> VideoBatch:
    """Quantized TFRecord videos -> ``VideoBatch``, built exactly as ``collate_table`` builds their
    Parquet conversion (the first 300 frames of each stream, like the converter)."""
    lengths = np.fromiter((len(v.labels) for v in videos), np.int64, len(videos))
    label_ids = (np.concatenate([np.asarray(v.labels, np.int64) for v in videos]) if videos
                 else np.zeros(0, np.int64))  # fmt: skip
    return collate_frames(
        [v.id for v in videos],
        [v.rgb[:MAX_FRAMES] for v in videos],
        [v.audio[:MAX_FRAMES].reshape(-1, AUDIO_DIM) for v in videos],
        np.repeat(np.arange(len(videos)), lengths),
        label_ids,
        num_classes=num_classes,
        pad_to=pad_to,
        dequantize=dequantize,
    )


__all__ = ["COLUMNS", "VideoBatch", "collate_frames", "collate_table", "collate_videos", "dequantize_batch"]
