"""The registry database as a Dagster resource: assets and sensors ask it for a migrated
`fineplat.registry.Registry` and never build database URLs themselves, so switching from the
embedded SQLite file to production PostgreSQL is one configuration value.

    RegistryResource()                                          # SQLite under FINEPLAT_HOME
    RegistryResource(url=dg.EnvVar("FINEPLAT_REGISTRY_URL"))    # postgresql+psycopg2://... in production
"""

from __future__ import annotations

import dagster as dg
from pydantic import Field, PrivateAttr

from fineplat.registry import Registry
from fineplat.settings import paths


def _default_registry_url() -> str:
    """The embedded default: `registry.db` under FINEPLAT_HOME (the CLI and the demo use the same)."""
    return paths().registry_url


class RegistryResource(dg.ConfigurableResource):
    """The model/dataset registry database (SQLite file or PostgreSQL, chosen by URL). The first
    `get_registry()` in a process migrates the schema to the version this code needs."""

    url: str = Field(
        default_factory=_default_registry_url,
        description="SQLAlchemy URL of the registry database; in production pass "
        "EnvVar('FINEPLAT_REGISTRY_URL') so the password stays out of the UI.",
    )

    _registry: Registry | None = PrivateAttr(default=None)

    def get_registry(self) -> Registry:
        """The registry for this run's process, migrated on first use (idempotent, a no-op on an
        up-to-date database) so a fresh FINEPLAT_HOME or a new Postgres database just works."""
        if self._registry is None:
            registry = Registry(self.url)
            registry.migrate()
            self._registry = registry
        return self._registry

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        """Close pooled connections when the run's process is done with the resource."""
        if self._registry is not None:
            self._registry.close()
            self._registry = None
