"""The `fineplat` command line: build base models, check and upload datasets, submit fine-tune
jobs, compare runs, serve adapters and work with the registry, without opening the Dagster UI.

    fineplat base-model build
    fineplat datasets validate data.jsonl --base-model fineplat-tiny
    fineplat datasets upload data.jsonl --name support-router
    fineplat jobs submit --name support-router --dataset ds-… --config '{"method": "lora"}'
    fineplat runs compare JOB JOB
    fineplat registry list
    fineplat serve --base-model fineplat-tiny --port 8000
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from fineplat.ingestion.cli import app as datasets_app
from fineplat.registry.cli import app as registry_app
from fineplat.serving.cli import serve as serve_command

app = typer.Typer(
    add_completion=False, help="fineplat: from a base model and a dataset to a served, audited adapter."
)
base_model_app = typer.Typer(add_completion=False, help="Build and inspect base models.")
jobs_app = typer.Typer(add_completion=False, help="Submit and inspect fine-tune jobs.")
runs_app = typer.Typer(add_completion=False, help="Compare training runs.")
app.add_typer(base_model_app, name="base-model")
app.add_typer(datasets_app, name="datasets")
app.add_typer(jobs_app, name="jobs")
app.add_typer(runs_app, name="runs")
app.add_typer(registry_app, name="registry")
app.command("serve", help="Start the embedded multi-LoRA serving pool (vLLM's HTTP API).")(serve_command)
console = Console()


def _instance() -> Any:
    from dagster import DagsterInstance

    return DagsterInstance.get()


@base_model_app.command("build")
def build_command(
    out: Annotated[
        Path | None, typer.Option(help="Output directory (default FINEPLAT_HOME/models/fineplat-tiny).")
    ] = None,
    pretrain_steps: Annotated[
        int | None, typer.Option(help="Pre-training steps (default from TinyModelSpec).")
    ] = None,
) -> None:
    """Build the tiny Llama base model and tokenizer deterministically; print its SHA."""
    from dataclasses import replace

    from fineplat.basemodel import TinyModelSpec, build_base_model
    from fineplat.basemodel.load import TINY_MODEL_NAME
    from fineplat.settings import paths

    spec = (
        TinyModelSpec() if pretrain_steps is None else replace(TinyModelSpec(), pretrain_steps=pretrain_steps)
    )
    info = build_base_model(out or paths().models / TINY_MODEL_NAME, spec, show_progress=True)
    console.print(f"built {info.path}\nbase model SHA {info.sha}")


@base_model_app.command("sha")
def sha_command(
    model: Annotated[str, typer.Argument(help="fineplat-tiny, a local directory or a cached hub id.")],
) -> None:
    """Print the base model SHA (weights + config + tokenizer) that lineage records."""
    from fineplat.basemodel import resolve_base_model

    info = resolve_base_model(model, build_if_missing=False)
    console.print(f"{info.path}\n{info.sha}")


@datasets_app.command("upload")
def upload_command(
    file: Annotated[Path, typer.Argument(help="Dataset file or directory.")],
    name: Annotated[str, typer.Option(help="Dataset name; versions are numbered per name.")],
    base_model: Annotated[
        str, typer.Option(help="Base model whose tokenizer checks token counts.")
    ] = "fineplat-tiny",
    purpose: Annotated[str, typer.Option(help="sft, dpo or cpt.")] = "sft",
    max_tokens: Annotated[int, typer.Option(help="Context limit rows are checked against.")] = 512,
    benchmark: Annotated[
        list[Path] | None, typer.Option(help="Benchmark test split to decontaminate against (repeatable).")
    ] = None,
) -> None:
    """Stage a dataset in the object store and add its partition; the upload sensor ingests it."""
    from fineplat.settings import paths
    from fineplat.storage import LocalObjectStore
    from fineplat.submission import stage_upload
    from fineplat_assets.partitions import dataset_partitions

    manifest = stage_upload(
        LocalObjectStore(paths().objects),
        file,
        name=name,
        base_model=base_model,
        purpose=purpose,
        max_tokens=max_tokens,
        benchmarks=benchmark,
    )
    _instance().add_dynamic_partitions(dataset_partitions.name, [manifest.partition])
    console.print(f"uploaded {file} as dataset partition [bold]{manifest.partition}[/bold]")


@jobs_app.command("submit")
def submit_command(
    name: Annotated[str, typer.Option(help="Adapter name in the registry.")],
    dataset: Annotated[str, typer.Option(help="Dataset version id (ds-…).")],
    base_model: Annotated[str, typer.Option(help="Base model.")] = "fineplat-tiny",
    config: Annotated[
        str, typer.Option(help='Hyperparameters as JSON, e.g. \'{"method": "lora", "n_epochs": 3}\'.')
    ] = "{}",
) -> None:
    """Submit a fine-tune job; identical submissions map to the same job and reuse its result."""
    from fineplat.basemodel import resolve_base_model
    from fineplat.settings import paths
    from fineplat.storage import LocalObjectStore
    from fineplat.submission import submit_job
    from fineplat.training.config import TrainConfig
    from fineplat_assets.partitions import job_partitions

    spec = submit_job(
        LocalObjectStore(paths().objects),
        name=name,
        dataset_id=dataset,
        base=resolve_base_model(base_model),
        config=TrainConfig(**json.loads(config)),
    )
    _instance().add_dynamic_partitions(job_partitions.name, [spec.job_id])
    console.print(f"submitted job [bold]{spec.job_id}[/bold]")


@runs_app.command("compare")
def compare_command(jobs: Annotated[list[str], typer.Argument(help="Job ids to compare.")]) -> None:
    """Hyperparameters and final metrics of several jobs side by side."""
    from fineplat.registry import Registry
    from fineplat.settings import paths

    registry = Registry(paths().registry_url)
    loaded = [registry.get_job(j) for j in jobs]
    table = Table(title="runs")
    table.add_column("field")
    for job in loaded:
        table.add_column(job.id)
    keys = sorted({k for job in loaded for k in job.config})
    rows: list[tuple[str, list[str]]] = [
        ("status", [j.status for j in loaded]),
        ("steps", [str(j.current_step) for j in loaded]),
    ]
    rows += [
        (k, [str(j.config.get(k, "")) for j in loaded])
        for k in keys
        if len({str(j.config.get(k)) for j in loaded}) > 1 or k in ("method",)
    ]
    for metric in ("loss", "validation_loss", "tokens_per_second"):
        values = []
        for job in loaded:
            history = registry.metrics(job.id, metric)
            values.append(f"{history[-1].value:.4g}" if history else "-")
        rows.append((f"final {metric}", values))
    for field, values in rows:
        table.add_row(field, *values)
    console.print(table)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
