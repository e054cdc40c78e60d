"""The whole ingestion chain in one call (read -> validate -> deduplicate -> decontaminate) for
the CLI dry run and the benchmark. The Dagster assets call the stages one by one instead, so each
is its own materialization; both paths run the same functions."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import polars as pl

from fineplat.ingestion.artifacts import dataset_version_id
from fineplat.ingestion.benchmarks import BenchmarkRegistry
from fineplat.ingestion.checks import blocking_problems, ingestion_totals
from fineplat.ingestion.contamination import CONTAMINATION_NGRAM, decontaminate_rows
from fineplat.ingestion.dedup import NEAR_DUPLICATE_THRESHOLD, deduplicate_rows
from fineplat.ingestion.formats import DEFAULT_BATCH_SIZE, iter_raw
from fineplat.ingestion.result import StageResult
from fineplat.ingestion.schemas import Purpose
from fineplat.ingestion.validate import validate_batches


@dataclass
class IngestionResult:
    """Every stage's result, the final rows, all rejected rows, the totals and the version id."""

    stages: dict[str, StageResult]
    kept: pl.DataFrame
    rejected: pl.DataFrame
    totals: dict[str, int]
    version_id: str
    problems: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def reports(self) -> list[dict[str, Any]]:
        """Stage reports in chain order."""
        return [result.report for result in self.stages.values()]


def run_ingestion(
    source: str | Path,
    *,
    purpose: Purpose = "sft",
    schema: str | None = None,
    format: str | None = None,
    split: str = "train",
    tokenizer: Any | None = None,
    max_tokens: int | None = None,
    overlength: Literal["reject", "truncate"] = "reject",
    benchmarks: BenchmarkRegistry | None = None,
    policy: Literal["remove", "flag", "escalate"] = "remove",
    near_threshold: float = NEAR_DUPLICATE_THRESHOLD,
    ngram: int = CONTAMINATION_NGRAM,
    min_fraction: float | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    on_batch: Callable[[int], None] | None = None,
) -> IngestionResult:
    """Run all stages on `source`. `on_batch(rows)` is called after each raw batch is read (the
    CLI's progress bar). Without `benchmarks` the contamination stage checks nothing and says so."""
    seconds: dict[str, float] = {}
    clock = time.perf_counter()

    def batches() -> Iterator[pl.DataFrame]:
        for batch in iter_raw(source, format=format, batch_size=batch_size, split=split):
            if on_batch is not None:
                on_batch(batch.height)
            yield batch

    validated = validate_batches(
        batches(),
        purpose=purpose,
        schema=schema,
        tokenizer=tokenizer,
        max_tokens=max_tokens,
        overlength=overlength,
    )
    seconds["read+validate"] = time.perf_counter() - clock
    clock = time.perf_counter()
    deduplicated = deduplicate_rows(validated.kept, near_threshold=near_threshold)
    seconds["deduplicate"] = time.perf_counter() - clock
    clock = time.perf_counter()
    decontaminated = decontaminate_rows(
        deduplicated.kept,
        benchmarks or BenchmarkRegistry(),
        policy=policy,
        ngram=ngram,
        min_fraction=min_fraction,
    )
    seconds["decontaminate"] = time.perf_counter() - clock
    stages = {"validate": validated, "deduplicate": deduplicated, "decontaminate": decontaminated}
    rejected = pl.concat([r.rejected for r in stages.values()], how="vertical")
    reports = [r.report for r in stages.values()]
    problems = [problem for report in reports for problem in blocking_problems(report)]
    problems = list(dict.fromkeys(problems))
    return IngestionResult(
        stages=stages,
        kept=decontaminated.kept,
        rejected=rejected,
        totals=ingestion_totals(reports),
        version_id=dataset_version_id(decontaminated.kept),
        problems=problems,
        seconds=seconds,
    )
