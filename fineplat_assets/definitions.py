"""The single Dagster entry point: every asset, check, job, sensor and resource of fineplat.

dagster dev -w workspace.yaml     # or: make ui
"""

from __future__ import annotations

from dagster import Definitions

from fineplat_assets.evaluation.assets import eval_report, registered_adapter
from fineplat_assets.ingestion.assets import (
    decontaminated_dataset,
    deduplicated_dataset,
    raw_dataset,
    validated_dataset,
)
from fineplat_assets.jobs import finetune_job, ingestion_job
from fineplat_assets.resources import build_resources
from fineplat_assets.sensors import dataset_upload_sensor, finetune_submission_sensor
from fineplat_assets.serving.jobs import deploy_adapter_job, rollback_adapter_job
from fineplat_assets.serving.sensors import promote_adapters_sensor
from fineplat_assets.training.assets import adapter, training_data

defs = Definitions(
    assets=[
        raw_dataset,
        validated_dataset,
        deduplicated_dataset,
        decontaminated_dataset,
        training_data,
        adapter,
        eval_report,
        registered_adapter,
    ],
    jobs=[ingestion_job, finetune_job, deploy_adapter_job, rollback_adapter_job],
    sensors=[dataset_upload_sensor, finetune_submission_sensor, promote_adapters_sensor],
    resources=build_resources(),
)
