"""What the registry hands out: frozen snapshots of rows, not ORM objects, so a caller (a Dagster
asset, the CLI, the REST API) can keep them after the session closes, pass them across threads and
never write to the database by accident through an attribute assignment."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any


@dataclass(frozen=True)
class DatasetArtifact:
    """One immutable dataset version: `id` is the content hash, `version` counts 1, 2, 3 per name."""

    id: str
    name: str
    version: int
    uri: str
    row_count: int
    token_count: int
    dedup_removed: int
    contamination_flagged: int
    quarantined: int
    schema_kind: str
    report: dict[str, Any]
    created_at: datetime


@dataclass(frozen=True)
class Job:
    """One fine-tuning job and where it stands; `run_identity` (fineplat.training.config.run_identity)
    names the run, so an identical submission finds its result."""

    id: str
    method: str
    base_model: str
    base_model_sha: str
    dataset_id: str
    config: dict[str, Any]
    run_identity: str
    status: str
    attempts: int
    current_step: int
    error: str | None
    dagster_run_id: str | None
    mlflow_run_id: str | None
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class ModelArtifact:
    """One registered model or adapter version with its provenance, evaluation and stage."""

    id: str
    name: str
    version: int
    job_id: str | None
    base_model_sha: str
    dataset_id: str
    hparams_hash: str  # TrainConfig.hparams_hash(): the hyperparameters alone, not the run identity
    kind: str
    uri: str
    stage: str
    eval_results: dict[str, Any]
    gates_passed: bool
    serving_name: str | None
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class Metric:
    """One scalar a job reported at one training step."""

    job_id: str
    step: int
    name: str
    value: float
    created_at: datetime


@dataclass(frozen=True)
class StageChange:
    """One entry of the stage audit log; `from_stage` is None for the registration itself."""

    model_id: str
    from_stage: str | None
    to_stage: str
    actor: str
    reason: str
    at: datetime
