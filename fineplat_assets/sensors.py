"""The sensors that start work when it is submitted: a dataset upload becomes an ingestion run for
its partition; a fine-tune submission becomes a run of the job's whole chain. Each new dynamic
partition is requested once (the cursor remembers the keys already seen)."""

from dagster import RunRequest, SensorEvaluationContext, SkipReason, sensor

from fineplat_assets.jobs import finetune_job, ingestion_job
from fineplat_assets.partitions import dataset_partitions, job_partitions


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
