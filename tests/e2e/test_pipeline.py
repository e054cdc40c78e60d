"""The whole graph for one job, materialized in a temporary instance through the same jobs,
sensors and resources a deployment uses: counts add up at every ingestion stage, loss decreases,
the registry's lineage equals what the assets recorded, and the served adapter answers over HTTP
with the adapter's behaviour while the base answers with the base's. Once on SQLite, once with
the registry and Dagster storage on PostgreSQL."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
from dagster import (
    AssetKey,
    DagsterInstance,
    build_sensor_context,
    instance_for_test,
    partition_loading_context,
)

from fineplat.basemodel import load_base_model, load_tokenizer, resolve_base_model
from fineplat.demo.dataset import SAMPLE_BENCHMARK, PlantedFlaws, task_row
from fineplat.evaluation.holdout import generate_replies
from fineplat.registry import Registry
from fineplat.serving.embedded import EmbeddedServingPool
from fineplat.settings import paths
from fineplat.storage import LocalObjectStore
from fineplat.submission import stage_upload, submit_job
from fineplat.training.config import TrainConfig

E2E_CLEAN_ROWS = 240  # as in conftest.sample_dataset
E2E_FLAWS = PlantedFlaws()
TEST_CONFIG = dict(method="lora", max_steps=60, batch_size=4, learning_rate_multiplier=15.0, lora_rank=8, lora_alpha=16,
                   max_seq_len=256, checkpoint_interval=10)  # fmt: skip


def _metadata(instance: DagsterInstance, asset: str, partition: str) -> dict[str, Any]:
    for record in instance.fetch_materializations(AssetKey(asset), limit=20).records:
        materialization = record.asset_materialization
        if materialization is not None and materialization.partition == partition:
            return {k: getattr(v, "value", v) for k, v in materialization.metadata.items()}
    raise AssertionError(f"{asset} was not materialized for {partition}")


def _run_everything(
    instance: DagsterInstance, sample_dataset: Path, registry_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FINEPLAT_REGISTRY_URL", registry_url)
    from dagster import Definitions

    from fineplat_assets import definitions
    from fineplat_resources.registry import RegistryResource

    serving = EmbeddedServingPool("fineplat-tiny", env={"FINEPLAT_HOME": str(paths().home)})
    monkeypatch.setenv("FINEPLAT_SERVING_URL", serving.url)
    resources = {**definitions.build_resources(), "registry": RegistryResource(url=registry_url)}
    defs = Definitions(
        assets=definitions.defs.assets,
        jobs=definitions.defs.jobs,
        sensors=definitions.defs.sensors,
        resources=resources,
    )
    store = LocalObjectStore(paths().objects)

    upload = stage_upload(store, sample_dataset, name="router", benchmarks=[SAMPLE_BENCHMARK])
    instance.add_dynamic_partitions("dataset_uploads", [upload.partition])
    upload_sensor = defs.get_sensor_def("dataset_upload_sensor")
    with (
        partition_loading_context(dynamic_partitions_store=instance),
        build_sensor_context(instance=instance, definitions=defs) as upload_context,
    ):
        requests = upload_sensor.evaluate_tick(upload_context).run_requests
    assert [r.partition_key for r in requests or []] == [upload.partition]
    assert (
        defs.resolve_job_def("ingest_dataset")
        .execute_in_process(instance=instance, partition_key=upload.partition)
        .success
    )

    # Counts add up at every stage, and across the chain.
    stages = {
        a: _metadata(instance, a, upload.partition)
        for a in ("raw_dataset", "validated_dataset", "deduplicated_dataset", "decontaminated_dataset")
    }
    total_lines = (
        E2E_CLEAN_ROWS + E2E_FLAWS.malformed_json + E2E_FLAWS.wrong_role_order + E2E_FLAWS.empty_reply
    )
    total_lines += E2E_FLAWS.exact_duplicates + E2E_FLAWS.near_duplicates + E2E_FLAWS.contaminated
    assert stages["raw_dataset"]["rows_in"] == total_lines
    for name in ("validated_dataset", "deduplicated_dataset", "decontaminated_dataset"):
        meta = stages[name]
        assert meta["rows_in"] == meta["kept"] + meta["rejected"], name
    assert stages["validated_dataset"]["rows_in"] == total_lines
    assert (
        stages["validated_dataset"]["rejected"]
        == E2E_FLAWS.malformed_json + E2E_FLAWS.wrong_role_order + E2E_FLAWS.empty_reply
    )
    assert (
        stages["deduplicated_dataset"]["rejected"] == E2E_FLAWS.exact_duplicates + E2E_FLAWS.near_duplicates
    )
    assert stages["decontaminated_dataset"]["rejected"] == E2E_FLAWS.contaminated
    final = stages["decontaminated_dataset"]
    assert (
        final["rows_in_upload"]
        == final["kept"] + final["quarantined"] + final["dedup_removed"] + final["contamination_removed"]
    )
    dataset_id = final["dataset_id"]

    base = resolve_base_model("fineplat-tiny")
    config = TrainConfig(**TEST_CONFIG)
    job_id = submit_job(store, name="router", dataset_id=dataset_id, base=base, config=config).job_id
    instance.add_dynamic_partitions("finetune_jobs", [job_id])
    assert (
        defs.resolve_job_def("finetune").execute_in_process(instance=instance, partition_key=job_id).success
    )

    trained = _metadata(instance, "adapter", job_id)
    assert trained["steps"] == TEST_CONFIG["max_steps"]
    assert trained["loss_last"] < trained["loss_first"]
    prepared = _metadata(instance, "training_data", job_id)
    registered = _metadata(instance, "registered_adapter", job_id)
    evaluation = _metadata(instance, "eval_report", job_id)

    # The registry's lineage equals what the assets recorded.
    registry = Registry(registry_url)
    lineage = registry.lineage(registered["model_id"])
    assert registered["base_model_sha"] == prepared["base_model_sha"] == base.sha == lineage["base_model_sha"]
    assert registered["dataset_id"] == prepared["dataset_id"] == dataset_id == lineage["dataset"]["id"]
    assert registered["hparams_hash"] == config.hparams_hash() == lineage["hparams_hash"]
    assert lineage["eval_results"]["candidate_exact_match"] == evaluation["adapter_exact_match"]
    assert lineage["job"]["id"] == job_id and lineage["job"]["run_identity"] == prepared["run_identity"]
    job = registry.get_job(job_id)
    assert job.status == "succeeded" and job.current_step == TEST_CONFIG["max_steps"]
    assert [m.step for m in registry.metrics(job_id, "loss")] == list(range(1, TEST_CONFIG["max_steps"] + 1))

    # Deployment: the sensor requests one deploy run; the served adapter behaves like the adapter.
    with serving:
        sensor = defs.get_sensor_def("promote_adapters_sensor")
        with build_sensor_context(instance=instance, resources=defs.resources) as sensor_context:
            requests = sensor.evaluate_tick(sensor_context).run_requests or []
        assert evaluation["passed"], evaluation  # the task is learned: far above the base
        assert [r.run_key for r in requests] == [registered["model_id"]]
        for request in requests:
            assert (
                defs.resolve_job_def("deploy_adapter_job")
                .execute_in_process(instance=instance, run_config=request.run_config)
                .success
            )
        assert registry.get_model(registered["model_id"]).stage == "production"
        question = task_row(random.Random(99))["messages"][:1]  # a message the adapter never saw
        with serving.client() as client:
            served_models = client.list_models()
            assert registered["serving_name"] in served_models
            over_http_adapter = client.chat(registered["serving_name"], question, max_tokens=12)
            over_http_base = client.chat(served_models[0], question, max_tokens=12)
        tokenizer = load_tokenizer(base.path)
        from peft import PeftModel

        adapter_dir = Path(registry.get_model(registered["model_id"]).uri.removeprefix("file://"))
        local_adapter = generate_replies(
            PeftModel.from_pretrained(load_base_model(base.path), str(adapter_dir)),
            tokenizer,
            [question],
            max_new_tokens=12,
        )[0]
        local_base = generate_replies(load_base_model(base.path), tokenizer, [question], max_new_tokens=12)[0]
        assert over_http_adapter.strip() == local_adapter.strip()
        assert over_http_base.strip() == local_base.strip()
        assert over_http_adapter != over_http_base


@pytest.mark.slow
def test_whole_graph_on_sqlite(e2e_home: Path, sample_dataset: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with instance_for_test() as instance:
        _run_everything(instance, sample_dataset, paths().registry_url, monkeypatch)


@pytest.mark.slow
@pytest.mark.postgres
def test_whole_graph_on_postgres(
    e2e_home: Path, sample_dataset: Path, pg_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from urllib.parse import urlparse

    url = urlparse(pg_database)
    storage = {
        "storage": {
            "postgres": {
                "postgres_db": {
                    "username": url.username or "postgres",
                    "password": url.password or "",
                    "hostname": url.hostname or "127.0.0.1",
                    "db_name": url.path.lstrip("/"),
                    "port": url.port or 5432,
                }
            }
        }
    }
    with instance_for_test(overrides=storage) as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        _run_everything(instance, sample_dataset, pg_database, monkeypatch)
