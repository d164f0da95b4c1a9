"""Data layer: YouTube-8M TFRecords (read, verify, write), Parquet conversion and synthetic shards.

numpy, pyarrow and crc32c only: no Ray, no torch, so every worker and test can import it cheaply. The Parquet
and synthetic names are resolved lazily, so ``python -m yt8m_search.data.parquet`` does not import its own
module twice.
"""

from __future__ import annotations

import importlib
from typing import Any

from yt8m_search.data.errors import CorruptRecordError
from yt8m_search.data.tfrecord import (
    FrameLevelRecord,
    QuantizedVideo,
    VideoLevelRecord,
    dequantize,
    frames_to_features,
    iter_frame_level_quantized,
    iter_records,
    multi_hot,
    quantize,
    read_frame_level,
    read_video_level,
    write_frame_level,
    write_video_level,
)

_LAZY = {
    "FRAME_SCHEMA": "parquet",
    "VIDEO_SCHEMA": "parquet",
    "BadRecord": "parquet",
    "ConversionReport": "parquet",
    "ShardResult": "parquet",
    "convert": "parquet",
    "decode_frame_batch": "parquet",
    "read_parquet_videos": "parquet",
    "generate": "synthetic",
    "generate_splits": "synthetic",
}

__all__ = [
    "CorruptRecordError",
    "FrameLevelRecord",
    "QuantizedVideo",
    "VideoLevelRecord",
    "dequantize",
    "frames_to_features",
    "iter_frame_level_quantized",
    "iter_records",
    "multi_hot",
    "quantize",
    "read_frame_level",
    "read_video_level",
    "write_frame_level",
    "write_video_level",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"yt8m_search.data.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
