"""The Ray Data loader and the shared collation: batches equal the TFRecord reader's decode, padding
and sharding."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from yt8m_search.constants import AUDIO_DIM, DEQUANT_BIAS, DEQUANT_SCALE, RGB_DIM
from yt8m_search.data import dequantize as numpy_dequantize
from yt8m_search.data import iter_frame_level_quantized, read_frame_level
from yt8m_search.data.batch import (
    FeatureBuffers,
    _dequantize_on_device,
    collate_frames,
    collate_table,
    collate_videos,
    dequantize_batch,
)
from yt8m_search.data.loading import iter_video_batches, read_videos
from yt8m_search.data.prepare import DataPaths

from .conftest import SMALL_CLASSES


def _reference(tfrecords: Path, split: str) -> dict[str, object]:
    return {r.id: r for path in sorted((tfrecords / split).glob("*.tfrecord")) for r in read_frame_level(str(path))}


def test_batches_equal_the_tfrecord_decode(ray_local: None, small_data: DataPaths, small_tfrecords: Path) -> None:
    reference = _reference(small_tfrecords, "train")
    seen = []
    for batch in iter_video_batches(read_videos(small_data.train), batch_size=32, num_classes=SMALL_CLASSES):
        frames = batch.features.shape[1]
        assert frames == int(batch.num_frames.max())  # padded to the batch's longest video
        for i, video_id in enumerate(batch.ids):
            ref = reference[video_id]
            assert batch.num_frames[i].item() == ref.num_frames
            expected = torch.from_numpy(ref.features[:frames])
            assert torch.equal(batch.features[i].view(torch.int32), expected.view(torch.int32))  # bit for bit
            assert batch.mask[i].sum().item() == ref.num_frames
            assert np.array_equal(np.flatnonzero(batch.labels[i].numpy()), ref.labels)
            seen.append(video_id)
    assert set(seen) == set(reference)
    # unshuffled, videos come in file order (reproducible evaluation), though shards are read in parallel
    shards = sorted(Path(small_data.train).glob("*.parquet"))
    assert len(shards) > 1
    assert seen == [i for shard in shards for i in pq.read_table(shard).column("id").to_pylist()]


def test_pad_to_300_and_device_side_dequantization(small_data: DataPaths, small_tfrecords: Path) -> None:
    reference = _reference(small_tfrecords, "validate")
    shard = sorted(Path(small_data.validation).glob("*.parquet"))[0]
    table = pq.read_table(shard).slice(0, 12)
    full = collate_table(table, num_classes=SMALL_CLASSES, pad_to=300)
    late = collate_table(table, num_classes=SMALL_CLASSES, pad_to=300, dequantize=False)
    assert late.features.dtype == torch.uint8
    moved = late.to("cpu")
    assert torch.equal(moved.features.view(torch.int32), full.features.view(torch.int32))
    for i, video_id in enumerate(full.ids):
        expected = torch.from_numpy(reference[video_id].features)
        assert torch.equal(full.features[i].view(torch.int32), expected.view(torch.int32))
    with pytest.raises(ValueError, match="pad_to"):
        collate_table(table, num_classes=SMALL_CLASSES, pad_to=301)


def test_tfrecord_videos_collate_like_their_parquet_rows(small_data: DataPaths, small_tfrecords: Path) -> None:
    """One collation for both formats: the same videos give the same batch, padded or not, quantized or not."""
    shard = sorted(Path(small_data.validation).glob("*.parquet"))[0]
    table = pq.read_table(shard).slice(0, 7)
    wanted = set(table.column("id").to_pylist())
    videos = {v.id: v for path in sorted((small_tfrecords / "validate").glob("*.tfrecord"))
              for v in iter_frame_level_quantized(str(path), num_classes=SMALL_CLASSES) if v.id in wanted}
    ordered = [videos[i] for i in table.column("id").to_pylist()]
    for pad_to, dequantize in ((None, True), (300, True), (None, False)):
        a = collate_table(table, num_classes=SMALL_CLASSES, pad_to=pad_to, dequantize=dequantize)
        b = collate_videos(ordered, num_classes=SMALL_CLASSES, pad_to=pad_to, dequantize=dequantize)
        assert a.ids == b.ids and a.features.dtype == b.features.dtype
        for name in ("features", "mask", "num_frames", "num_audio_frames", "labels"):
            assert torch.equal(getattr(a, name), getattr(b, name)), name
    empty = collate_videos([], num_classes=SMALL_CLASSES)
    assert len(empty) == 0 and empty.features.shape == (0, 1, 1152)


def test_shards_split_across_train_workers(ray_local: None, small_data: DataPaths, tmp_path: Path) -> None:
    """Each of two Ray Train workers streams its own share: disjoint, equal in size, covering the set."""
    import ray.train
    from ray.train.torch import TorchTrainer

    def loop(config: dict) -> None:
        rank = ray.train.get_context().get_world_rank()
        shard = ray.train.get_dataset_shard("train")
        ids = [i for b in iter_video_batches(shard, batch_size=16, num_classes=SMALL_CLASSES) for i in b.ids]
        Path(config["out"], f"rank{rank}.txt").write_text("\n".join(ids))

    trainer = TorchTrainer(
        loop,
        train_loop_config={"out": str(tmp_path)},
        scaling_config=ray.train.ScalingConfig(num_workers=2, resources_per_worker={"CPU": 0.5}),
        datasets={"train": read_videos(small_data.train)},
        run_config=ray.train.RunConfig(storage_path=str(tmp_path / "ray"), name="split"),
    )
    trainer.fit()
    shares = [(tmp_path / f"rank{r}.txt").read_text().split() for r in range(2)]
    everything = set(pq.read_table(small_data.train).column("id").to_pylist())
    assert len(shares[0]) == len(shares[1]) > 0
    assert not set(shares[0]) & set(shares[1])
    assert len(set(shares[0])) == len(shares[0])
    covered = set(shares[0]) | set(shares[1])
    assert covered <= everything and len(everything) - len(covered) < 2  # an equal split drops < 2 rows


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(torch.int32)


def _starter_arithmetic(quantized: torch.Tensor, rgb: list[int], audio: list[int]) -> torch.Tensor:
    """The dequantization as it stood: the whole tensor to float32, ``mul_``, ``add_``, then the
    padding of each stream set to +0.0 (the starter pads after dequantizing)."""
    x = quantized.to(torch.float32).mul_(DEQUANT_SCALE).add_(DEQUANT_BIAS)
    for i, (n, m) in enumerate(zip(rgb, audio)):
        x[i, n:, :RGB_DIM] = 0.0
        x[i, m:, RGB_DIM:] = 0.0
    return x


def test_dequantize_is_bit_identical_with_zero_padding_on_odd_lengths() -> None:
    rng = np.random.default_rng(11)
    rgb_lengths, audio_lengths = [1, 7, 300, 13, 0, 255, 299], [1, 4, 300, 13, 0, 256, 0]  # equal and unequal
    rgb = [rng.integers(0, 256, (n, RGB_DIM), dtype=np.uint8) for n in rgb_lengths]
    audio = [rng.integers(0, 256, (m, AUDIO_DIM), dtype=np.uint8) for m in audio_lengths]
    rgb[1][0, :256] = np.arange(256)  # every byte value, in both streams
    audio[1][0, :128], audio[1][1, :128] = np.arange(128), np.arange(128, 256)
    ids = [f"v{i}" for i in range(len(rgb))]
    no_labels = np.zeros(0, np.int64)
    for pad_to in (None, 300):
        quantized = collate_frames(ids, rgb, audio, no_labels, no_labels, num_classes=3, pad_to=pad_to,
                                   dequantize=False)
        assert torch.unique(quantized.features).numel() == 256
        reference = _starter_arithmetic(quantized.features, rgb_lengths, audio_lengths)
        counts = (quantized.features, quantized.num_frames, quantized.num_audio_frames)
        garbage = torch.full(reference.shape, float("nan"))  # every element must be written
        direct = collate_frames(ids, rgb, audio, no_labels, no_labels, num_classes=3, pad_to=pad_to)
        for got in (dequantize_batch(*counts), dequantize_batch(*counts, out=garbage), direct.features,
                    quantized.to("cpu").features, _dequantize_on_device(*counts, None)):
            assert got.dtype == torch.float32 and got.shape == reference.shape
            assert torch.equal(_bits(got), _bits(reference))
        padding = ~quantized.mask
        assert torch.all(_bits(direct.features[..., :RGB_DIM])[padding] == 0)  # +0.0, not -0.0 or -1.99
        assert torch.all(_bits(direct.features[4]) == 0) and torch.all(_bits(direct.features[6, :, RGB_DIM:]) == 0)
    # and the same numbers as the TFRecord reader's numpy arithmetic, for every byte value
    every = torch.arange(256, dtype=torch.uint8)
    starter = _starter_arithmetic(every.reshape(1, 1, 256), [1], [1]).reshape(256)
    assert torch.equal(_bits(torch.from_numpy(numpy_dequantize(every.numpy()))), _bits(starter))
    with pytest.raises(ValueError, match="out must be float32"):
        dequantize_batch(*counts, out=torch.empty(3))
    with pytest.raises(ValueError, match="out must be float32"):
        dequantize_batch(*counts, out=torch.empty(reference.shape, dtype=torch.float64))


def test_collate_table_reads_chunked_and_sliced_columns(small_data: DataPaths) -> None:
    """A batch spanning two blocks arrives with two chunks per column (read without combining them);
    large_binary columns and sliced arrays (non-zero offsets) collate the same."""
    shards = sorted(Path(small_data.validation).glob("*.parquet"))
    table = pa.concat_tables([pq.read_table(shards[0]).slice(3, 9), pq.read_table(shards[-1]).slice(1, 5)])
    assert table.column("rgb").num_chunks == 2
    combined = table.combine_chunks()
    large = combined.cast(combined.schema.set(combined.schema.get_field_index("rgb"),
                                              pa.field("rgb", pa.large_binary())))
    want = collate_table(combined, num_classes=SMALL_CLASSES)
    for other in (table, large):
        for dequantize in (True, False):
            got = collate_table(other, num_classes=SMALL_CLASSES, dequantize=dequantize).to("cpu")
            assert got.ids == want.ids and torch.equal(_bits(got.features), _bits(want.features))


def test_the_read_tasks_module_does_not_import_torch() -> None:
    """Ray's read tasks import ``data.loading`` to unpickle ``_read_shards``: a fresh worker must not
    pay for torch before it reads a byte."""
    code = "import sys, yt8m_search.data.loading as l; l.COLUMNS; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "False"


def test_feature_buffers_reuse_memory_only_once_nothing_refers_to_it(small_data: DataPaths) -> None:
    buffers = FeatureBuffers(keep=2)
    first = torch.from_numpy(buffers.empty((2, 3, 4)))
    view = first[1].numpy()  # a view of a view: keeps the first buffer in use
    del first
    second = torch.from_numpy(buffers.empty((2, 3, 4)))
    assert second.data_ptr() != view.__array_interface__["data"][0]
    spare = buffers.empty((2, 3, 4))  # both kept buffers in use: a fresh array, not kept
    address = view.__array_interface__["data"][0] - 12 * 4
    del view, spare
    third = torch.from_numpy(buffers.empty((1, 3, 4)))  # smaller: fits the first buffer, now free
    assert third.data_ptr() == address and third.shape == (1, 3, 4)
    del third
    bigger = buffers.empty((5, 3, 4))  # too big for any free buffer: one is replaced
    assert bigger.shape == (5, 3, 4) and bigger.__array_interface__["data"][0] != address

    # reused memory holds the previous batch's values: every element must be written again
    shard = sorted(Path(small_data.validation).glob("*.parquet"))[0]
    table = pq.read_table(shard)
    long_first = table.take(np.argsort(-table.column("num_frames").to_numpy(), kind="stable"))
    for dequantize, dtype in ((True, np.float32), (False, np.uint8)):
        buffers, addresses = FeatureBuffers(keep=1, dtype=dtype), set()
        for rows in (long_first.slice(0, 8), long_first.slice(20, 8), table.slice(3, 5)):
            pooled = collate_table(rows, num_classes=SMALL_CLASSES, dequantize=dequantize, buffers=buffers)
            fresh = collate_table(rows, num_classes=SMALL_CLASSES, dequantize=dequantize)
            assert torch.equal(pooled.features, fresh.features) and pooled.features.dtype == fresh.features.dtype
            addresses.add(pooled.features.data_ptr())
            del pooled
        assert len(addresses) == 1  # all three on the one kept buffer
        with pytest.raises(ValueError, match="buffers hold"):
            collate_table(rows, num_classes=SMALL_CLASSES, dequantize=not dequantize, buffers=buffers)


def test_a_dataset_keeps_its_feature_buffers_across_iterations() -> None:
    """Each epoch iterates the same shard anew: its batches reuse the previous epoch's memory."""
    import gc
    import weakref

    from yt8m_search.data.loading import _BUFFERS, _buffers

    class Data:  # stands in for a Dataset or a Train worker's DataIterator
        pass

    data, other = Data(), Data()
    float32 = _buffers(data, True, 2)
    assert _buffers(data, True, 2) is float32 and float32.dtype == np.float32
    assert _buffers(data, False, 2) is not float32 and _buffers(data, False, 2).dtype == np.uint8
    assert _buffers(other, True, 2) is not float32
    assert _buffers([], True, 2) is not _buffers([], True, 2)  # not weak-referenceable: per iteration
    gone = weakref.ref(data)
    del data
    gc.collect()
    assert gone() is None and other in _BUFFERS  # the buffers keep no data alive, and go with it
