"""Ingestion assets, one per stage, partitioned by dataset upload. Each calls one core function
(`fineplat.ingestion`), stores kept rows (Parquet), the quarantine (JSONL) and the report in the
object store, and attaches counts, reasons and plots as metadata. Blocking checks stop training
when a dataset must not be used."""

import json
from pathlib import Path
from typing import Any

import polars as pl
from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    MaterializeResult,
    MetadataValue,
    asset,
)

from fineplat.basemodel import load_tokenizer, locate_base_model
from fineplat.ingestion import (
    BenchmarkRegistry,
    blocking_problems,
    dataset_version_id,
    decontaminate_rows,
    deduplicate_rows,
    read_parquet,
    read_raw,
    validate_rows,
    write_parquet,
    write_quarantine,
)
from fineplat.ingestion.stats import dataset_statistics, source_breakdown
from fineplat.storage import ObjectStore
from fineplat.submission import read_upload
from fineplat_assets.metadata import plot_histogram, png_markdown, report_table
from fineplat_assets.partitions import dataset_partitions
from fineplat_resources.registry import RegistryResource
from fineplat_resources.storage import ObjectStoreResource

GROUP = "ingestion"


def stage_key(partition: str, stage: str) -> str:
    """Object-store key of one stage's output for one dataset upload."""
    return f"datasets/{partition}/{stage}"


def _store_stage(
    store: ObjectStore, key: str, kept: pl.DataFrame, rejected: pl.DataFrame | None, report: dict[str, Any]
) -> str:
    with store.writing(key) as out:
        write_parquet(kept, out / "kept.parquet")
        if rejected is not None:
            write_quarantine(rejected, out / "quarantine.jsonl")
        (out / "report.json").write_text(json.dumps(report, indent=2, sort_keys=True, default=str))
    return store.uri(key)


def _stage_metadata(report: dict[str, Any], uri: str) -> dict[str, Any]:
    return {
        "rows_in": report["rows_in"],
        "kept": report["kept"],
        "rejected": report["rejected"],
        "reasons": report_table(report),
        "uri": MetadataValue.url(uri)
        if uri.startswith("s3://")
        else MetadataValue.path(uri.removeprefix("file://")),
    }


def _blocking_check(name: str, report: dict[str, Any]) -> AssetCheckResult:
    problems = blocking_problems(report)
    return AssetCheckResult(
        check_name=name,
        passed=not problems,
        severity=AssetCheckSeverity.ERROR,
        metadata={"problems": MetadataValue.md("\n".join(f"- {p}" for p in problems) or "none")},
    )


def _per_source_table(breakdown: dict[str, dict[str, int]]) -> str:
    columns = ["rows_in", "quarantined", "duplicates", "contaminated", "kept"]
    lines = ["| source | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    lines += [
        f"| {Path(src).name} | " + " | ".join(str(v[c]) for c in columns) + " |"
        for src, v in breakdown.items()
    ]
    return "\n".join(lines)


@asset(partitions_def=dataset_partitions, group_name=GROUP, kinds={"polars"})
def raw_dataset(context: AssetExecutionContext, object_store: ObjectStoreResource) -> MaterializeResult:
    """The uploaded file read record by record (JSONL, JSON, Parquet, CSV, HF datasets), with the
    original line number and raw text of every record, parse errors included."""
    store = object_store.get_store()
    manifest, root = read_upload(store, context.partition_key)
    raw = read_raw(root / manifest.filename)
    key = stage_key(context.partition_key, "raw")
    with store.writing(key) as out:
        raw.write_parquet(out / "raw.parquet")
    parse_errors = int(raw.get_column("parse_error").is_not_null().sum())
    return MaterializeResult(
        metadata={
            "dataset_name": manifest.name,
            "file": manifest.filename,
            "content_sha256": manifest.content_sha256,
            "rows_in": raw.height,
            "parse_errors": parse_errors,
            "uri": store.uri(key),
        }
    )


@asset(
    partitions_def=dataset_partitions,
    group_name=GROUP,
    deps=[raw_dataset],
    kinds={"polars"},
    check_specs=[AssetCheckSpec("has_usable_rows", asset="validated_dataset", blocking=True)],
)
def validated_dataset(context: AssetExecutionContext, object_store: ObjectStoreResource) -> MaterializeResult:
    """Schema detection, normalization and per-row validation with the base model's own tokenizer
    and chat template; every rejected row lands in the quarantine with its line and reasons."""
    store = object_store.get_store()
    manifest, _ = read_upload(store, context.partition_key)
    raw = pl.read_parquet(store.local(stage_key(context.partition_key, "raw")) / "raw.parquet")
    tokenizer = load_tokenizer(locate_base_model(manifest.base_model))
    result = validate_rows(raw, purpose=manifest.purpose, tokenizer=tokenizer, max_tokens=manifest.max_tokens)  # type: ignore[arg-type]
    uri = _store_stage(
        store, stage_key(context.partition_key, "validated"), result.kept, result.rejected, result.report
    )
    samples = result.report.get("render_samples", [])
    metadata = _stage_metadata(result.report, uri)
    metadata["schema"] = str(result.report.get("schema"))
    metadata["render_samples"] = MetadataValue.md(
        "\n\n".join(f"line {s.get('line')}:\n```\n{s.get('rendered', '')}\n```" for s in samples) or "none"
    )
    context.log.info(f"validated: {result.report['kept']} kept, {result.report['rejected']} quarantined")
    return MaterializeResult(
        metadata=metadata, check_results=[_blocking_check("has_usable_rows", result.report)]
    )


@asset(partitions_def=dataset_partitions, group_name=GROUP, deps=[validated_dataset], kinds={"polars"})
def deduplicated_dataset(
    context: AssetExecutionContext, object_store: ObjectStoreResource
) -> MaterializeResult:
    """Exact (SHA-256 of normalized text) and MinHash-LSH near-duplicate removal; one deterministic
    representative per cluster; clusters in the report."""
    store = object_store.get_store()
    rows = read_parquet(store.local(stage_key(context.partition_key, "validated")) / "kept.parquet")
    result = deduplicate_rows(rows)
    uri = _store_stage(
        store, stage_key(context.partition_key, "deduplicated"), result.kept, result.rejected, result.report
    )
    metadata = _stage_metadata(result.report, uri)
    metadata["exact_clusters"] = len(result.report.get("exact_clusters", []))
    metadata["near_clusters"] = len(result.report.get("near_clusters", []))
    return MaterializeResult(metadata=metadata)


def _benchmarks(store: ObjectStore, upload_root: Path, keys: list[str]) -> BenchmarkRegistry:
    registry = BenchmarkRegistry()
    for key in keys:
        path = upload_root / key
        registry.add(path.stem, path)
    return registry


@asset(
    partitions_def=dataset_partitions,
    group_name=GROUP,
    deps=[deduplicated_dataset],
    kinds={"polars"},
    check_specs=[
        AssetCheckSpec("contamination_within_policy", asset="decontaminated_dataset", blocking=True)
    ],
)
def decontaminated_dataset(
    context: AssetExecutionContext, object_store: ObjectStoreResource, registry: RegistryResource
) -> MaterializeResult:
    """13-gram overlap against registered benchmark test splits; then the dataset version: an
    immutable, content-addressed Parquet artifact and a `dataset_artifacts` registry row."""
    store = object_store.get_store()
    manifest, upload_root = read_upload(store, context.partition_key)
    rows = read_parquet(store.local(stage_key(context.partition_key, "deduplicated")) / "kept.parquet")
    result = decontaminate_rows(rows, _benchmarks(store, upload_root, manifest.benchmarks))
    uri = _store_stage(
        store, stage_key(context.partition_key, "decontaminated"), result.kept, result.rejected, result.report
    )

    reports = [
        json.loads((store.local(stage_key(context.partition_key, stage)) / "report.json").read_text())
        for stage in ("validated", "deduplicated")
    ] + [result.report]
    dataset_id = dataset_version_id(result.kept)
    version_key = f"datasets/by-id/{dataset_id}"
    if not store.exists(version_key):
        with store.writing(version_key) as out:
            write_parquet(result.kept, out / "rows.parquet")
    tokenizer = load_tokenizer(locate_base_model(manifest.base_model))
    stats = dataset_statistics(result.kept, tokenizer)
    quarantined = reports[0]["rejected"]
    artifact = registry.get_registry().register_dataset(
        dataset_id,
        manifest.name,
        store.uri(version_key),
        row_count=result.kept.height,
        schema_kind=str(reports[0].get("schema")),
        token_count=int(stats["tokens_total"]),
        dedup_removed=int(reports[1]["rejected"]),
        contamination_flagged=int(result.report.get("contaminated", result.report["rejected"])),
        quarantined=int(quarantined),
        report={"stages": reports, "statistics": {k: v for k, v in stats.items() if k != "lengths"}},
    )
    plot_path = Path(store.local(stage_key(context.partition_key, "decontaminated"))) / "lengths.png"
    plot_histogram(
        stats.get("lengths", []), plot_path, title=f"{manifest.name}: tokens per row", xlabel="tokens"
    )
    metadata = _stage_metadata(result.report, uri)
    metadata.update(
        {
            "dataset_id": dataset_id,
            "dataset_version": artifact.version,
            "dataset_uri": store.uri(version_key),
            "rows_in_upload": reports[0]["rows_in"],
            "quarantined": quarantined,
            "dedup_removed": reports[1]["rejected"],
            "contamination_removed": result.report["rejected"],
            "tokens_total": int(stats["tokens_total"]),
            "loss_token_share": float(stats["loss_token_share"]),
            "length_histogram": png_markdown(plot_path, "tokens per row"),
            "matches": MetadataValue.json(result.report.get("matches", [])[:20]),
            "per_source": MetadataValue.md(_per_source_table(source_breakdown(reports))),
        }
    )
    return MaterializeResult(
        metadata=metadata, check_results=[_blocking_check("contamination_within_policy", result.report)]
    )
