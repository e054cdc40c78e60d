"""Lineage: one call answers an auditor's questions about a deployed model."""

from __future__ import annotations

import json
from collections.abc import Callable

from fineplat.registry import DatasetArtifact, Job, ModelArtifact, Registry

BASE_SHA = "b" * 64  # the factories' base model SHA (conftest.py)
DATASET_ID = "d" * 64  # the factories' dataset content hash (conftest.py)
DatasetFactory = Callable[..., DatasetArtifact]  # the add_dataset fixture (conftest.py)
JobFactory = Callable[..., Job]  # the add_job fixture (conftest.py)
ModelFactory = Callable[..., ModelArtifact]  # the add_model fixture (conftest.py)


def test_lineage_names_base_model_dataset_job_evaluation_and_stages(
    registry: Registry, add_dataset: DatasetFactory, add_job: JobFactory, add_model: ModelFactory
) -> None:
    add_dataset(registry, dataset_id="old", name="support-chat")
    dataset = add_dataset(registry, name="support-chat")  # version 2 is the one trained on
    job = add_job(registry, "job-1", dagster_run_id="run-abc", mlflow_run_id="mlf-1")
    registry.update_job("job-1", status="succeeded", current_step=300)
    model = add_model(registry, "support-bot")
    registry.transition(model.id, "staging", actor="ci", reason="gates passed")

    lineage = registry.lineage(model.id)

    history = lineage.pop("stage_history")
    assert [(c["from_stage"], c["to_stage"], c["actor"], c["reason"]) for c in history] == [
        (None, "dev", "fineplat", "registered"),
        ("dev", "staging", "ci", "gates passed"),
    ]
    assert all(c["at"].endswith("+00:00") for c in history)
    assert lineage == {
        "model": {
            "id": model.id,
            "name": "support-bot",
            "version": 1,
            "kind": "lora",
            "uri": "file:///objects/adapters/support-bot-job-1",
            "stage": "staging",
            "serving_name": "support-bot-v1",
            "gates_passed": True,
            "created_at": model.created_at.isoformat(),
        },
        "base_model": "fineplat-tiny",
        "base_model_sha": BASE_SHA,
        "dataset": {
            "id": DATASET_ID,
            "name": "support-chat",
            "version": 2,
            "uri": dataset.uri,
            "row_count": 1000,
            "token_count": 250_000,
        },
        "job": {
            "id": "job-1",
            "method": "lora",
            "status": "succeeded",
            "config": {"learning_rate": 2e-4, "lora_r": 8, "epochs": 1},
            "run_identity": job.run_identity,
            "dagster_run_id": "run-abc",
            "mlflow_run_id": "mlf-1",
        },
        "hparams_hash": "h" * 64,
        "eval_results": {"holdout_loss": 1.25, "judge_win_rate": 0.61},
    }
    json.dumps(registry.lineage(model.id))  # JSON-ready as returned: Dagster metadata and the CLI embed it


def test_lineage_of_a_model_without_a_job(
    registry: Registry, add_dataset: DatasetFactory, add_model: ModelFactory
) -> None:
    add_dataset(registry)
    model = add_model(registry, "imported", job_id=None)
    lineage = registry.lineage(model.id)
    assert (lineage["job"], lineage["base_model"], lineage["base_model_sha"]) == (None, None, BASE_SHA)
    assert lineage["dataset"]["id"] == DATASET_ID
