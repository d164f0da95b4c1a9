"""Ready-to-train Parquet shards for a run: the synthetic dataset, generated and converted once.

The cache folder is keyed by everything that determines the data, so a second run (or a second
process: a file lock serialises them) finds the shards at once. TFRecords are kept beside the
Parquet shards: they are what a user would download, and what ``predict`` accepts too.
"""

from __future__ import annotations

import fcntl
import os
from dataclasses import dataclass
from pathlib import Path

from yt8m_search.data import parquet, synthetic

_COMPLETE = "_COMPLETE"


@dataclass(frozen=True)
class DataPaths:
    """Where a run's Parquet shards are (folders, local or s3://)."""

    train: str
    validation: str


def synthetic_dataset(
    cache: str | Path,
    key: str,
    *,
    train_videos: int,
    validation_videos: int,
    shards: int,
    seed: int,
    num_classes: int,
    max_frames: int = 300,
    progress: bool = True,
) -> DataPaths:
    """Generate (once) the synthetic TFRecords under ``cache/synthetic-<key>/`` and convert them."""
    root = Path(os.path.expanduser(str(cache))) / f"synthetic-{key}"
    root.mkdir(parents=True, exist_ok=True)
    paths = DataPaths(train=str(root / "parquet" / "train"), validation=str(root / "parquet" / "validate"))
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be generating the same data
        if (root / _COMPLETE).exists():
            return paths
        synthetic.generate_splits(
            str(root / "tfrecord"),
            train_videos=train_videos,
            val_videos=validation_videos,
            train_shards=shards,
            val_shards=max(1, shards // 2),
            seed=seed,
            num_classes=num_classes,
            max_frames=max_frames,
        )
        for split, out in (("train", paths.train), ("validate", paths.validation)):
            parquet.convert(str(root / "tfrecord" / split), out, progress=progress)
        (root / _COMPLETE).write_text("ok\n")
    return paths
