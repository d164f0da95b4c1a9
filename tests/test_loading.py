"""The Ray Data loader and the shared collation: batches equal the TFRecord reader's decode, padding
and sharding."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from yt8m_search.data import iter_frame_level_quantized, read_frame_level
from yt8m_search.data.batch import collate_table, collate_videos
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
