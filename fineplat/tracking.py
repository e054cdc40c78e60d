"""Experiment tracking through MLflow: one MLflow run per fine-tune job (params: full config, base
model SHA, dataset version; tag: job id), per-step metrics batched to keep the loop fast."""

from __future__ import annotations

import time
from typing import Any


class MlflowTracker:
    """A thin MLflow client for one tracking URI (local SQLite by default, a server in production)."""

    def __init__(
        self, tracking_uri: str, experiment: str = "fineplat", artifact_location: str | None = None
    ) -> None:
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=tracking_uri)
        self.tracking_uri = tracking_uri
        found = self.client.get_experiment_by_name(experiment)
        self.experiment_id = (
            found.experiment_id
            if found
            else self.client.create_experiment(experiment, artifact_location=artifact_location)
        )

    def start_run(self, job_id: str, params: dict[str, Any], tags: dict[str, str] | None = None) -> str:
        """Create the job's run (or reuse the one a previous attempt created) and log its params."""
        existing = self.client.search_runs(
            [self.experiment_id], filter_string=f"tags.fineplat_job_id = '{job_id}'", max_results=1
        )
        if existing:
            return str(existing[0].info.run_id)
        run = self.client.create_run(
            self.experiment_id, run_name=job_id, tags={"fineplat_job_id": job_id, **(tags or {})}
        )
        from mlflow.entities import Param

        self.client.log_batch(
            run.info.run_id, params=[Param(k, str(v)[:6000]) for k, v in sorted(params.items())]
        )
        return str(run.info.run_id)

    def log_metrics(self, run_id: str, rows: list[tuple[int, dict[str, float]]]) -> None:
        """Log (step, metrics) rows in one batch."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [
            Metric(name, float(value), now, step) for step, values in rows for name, value in values.items()
        ]
        for start in range(0, len(metrics), 900):  # MLflow caps a batch at 1000 metrics
            self.client.log_batch(run_id, metrics=metrics[start : start + 900])

    def end_run(self, run_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(run_id, status=status)

    def metric_history(self, run_id: str, name: str) -> list[tuple[int, float]]:
        return [(m.step, m.value) for m in self.client.get_metric_history(run_id, name)]
