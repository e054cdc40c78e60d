"""The launch contract between the Dagster step and `k8s_ops.train_entry`: requests and replies
survive JSON unchanged, a peer of another schema version is refused before any other field is
read, and a malformed message names the field that is wrong."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fineplat.errors import ProtocolError
from fineplat.training.config import TrainConfig
from fineplat.training.protocol import (
    PROTOCOL_VERSION,
    FailedReport,
    LaunchRequest,
    LocalRunDirs,
    MlflowTarget,
    ObjectKeys,
    PreemptedReport,
    RunSummary,
    StepReport,
    last_of,
    parse_trainer_messages,
)

REQUEST = LaunchRequest(
    job_id="router-0123456789ab",
    config=TrainConfig(method="lora", max_steps=8, lora_rank=4),
    base_model="fineplat-tiny",
    base_model_sha="b" * 64,
    base_model_dir="/models/fineplat-tiny",
    dataset_id="d" * 64,
    local_dirs=LocalRunDirs(
        data_dir="/objects/training_data/j",
        checkpoint_dir="/objects/checkpoints/j",
        output_dir="/objects/adapters/j",
    ),
    object_keys=ObjectKeys(data="training_data/j", checkpoints="checkpoints/j", output="adapters/j"),
    mlflow=MlflowTarget(tracking_uri="sqlite:///mlflow.db"),
)
SUMMARY = RunSummary(
    job_id="router-0123456789ab",
    steps=2,
    first_loss=2.5,
    final_loss=1.5,
    losses=[2.5, 1.5],
    tokens_per_second=1000.0,
    packing_efficiency=0.9,
    validation_loss=None,
    resumed_from_step=0,
    dtype="float32",
    attn_implementation="sdpa",
    wall_seconds=3.0,
    mlflow_run_id="run-1",
)
OTHER_VERSION = PROTOCOL_VERSION + 1
VERSION_MISMATCH = (
    f"schema_version {OTHER_VERSION}, but this fineplat speaks version {PROTOCOL_VERSION}; the launcher "
    r"\(Dagster code location\) and the trainer \(image or interpreter\) run different fineplat releases"
)


def test_launch_request_survives_json_unchanged() -> None:
    payload = json.loads(json.dumps(REQUEST.model_dump(mode="json")))
    assert payload["schema_version"] == PROTOCOL_VERSION
    assert LaunchRequest.parse(payload) == REQUEST


def test_launch_request_of_another_version_is_refused_before_its_fields() -> None:
    payload = {"schema_version": OTHER_VERSION, "job": "renamed in the other version"}
    with pytest.raises(ProtocolError, match=f"^launch request: {VERSION_MISMATCH}"):
        LaunchRequest.parse(payload)


def test_launch_request_without_a_version_is_refused() -> None:
    payload = REQUEST.model_dump(mode="json")
    del payload["schema_version"]
    with pytest.raises(
        ProtocolError, match=r"^launch request: schema_version None, but this fineplat speaks"
    ):
        LaunchRequest.parse(payload)


def test_a_missing_or_invalid_field_is_named() -> None:
    payload = REQUEST.model_dump(mode="json")
    del payload["base_model_sha"]
    payload["config"]["n_epochs"] = 0
    with pytest.raises(ProtocolError) as raised:
        LaunchRequest.parse(payload)
    assert str(raised.value) == (
        "launch request: config.n_epochs: Input should be greater than or equal to 1; "
        "base_model_sha: Field required; both sides report schema_version 1, so one of them was changed "
        "without bumping PROTOCOL_VERSION (fineplat/training/protocol.py)"
    )


def test_trainer_messages_are_typed_by_kind() -> None:
    sent = [
        StepReport(step=1, metrics={"loss": 2.5}),
        PreemptedReport(step=3, checkpoint="/ckpt/step-00000003"),
        FailedReport(error="step 4: loss is nan"),
        SUMMARY,
    ]
    received = parse_trainer_messages(json.loads(json.dumps([m.model_dump(mode="json") for m in sent])))
    assert received == sent
    assert last_of(received, PreemptedReport) == sent[1]
    assert last_of(received[:1], RunSummary) is None


def test_a_trainer_message_of_another_version_or_kind_is_refused() -> None:
    newer = {
        **StepReport(step=1, metrics={"loss": 2.5}).model_dump(mode="json"),
        "schema_version": OTHER_VERSION,
    }
    with pytest.raises(ProtocolError, match=f"^trainer message: {VERSION_MISMATCH}"):
        parse_trainer_messages([newer])
    unknown = {"schema_version": PROTOCOL_VERSION, "kind": "heartbeat"}
    with pytest.raises(ProtocolError, match=r"^trainer message: \(message\): Input tag 'heartbeat' found"):
        parse_trainer_messages([unknown])
    with pytest.raises(ProtocolError, match=r"^trainer message: expected a JSON object, got list"):
        parse_trainer_messages([["step", 1]])


def test_run_summary_file_round_trips_and_an_older_one_is_named(tmp_path: Path) -> None:
    path = tmp_path / "fineplat_run.json"
    SUMMARY.write(path)
    assert RunSummary.read(path) == SUMMARY
    unversioned = SUMMARY.model_dump(mode="json")
    del unversioned["schema_version"], unversioned["kind"]
    path.write_text(json.dumps(unversioned))
    with pytest.raises(ProtocolError, match=f"^{path}: schema_version None, but this fineplat speaks"):
        RunSummary.read(path)
