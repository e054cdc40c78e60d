"""The adapter asset through the real local launcher (a Pipes subprocess): a preemption (a real
SIGTERM from the spot-interruption drill) becomes a Dagster retry that resumes from the emergency
checkpoint; a NaN loss fails once, without retry, with the step in the error."""

from __future__ import annotations

import hashlib
import json
import random
import shutil
from pathlib import Path

import polars as pl
import pytest
import torch
from dagster import AssetKey, DagsterEventType, instance_for_test, materialize
from safetensors.torch import load_file, save_file

from fineplat.basemodel import BaseModelInfo, resolve_base_model
from fineplat.demo.dataset import task_row
from fineplat.ingestion import dataset_version_id, write_parquet
from fineplat.registry import Registry
from fineplat.settings import paths
from fineplat.storage import LocalObjectStore, ObjectStore
from fineplat.submission import JobSpec, job_id_for, write_job_spec
from fineplat.training.config import TrainConfig
from fineplat_assets.evaluation.assets import eval_report, registered_adapter
from fineplat_assets.resources import build_resources
from fineplat_assets.training.assets import adapter, training_data
from fineplat_resources.launcher import ComputeLauncher
from fineplat_resources.storage import ObjectStoreResource

CONFIG = dict(
    method="lora",
    max_steps=8,
    batch_size=4,
    checkpoint_interval=100,
    learning_rate_multiplier=10.0,
    lora_rank=4,
    lora_alpha=8,
    max_seq_len=128,
)


def _record(kind: str, rng: random.Random) -> str:
    row = task_row(rng)
    if kind == "text":
        return json.dumps({"text": " ".join(m["content"] for m in row["messages"])})
    if kind == "preference":
        prompt, reply = row["messages"]
        return json.dumps(
            {
                "prompt": [prompt],
                "chosen": [reply],
                "rejected": [{"role": "assistant", "content": "Thanks for reaching out."}],
            }
        )
    return json.dumps(row)


def _register_dataset(rows: int = 80, kind: str = "chat", store: ObjectStore | None = None) -> str:
    rng = random.Random(5)
    records = [_record(kind, rng) for _ in range(rows)]
    frame = pl.DataFrame(
        {
            "line": list(range(1, rows + 1)),
            "source": ["test.jsonl"] * rows,
            "kind": [kind] * rows,
            "record": records,
            "text": records,
            "content_hash": [hashlib.sha256(r.encode()).hexdigest() for r in records],
        }
    )
    dataset_id = dataset_version_id(frame)
    store = store or LocalObjectStore(paths().objects)
    with store.writing(f"datasets/by-id/{dataset_id}") as out:
        write_parquet(frame, out / "rows.parquet")
    registry = Registry(paths().registry_url)
    registry.migrate()
    registry.register_dataset(
        dataset_id, "router", store.uri(f"datasets/by-id/{dataset_id}"), row_count=rows, schema_kind=kind
    )
    return dataset_id


def _submit(
    base_model: str, dataset_id: str, sha: str, store: ObjectStore | None = None, **overrides: object
) -> str:
    config = TrainConfig(**{**CONFIG, **overrides})
    job_id = job_id_for("router", dataset_id, sha, config)
    write_job_spec(
        store or LocalObjectStore(paths().objects),
        JobSpec(
            job_id=job_id,
            name="router",
            dataset_id=dataset_id,
            base_model=base_model,
            base_model_sha=sha,
            config=config,
        ),
    )
    return job_id


def test_preemption_is_retried_and_resumes(fineplat_home: Path, tiny_base_model: BaseModelInfo) -> None:
    dataset_id = _register_dataset()
    job_id = _submit(str(tiny_base_model.path), dataset_id, tiny_base_model.sha)
    resources = {**build_resources(), "launcher": ComputeLauncher(chaos_preempt_at_step=3)}
    with instance_for_test() as instance:
        instance.add_dynamic_partitions("finetune_jobs", [job_id])
        result = materialize(
            [training_data, adapter], partition_key=job_id, instance=instance, resources=resources
        )
        assert result.success
        retries = [e for e in result.all_events if e.event_type == DagsterEventType.STEP_UP_FOR_RETRY]
        assert len(retries) == 1
        meta = result.asset_materializations_for_node("adapter")[0].metadata
        assert meta["attempts"].value == 2
        assert meta["resumed_from_step"].value == 3
        assert meta["steps"].value == CONFIG["max_steps"]
        # An identical second submission reuses the result instead of training again.
        again = materialize([adapter], partition_key=job_id, instance=instance, resources=resources)
        reused = again.asset_materializations_for_node("adapter")[0].metadata
        assert reused["reused_from_job"].value == job_id
    registry = Registry(paths().registry_url)
    job = registry.get_job(job_id)
    assert job.status == "succeeded" and job.attempts == 2
    # every step reported exactly once across both attempts: nothing lost, nothing repeated
    assert [m.step for m in registry.metrics(job_id, "loss")] == list(range(1, CONFIG["max_steps"] + 1))


def test_preempted_job_with_s3_storage_resumes_on_a_fresh_disk(
    fineplat_home: Path, tiny_base_model: BaseModelInfo, s3_endpoint: str, s3_credentials: None
) -> None:
    """Production storage: the trainer shares no disk with Dagster. It reads the training data from
    S3, mirrors checkpoints there, and the retry (a new process with a new, empty work dir, as on a
    new spot node) restores the emergency checkpoint from S3 and resumes; the adapter is uploaded."""
    import boto3

    client = boto3.client("s3", endpoint_url=s3_endpoint)
    bucket = f"fineplat-{fineplat_home.parent.name.lower().replace('_', '-')}"[:63]
    client.create_bucket(Bucket=bucket)
    object_store = ObjectStoreResource(s3_bucket=bucket, s3_prefix="prod", endpoint_url=s3_endpoint)
    store = object_store.get_store()
    dataset_id = _register_dataset(store=store)
    job_id = _submit(
        str(tiny_base_model.path), dataset_id, tiny_base_model.sha, store=store, checkpoint_interval=2
    )
    resources = {
        **build_resources(),
        "object_store": object_store,
        "launcher": ComputeLauncher(chaos_preempt_at_step=3),
    }
    with instance_for_test() as instance:
        instance.add_dynamic_partitions("finetune_jobs", [job_id])
        result = materialize(
            [training_data, adapter], partition_key=job_id, instance=instance, resources=resources
        )
        assert result.success
        meta = result.asset_materializations_for_node("adapter")[0].metadata
        assert meta["attempts"].value == 2
        assert meta["resumed_from_step"].value == 3
        assert meta["steps"].value == CONFIG["max_steps"]
    # Nothing of the run on the Dagster machine's object directory: it all went through the bucket.
    assert not (paths().objects / "checkpoints" / job_id).exists()
    listed = client.list_objects_v2(Bucket=bucket, Prefix=f"prod/checkpoints/{job_id}/")
    steps = sorted({item["Key"].split("/")[3] for item in listed["Contents"]})
    assert steps == ["step-00000004", "step-00000006", "step-00000008"]  # the last 3 kept
    adapter_files = client.list_objects_v2(Bucket=bucket, Prefix=f"prod/adapters/{job_id}/")
    names = {item["Key"].rsplit("/", 1)[1] for item in adapter_files["Contents"]}
    assert {"adapter_model.safetensors", "adapter_config.json", "fineplat_run.json"} <= names
    registry = Registry(paths().registry_url)
    assert [m.step for m in registry.metrics(job_id, "loss")] == list(range(1, CONFIG["max_steps"] + 1))


def test_nan_loss_fails_without_retry(
    fineplat_home: Path, tiny_base_model: BaseModelInfo, tmp_path: Path
) -> None:
    broken = tmp_path / "nan-base"
    shutil.copytree(tiny_base_model.path, broken)
    weights = load_file(str(broken / "model.safetensors"))
    name = next(k for k in weights if k.endswith("norm.weight"))
    weights[name] = torch.full_like(weights[name], float("nan"))
    save_file(weights, str(broken / "model.safetensors"), metadata={"format": "pt"})
    dataset_id = _register_dataset()
    job_id = _submit(str(broken), dataset_id, resolve_base_model(str(broken)).sha)
    with instance_for_test() as instance:
        instance.add_dynamic_partitions("finetune_jobs", [job_id])
        result = materialize(
            [training_data, adapter],
            partition_key=job_id,
            instance=instance,
            resources=build_resources(),
            raise_on_error=False,
        )
        assert not result.success
        assert not [e for e in result.all_events if e.event_type == DagsterEventType.STEP_UP_FOR_RETRY]
        failure = next(e for e in result.all_events if e.event_type == DagsterEventType.STEP_FAILURE)
        assert "step 1: loss is nan" in str(failure.event_specific_data.error.message)  # type: ignore[union-attr]
        assert instance.get_latest_materialization_event(AssetKey("adapter")) is None
    job = Registry(paths().registry_url).get_job(job_id)
    assert job.status == "failed" and "step 1" in (job.error or "")


# Each method's headline metric and gate: what it was trained to do, measured on its held-out rows.
METHOD_EVALUATION = {
    "sft": ("exact_match", "task_holdout"),
    "qlora": ("exact_match", "task_holdout"),
    "dpo": ("preference_accuracy", "preference_accuracy"),
    "cpt": ("perplexity", "heldout_perplexity"),
}


@pytest.mark.parametrize(
    ("method", "kind"), [("sft", "chat"), ("qlora", "chat"), ("dpo", "preference"), ("cpt", "text")]
)
def test_every_method_trains_through_the_asset_graph(
    fineplat_home: Path, tiny_base_model: BaseModelInfo, method: str, kind: str
) -> None:
    """lora is covered above; the other four methods run through the same assets and launcher,
    and each is evaluated by its own measure, gated, and registered with its report."""
    dataset_id = _register_dataset(48, kind)
    job_id = _submit(
        str(tiny_base_model.path),
        dataset_id,
        tiny_base_model.sha,
        method=method,
        max_steps=3,
        learning_rate_multiplier=1.0,
    )
    with instance_for_test() as instance:
        instance.add_dynamic_partitions("finetune_jobs", [job_id])
        result = materialize(
            [training_data, adapter, eval_report, registered_adapter],
            partition_key=job_id,
            instance=instance,
            resources=build_resources(),
        )
        assert result.success
        meta = result.asset_materializations_for_node("adapter")[0].metadata
        assert meta["method"].value == method and meta["steps"].value == 3
        holdout = (
            result.asset_materializations_for_node("training_data")[0].metadata["holdout_examples"].value
        )
        evaluation = {
            k: getattr(v, "value", v)
            for k, v in result.asset_materializations_for_node("eval_report")[0].metadata.items()
        }
        registered = result.asset_materializations_for_node("registered_adapter")[0].metadata
        check = next(e for e in result.get_asset_check_evaluations() if e.check_name == "gates_passed")
    output = Path(str(meta["uri"].value))
    expected = "adapter_config.json" if method in ("qlora", "dpo") else "config.json"
    assert (output / expected).is_file()
    registry = Registry(paths().registry_url)
    assert registry.get_job(job_id).status == "succeeded"

    metric, gate = METHOD_EVALUATION[method]
    assert evaluation["method"] == method and evaluation["metric"] == metric
    assert evaluation["holdout_rows"] == holdout > 0
    gate_values = evaluation[f"gate_{gate}"]
    assert evaluation["passed"] == gate_values["passed"] == check.passed
    assert f"| {gate} | " in evaluation["gates"]
    if method == "dpo":  # the base scored against itself: every pair a tie
        assert evaluation["base_value"] == 0.0
        assert evaluation["adapter_value"] == gate_values["accuracy"]
        assert gate_values["passed"] == (gate_values["accuracy"] >= 0.55 and gate_values["mean_margin"] > 0)
        assert gate_values["mean_margin"] != 0.0  # the trained adapter, not the base, was scored
    else:
        assert (evaluation["base_value"], evaluation["adapter_value"]) == (
            gate_values["base"],
            gate_values["candidate"],
        )
    if method == "cpt":
        assert evaluation["base_value"] > 1.0 and evaluation["adapter_value"] > 1.0
        assert evaluation["adapter_value"] != evaluation["base_value"]  # the trained model was scored
        assert gate_values["passed"] == (gate_values["candidate"] <= gate_values["required"])
    if kind == "chat":
        assert evaluation["base_exact_match"] == evaluation["base_value"]
        assert "| prompt | reference | base | adapter |" in evaluation["samples"]
        assert gate_values["passed"] == (gate_values["candidate"] >= gate_values["required"] - 1e-9)

    model = registry.get_model(str(registered["model_id"].value))
    results = model.eval_results
    assert results["method"] == method and results["metric"] == metric
    assert (results["base_value"], results["candidate_value"]) == (
        evaluation["base_value"],
        evaluation["adapter_value"],
    )
    assert [g["name"] for g in results["gates"]] == [gate]
    assert results["passed"] == model.gates_passed == evaluation["passed"]
    assert model.stage == ("staging" if model.gates_passed else "dev")
