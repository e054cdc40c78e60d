"""dagster.prod.yaml, loaded unchanged as a real DagsterInstance: Postgres storage against the local
server, the K8sRunLauncher with in-cluster config (a service-account token file and KUBERNETES_SERVICE_*
as a pod would have them), and the queue, retry and monitoring settings taking effect."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import kubernetes
import pytest
from dagster import DagsterInstance, DagsterRun, DagsterRunStatus, EventRecordsFilter
from dagster._core.events import DagsterEventType
from dagster._core.run_coordinator import QueuedRunCoordinator
from dagster._utils.tags import TagConcurrencyLimitsCounter
from dagster_aws.s3.compute_log_manager import S3ComputeLogManager
from dagster_k8s import K8sRunLauncher
from dagster_postgres import PostgresEventLogStorage, PostgresRunStorage
from sqlalchemy.engine import make_url

from k8s_ops.job_spec import GPU_RUN_TAG

PROD_YAML = Path(__file__).resolve().parents[2] / "dagster.prod.yaml"


@pytest.fixture
def prod_instance(
    pg_database: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[DagsterInstance]:
    """The production instance from dagster.prod.yaml, with the environment a run-worker pod gets."""
    url = make_url(pg_database)
    for name, value in {
        "DAGSTER_PG_HOST": url.host,
        "DAGSTER_PG_PORT": str(url.port),
        "DAGSTER_PG_USER": url.username,
        "DAGSTER_PG_PASSWORD": url.password or "",
        "DAGSTER_PG_DB": url.database,
        "DAGSTER_K8S_INSTANCE_CONFIG_MAP": "fineplat-dagster-instance",
        "DAGSTER_K8S_JOB_NAMESPACE": "fineplat-runs",
        "DAGSTER_K8S_SERVICE_ACCOUNT": "fineplat-run-worker",
        "DAGSTER_K8S_PG_PASSWORD_SECRET": "fineplat-postgresql",
        "FINEPLAT_OBJECT_STORE_BUCKET": "fineplat-prod",
        "AWS_DEFAULT_REGION": "eu-west-1",
        # What Kubernetes sets in every pod; load_incluster_config reads them (no request is made).
        "KUBERNETES_SERVICE_HOST": "127.0.0.1",
        "KUBERNETES_SERVICE_PORT": "6443",
    }.items():
        monkeypatch.setenv(name, str(value))
    service_account = tmp_path / "serviceaccount"
    service_account.mkdir()
    (service_account / "token").write_text("eyJhbGciOiJSUzI1NiJ9.fake.token")
    (service_account / "ca.crt").write_text("-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n")
    # The in-cluster loader reads the token from a fixed path under /var/run/secrets; point it here.
    monkeypatch.setattr(
        kubernetes.config.incluster_config, "SERVICE_TOKEN_FILENAME", str(service_account / "token")
    )
    monkeypatch.setattr(
        kubernetes.config.incluster_config, "SERVICE_CERT_FILENAME", str(service_account / "ca.crt")
    )
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copyfile(PROD_YAML, home / "dagster.yaml")

    instance = DagsterInstance.from_config(str(home))
    try:
        yield instance
    finally:
        instance.dispose()


def test_runs_and_events_are_stored_in_postgres(prod_instance: DagsterInstance) -> None:
    assert isinstance(prod_instance.run_storage, PostgresRunStorage)
    assert isinstance(prod_instance.event_log_storage, PostgresEventLogStorage)
    run_id = str(uuid.uuid4())
    prod_instance.add_run(DagsterRun(job_name="train_adapter", run_id=run_id, tags={GPU_RUN_TAG: "A100"}))

    prod_instance.report_engine_event("training pod launched", prod_instance.get_run_by_id(run_id))

    stored = prod_instance.get_run_by_id(run_id)
    assert stored is not None and (stored.job_name, stored.tags) == ("train_adapter", {GPU_RUN_TAG: "A100"})
    [record] = prod_instance.get_event_records(
        EventRecordsFilter(event_type=DagsterEventType.ENGINE_EVENT), limit=10
    )
    assert (record.event_log_entry.run_id, record.event_log_entry.message) == (
        run_id,
        "training pod launched",
    )


def test_gpu_run_limits_come_from_the_concurrency_section(prod_instance: DagsterInstance) -> None:
    assert isinstance(prod_instance.run_coordinator, QueuedRunCoordinator)
    queue = prod_instance.get_concurrency_config().run_queue_config
    assert queue is not None
    assert queue.max_concurrent_runs == 100
    assert queue.tag_concurrency_limits == [
        {"key": "fineplat/gpu", "value": "A100", "limit": 40},
        {"key": "fineplat/gpu", "value": "H100", "limit": 12},
    ]
    assert (queue.max_user_code_failure_retries, queue.user_code_failure_retry_delay) == (3, 60)
    # 40 A100 runs in progress, as the queue daemon would read them from Postgres.
    for _ in range(40):
        prod_instance.add_run(
            DagsterRun(
                job_name="train_adapter",
                run_id=str(uuid.uuid4()),
                status=DagsterRunStatus.STARTED,
                tags={GPU_RUN_TAG: "A100"},
            )
        )
    in_progress = prod_instance.get_runs()
    counter = TagConcurrencyLimitsCounter(queue.tag_concurrency_limits, list(in_progress))

    assert counter.is_blocked(DagsterRun(job_name="train_adapter", tags={GPU_RUN_TAG: "A100"}))
    assert not counter.is_blocked(DagsterRun(job_name="train_adapter", tags={GPU_RUN_TAG: "H100"}))


def test_unconfigured_pools_get_the_default_limit(prod_instance: DagsterInstance) -> None:
    pools = prod_instance.get_concurrency_config().pool_config
    assert (pools.pool_granularity.value if pools.pool_granularity else None, pools.default_pool_limit) == (
        "op",
        8,
    )

    prod_instance.event_log_storage.initialize_concurrency_limit_to_default("judge-api")

    assert prod_instance.event_log_storage.get_concurrency_info("judge-api").slot_count == 8


def test_retries_monitoring_launcher_and_telemetry_settings(prod_instance: DagsterInstance) -> None:
    assert prod_instance.run_retries_enabled
    assert prod_instance.run_retries_max_retries == 3
    assert prod_instance.run_retries_retry_on_asset_or_op_failure is False
    assert prod_instance.run_monitoring_enabled
    assert prod_instance.run_monitoring_settings["free_slots_after_run_end_seconds"] == 300
    assert prod_instance.run_monitoring_start_timeout_seconds == 600
    assert prod_instance.run_monitoring_max_resume_run_attempts == 0
    assert prod_instance.telemetry_enabled is False

    launcher = prod_instance.run_launcher
    assert isinstance(launcher, K8sRunLauncher)
    assert launcher.job_namespace == "fineplat-runs"
    assert launcher.image_pull_policy == "IfNotPresent"
    assert launcher.service_account_name == "fineplat-run-worker"
    assert launcher.instance_config_map == "fineplat-dagster-instance"
    assert launcher.postgres_password_secret == "fineplat-postgresql"
    assert launcher.env_config_maps == ["fineplat-env"]
    assert launcher.env_secrets == ["fineplat-secrets"]
    assert launcher.fail_pod_on_run_failure is True
    assert launcher.run_k8s_config["pod_template_spec_metadata"] == {
        "annotations": {"cluster-autoscaler.kubernetes.io/safe-to-evict": "false"}
    }
    assert launcher.run_k8s_config["pod_spec_config"] == {
        "node_selector": {"fineplat.io/node-pool": "system"}
    }

    assert isinstance(prod_instance.compute_log_manager, S3ComputeLogManager)
