"""`fineplat datasets validate FILE`: the whole ingestion check as a dry run on the user's machine,
without the Dagster daemon, so a user sees every data problem (with file, line, field and what to
do) before uploading a file or spending GPU time. Exit code 0 when the dataset would be accepted,
1 when it would be rejected, 2 when the file cannot be read at all.

    fineplat datasets validate train.jsonl --base-model fineplat-tiny --benchmarks benchmarks/
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from fineplat.errors import FineplatError
from fineplat.ingestion.artifacts import write_quarantine
from fineplat.ingestion.benchmarks import BenchmarkRegistry
from fineplat.ingestion.formats import count_records_hint
from fineplat.ingestion.pipeline import IngestionResult, run_ingestion

app = typer.Typer(
    help="Check datasets before uploading them: formats, schema, duplicates, benchmark leakage.",
    no_args_is_help=True,
)

EXIT_REJECTED = 1
EXIT_UNREADABLE = 2


@app.callback()
def datasets() -> None:
    """Dataset commands (a group, so `fineplat datasets validate` keeps its name when mounted)."""


@app.command()
def validate(
    file: Annotated[
        str,
        typer.Argument(help="JSONL/JSON/Parquet/CSV file, dataset folder, save_to_disk dir or cached hub id"),
    ],
    base_model: Annotated[
        str | None,
        typer.Option("--base-model", help="base model whose tokenizer and chat template count tokens"),
    ] = None,
    purpose: Annotated[str, typer.Option(help="sft, dpo or cpt")] = "sft",
    schema: Annotated[
        str | None, typer.Option(help="override schema detection (openai, alpaca, sharegpt, ...)")
    ] = None,
    max_tokens: Annotated[int | None, typer.Option(help="context limit (default: the tokenizer's)")] = None,
    overlength: Annotated[str, typer.Option(help="reject or truncate rows over the limit")] = "reject",
    benchmarks: Annotated[
        Path | None,
        typer.Option("--benchmarks", help="folder of benchmark test files to check leakage against"),
    ] = None,
    policy: Annotated[str, typer.Option(help="contaminated rows: remove, flag or escalate")] = "remove",
    split: Annotated[str, typer.Option(help="split of a Hugging Face dataset")] = "train",
    quarantine: Annotated[Path | None, typer.Option(help="write rejected rows (JSONL) here")] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="print the reports as JSON instead of tables")
    ] = False,
) -> None:
    """Validate FILE as ingestion would and print the report; non-zero exit if it would be rejected."""
    console = Console(stderr=as_json)
    try:
        tokenizer = _tokenizer(base_model, console) if base_model else None
        registry = BenchmarkRegistry.from_directory(benchmarks) if benchmarks else None
        result = _run(
            file, console, tokenizer, registry, purpose, schema, max_tokens, overlength, policy, split
        )
    except FineplatError as exc:
        console.print(f"[bold red]cannot validate[/] {exc}")
        raise typer.Exit(EXIT_UNREADABLE) from exc
    if quarantine is not None:
        write_quarantine(result.rejected, quarantine)
    if as_json:
        payload = {
            "totals": result.totals,
            "version_id": result.version_id,
            "problems": result.problems,
            "reports": result.reports,
        }
        typer.echo(json.dumps(payload, indent=2, default=str))
    else:
        _print_report(console, result, base_model, registry, quarantine)
    if result.problems:
        raise typer.Exit(EXIT_REJECTED)


def _tokenizer(base_model: str, console: Console) -> Any:
    from fineplat.basemodel import load_tokenizer, resolve_base_model

    with console.status(f"loading tokenizer of {base_model}"):
        info = resolve_base_model(base_model)
        return load_tokenizer(info.path)


def _run(
    file: str,
    console: Console,
    tokenizer: Any,
    registry: BenchmarkRegistry | None,
    purpose: str,
    schema: str | None,
    max_tokens: int | None,
    overlength: str,
    policy: str,
    split: str,
) -> IngestionResult:
    total = count_records_hint(file)
    columns = [
        SpinnerColumn(),
        TextColumn("reading {task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    ]
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task(Path(file).name, total=total)
        return run_ingestion(
            file,
            purpose=purpose,  # type: ignore[arg-type]
            schema=schema,
            split=split,
            tokenizer=tokenizer,
            max_tokens=max_tokens,
            overlength=overlength,  # type: ignore[arg-type]
            benchmarks=registry,
            policy=policy,  # type: ignore[arg-type]
            on_batch=lambda rows: progress.advance(task, rows),
        )


def _print_report(
    console: Console,
    result: IngestionResult,
    base_model: str | None,
    registry: BenchmarkRegistry | None,
    quarantine: Path | None,
) -> None:
    validated = result.stages["validate"].report
    console.print(
        f"[bold]{', '.join(validated['sources']) or '(no rows)'}[/]  schema [cyan]{validated['schema']}[/]"
        f"{' (detected)' if validated['schema_detected'] else ''}, purpose {validated['purpose']}"
    )
    stages = Table(title="Stages")
    for column in ("stage", "rows in", "kept", "rejected", "reasons"):
        stages.add_column(column, justify="right" if column in ("rows in", "kept", "rejected") else "left")
    for name, stage in result.stages.items():
        report = stage.report
        reasons = ", ".join(f"{code} {count}" for code, count in report["reasons"].items())
        stages.add_row(
            name, str(report["rows_in"]), str(report["kept"]), str(report["rejected"]), reasons or "-"
        )
    console.print(stages)
    examples = [(code, example) for code, items in validated["examples"].items() for example in items]
    if examples:
        table = Table(title="Invalid rows (up to 3 per reason; all are in the quarantine)")
        table.add_column("reason")
        table.add_column("line", justify="right")
        table.add_column("what is wrong and what to do", overflow="fold")
        for code, example in examples:
            table.add_row(code, str(example["line"]), example["detail"])
        console.print(table)
    if validated["ignored_fields"]:
        console.print(f"ignored fields (not part of the schema): {validated['ignored_fields']}")
    if "tokens" in validated:
        tokens = validated["tokens"]
        console.print(
            f"tokens ({base_model}): total {tokens['total']}, longest row {tokens['max']}, limit {tokens['limit']}, "
            f"truncated {tokens['truncated']}"
        )
        for sample in validated.get("render_samples", [])[:1]:
            console.rule(
                f"render check: line {sample['line']} ({sample['tokens']} tokens, {sample['loss_tokens']} with loss)"
            )
            console.print(sample["rendered"], markup=False, highlight=False)
            console.rule()
    else:
        console.print(
            "tokens: not checked (pass --base-model to count tokens with the model's chat template)"
        )
    dedup = result.stages["deduplicate"].report
    console.print(
        f"duplicates: {dedup['exact_duplicates']} exact, {dedup['near_duplicates']} near "
        f"(Jaccard >= {dedup['params']['near_threshold']}), in {len(dedup['exact_clusters']) + len(dedup['near_clusters'])} clusters"
    )
    contamination = result.stages["decontaminate"].report
    if registry is None:
        console.print("contamination: not checked (pass --benchmarks DIR)")
    else:
        console.print(
            f"contamination: {contamination['contaminated']} rows overlap {contamination['benchmark_items']} items of "
            f"{', '.join(registry.names)} (policy {contamination['policy']})"
        )
        for match in contamination["matches"][:5]:
            best = match["items"][0]
            overlap = best["overlap"][0] if best["overlap"] else ""
            console.print(
                f'  line {match["line"]}: {best["benchmark"]} {best["item"]}: "{overlap[:100]}"', markup=False
            )
    totals = result.totals
    console.print(
        f"rows in {totals['rows_in']} = kept {totals['kept']} + quarantined {totals['quarantined']} + duplicates "
        f"{totals['removed_duplicate']} + contaminated {totals['removed_contaminated']}"
    )
    if quarantine is not None:
        console.print(f"quarantine written to {quarantine}")
    if result.problems:
        console.print("[bold red]REJECTED[/]")
        for problem in result.problems:
            console.print(f"  - {problem}", markup=False)
    else:
        console.print(f"[bold green]OK[/] dataset version {result.version_id} ({totals['kept']} rows)")


if __name__ == "__main__":
    app()
