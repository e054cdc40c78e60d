"""The Dagster resource: embedded SQLite under FINEPLAT_HOME by default, any URL (PostgreSQL via
EnvVar) in production, migrated on first use inside a real materialization."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest

from fineplat.registry import Registry
from fineplat_resources.registry import RegistryResource


@dg.asset
def registered_dataset(registry: RegistryResource) -> dg.MaterializeResult:
    """A stand-in for the real dataset asset: registers one version through the resource."""
    dataset = registry.get_registry().register_dataset(
        "d" * 64, "support-chat", "file:///objects/datasets/d.parquet", row_count=1000, schema_kind="chat"
    )
    return dg.MaterializeResult(metadata={"dataset_version": dataset.version})


def test_default_url_is_the_sqlite_file_under_fineplat_home(fineplat_home: Path) -> None:
    resource = RegistryResource()
    assert resource.url == f"sqlite:///{fineplat_home / 'registry.db'}"
    registry = resource.get_registry()
    assert registry.schema_revision() == "0001"  # migrated on first use
    assert resource.get_registry() is registry  # once per process
    assert (fineplat_home / "registry.db").is_file()


@pytest.mark.postgres
def test_materialization_writes_through_the_resource_to_postgres(
    pg_database: str, monkeypatch: pytest.MonkeyPatch, fineplat_home: Path
) -> None:
    monkeypatch.setenv("FINEPLAT_REGISTRY_URL", pg_database)
    result = dg.materialize(
        [registered_dataset], resources={"registry": RegistryResource(url=dg.EnvVar("FINEPLAT_REGISTRY_URL"))}
    )
    assert result.success
    [materialization] = result.asset_materializations_for_node("registered_dataset")
    assert materialization.metadata["dataset_version"].value == 1
    with Registry(pg_database) as registry:
        assert registry.get_dataset("d" * 64).name == "support-chat"
    assert not (fineplat_home / "registry.db").exists()  # the default was not used
