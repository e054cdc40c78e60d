"""Every external system fineplat talks to, as a Dagster `ConfigurableResource`: embedded defaults
(local directory, SQLite, local MLflow, subprocess, embedded serving pool) and their production
counterparts (S3, Postgres, an MLflow server, Kubernetes Jobs, vLLM) behind one switch."""

from fineplat_resources.launcher import ComputeLauncher
from fineplat_resources.storage import ObjectStoreResource
from fineplat_resources.tracking import ExperimentTrackerResource

__all__ = ["ComputeLauncher", "ExperimentTrackerResource", "ObjectStoreResource"]
