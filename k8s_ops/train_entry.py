"""The training entry point that runs on the compute node: a Dagster Pipes process, so the same
code runs as a local subprocess, under `torchrun`, or in a Kubernetes pod.

    python -m k8s_ops.train_entry          # launched by fineplat_resources.ComputeLauncher
    torchrun --nproc_per_node=8 -m k8s_ops.train_entry

It registers the SIGTERM handler first (before torch or the model load), streams per-step metrics
to MLflow, the registry's run_metrics table and the Dagster event log, and exits with
PREEMPTED_EXIT_CODE after an emergency checkpoint, or FAILED_EXIT_CODE on a real failure."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

from fineplat.training.constants import FAILED_EXIT_CODE, PREEMPTED_EXIT_CODE
from fineplat.training.preemption import PreemptionFlag

PREEMPTION = PreemptionFlag().install()  # before anything slow: a notice during setup is kept

LOG_EVERY = 10  # steps between metric flushes to MLflow / the registry and log lines to Dagster


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
            self.pipes.report_custom_message({"step": step, **metrics})

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


def main() -> int:
    """Run one training attempt described by the Pipes extras; return the process exit code."""
    from dagster_pipes import open_dagster_pipes

    from fineplat.errors import FineplatError
    from fineplat.registry import Registry
    from fineplat.tracking import MlflowTracker
    from fineplat.training.config import TrainConfig
    from fineplat.training.preemption import Preempted
    from fineplat.training.trainer import train

    with open_dagster_pipes() as pipes:
        extras = pipes.extras
        job_id = str(extras["job_id"])
        config = TrainConfig(**extras["config"])
        registry = Registry(os.environ["FINEPLAT_REGISTRY_URL"])
        tracker = MlflowTracker(
            extras["mlflow_uri"], extras.get("mlflow_experiment", "fineplat"), extras.get("mlflow_artifacts")
        )
        run_id = tracker.start_run(
            job_id,
            params={
                **config.model_dump(mode="json"),
                "base_model": extras["base_model"],
                "base_model_sha": extras["base_model_sha"],
                "dataset_id": extras["dataset_id"],
            },
            tags={"base_model_sha": extras["base_model_sha"], "dataset_id": extras["dataset_id"]},
        )
        registry.update_job(job_id, mlflow_run_id=run_id, status="running")
        sink = PipesMetricsSink(pipes, job_id, tracker, run_id, registry)
        started = time.perf_counter()
        try:
            result = train(
                config,
                base_model_dir=Path(extras["base_model_dir"]),
                data_dir=Path(extras["data_dir"]),
                checkpoint_dir=Path(extras["checkpoint_dir"]),
                output_dir=Path(extras["output_dir"]),
                sink=sink,
                preemption=PREEMPTION,
                on_step=_chaos_hook(),
            )
        except Preempted as exc:
            sink.flush()
            pipes.log.warning(
                f"{exc} (signal {PREEMPTION.signal_name}); exiting with {PREEMPTED_EXIT_CODE} to be retried"
            )
            registry.update_job(job_id, status="preempted", current_step=exc.step)
            tracker.end_run(run_id, status="KILLED")
            pipes.report_custom_message({"preempted": True, "step": exc.step, "checkpoint": exc.checkpoint})
            _write_termination_message()
            return PREEMPTED_EXIT_CODE
        except FineplatError as exc:
            sink.flush()
            pipes.log.error(str(exc))
            registry.update_job(job_id, status="failed", error=str(exc))
            tracker.end_run(run_id, status="FAILED")
            pipes.report_custom_message({"failed": True, "error": str(exc)})
            return FAILED_EXIT_CODE
        sink.flush()
        tracker.end_run(run_id)
        registry.update_job(job_id, status="succeeded", current_step=result.steps)
        pipes.report_custom_message(
            {
                "result": {
                    "steps": result.steps,
                    "first_loss": result.first_loss,
                    "final_loss": result.final_loss,
                    "losses": result.losses,
                    "tokens_per_second": result.tokens_per_second,
                    "packing_efficiency": result.packing_efficiency,
                    "validation_loss": result.validation_loss,
                    "resumed_from_step": result.resumed_from_step,
                    "wall_seconds": time.perf_counter() - started,
                    "mlflow_run_id": run_id,
                }
            }
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
