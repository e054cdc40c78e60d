"""`fineplat registry …`: look at registered models, read a model's lineage and move it between
stages from a terminal, the same operations (and the same rules) the Dagster sensors use.

    fineplat registry list [--stage production] [--name NAME] [--json]
    fineplat registry show MODEL_ID [--json]
    fineplat registry promote MODEL_ID staging|production|archived [--reason TEXT]
    fineplat registry migrate

Every command takes `--url` (or $FINEPLAT_REGISTRY_URL); the default is the embedded SQLite file
under FINEPLAT_HOME. Commands migrate the schema first, so they work on a fresh home.
"""

from __future__ import annotations

import getpass
import json
from dataclasses import asdict
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from fineplat.errors import FineplatError
from fineplat.registry.registry import Registry
from fineplat.settings import paths

app = typer.Typer(
    help="The model/dataset registry: list models, show lineage, promote.", no_args_is_help=True
)
console = Console()
error_console = Console(stderr=True, soft_wrap=True)  # messages stay on one line for grep

UrlOption = Annotated[
    str | None,
    typer.Option(
        "--url",
        envvar="FINEPLAT_REGISTRY_URL",
        help="Registry database URL (default: sqlite registry.db under FINEPLAT_HOME).",
        show_default=False,
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def _open(url: str | None) -> Registry:
    """A migrated registry for `url`, or the embedded default resolved now (not at import time,
    so FINEPLAT_HOME set by the caller's environment is honoured)."""
    registry = Registry(url or paths().registry_url)
    registry.migrate()
    return registry


def _fail(error: FineplatError) -> typer.Exit:
    """Print a user error without a traceback and return the exit to raise (status 1)."""
    error_console.print(f"[bold red]error:[/bold red] {error}", markup=True, highlight=False)
    return typer.Exit(code=1)


def _default_actor() -> str:
    """Who the audit log names for a CLI promotion: the operating-system user."""
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):  # no passwd entry (some containers)
        return "cli:unknown"


@app.command("list")
def list_command(
    url: UrlOption = None,
    stage: Annotated[str | None, typer.Option(help="Only models in this stage.")] = None,
    name: Annotated[str | None, typer.Option(help="Only versions of this model name.")] = None,
    as_json: JsonOption = False,
) -> None:
    """List registered models, ordered by name and version."""
    try:
        with _open(url) as registry:
            models = registry.list_models(stage=stage, name=name)
    except FineplatError as error:
        raise _fail(error) from error
    if as_json:
        print(json.dumps([asdict(model) for model in models], indent=2, default=str))
        return
    table = Table(title=f"models ({len(models)})")
    table.add_column("id", no_wrap=True)
    for column in ("name", "version", "kind", "stage", "gates", "serving name", "created"):
        table.add_column(column)
    for model in models:
        table.add_row(
            model.id,
            model.name,
            str(model.version),
            model.kind,
            model.stage,
            "passed" if model.gates_passed else "failed",
            model.serving_name or "",
            model.created_at.strftime("%Y-%m-%d %H:%M"),
        )
    console.print(table)


def _key_value_table(title: str, values: dict[str, Any]) -> Table:
    table = Table(title=title, show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")
    for key, value in values.items():
        table.add_row(key, value if isinstance(value, str) else json.dumps(value, default=str))
    return table


@app.command("show")
def show_command(
    model_id: Annotated[str, typer.Argument(help="Model id (see `list`).")],
    url: UrlOption = None,
    as_json: JsonOption = False,
) -> None:
    """Show a model's lineage: base model, dataset version, job configuration, evaluation, stages."""
    try:
        with _open(url) as registry:
            lineage = registry.lineage(model_id)
    except FineplatError as error:
        raise _fail(error) from error
    if as_json:
        print(json.dumps(lineage, indent=2, default=str))
        return
    job = lineage["job"] or {}
    console.print(_key_value_table("model", lineage["model"]))
    console.print(
        _key_value_table(
            "provenance",
            {
                "base_model": lineage["base_model"] or "(not recorded: no training job)",
                "base_model_sha": lineage["base_model_sha"],
                "dataset": f"{lineage['dataset']['name']} v{lineage['dataset']['version']}",
                "dataset_id": lineage["dataset"]["id"],
                "dataset_uri": lineage["dataset"]["uri"],
                "job": job.get("id", "(none)"),
                "method": job.get("method", ""),
                "run_identity": job.get("run_identity", ""),
                "hparams_hash": lineage["hparams_hash"],
            },
        )
    )
    if job:
        console.print(_key_value_table("job config", job["config"]))
    console.print(_key_value_table("eval results", lineage["eval_results"]))
    history = Table(title="stage history")
    for column in ("at", "from", "to", "actor", "reason"):
        history.add_column(column)
    for change in lineage["stage_history"]:
        history.add_row(
            change["at"], change["from_stage"] or "-", change["to_stage"], change["actor"], change["reason"]
        )
    console.print(history)


@app.command("promote")
def promote_command(
    model_id: Annotated[str, typer.Argument(help="Model id (see `list`).")],
    stage: Annotated[str, typer.Argument(help="Target stage: staging, production or archived.")],
    url: UrlOption = None,
    reason: Annotated[str, typer.Option(help="Why, for the audit log.")] = "",
    actor: Annotated[str | None, typer.Option(help="Who, for the audit log (default: cli:<user>).")] = None,
) -> None:
    """Move a model to another stage (dev→staging→production, production→staging to roll back,
    anything→archived). Promoting to production demotes the current production model of the same
    name to staging."""
    try:
        with _open(url) as registry:
            model = registry.transition(model_id, stage, actor=actor or _default_actor(), reason=reason)
    except FineplatError as error:
        raise _fail(error) from error
    console.print(f"{model.name} v{model.version} ({model.id}) is now in {model.stage}", highlight=False)


@app.command("migrate")
def migrate_command(url: UrlOption = None) -> None:
    """Create or upgrade the registry tables (every other command does this too)."""
    try:
        with _open(url) as registry:
            revision = registry.schema_revision()
            shown = registry.url
    except FineplatError as error:
        raise _fail(error) from error
    console.print(f"registry {shown} is at schema revision {revision}", highlight=False)


if __name__ == "__main__":
    app()
