"""The graph is what an auditor reads: a snapshot of every asset's key, upstream deps, group,
partitioning and checks, plus the jobs and sensors, so any change to it is a reviewed change."""

from __future__ import annotations

from dagster import AssetKey

from fineplat_assets.definitions import defs

EXPECTED_ASSETS = {
    "raw_dataset": ("ingestion", "dataset_uploads", [], []),
    "validated_dataset": ("ingestion", "dataset_uploads", ["raw_dataset"], ["has_usable_rows"]),
    "deduplicated_dataset": ("ingestion", "dataset_uploads", ["validated_dataset"], []),
    "decontaminated_dataset": (
        "ingestion",
        "dataset_uploads",
        ["deduplicated_dataset"],
        ["contamination_within_policy"],
    ),
    "training_data": ("training", "finetune_jobs", ["decontaminated_dataset"], []),
    "adapter": ("training", "finetune_jobs", ["training_data"], []),
    "eval_report": ("evaluation", "finetune_jobs", ["adapter"], ["gates_passed"]),
    "registered_adapter": ("evaluation", "finetune_jobs", ["eval_report"], []),
}


def test_asset_graph_snapshot() -> None:
    graph = defs.resolve_asset_graph()
    actual = {}
    for key in graph.get_all_asset_keys():
        node = graph.get(key)
        partitions = node.partitions_def
        checks = sorted(c.name for c in graph.get_check_keys_for_assets({key}))
        actual[key.to_user_string()] = (
            node.group_name,
            getattr(partitions, "name", None),
            sorted(k.to_user_string() for k in node.parent_keys),
            checks,
        )
    assert actual == EXPECTED_ASSETS


def test_blocking_checks_stop_training() -> None:
    graph = defs.resolve_asset_graph()
    blocking = {
        spec.key.name
        for key in (AssetKey("validated_dataset"), AssetKey("decontaminated_dataset"))
        for spec in graph.get(key).check_keys and [graph.get_check_spec(k) for k in graph.get(key).check_keys]  # type: ignore[union-attr]
        if spec.blocking
    }
    assert blocking == {"has_usable_rows", "contamination_within_policy"}


def test_jobs_sensors_and_resources() -> None:
    assert sorted(j.name for j in defs.jobs or []) == [
        "deploy_adapter_job",
        "finetune",
        "ingest_dataset",
        "rollback_adapter_job",
    ]
    assert sorted(s.name for s in defs.sensors or []) == [
        "dataset_upload_sensor",
        "finetune_submission_sensor",
        "promote_adapters_sensor",
    ]
    assert sorted(defs.resources or {}) == ["launcher", "object_store", "registry", "serving", "tracker"]
