"""Where fineplat keeps its embedded-default state, so the demo, the UI and the CLI agree on one
place without configuration: `FINEPLAT_HOME` (default `./.fineplat`) holds the object store, the
registry database, MLflow's store, built base models and the Dagster instance."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Paths:
    """The embedded-default locations under one home directory."""

    home: Path

    @property
    def objects(self) -> Path:
        return self.home / "objects"

    @property
    def registry_url(self) -> str:
        return f"sqlite:///{self.home / 'registry.db'}"

    @property
    def mlflow_uri(self) -> str:
        return f"sqlite:///{self.home / 'mlflow.db'}"

    @property
    def mlflow_artifacts(self) -> Path:
        return self.home / "mlartifacts"

    @property
    def models(self) -> Path:
        return self.home / "models"

    @property
    def dagster_home(self) -> Path:
        return Path(os.environ.get("DAGSTER_HOME", self.home / "dagster_home"))


def fineplat_home() -> Path:
    """The home directory: `$FINEPLAT_HOME`, else `.fineplat` in the working directory."""
    return Path(os.environ.get("FINEPLAT_HOME", Path.cwd() / ".fineplat")).resolve()


def paths() -> Paths:
    """The embedded-default paths for the current home (created on demand by their users)."""
    return Paths(fineplat_home())
