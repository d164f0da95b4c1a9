"""The smoke sweep with its data and its run folder on s3://, against a local S3 server (moto).

The sweep runs in subprocesses: the Ray instance each starts inherits the test's AWS_* settings
(endpoint and credentials), as an instance profile's would be found on a cluster.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import optuna
import pytest

from yt8m_search import results
from yt8m_search.data.prepare import synthetic_dataset

from .conftest import kill_sweep_when, run_sweep_to_the_end

SMOKE = Path(__file__).resolve().parents[1] / "search_spaces" / "smoke.yaml"
SECRET = "yt8m-test-secret-never-written"
KEY_ID = "AKIAYT8MTESTKEYID"


@pytest.mark.slow
def test_smoke_sweep_on_s3_is_resumed_and_uploads_its_bundle(
    s3_bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import boto3

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", KEY_ID)
    bucket = s3_bucket.removeprefix("s3://")
    client = boto3.client("s3")
    data = synthetic_dataset(tmp_path, "s3", train_videos=240, validation_videos=80, shards=2, seed=1,
                             num_classes=40, max_frames=20, progress=False)
    for split, folder in (("train", data.train), ("validation", data.validation)):
        for shard in sorted(Path(folder).glob("*.parquet")):
            client.upload_file(str(shard), bucket, f"data/{split}/{shard.name}")

    run = f"{s3_bucket}/runs/smoke"
    overrides = [
        "data.synthetic=null", f"data.train={s3_bucket}/data/train", f"data.validation={s3_bucket}/data/validation",
        "model.hparams.num_classes=40", "search.num_samples=2", "search.max_concurrent=1", "search.asha=null",
        "trial.epochs=2", "trial.batch_size=32", "budget.max_model_bytes=1e9",  # every trial trains
    ]
    command = [sys.executable, "-m", "yt8m_search.run", str(SMOKE), *overrides, "--output", run]

    def finished() -> bool:  # a trial's final checkpoint is on S3
        return any(key.endswith("epoch_002/state.pt") for key in _keys(client, bucket, "runs/smoke/trials/"))

    kill_sweep_when(command, finished, tmp_path / "first.log")
    assert _keys(client, bucket, "runs/smoke/summary.json") == []
    # the journal went up while the sweep ran: its finished trial, with its per-epoch GAP
    live = _study(client.get_object(Bucket=bucket, Key="runs/smoke/optuna.journal")["Body"].read(), tmp_path)
    done = [t for t in live.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert done and all(sorted(t.intermediate_values) == [1, 2] for t in done)

    resumed = run_sweep_to_the_end([*command, "--resume"], tmp_path / "resumed.log")
    assert SECRET not in resumed

    summary = json.loads(client.get_object(Bucket=bucket, Key="runs/smoke/summary.json")["Body"].read())
    assert summary["trials"]["complete"] == 2 and sum(summary["trials"].values()) == 2
    assert summary["best"]["checkpoint"].startswith(f"{run}/trials/")
    ensemble = summary["ensemble"]
    assert ensemble["path"].startswith(f"{run}/") and ensemble["members"]
    head = client.head_object(Bucket=bucket, Key=ensemble["path"].removeprefix(f"{s3_bucket}/"))
    assert 0 < head["ContentLength"] <= ensemble["budget_bytes"]
    for name in ("trials.csv", "report.html", "optuna.journal"):
        assert _keys(client, bucket, f"runs/smoke/{name}"), name
    table = results.parse_trials(client.get_object(Bucket=bucket, Key="runs/smoke/trials.csv")["Body"].read().decode())
    assert [r.number for r in table] == [0, 1]  # creation order, across the resume
    study = _study(client.get_object(Bucket=bucket, Key="runs/smoke/optuna.journal")["Body"].read(), tmp_path)
    held = [t for t in study.trials if t.state != optuna.trial.TrialState.FAIL]  # FAIL: asked, then killed
    assert [t.user_attrs["trial_id"] for t in held] == [r.trial_id for r in table]  # one study, resumed
    assert [t.state for t in held] == [optuna.trial.TrialState.COMPLETE] * 2

    # credentials only ever come from the environment: no object of the run holds them
    for key in _keys(client, bucket, "runs/smoke/"):
        body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
        assert SECRET.encode() not in body and KEY_ID.encode() not in body, key


def _study(journal: bytes, tmp_path: Path) -> optuna.Study:
    """A journal's study, from a copy in a local file (the way one reads a fetched run folder)."""
    path = tmp_path / "fetched" / "optuna.journal"
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(journal)
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))
    return optuna.load_study(study_name="smoke", storage=storage)


def _keys(client: object, bucket: str, prefix: str) -> list[str]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)  # type: ignore[attr-defined]
    return [o["Key"] for page in pages for o in page.get("Contents", [])]
