"""The asset jobs that work submissions start: one ingestion run per uploaded dataset partition,
one fine-tune run per submitted job partition (the sensors that request them are in
`fineplat_assets.sensors`)."""

import os

from dagster import AssetSelection, define_asset_job

from fineplat_assets.partitions import dataset_partitions, job_partitions
from k8s_ops.job_spec import GPU_RUN_TAG

ingestion_job = define_asset_job(
    "ingest_dataset",
    selection=AssetSelection.groups("ingestion"),
    partitions_def=dataset_partitions,
    description="Validate, deduplicate and decontaminate one uploaded dataset.",
)
finetune_job = define_asset_job(
    "finetune",
    selection=AssetSelection.groups("training", "evaluation"),
    partitions_def=job_partitions,
    description="Tokenize, train, evaluate and register one fine-tune job.",
    # Concurrency: the local instance runs one fine-tune at a time; production limits runs per GPU
    # type by this tag (dagster.prod.yaml).
    tags={"fineplat/kind": "finetune", GPU_RUN_TAG: os.environ.get("FINEPLAT_GPU_TYPE", "A100")},
)
