"""Asset jobs and the sensors that start them when work is submitted: a dataset upload becomes an
ingestion run for its partition; a fine-tune submission becomes a run of the job's whole chain."""

import os

from dagster import AssetSelection, RunRequest, SensorEvaluationContext, SkipReason, define_asset_job, sensor

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


def _new_partitions(context: SensorEvaluationContext, name: str) -> list[str]:
    seen = set((context.cursor or "").split(",")) - {""}
    keys = sorted(context.instance.get_dynamic_partitions(name))
    return [k for k in keys if k not in seen]


@sensor(job=ingestion_job, minimum_interval_seconds=15)
def dataset_upload_sensor(context: SensorEvaluationContext):  # type: ignore[no-untyped-def]
    """One ingestion run per newly uploaded dataset partition (`fineplat datasets upload`)."""
    new = _new_partitions(context, dataset_partitions.name or "")
    if not new:
        yield SkipReason("no new dataset upload")
        return
    for key in new:
        yield RunRequest(run_key=f"ingest-{key}", partition_key=key)
    context.update_cursor(",".join(sorted(set((context.cursor or "").split(",")) - {""} | set(new))))


@sensor(job=finetune_job, minimum_interval_seconds=15)
def finetune_submission_sensor(context: SensorEvaluationContext):  # type: ignore[no-untyped-def]
    """One fine-tune run per newly submitted job partition (`fineplat jobs submit`); Dagster's run
    queue and concurrency pools decide when it starts."""
    new = _new_partitions(context, job_partitions.name or "")
    if not new:
        yield SkipReason("no new fine-tune job")
        return
    for key in new:
        yield RunRequest(run_key=f"finetune-{key}", partition_key=key)
    context.update_cursor(",".join(sorted(set((context.cursor or "").split(",")) - {""} | set(new))))
