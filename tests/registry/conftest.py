"""Fixtures for the registry tests: every API behaviour runs on the embedded SQLite file and on a
fresh PostgreSQL database, because production uses the second and the demo the first."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from fineplat.registry import Registry


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
