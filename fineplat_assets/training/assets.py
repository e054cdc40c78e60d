"""Training assets, partitioned by fine-tune job: `training_data` tokenizes and packs the job's
dataset version with the base model's own tokenizer; `adapter` trains it in an external process
through Dagster Pipes, turning a preemption into a retry that resumes from the latest checkpoint.
Both use the base model SHA the job spec pinned at submission instead of hashing the weights."""

from pathlib import Path
from typing import Any

import polars as pl
from dagster import (
    AllPartitionMapping,
    AssetDep,
    AssetExecutionContext,
    Failure,
    MaterializeResult,
    MetadataValue,
    RetryRequested,
    asset,
)

from fineplat.basemodel import load_tokenizer, locate_base_model
from fineplat.errors import ProtocolError
from fineplat.ingestion import read_parquet
from fineplat.packing.build import build_training_data
from fineplat.registry import Registry
from fineplat.storage import LocalObjectStore, ObjectStore, local_path
from fineplat.submission import JobSpec, read_job_spec
from fineplat.training.constants import RUN_SUMMARY
from fineplat.training.protocol import (
    FailedReport,
    LaunchRequest,
    LocalRunDirs,
    MlflowTarget,
    ObjectKeys,
    PreemptedReport,
    RunSummary,
    last_of,
)
from fineplat_assets.ingestion.assets import decontaminated_dataset
from fineplat_assets.metadata import plot_loss_curve, png_markdown
from fineplat_assets.partitions import job_partitions
from fineplat_resources.launcher import REGISTRY_URL_ENV, ComputeLauncher
from fineplat_resources.registry import RegistryResource
from fineplat_resources.storage import ObjectStoreResource
from fineplat_resources.tracking import ExperimentTrackerResource

GROUP = "training"
# Spot capacity can vanish repeatedly; each preemption resumes from a checkpoint, so allow many.
MAX_PREEMPTION_RETRIES = 10
PREEMPTION_RETRY_WAIT_SECONDS = 5


def job_keys(job_id: str) -> dict[str, str]:
    """Object-store keys of one job's artifacts."""
    return {
        "data": f"training_data/{job_id}",
        "checkpoints": f"checkpoints/{job_id}",
        "output": f"adapters/{job_id}",
        "eval": f"eval/{job_id}",
    }


@asset(
    partitions_def=job_partitions,
    group_name=GROUP,
    # The dataset version a job uses is in its spec; the edge is asset-level here and recorded
    # per partition in metadata and the registry.
    deps=[AssetDep(decontaminated_dataset, partition_mapping=AllPartitionMapping())],
    kinds={"pytorch"},
)
def training_data(
    context: AssetExecutionContext, object_store: ObjectStoreResource, registry: RegistryResource
) -> MaterializeResult:
    """The job's dataset version tokenized with the base model's own chat template (loss on
    assistant tokens only), split into train and task holdout, and packed into windows."""
    store = object_store.get_store()
    spec = read_job_spec(store, context.partition_key)
    config = spec.config
    base_model_dir = locate_base_model(spec.base_model)
    rows = read_parquet(store.local(f"datasets/by-id/{spec.dataset_id}") / "rows.parquet")
    tokenizer = load_tokenizer(base_model_dir)
    key = job_keys(spec.job_id)["data"]
    with store.writing(key) as out:
        manifest = build_training_data(
            rows, tokenizer, out, max_seq_len=config.max_seq_len, packing=config.packing
        )
        if config.method == "dpo":
            from fineplat.training.dpo import precompute_reference_logps

            precompute_reference_logps(base_model_dir, out)
    job = registry.get_registry().create_job(
        spec.job_id,
        method=config.method,
        base_model=spec.base_model,
        base_model_sha=spec.base_model_sha,
        dataset_id=spec.dataset_id,
        config=config.model_dump(mode="json"),
    )
    return MaterializeResult(
        metadata={
            "job_id": spec.job_id,
            "dataset_id": spec.dataset_id,
            "base_model": spec.base_model,
            "base_model_sha": spec.base_model_sha,
            "run_identity": job.run_identity,
            "train_examples": manifest.train_examples,
            "train_windows": manifest.train_rows,
            "holdout_examples": manifest.holdout_examples,
            "train_tokens": manifest.train_tokens,
            "loss_tokens": manifest.loss_tokens,
            "packing_efficiency": manifest.packing_efficiency,
            "truncated_examples": manifest.truncated_examples,
            "uri": store.uri(key),
        }
    )


@asset(partitions_def=job_partitions, group_name=GROUP, deps=[training_data], kinds={"pytorch", "mlflow"})
def adapter(
    context: AssetExecutionContext,
    object_store: ObjectStoreResource,
    registry: RegistryResource,
    tracker: ExperimentTrackerResource,
    launcher: ComputeLauncher,
) -> MaterializeResult:
    """The trained adapter (or full model), produced by `k8s_ops.train_entry` outside this process.
    Preemption → retry with resume; NaN, bad data or OOM → failure without retry. An identical
    run that already succeeded is reused instead of trained again."""
    store = object_store.get_store()
    reg = registry.get_registry()
    spec = read_job_spec(store, context.partition_key)
    keys = job_keys(spec.job_id)
    previous = reg.find_succeeded_job(spec.run_identity)
    if previous is not None and store.exists(job_keys(previous.id)["output"]) and context.retry_number == 0:
        previous_output = store.local(job_keys(previous.id)["output"])
        try:
            reused = RunSummary.read(previous_output / RUN_SUMMARY)
        except ProtocolError as exc:  # written by another release: train again rather than guess
            context.log.warning(f"identical run {previous.id} not reusable: {exc}")
        else:
            context.log.info(f"identical run {previous.id} already succeeded; reusing its output")
            metadata = _trained_metadata(reg, store, previous.id, reused, previous_output, spec, attempts=0)
            return MaterializeResult(
                metadata={**metadata, "job_id": spec.job_id, "reused_from_job": previous.id}
            )
    reg.update_job(
        spec.job_id, status="running", attempts=context.retry_number + 1, dagster_run_id=context.run_id
    )
    # The registry URL may carry a password: it travels in the environment (a Secret in
    # Kubernetes), never in the launch request, which ends up in logs.
    env = {REGISTRY_URL_ENV: registry.url, **object_store.trainer_env()}
    launched = launcher.launch_training(context, request=launch_request(spec, store, tracker), env=env)
    try:
        reports = launched.reports
    except ProtocolError as exc:
        reg.update_job(spec.job_id, status="failed", error=str(exc))
        raise Failure(description=f"training job {spec.job_id}: {exc}", allow_retries=False) from exc
    if launched.preempted:
        preempted = last_of(reports, PreemptedReport)
        step = None if preempted is None else preempted.step
        context.log.warning(f"job {spec.job_id} preempted after step {step}; retrying from its checkpoint")
        raise RetryRequested(
            max_retries=MAX_PREEMPTION_RETRIES, seconds_to_wait=PREEMPTION_RETRY_WAIT_SECONDS
        )
    summary = last_of(reports, RunSummary)
    if launched.exit_code != 0 or summary is None:
        failed = last_of(reports, FailedReport)
        error = failed.error if failed is not None else f"trainer exited with code {launched.exit_code}"
        reg.update_job(spec.job_id, status="failed", error=error)
        raise Failure(description=f"training job {spec.job_id} failed: {error}", allow_retries=False)
    output_dir = store.local(keys["output"])  # the trainer wrote it, with its RUN_SUMMARY
    metadata = _trained_metadata(
        reg, store, spec.job_id, summary, Path(output_dir), spec, context.retry_number + 1
    )
    return MaterializeResult(metadata=metadata)


def launch_request(spec: JobSpec, store: ObjectStore, tracker: ExperimentTrackerResource) -> LaunchRequest:
    """What the trainer needs for one attempt of `spec`. A local store: the trainer writes in place
    on this disk. S3: it reads and writes through the store (its node may not share this disk),
    given the keys here and the bucket in its environment."""
    keys = job_keys(spec.job_id)
    local_dirs = None
    if isinstance(store, LocalObjectStore):
        local_dirs = LocalRunDirs(
            data_dir=str(store.local(keys["data"])),
            checkpoint_dir=str(local_path(store, keys["checkpoints"])),
            output_dir=str(local_path(store, keys["output"])),
        )
    return LaunchRequest(
        job_id=spec.job_id,
        config=spec.config,
        base_model=spec.base_model,
        base_model_sha=spec.base_model_sha,
        base_model_dir=str(locate_base_model(spec.base_model)),
        dataset_id=spec.dataset_id,
        local_dirs=local_dirs,
        object_keys=ObjectKeys(data=keys["data"], checkpoints=keys["checkpoints"], output=keys["output"]),
        mlflow=MlflowTarget(tracking_uri=tracker.resolved_uri(), experiment=tracker.experiment),
    )


def _trained_metadata(
    reg: Registry,
    store: ObjectStore,
    job_id: str,
    summary: RunSummary,
    output_dir: Path,
    spec: JobSpec,
    attempts: int,
) -> dict[str, Any]:
    """Metadata of a trained output: loss first → last over all attempts, throughput, the loss curve."""
    validation = [(m.step, m.value) for m in reg.metrics(job_id, "validation_loss")]
    all_losses = [m.value for m in sorted(reg.metrics(job_id, "loss"), key=lambda m: m.step)]
    curve = plot_loss_curve(
        all_losses, Path(store.local(job_keys(job_id)["data"])) / "loss_curve.png", validation=validation
    )
    return {
        "job_id": job_id,
        "method": spec.config.method,
        "steps": summary.steps,
        "loss_first": all_losses[0] if all_losses else summary.first_loss,
        "loss_last": summary.final_loss,
        "validation_loss": summary.validation_loss,
        "tokens_per_second": round(summary.tokens_per_second, 1),
        "packing_efficiency": summary.packing_efficiency,
        "dtype": summary.dtype,
        "attn_implementation": summary.attn_implementation,
        "attempts": attempts,
        "resumed_from_step": summary.resumed_from_step,
        "mlflow_run_id": summary.mlflow_run_id,
        "loss_curve": png_markdown(curve, "training loss"),
        "uri": MetadataValue.path(str(output_dir)),
    }


def holdout_records(data_dir: Path) -> list[str]:
    """The task-holdout records of a job's training data."""
    return pl.read_parquet(data_dir / "holdout.parquet").get_column("record").to_list()
