"""`make demo`: the whole flow on embedded defaults, through the same Dagster jobs, sensors and
resources a deployment uses, into the instance `make ui` opens.

Builds the tiny base model, uploads the shipped sample dataset (with its planted flaws), runs the
ingestion job, submits a LoRA fine-tune and runs its job (train through Pipes, evaluate, register),
starts the embedded serving pool, lets the promotion sensor deploy the adapter, asks base and
adapter the same question over HTTP and prints a summary of every number measured on the way."""

import json
import os
import re
import shutil
import time
import warnings
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from fineplat.demo.dataset import SAMPLE_BENCHMARK, SAMPLE_DATASET
from fineplat.settings import paths

console = Console()
ADAPTER_NAME = "support-router"
# Dagster's step events at INFO (training steps stream through Pipes), not its DEBUG chatter.
RUN_CONFIG: dict[str, Any] = {"loggers": {"console": {"config": {"log_level": "INFO"}}}}
# LoRA settings for the ~1M-parameter demo model: a tiny model needs a far larger learning rate
# than the 2e-4 default meant for billion-parameter models.
DEMO_CONFIG: dict[str, Any] = {
    "method": "lora",
    "n_epochs": 2,
    "learning_rate_multiplier": 15.0,
    "batch_size": 8,
    "lora_rank": 16,
    "lora_alpha": 32,
    "max_seq_len": 512,
    "checkpoint_interval": 20,
    "seed": 0,
}

# What the demo hides, for itself and the trainer and serving processes it starts (they inherit the
# environment): library warnings and progress bars a newcomer cannot act on. The demo's own progress
# lines, Dagster's step logs (training loss every few steps) and the summary stay. Each variable is
# only a default: set it in the environment to see the output again.
QUIET_ENVIRONMENT = {
    "PYTHONWARNINGS": "ignore",  # deprecation / future warnings from transformers, peft, dagster
    "TRANSFORMERS_VERBOSITY": "error",  # transformers' advisory log lines
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",  # "Loading weights" / "Writing model shards" bars (transformers reads it too)
    "MLFLOW_LOGGING_LEVEL": "WARNING",  # "Creating initial MLflow database tables..."
}
# bitsandbytes warns on import, on CPUs with AVX512-BF16, that the optional `kernels` package is missing.
QUIET_LOGGERS = ("bitsandbytes.backends.cpu.ops",)


def _prepare_instance() -> Any:
    home = paths()
    home.dagster_home.mkdir(parents=True, exist_ok=True)
    os.environ["DAGSTER_HOME"] = str(home.dagster_home)
    if not (home.dagster_home / "dagster.yaml").exists():
        shutil.copy(
            Path(__file__).resolve().parent.parent / "dagster.yaml", home.dagster_home / "dagster.yaml"
        )
    from dagster import DagsterInstance

    return DagsterInstance.get()


def _metadata(instance: Any, asset: str, partition: str) -> dict[str, Any]:
    from dagster import AssetKey

    records = instance.fetch_materializations(AssetKey(asset), limit=50).records
    for record in records:
        materialization = record.asset_materialization
        if materialization is not None and materialization.partition == partition:
            return {k: getattr(v, "value", v) for k, v in materialization.metadata.items()}
    raise RuntimeError(f"no materialization of {asset} for partition {partition}")


def _quiet_third_party() -> None:
    """Hide third-party noise in this process and, through the environment, in the processes it
    starts (which read these settings when they import the libraries)."""
    import logging

    import torch
    from transformers.utils import logging as transformers_logging

    for name, value in QUIET_ENVIRONMENT.items():
        os.environ.setdefault(name, value)
    if not torch.cuda.is_available():
        # What DeepSpeed would detect anyway, minus its "Setting accelerator to CPU" warning.
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    warnings.filterwarnings("ignore")
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    # transformers is already imported here (through the sample dataset module), too early for the
    # variables above to reach this process: apply them directly.
    if os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] == "1":
        transformers_logging.disable_progress_bar()
    if os.environ["TRANSFORMERS_VERBOSITY"] == "error":
        transformers_logging.set_verbosity_error()


def main() -> None:
    """Run the demo end to end and print the summary."""
    _quiet_third_party()
    started = time.perf_counter()
    timings: dict[str, float] = {}
    instance = _prepare_instance()

    from dagster import build_sensor_context

    from fineplat.basemodel import resolve_base_model
    from fineplat.serving.embedded import EmbeddedServingPool
    from fineplat.storage import LocalObjectStore
    from fineplat.submission import stage_upload, submit_job
    from fineplat.training.config import TrainConfig
    from fineplat_assets.partitions import dataset_partitions, job_partitions

    console.rule("[bold]fineplat demo")
    t = time.perf_counter()
    base = resolve_base_model("fineplat-tiny")
    timings["base model"] = time.perf_counter() - t
    console.print(f"base model [bold]{base.name}[/bold] at {base.path}\n  SHA {base.sha}")

    store = LocalObjectStore(paths().objects)
    upload = stage_upload(store, SAMPLE_DATASET, name=ADAPTER_NAME, benchmarks=[SAMPLE_BENCHMARK])
    instance.add_dynamic_partitions(dataset_partitions.name, [upload.partition])

    serving = EmbeddedServingPool("fineplat-tiny", env={"FINEPLAT_HOME": str(paths().home)})
    os.environ["FINEPLAT_SERVING_URL"] = serving.url
    from fineplat_assets.definitions import defs

    t = time.perf_counter()
    console.print(f"ingesting {SAMPLE_DATASET.name} (dataset partition {upload.partition})…")
    result = defs.resolve_job_def("ingest_dataset").execute_in_process(
        instance=instance, partition_key=upload.partition, run_config=RUN_CONFIG
    )
    assert result.success, "ingestion failed"
    timings["ingestion"] = time.perf_counter() - t
    stages = {
        name: _metadata(instance, name, upload.partition)
        for name in ("raw_dataset", "validated_dataset", "deduplicated_dataset", "decontaminated_dataset")
    }
    dataset_id = stages["decontaminated_dataset"]["dataset_id"]

    config = TrainConfig(**DEMO_CONFIG)
    job_id = submit_job(store, name=ADAPTER_NAME, dataset_id=dataset_id, base=base, config=config).job_id
    instance.add_dynamic_partitions(job_partitions.name, [job_id])
    console.print(f"fine-tuning job {job_id} (LoRA r={config.lora_rank}) through Dagster Pipes…")
    t = time.perf_counter()
    result = defs.resolve_job_def("finetune").execute_in_process(
        instance=instance, partition_key=job_id, run_config=RUN_CONFIG
    )
    assert result.success, "fine-tune job failed"
    timings["fine-tune job"] = time.perf_counter() - t
    trained = _metadata(instance, "adapter", job_id)
    evaluation = _metadata(instance, "eval_report", job_id)
    registered = _metadata(instance, "registered_adapter", job_id)

    t = time.perf_counter()
    with serving:
        sensor = defs.get_sensor_def("promote_adapters_sensor")
        with build_sensor_context(instance=instance, resources=defs.resources) as sensor_context:
            requests = sensor.evaluate_tick(sensor_context).run_requests
        for request in requests or []:
            deploy = defs.resolve_job_def("deploy_adapter_job").execute_in_process(
                instance=instance, run_config={**request.run_config, **RUN_CONFIG}, tags=request.tags
            )
            assert deploy.success, "deploy failed"
        with serving.client() as client:
            served = client.list_models()
            question = json.loads(Path(SAMPLE_DATASET).read_text().splitlines()[0])["messages"][0]["content"]
            base_reply = client.chat(served[0], [{"role": "user", "content": question}], max_tokens=24)
            adapter_reply = client.chat(
                registered["serving_name"], [{"role": "user", "content": question}], max_tokens=24
            )
    timings["deploy + HTTP"] = time.perf_counter() - t
    from fineplat.registry import Registry

    registered["stage"] = (
        Registry(paths().registry_url).get_model(registered["model_id"]).stage
    )  # after deploy
    _summary(
        stages,
        trained,
        evaluation,
        registered,
        base,
        served,
        question,
        base_reply,
        adapter_reply,
        timings,
        time.perf_counter() - started,
    )


def _reasons(markdown: str) -> str:
    """'code ×n' pairs from a reasons markdown table."""
    pairs = re.findall(r"\|\s*([a-z_]+)\s*\|\s*(\d+)\s*\|", markdown)
    return ", ".join(f"{code} ×{count}" for code, count in pairs) or "—"


def _summary(
    stages, trained, evaluation, registered, base, served, question, base_reply, adapter_reply, timings, total
) -> None:  # type: ignore[no-untyped-def]
    console.rule("[bold]summary")
    table = Table(title="ingestion: rows in → out at each stage")
    for column in ("stage", "rows in", "kept", "removed", "reasons"):
        table.add_column(column)
    for name in ("validated_dataset", "deduplicated_dataset", "decontaminated_dataset"):
        meta = stages[name]
        table.add_row(
            name,
            str(meta["rows_in"]),
            str(meta["kept"]),
            str(meta["rejected"]),
            _reasons(str(meta["reasons"])),
        )
    console.print(table)
    d = stages["decontaminated_dataset"]
    console.print(
        f"upload rows {d['rows_in_upload']} = kept {d['kept']} + quarantined {d['quarantined']} + duplicates {d['dedup_removed']} "
        f"+ contaminated {d['contamination_removed']}"
    )
    console.print(f"dataset version {d['dataset_id']} (v{d['dataset_version']})")
    console.print(
        f"training: {trained['steps']} steps, loss {trained['loss_first']:.3f} → {trained['loss_last']:.3f}, "
        f"{trained['tokens_per_second']:.0f} tokens/s, packing efficiency {trained['packing_efficiency']:.1%}"
    )
    console.print(
        f"task holdout exact match ({evaluation['holdout_rows']} rows): base {evaluation['base_exact_match']:.1%} → "
        f"adapter {evaluation['adapter_exact_match']:.1%} ([bold]{evaluation['gain_points']:+.1f} points[/bold]); gates passed: {evaluation['passed']}"
    )
    console.print(
        f"registry: {registered['model_id']} '{registered['name']}' v{registered['version']} stage={registered['stage']}\n"
        f"  lineage: base SHA {registered['base_model_sha'][:16]}…, dataset {registered['dataset_id'][:19]}…, hparams {registered['hparams_hash'][:16]}…"
    )
    console.print(f"serving pool models: {served}")
    console.print(f"Q: {question!r}\n  base    → {base_reply!r}\n  adapter → {adapter_reply!r}")
    console.print(
        "timings: " + ", ".join(f"{k} {v:.0f}s" for k, v in timings.items()) + f"; total {total:.0f}s"
    )
    console.print(
        f"Open the Dagster UI on this instance: [bold]make ui[/bold] (DAGSTER_HOME={paths().dagster_home}), then http://127.0.0.1:3000"
    )


if __name__ == "__main__":
    main()
