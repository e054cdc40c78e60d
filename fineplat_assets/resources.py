"""The one place that decides LOCAL vs PROD: `FINEPLAT_ENV=prod` takes every production setting
from the environment (Postgres registry, S3, MLflow server, Kubernetes, vLLM); anything else runs
the embedded defaults under FINEPLAT_HOME."""

from __future__ import annotations

import os
from typing import Any

from dagster import EnvVar

from fineplat_resources.launcher import ComputeLauncher
from fineplat_resources.registry import RegistryResource
from fineplat_resources.serving import ServingPoolResource
from fineplat_resources.storage import ObjectStoreResource
from fineplat_resources.tracking import ExperimentTrackerResource


def is_production() -> bool:
    """True when FINEPLAT_ENV is `prod`."""
    return os.environ.get("FINEPLAT_ENV", "local").lower() in {"prod", "production"}


def build_resources() -> dict[str, Any]:
    """Resources for the current environment."""
    if is_production():
        return {
            "object_store": ObjectStoreResource(
                s3_bucket=EnvVar("FINEPLAT_S3_BUCKET"),
                endpoint_url=os.environ.get("FINEPLAT_S3_ENDPOINT", ""),
            ),
            "registry": RegistryResource(url=EnvVar("FINEPLAT_REGISTRY_URL")),
            "tracker": ExperimentTrackerResource(tracking_uri=EnvVar("MLFLOW_TRACKING_URI")),
            "launcher": ComputeLauncher(mode="kubernetes", image=EnvVar("FINEPLAT_TRAINER_IMAGE")),
            "serving": ServingPoolResource(base_url=EnvVar("FINEPLAT_SERVING_URL")),
        }
    return {
        "object_store": ObjectStoreResource(),
        "registry": RegistryResource(),
        "tracker": ExperimentTrackerResource(),
        "launcher": ComputeLauncher(),
        "serving": ServingPoolResource(
            base_url=os.environ.get("FINEPLAT_SERVING_URL", "http://127.0.0.1:8000")
        ),
    }
