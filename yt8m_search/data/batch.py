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

import math
import threading
import weakref
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch

from yt8m_search.constants import AUDIO_DIM, DEQUANT_BIAS, DEQUANT_SCALE, FEATURE_DIM, MAX_FRAMES, NUM_CLASSES, RGB_DIM
from yt8m_search.data.parquet import BATCH_COLUMNS as COLUMNS
from yt8m_search.data.tfrecord import QuantizedVideo


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


# float32 scalars, so numpy computes in float32 exactly as the starter (and torch's mul_/add_) do.
_SCALE = np.float32(DEQUANT_SCALE)
_BIAS = np.float32(DEQUANT_BIAS)


def dequantize_batch(
    quantized: torch.Tensor, num_frames: torch.Tensor, num_audio_frames: torch.Tensor, *,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """uint8 [B, T, 1152] -> float32, dequantized like the starter, padding zeroed per stream.

    Dequantize first, then zero the padding (the starter pads after dequantizing); two separate
    float32 ops, like numpy's, so the values equal ``read_frame_level``'s exactly. On the CPU, video
    by video and only the valid frames. ``out``: a float32 tensor of the same shape, on the same
    device, to write into instead of a new one.
    """
    if out is not None and (out.shape != quantized.shape or out.dtype != torch.float32
                            or out.device != quantized.device):
        raise ValueError(f"out must be float32 {tuple(quantized.shape)} on {quantized.device}, "
                         f"got {out.dtype} {tuple(out.shape)} on {out.device}")
    if quantized.device.type != "cpu":
        return _dequantize_on_device(quantized, num_frames, num_audio_frames, out)
    result = out if out is not None else torch.from_numpy(_empty(quantized.shape))
    source, target = quantized.contiguous().numpy(), result.numpy()
    for i, (n, m) in enumerate(zip(num_frames.tolist(), num_audio_frames.tolist(), strict=True)):
        if n == m:  # the usual case: one contiguous block
            _dequantize_into(target[i], source[i, :n], n)
        else:
            _dequantize_into(target[i, :, :RGB_DIM], source[i, :n, :RGB_DIM], n)
            _dequantize_into(target[i, :, RGB_DIM:], source[i, :m, RGB_DIM:], m)
    return result


def _dequantize_on_device(
    quantized: torch.Tensor, num_frames: torch.Tensor, num_audio_frames: torch.Tensor, out: torch.Tensor | None
) -> torch.Tensor:
    # Whole-tensor ops: on an accelerator a per-video loop would cost a kernel launch per op.
    frames = quantized.shape[1]
    positions = torch.arange(frames, device=quantized.device)
    rgb_valid = positions[None, :] < num_frames[:, None]  # [B, T]
    audio_valid = positions[None, :] < num_audio_frames[:, None]
    features = out.copy_(quantized) if out is not None else quantized.to(torch.float32)
    features.mul_(DEQUANT_SCALE).add_(DEQUANT_BIAS)
    features[..., :RGB_DIM].masked_fill_(~rgb_valid[..., None], 0.0)  # +0.0, as the starter's padding
    features[..., RGB_DIM:].masked_fill_(~audio_valid[..., None], 0.0)
    return features


def _empty(shape: int | tuple[int, ...] | torch.Size, dtype: np.dtype | type[np.generic] = np.float32) -> np.ndarray:
    # numpy, not torch.empty: numpy asks for transparent huge pages on big allocations, so a fresh
    # batch costs ~100x fewer page faults (160 x 300 x 1152 floats filled in 62 ms, not 160 ms).
    return np.empty(shape if isinstance(shape, int) else tuple(shape), dtype)


class FeatureBuffers:
    """Feature buffers (float32, or uint8 for quantized batches) for one stream of batches, each
    reused once its batch is gone.

    The kernel maps and zeroes every page of a fresh buffer on first touch, which costs about as
    much CPU as dequantizing into it; a loader's batches all have the same few sizes. A buffer is
    handed out again only when nothing refers to the array it was handed out as: a tensor made
    from it keeps that array alive, and so does every view of the tensor, however it was taken.
    """

    def __init__(self, keep: int = 4, dtype: type[np.generic] = np.float32) -> None:
        self.dtype = np.dtype(dtype)
        self._keep = keep  # the prefetched batches, the one in use, and one that is being dropped
        self._lock = threading.Lock()  # Ray Data collates in several threads
        self._slots: list[tuple[np.ndarray, weakref.ref[np.ndarray] | None]] = []  # (buffer, handed out as)

    def empty(self, shape: tuple[int, ...]) -> np.ndarray:
        """An uninitialised array of ``shape``, on a reused buffer when one is free and large enough."""
        size = math.prod(shape)
        with self._lock:
            free = [k for k, (_, out) in enumerate(self._slots) if out is None or out() is None]
            slot = next((k for k in free if self._slots[k][0].size >= size), None)
            if slot is None:
                if len(self._slots) < self._keep:
                    self._slots.append((np.empty(0, self.dtype), None))
                    slot = len(self._slots) - 1
                elif free:
                    slot = free[0]  # too small: replaced by a larger one
                else:
                    return _empty(shape, self.dtype)  # all in use: this one is not kept
                self._slots[slot] = (_empty(size, self.dtype), None)
            array = self._slots[slot][0][:size].reshape(shape)
            self._slots[slot] = (self._slots[slot][0], weakref.ref(array))
            return array


def _dequantize_into(target: np.ndarray, frames: np.ndarray, count: int) -> None:
    """``target[:count] = frames * scale + bias`` in float32, ``target[count:] = 0``.

    A converting copy then two in-place passes over one video (at most 1.4 MB: the passes run from
    cache): no temporaries, and only the valid frames are computed. Measured on one core: ~0.7x the
    speed of a bare uint8 -> float32 copy (bench_loader).
    """
    block = target[:count]
    block[...] = frames
    block *= _SCALE
    block += _BIAS
    target[count:] = 0.0  # +0.0, as the starter's padding


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
    buffers: FeatureBuffers | None = None,
) -> VideoBatch:
    """The one collation: per video its quantized ``rgb`` [n, 1024] and ``audio`` [m, 128] uint8
    frames, and the (row, class id) pairs of its labels -> ``VideoBatch``.

    T is the batch's longest video (rgb or audio), or ``pad_to`` (e.g. 300) when given. With
    ``dequantize=False`` the features stay uint8 until ``VideoBatch.to(device)``: the right choice
    for a GPU, where dequantizing on the device is free and the copy is 4x smaller. ``buffers``:
    where float32 features are written (a stream of batches reuses its memory), else new memory.
    """
    batch = len(ids)
    num_rgb = np.fromiter((len(r) for r in rgb), np.int64, batch)
    num_audio = np.fromiter((len(a) for a in audio), np.int64, batch)
    longest = int(max(num_rgb.max(initial=0), num_audio.max(initial=0), 1))
    frames = pad_to if pad_to is not None else longest
    if frames < longest or frames > MAX_FRAMES:
        raise ValueError(f"pad_to={pad_to} must lie in [{longest}, {MAX_FRAMES}] for this batch")

    dtype = np.float32 if dequantize else np.uint8
    if buffers is not None and buffers.dtype != dtype:
        raise ValueError(f"buffers hold {buffers.dtype}, this batch is {np.dtype(dtype)}")
    shape = (batch, frames, FEATURE_DIM)
    features = buffers.empty(shape) if buffers is not None else _empty(shape, dtype)
    (_dequantized_into if dequantize else _quantized_into)(features, rgb, audio)
    rgb_t, audio_t = torch.from_numpy(num_rgb), torch.from_numpy(num_audio)

    labels = np.zeros((batch, num_classes), dtype=np.float32)
    labels[label_rows, label_ids] = 1.0
    return VideoBatch(
        features=torch.from_numpy(features),
        mask=torch.arange(frames)[None, :] < rgb_t[:, None],
        num_frames=rgb_t,
        num_audio_frames=audio_t,
        labels=torch.from_numpy(labels),
        ids=ids,
    )


def _dequantized_into(features: np.ndarray, rgb: Sequence[np.ndarray], audio: Sequence[np.ndarray]) -> None:
    # One video's interleaved uint8 frames, cache-resident: one contiguous dequantizing pass per
    # video, without writing (and reading back) a padded uint8 batch.
    scratch = np.empty(features.shape[1:], np.uint8)
    for i, (r, a) in enumerate(zip(rgb, audio)):
        n, m = len(r), len(a)
        if n == m:
            scratch[:n, :RGB_DIM] = r
            scratch[:n, RGB_DIM:] = a
            _dequantize_into(features[i], scratch[:n], n)
        else:
            _dequantize_into(features[i, :, :RGB_DIM], r, n)
            _dequantize_into(features[i, :, RGB_DIM:], a, m)


def _quantized_into(features: np.ndarray, rgb: Sequence[np.ndarray], audio: Sequence[np.ndarray]) -> None:
    for i, (r, a) in enumerate(zip(rgb, audio)):
        n, m = len(r), len(a)
        features[i, :n, :RGB_DIM] = r
        features[i, n:, :RGB_DIM] = 0  # the memory may be a reused buffer's
        features[i, :m, RGB_DIM:] = a
        features[i, m:, RGB_DIM:] = 0


def _frame_views(column: pa.ChunkedArray | pa.Array, counts: np.ndarray, dim: int) -> list[np.ndarray]:
    """Each row's first ``counts[i]`` frames of ``dim`` bytes, as ``[counts[i], dim]`` views (no copy).

    Chunk by chunk: a batch that spans two blocks arrives with two chunks, and combining them
    would copy every frame once more.
    """
    chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
    views: list[np.ndarray] = []
    for chunk in chunks:
        _, offsets_buf, data_buf = chunk.buffers()
        offset_type = np.dtype(np.int64 if pa.types.is_large_binary(chunk.type) else np.int32)
        starts = np.frombuffer(offsets_buf, offset_type, count=len(chunk), offset=chunk.offset * offset_type.itemsize)
        data = np.frombuffer(data_buf, np.uint8) if data_buf is not None else np.zeros(0, np.uint8)
        rows = counts[len(views) : len(views) + len(chunk)]
        views += [data[start : start + n * dim].reshape(n, dim) for start, n in zip(starts.tolist(), rows.tolist())]
    return views


def collate_table(
    table: pa.Table, *, num_classes: int = NUM_CLASSES, pad_to: int | None = None, dequantize: bool = True,
    buffers: FeatureBuffers | None = None,
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
        buffers=buffers,
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


__all__ = [
    "COLUMNS", "FeatureBuffers", "VideoBatch", "collate_frames", "collate_table", "collate_videos", "dequantize_batch",
]
