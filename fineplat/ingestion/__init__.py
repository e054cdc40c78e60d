"""Ingestion: every common dataset format in, a row-level report out, duplicates and benchmark
leakage removed, nothing lost. Each stage is a plain function returning a `StageResult`; the Dagster
assets call one stage each (raw -> validated -> deduplicated -> decontaminated)."""

from fineplat.ingestion.artifacts import (
    dataset_version_id,
    read_parquet,
    read_quarantine,
    write_parquet,
    write_quarantine,
)
from fineplat.ingestion.benchmarks import (
    BENCHMARK_FORMATS,
    BenchmarkItem,
    BenchmarkRegistry,
    generate_benchmark_sample,
)
from fineplat.ingestion.checks import blocking_problems, ingestion_totals
from fineplat.ingestion.contamination import CONTAMINATION_NGRAM, decontaminate_rows
from fineplat.ingestion.dedup import NEAR_DUPLICATE_THRESHOLD, deduplicate_rows
from fineplat.ingestion.formats import FORMATS, detect_format, iter_raw, read_raw
from fineplat.ingestion.pipeline import IngestionResult, run_ingestion
from fineplat.ingestion.result import (
    KEPT_SCHEMA,
    RAW_SCHEMA,
    REASONS,
    REJECTED_SCHEMA,
    Rejection,
    StageResult,
    rejected_frame,
)
from fineplat.ingestion.schemas import SCHEMAS
from fineplat.ingestion.stats import dataset_statistics, plot_length_histogram, source_breakdown
from fineplat.ingestion.validate import validate_batches, validate_rows

__all__ = [
    "BENCHMARK_FORMATS",
    "CONTAMINATION_NGRAM",
    "FORMATS",
    "KEPT_SCHEMA",
    "NEAR_DUPLICATE_THRESHOLD",
    "RAW_SCHEMA",
    "REASONS",
    "REJECTED_SCHEMA",
    "SCHEMAS",
    "BenchmarkItem",
    "BenchmarkRegistry",
    "IngestionResult",
    "Rejection",
    "StageResult",
    "blocking_problems",
    "dataset_statistics",
    "dataset_version_id",
    "decontaminate_rows",
    "deduplicate_rows",
    "detect_format",
    "generate_benchmark_sample",
    "ingestion_totals",
    "iter_raw",
    "plot_length_histogram",
    "read_parquet",
    "read_quarantine",
    "read_raw",
    "rejected_frame",
    "run_ingestion",
    "source_breakdown",
    "validate_batches",
    "validate_rows",
    "write_parquet",
    "write_quarantine",
]
