"""The training entry point that runs on the compute node: a Dagster Pipes process, so the same
code runs as a local subprocess, under `torchrun`, or in a Kubernetes pod.

    python -m k8s_ops.train_entry          # launched by fineplat_resources.ComputeLauncher
    torchrun --nproc_per_node=8 -m k8s_ops.train_entry

It reads a `LaunchRequest` from the Pipes extras and answers with the typed messages of
fineplat.training.protocol. It registers the SIGTERM handler first (before torch or the model
load), streams per-step metrics to MLflow, the registry's run_metrics table and the Dagster event
log, and exits with PREEMPTED_EXIT_CODE after an emergency checkpoint, or FAILED_EXIT_CODE on a
real failure (a request of another protocol version included)."""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fineplat.training.constants import FAILED_EXIT_CODE, PREEMPTED_EXIT_CODE, RUN_SUMMARY
from fineplat.training.preemption import PreemptionFlag
from fineplat.training.protocol import (
    FailedReport,
    LaunchRequest,
    PreemptedReport,
    RunSummary,
    StepReport,
)

PREEMPTION = PreemptionFlag().install()  # before anything slow: a notice during setup is kept

LOG_EVERY = 10  # steps between metric flushes to MLflow / the registry and log lines to Dagster
ENV_WORK_DIR = "FINEPLAT_WORK_DIR"  # local scratch on the node (default: a temp dir)


@dataclass
class RunFiles:
    """Where one training attempt reads and writes on this node, and how its results leave it."""

    base_model_dir: Path
    data_dir: Path
    checkpoint_dir: Path
    output_dir: Path
    on_checkpoint: Callable[[Path], None] | None = None  # rank 0: mirror each checkpoint
    publish: Callable[[], None] | None = None  # rank 0: upload the finished output


def run_files(request: LaunchRequest, log: Any) -> RunFiles:
    """The attempt's directories. On the Dagster machine's disk (local object store) they are the
    request's `local_dirs`. Remote (FINEPLAT_OBJECT_STORE_BUCKET set): training data comes from the
    object store, the base model is resolved by name on this node and must have the submitted SHA,
    checkpoints go to a local directory that is mirrored to the store after every save (and
    restored from it first, which is how a retry on a new spot node resumes), and the output is
    uploaded at the end."""
    from fineplat.errors import ConfigError
    from k8s_ops.job_spec import ENV_OBJECT_STORE_BUCKET, ENV_OBJECT_STORE_PREFIX

    bucket = os.environ.get(ENV_OBJECT_STORE_BUCKET)
    if not bucket:
        if request.local_dirs is None:
            raise ConfigError(
                f"job {request.job_id}: the launch request names no local directories and "
                f"{ENV_OBJECT_STORE_BUCKET} is not set; give the trainer the object store's bucket"
            )
        return RunFiles(
            base_model_dir=Path(request.base_model_dir),
            data_dir=Path(request.local_dirs.data_dir),
            checkpoint_dir=Path(request.local_dirs.checkpoint_dir),
            output_dir=Path(request.local_dirs.output_dir),
        )
    import shutil
    import tempfile

    import boto3

    from fineplat.basemodel import resolve_base_model
    from fineplat.errors import BaseModelError
    from fineplat.storage import S3ObjectStore
    from fineplat.training.checkpoint_mirror import CheckpointMirror

    work = Path(os.environ.get(ENV_WORK_DIR) or tempfile.mkdtemp(prefix="fineplat-train-"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    store = S3ObjectStore(
        bucket, os.environ.get(ENV_OBJECT_STORE_PREFIX, ""), boto3.client("s3"), work / f"cache-{local_rank}"
    )
    keys = request.object_keys
    local = Path(request.base_model_dir)
    if local.is_dir():
        base_model_dir = local
    else:  # another copy: hash it here, where it is loaded, against the SHA pinned at submission
        base = resolve_base_model(request.base_model)
        if base.sha != request.base_model_sha:
            raise BaseModelError(
                f"base model {request.base_model!r} on this node has SHA {base.sha[:12]}, the job was "
                f"submitted for {request.base_model_sha[:12]}; pin the same revision in the image cache."
            )
        base_model_dir = base.path
    # Every local rank restores into its own directory (no two processes write one), rank 0 also
    # saves there; resume reads happen only at start.
    checkpoint_dir = work / "checkpoints" / f"local-rank-{local_rank}"
    mirror = CheckpointMirror(
        store.client, bucket, store.object_key(keys.checkpoints), keep=request.config.keep_checkpoints
    )
    restored = mirror.restore(checkpoint_dir)
    if restored is not None:
        log.info(f"restored checkpoint {restored.name} from {store.uri(keys.checkpoints)}")
    output_dir = work / "output"

    def on_checkpoint(path: Path) -> None:
        seconds = mirror.upload(path)
        log.info(f"checkpoint {path.name} uploaded to {store.uri(keys.checkpoints)} in {seconds:.1f}s")

    def publish() -> None:
        with store.writing(keys.output) as staging:
            shutil.copytree(output_dir, staging, dirs_exist_ok=True)

    return RunFiles(
        base_model_dir=base_model_dir,
        data_dir=store.local(keys.data),
        checkpoint_dir=checkpoint_dir,
        output_dir=output_dir,
        on_checkpoint=on_checkpoint,
        publish=publish,
    )


class PipesMetricsSink:
    """Fans each step's metrics out to MLflow, the registry and the Dagster event log."""

    def __init__(self, pipes: Any, job_id: str, tracker: Any, mlflow_run_id: str, registry: Any) -> None:
        self.pipes, self.job_id, self.tracker, self.run_id, self.registry = (
            pipes,
            job_id,
            tracker,
            mlflow_run_id,
            registry,
        )
        self.pending: list[tuple[int, dict[str, float]]] = []

    def log(self, step: int, metrics: dict[str, float]) -> None:
        self.pending.append((step, metrics))
        if "validation_loss" in metrics or step % LOG_EVERY == 0 or step == 1:
            self.flush()
            shown = ", ".join(f"{k}={v:.4g}" for k, v in metrics.items())
            self.pipes.log.info(f"step {step}: {shown}")
            self.pipes.report_custom_message(StepReport(step=step, metrics=metrics).model_dump(mode="json"))

    def flush(self) -> None:
        if not self.pending:
            return
        self.tracker.log_metrics(self.run_id, self.pending)
        for step, metrics in self.pending:
            self.registry.log_metrics(self.job_id, step, metrics)
        self.pending = []

    def status(self, status: str, step: int) -> None:
        self.flush()
        self.registry.update_job(self.job_id, status=status, current_step=step)


def _chaos_hook() -> Any:
    """Spot-interruption drill: deliver a real SIGTERM to ourselves after the configured step."""
    at = int(os.environ.get("FINEPLAT_CHAOS_PREEMPT_AT_STEP", "0"))
    if not at:
        return None
    import signal

    def on_step(step: int) -> None:
        if step == at:
            os.kill(os.getpid(), signal.SIGTERM)

    return on_step


def _write_termination_message() -> None:
    """Under torchrun a worker's exit code 75 surfaces as 1; the pod's termination message tells
    the Kubernetes launcher it was a preemption all the same (see k8s_ops.job_spec)."""
    from k8s_ops.job_spec import PREEMPTED_TERMINATION_MESSAGE, TERMINATION_MESSAGE_PATH

    path = Path(TERMINATION_MESSAGE_PATH)
    if path.parent.is_dir() and os.access(path.parent, os.W_OK):
        path.write_text(PREEMPTED_TERMINATION_MESSAGE)


# Third-party loggers whose warnings a trainer's user cannot act on: bitsandbytes' CPU backend tries to
# fetch an optional kernel from a model hub at import and warns when it cannot (it falls back to its
# own kernel, which is what trains).
QUIET_LOGGERS = ("bitsandbytes.backends.cpu.ops",)


def main() -> int:
    """Run one training attempt described by the launch request; return the process exit code."""
    from dagster_pipes import open_dagster_pipes

    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)

    from fineplat.errors import FineplatError, ProtocolError
    from fineplat.registry import Registry
    from fineplat.tracking import MlflowTracker
    from fineplat.training.preemption import Preempted
    from fineplat.training.trainer import train

    with open_dagster_pipes() as pipes:
        try:
            request = LaunchRequest.parse(pipes.extras)
        except ProtocolError as exc:
            pipes.log.error(str(exc))
            pipes.report_custom_message(FailedReport(error=str(exc)).model_dump(mode="json"))
            return FAILED_EXIT_CODE
        job_id, config = request.job_id, request.config
        registry = Registry(os.environ["FINEPLAT_REGISTRY_URL"])
        tracker = MlflowTracker(request.mlflow.tracking_uri, request.mlflow.experiment)
        run_id = tracker.start_run(
            job_id,
            params={
                **config.model_dump(mode="json"),
                "base_model": request.base_model,
                "base_model_sha": request.base_model_sha,
                "dataset_id": request.dataset_id,
            },
            tags={"base_model_sha": request.base_model_sha, "dataset_id": request.dataset_id},
        )
        registry.update_job(job_id, mlflow_run_id=run_id, status="running")
        sink = PipesMetricsSink(pipes, job_id, tracker, run_id, registry)
        started = time.perf_counter()
        try:
            files = run_files(request, pipes.log)
            result = train(
                config,
                base_model_dir=files.base_model_dir,
                data_dir=files.data_dir,
                checkpoint_dir=files.checkpoint_dir,
                output_dir=files.output_dir,
                sink=sink,
                preemption=PREEMPTION,
                on_step=_chaos_hook(),
                on_checkpoint=files.on_checkpoint,
            )
        except Preempted as exc:
            sink.flush()
            pipes.log.warning(
                f"{exc} (signal {PREEMPTION.signal_name}); exiting with {PREEMPTED_EXIT_CODE} to be retried"
            )
            registry.update_job(job_id, status="preempted", current_step=exc.step)
            tracker.end_run(run_id, status="KILLED")
            report = PreemptedReport(step=exc.step, checkpoint=exc.checkpoint)
            pipes.report_custom_message(report.model_dump(mode="json"))
            _write_termination_message()
            return PREEMPTED_EXIT_CODE
        except FineplatError as exc:
            sink.flush()
            pipes.log.error(str(exc))
            registry.update_job(job_id, status="failed", error=str(exc))
            tracker.end_run(run_id, status="FAILED")
            pipes.report_custom_message(FailedReport(error=str(exc)).model_dump(mode="json"))
            return FAILED_EXIT_CODE
        summary = RunSummary(
            job_id=job_id,
            steps=result.steps,
            first_loss=result.first_loss,
            final_loss=result.final_loss,
            losses=result.losses,
            tokens_per_second=result.tokens_per_second,
            packing_efficiency=result.packing_efficiency,
            validation_loss=result.validation_loss,
            resumed_from_step=result.resumed_from_step,
            dtype=result.dtype,
            attn_implementation=result.attn_implementation,
            wall_seconds=time.perf_counter() - started,
            mlflow_run_id=run_id,
        )
        if int(os.environ.get("RANK", "0")) == 0:
            summary.write(files.output_dir / RUN_SUMMARY)
            if files.publish is not None:
                files.publish()
        sink.flush()
        tracker.end_run(run_id)
        registry.update_job(job_id, status="succeeded", current_step=result.steps)
        pipes.report_custom_message(summary.model_dump(mode="json"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
