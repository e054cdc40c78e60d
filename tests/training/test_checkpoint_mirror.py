"""Checkpoints outlive the node: mirrored to S3 (a real S3 API over HTTP, moto's server), a run
preempted on one node resumes bit-exactly on another that starts with an empty disk; a torn or
corrupt remote checkpoint is never restored; only the last K stay in the bucket."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import boto3
import pytest
import torch
from safetensors.torch import load_file

from fineplat.basemodel import BaseModelInfo
from fineplat.training.checkpoint import MANIFEST
from fineplat.training.checkpoint_mirror import CheckpointMirror
from fineplat.training.preemption import Preempted, PreemptionFlag

CONFIG = dict(
    method="lora",
    max_steps=8,
    batch_size=4,
    checkpoint_interval=2,
    keep_checkpoints=2,
    learning_rate_multiplier=10.0,
    lora_rank=4,
    lora_alpha=8,
    max_seq_len=128,
    lora_dropout=0.1,
)
BUCKET = "fineplat-test"
KEY = "prod/checkpoints/job-1"


@pytest.fixture(scope="module")
def s3_client(s3_endpoint: str):  # type: ignore[no-untyped-def]
    client = boto3.client(
        "s3",
        endpoint_url=s3_endpoint,
        aws_access_key_id="test",
        aws_secret_access_key="test",
        region_name="us-east-1",
    )
    client.create_bucket(Bucket=BUCKET)
    return client


@pytest.fixture
def mirror(s3_client, request: pytest.FixtureRequest) -> CheckpointMirror:  # type: ignore[no-untyped-def]
    return CheckpointMirror(s3_client, BUCKET, f"{KEY}/{request.node.name}", keep=CONFIG["keep_checkpoints"])


def test_preempted_run_resumes_on_a_new_node_from_the_bucket(
    mirror: CheckpointMirror,
    train_in,
    tiny_base_model: BaseModelInfo,
    small_training_data: Path,
    tmp_path: Path,
) -> None:  # type: ignore[no-untyped-def]
    reference = train_in(CONFIG, tiny_base_model, small_training_data, tmp_path / "reference")

    node_a = tmp_path / "node-a"
    flag = PreemptionFlag()
    with pytest.raises(Preempted) as preempted:
        train_in(
            CONFIG,
            tiny_base_model,
            small_training_data,
            node_a,
            preemption=flag,
            on_step=lambda step: flag.set() if step == 5 else None,
            on_checkpoint=mirror.upload,
        )
    assert preempted.value.step == 5
    # Periodic checkpoints at steps 2 and 4, the emergency one at 5; keep 2.
    assert mirror.remote_checkpoints() == ["step-00000004", "step-00000005"]
    shutil.rmtree(node_a)  # the spot node is gone, and its disk with it

    node_b = tmp_path / "node-b"
    restored = mirror.restore(node_b / "ck")
    assert restored is not None and restored.name == "step-00000005"
    assert json.loads((restored / "state.json").read_text())["preempted"] is True
    resumed = train_in(CONFIG, tiny_base_model, small_training_data, node_b, on_checkpoint=mirror.upload)
    assert resumed.resumed_from_step == 5
    assert resumed.losses == reference.losses[5:]
    ours = load_file(str(node_b / "out" / "adapter_model.safetensors"))
    theirs = load_file(str(tmp_path / "reference" / "out" / "adapter_model.safetensors"))
    assert ours.keys() == theirs.keys()
    for name, tensor in theirs.items():
        assert torch.equal(ours[name], tensor), name
    assert mirror.remote_checkpoints() == ["step-00000006", "step-00000008"]


def test_torn_or_corrupt_remote_checkpoints_are_skipped(
    mirror: CheckpointMirror,
    s3_client,
    train_in,
    tiny_base_model: BaseModelInfo,
    small_training_data: Path,
    tmp_path: Path,
) -> None:  # type: ignore[no-untyped-def]
    train_in(
        dict(CONFIG, max_steps=4), tiny_base_model, small_training_data, tmp_path, on_checkpoint=mirror.upload
    )
    assert mirror.remote_checkpoints() == ["step-00000002", "step-00000004"]
    # A SIGKILL mid-upload: step 6's files but no manifest. Not a checkpoint.
    s3_client.put_object(
        Bucket=BUCKET, Key=f"{mirror.key}/step-00000006/weights.safetensors", Body=b"partial"
    )
    assert mirror.remote_checkpoints() == ["step-00000002", "step-00000004"]
    # Bit rot in the newest complete one: its hashes no longer match, so the older one is restored.
    s3_client.put_object(Bucket=BUCKET, Key=f"{mirror.key}/step-00000004/optimizer.pt", Body=b"corrupt")
    restored = mirror.restore(tmp_path / "new-node")
    assert restored is not None and restored.name == "step-00000002"
    assert sorted(p.name for p in (tmp_path / "new-node").iterdir()) == ["step-00000002"]
    assert (restored / MANIFEST).is_file()


def test_no_remote_checkpoint_means_a_fresh_start(mirror: CheckpointMirror, tmp_path: Path) -> None:
    assert mirror.remote_checkpoints() == []
    assert mirror.restore(tmp_path / "ck") is None
