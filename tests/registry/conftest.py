"""Fixtures for the registry tests: every API behaviour runs on the embedded SQLite file and on a
fresh PostgreSQL database, because production uses the second and the demo the first. The
`add_*` fixtures register realistic rows (overridable per call) so each test states only what it
is about; tests repeat the few default values they assert on (BASE_SHA, DATASET_ID)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from fineplat.registry import DatasetArtifact, Job, ModelArtifact, Registry

BASE_SHA = "b" * 64  # stands in for the SHA-256 of a base model's weight files
DATASET_ID = "d" * 64  # stands in for a dataset version's content hash


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def registry_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database URL: a SQLite file in tmp_path, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'registry.db'}"
    url: str = request.getfixturevalue("pg_database")
    return url


@pytest.fixture
def registry(registry_url: str) -> Iterator[Registry]:
    """A migrated registry on `registry_url`, closed after the test."""
    registry = Registry(registry_url)
    registry.migrate()
    yield registry
    registry.close()


def _add_dataset(
    registry: Registry, dataset_id: str = DATASET_ID, name: str = "support-chat", **fields: Any
) -> DatasetArtifact:
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


def _add_job(registry: Registry, job_id: str = "job-1", dataset_id: str = DATASET_ID, **fields: Any) -> Job:
    values: dict[str, Any] = {
        "method": "lora",
        "base_model": "fineplat-tiny",
        "base_model_sha": BASE_SHA,
        "dataset_id": dataset_id,
        "config": {"learning_rate": 2e-4, "lora_r": 8, "epochs": 1},
    }
    values.update(fields)
    return registry.create_job(job_id, **values)


def _add_model(
    registry: Registry, name: str = "support-bot", job_id: str | None = "job-1", **fields: Any
) -> ModelArtifact:
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


@pytest.fixture
def add_dataset() -> Callable[..., DatasetArtifact]:
    """`add_dataset(registry, dataset_id=DATASET_ID, name="support-chat", **overrides)`."""
    return _add_dataset


@pytest.fixture
def add_job() -> Callable[..., Job]:
    """`add_job(registry, job_id="job-1", dataset_id=DATASET_ID, **overrides)`: a LoRA job on BASE_SHA."""
    return _add_job


@pytest.fixture
def add_model() -> Callable[..., ModelArtifact]:
    """`add_model(registry, name="support-bot", job_id="job-1", **overrides)`: gates passed by default."""
    return _add_model
