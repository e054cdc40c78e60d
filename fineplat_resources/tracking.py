"""Experiment tracker resource: MLflow with a local SQLite backend by default, a tracking server
in production (`tracking_uri`, e.g. from an EnvVar)."""

from __future__ import annotations

from dagster import ConfigurableResource
from pydantic import Field

from fineplat.settings import paths
from fineplat.tracking import MlflowTracker


class ExperimentTrackerResource(ConfigurableResource):
    """MLflow, where every job's params and per-step metrics go."""

    tracking_uri: str = Field(
        default="", description="MLflow tracking URI; empty means SQLite under FINEPLAT_HOME."
    )
    experiment: str = Field(default="fineplat", description="MLflow experiment name.")

    def resolved_uri(self) -> str:
        return self.tracking_uri or paths().mlflow_uri

    def get_tracker(self) -> MlflowTracker:
        artifacts = None if self.tracking_uri else paths().mlflow_artifacts.as_uri()
        return MlflowTracker(self.resolved_uri(), self.experiment, artifact_location=artifacts)
