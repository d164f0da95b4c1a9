"""TFRecord -> Parquet as Ray tasks (yt8m_search.convert): same output as the local converter,
resumable, corrupt input named."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest

from yt8m_search import convert
from yt8m_search.data import CorruptRecordError
from yt8m_search.data.parquet import convert as convert_locally


def test_ray_tasks_convert_resume_and_name_corrupt_records(ray_local: None, small_tfrecords: Path,
                                                           tmp_path: Path) -> None:
    inputs = str(small_tfrecords / "train")
    report = convert.convert_on_ray(inputs, str(tmp_path / "ray"), progress=False)
    local = convert_locally(inputs, str(tmp_path / "local"), workers=1, progress=False)
    assert [s.status for s in report.shards] == ["converted"] * len(local.shards) and report.num_rows == 160
    for a, b in zip(report.shards, local.shards):
        assert pq.read_table(a.output).equals(pq.read_table(b.output))
    Path(report.shards[0].output).unlink()  # as if the first run had been interrupted before this shard
    again = convert.convert_on_ray(inputs, str(tmp_path / "ray"), progress=False)
    assert [s.status for s in again.shards] == ["converted"] + ["skipped"] * (len(local.shards) - 1)

    bad = tmp_path / "bad.tfrecord"
    data = bytearray(Path(report.shards[1].source).read_bytes())
    data[-10] ^= 0xFF  # the last record's data CRC no longer matches
    bad.write_bytes(bytes(data))
    with pytest.raises(CorruptRecordError, match=r"bad.tfrecord, record \d+: data CRC mismatch"):
        convert.convert_on_ray(str(bad), str(tmp_path / "bad"), progress=False)
    assert convert.main([str(bad), "--output", str(tmp_path / "bad"), "--no-progress"]) == 2
    assert not list((tmp_path / "bad").glob("*.parquet"))
