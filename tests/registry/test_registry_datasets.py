"""Dataset versions: numbered per name, idempotent by content hash, returned as snapshots."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from fineplat.errors import RegistryError
from fineplat.registry import DatasetArtifact, Registry

DatasetFactory = Callable[..., DatasetArtifact]  # the add_dataset fixture (conftest.py)


def test_register_dataset_stores_every_field(registry: Registry, add_dataset: DatasetFactory) -> None:
    before = datetime.now(UTC)
    dataset = add_dataset(registry, dataset_id="a1", name="support-chat")
    assert dataset == DatasetArtifact(
        id="a1",
        name="support-chat",
        version=1,
        uri="file:///objects/datasets/a1.parquet",
        row_count=1000,
        token_count=250_000,
        dedup_removed=12,
        contamination_flagged=3,
        quarantined=5,
        schema_kind="chat",
        report={"formats": ["jsonl"], "invalid_rows": 5},
        created_at=dataset.created_at,
    )
    assert dataset.created_at.tzinfo is UTC
    assert before - timedelta(seconds=1) <= dataset.created_at <= datetime.now(UTC) + timedelta(seconds=1)
    assert registry.get_dataset("a1") == dataset


def test_versions_count_per_name(registry: Registry, add_dataset: DatasetFactory) -> None:
    versions = [
        (dataset.name, dataset.version)
        for dataset in (
            add_dataset(registry, dataset_id="a1", name="support-chat"),
            add_dataset(registry, dataset_id="a2", name="support-chat"),
            add_dataset(registry, dataset_id="b1", name="sql-gen"),
            add_dataset(registry, dataset_id="a3", name="support-chat"),
        )
    ]
    assert versions == [("support-chat", 1), ("support-chat", 2), ("sql-gen", 1), ("support-chat", 3)]


def test_registering_the_same_content_again_returns_the_existing_version(
    registry: Registry, add_dataset: DatasetFactory
) -> None:
    first = add_dataset(registry, dataset_id="a1", name="support-chat")
    again = add_dataset(
        registry, dataset_id="a1", name="support-chat", row_count=999, uri="file:///elsewhere"
    )
    assert again == first  # unchanged: the id is the content, so the first registration stands
    assert add_dataset(registry, dataset_id="a2", name="support-chat").version == 2


def test_unknown_dataset_is_a_registry_error(registry: Registry) -> None:
    with pytest.raises(RegistryError, match=r"dataset 'nope' is not registered in .*register_dataset"):
        registry.get_dataset("nope")


INVALID_FIELDS: list[tuple[dict[str, Any], str]] = [
    ({"row_count": -1}, r"row_count must be a non-negative integer, got -1"),
    ({"token_count": 1.5}, r"token_count must be a non-negative integer, got 1.5"),
    ({"schema_kind": ""}, r"schema_kind is required"),
    ({"report": {"loss": float("nan")}}, r"report contains NaN or infinity"),
    ({"report": ["not", "a", "dict"]}, r"report must be a JSON object \(a dict\), got list"),
]


def test_invalid_dataset_fields_are_named(registry: Registry, add_dataset: DatasetFactory) -> None:
    for fields, message in INVALID_FIELDS:
        with pytest.raises(RegistryError, match=message):
            add_dataset(registry, **fields)
    with pytest.raises(RegistryError, match="is not registered"):
        registry.get_dataset("d" * 64)  # nothing half-written


def test_snapshots_stay_usable_after_the_registry_is_closed(
    registry_url: str, add_dataset: DatasetFactory
) -> None:
    registry = Registry(registry_url)
    registry.migrate()
    dataset = add_dataset(registry, report={"nested": {"k": [1, 2]}})
    registry.close()
    assert (dataset.name, dataset.version, dataset.report) == ("support-chat", 1, {"nested": {"k": [1, 2]}})
    with pytest.raises(AttributeError):
        dataset.name = "renamed"  # type: ignore[misc]  # frozen: no accidental writes
