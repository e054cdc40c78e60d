"""Factories for registry test data: realistic values, overridable per test, so each test states
only what it is about."""

from __future__ import annotations

from typing import Any

from fineplat.registry import DatasetArtifact, Job, ModelArtifact, Registry

BASE_SHA = "b" * 64  # stands in for the SHA-256 of a base model's weight files
OTHER_SHA = "c" * 64
DATASET_ID = "d" * 64  # stands in for a dataset version's content hash


def add_dataset(
    registry: Registry, dataset_id: str = DATASET_ID, name: str = "support-chat", **fields: Any
) -> DatasetArtifact:
    """Register a dataset version with realistic counts (overridable)."""
    values: dict[str, Any] = {
        "uri": f"file:///objects/datasets/{dataset_id}.parquet",
        "row_count": 1000,
        "schema_kind": "chat",
        "token_count": 250_000,
        "dedup_removed": 12,
        "contamination_flagged": 3,
        "quarantined": 5,
        "report": {"formats": ["jsonl"], "invalid_rows": 5},
    }
    values.update(fields)
    return registry.register_dataset(dataset_id, name, **values)


def add_job(registry: Registry, job_id: str = "job-1", dataset_id: str = DATASET_ID, **fields: Any) -> Job:
    """Create a LoRA training job on the tiny base model (overridable)."""
    values: dict[str, Any] = {
        "method": "lora",
        "base_model": "fineplat-tiny",
        "base_model_sha": BASE_SHA,
        "dataset_id": dataset_id,
        "config": {"learning_rate": 2e-4, "lora_r": 8, "epochs": 1},
    }
    values.update(fields)
    return registry.create_job(job_id, **values)


def add_model(
    registry: Registry, name: str = "support-bot", job_id: str | None = "job-1", **fields: Any
) -> ModelArtifact:
    """Register an adapter trained by `job_id` (overridable); gates passed unless told otherwise."""
    values: dict[str, Any] = {
        "base_model_sha": BASE_SHA,
        "dataset_id": DATASET_ID,
        "hparams_hash": "h" * 64,
        "kind": "lora",
        "uri": f"file:///objects/adapters/{name}-{job_id}",
        "eval_results": {"holdout_loss": 1.25, "judge_win_rate": 0.61},
        "gates_passed": True,
    }
    values.update(fields)
    return registry.register_model(name=name, job_id=job_id, **values)
