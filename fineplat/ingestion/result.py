"""The shapes every ingestion stage speaks: the raw, kept and rejected frames, the reason codes a
rejected row can carry, and `StageResult`. One shape for all stages is what lets the Dagster assets,
the CLI and the benchmark chain stages without glue, and lets an auditor add up any report."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import polars as pl

RAW_SCHEMA: dict[str, Any] = {
    "line": pl.Int64,  # 1-based record/line number in the source file
    "source": pl.String,  # file path or dataset id
    "raw": pl.String,  # original text of the record
    "parse_error": pl.String,  # null when the record parsed
    "data": pl.String,  # JSON of the parsed object, null on a parse error
}
KEPT_SCHEMA: dict[str, Any] = {
    "line": pl.Int64,
    "source": pl.String,
    "kind": pl.String,  # "chat" | "preference" | "text"
    "record": pl.String,  # canonical JSON of the normalized form
    "text": pl.String,  # normalized plain text used for hashing, dedup and contamination
    "content_hash": pl.String,  # SHA-256 of `text`
}
REJECTED_SCHEMA: dict[str, Any] = {
    "line": pl.Int64,
    "source": pl.String,
    "raw": pl.String,  # original text (validation) or the normalized record (later stages)
    "reasons": pl.List(pl.String),  # reason codes, see REASONS
    "detail": pl.String,  # names file, line, field, what was expected and what to do
    "stage": pl.String,
}

# Reason codes: stable strings that tests, dashboards and quarantine consumers match on.
REASONS: dict[str, str] = {
    "invalid_utf8": "the bytes of the record are not valid UTF-8",
    "json_parse_error": "the record is not valid JSON",
    "not_an_object": "the record is valid JSON but not an object",
    "missing_field": "a field the schema requires is absent",
    "extra_field": "a field the schema does not allow is present",
    "wrong_type": "a field has the wrong type",
    "empty_content": "a message or text is empty or whitespace only",
    "unknown_role": "a message role is not system, user, assistant or tool",
    "role_order": "the turn order is not system?, user, assistant, ...",
    "last_turn_not_assistant": "an SFT conversation does not end with an assistant turn",
    "no_loss_tokens": "every assistant turn has weight 0, so the row trains nothing",
    "prompt_mismatch": "chosen and rejected do not share the same prompt",
    "chosen_equals_rejected": "the chosen and rejected responses are identical",
    "unpaired_preference": "the row is unpaired (KTO-style) preference data, a method fineplat does not train",
    "too_many_tokens": "the rendered row exceeds the context limit",
    "template_error": "the base model's chat template cannot render the row",
    "exact_duplicate": "the normalized text equals that of an earlier row",
    "near_duplicate": "the row is a near duplicate (MinHash Jaccard estimate) of a kept row",
    "contaminated": "the row overlaps a registered benchmark test item",
}


@dataclass
class StageResult:
    """What one stage returns: the rows that go on, the rows that stop (with reasons), and a
    JSON-serializable report whose totals add up (rows_in == kept + rejected)."""

    kept: pl.DataFrame
    rejected: pl.DataFrame
    report: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        rows_in = self.report.get("rows_in")
        if rows_in is not None and rows_in != self.kept.height + self.rejected.height:
            raise AssertionError(
                f"stage {self.report.get('stage')}: rows_in {rows_in} != kept {self.kept.height} + "
                f"rejected {self.rejected.height}; a stage lost or invented rows (a fineplat bug)"
            )


def empty_frame(schema: dict[str, Any]) -> pl.DataFrame:
    """A zero-row frame with `schema`, so empty stages still have the documented columns."""
    return pl.DataFrame(schema=schema)


@dataclass(frozen=True)
class Rejection:
    """One row a stage stops. Every stage builds its rejected rows with this, so the quarantine
    reads the same whichever stage stopped a row: the detail always starts with the file and line,
    and every reason is one of REASONS."""

    stage: str
    source: str
    line: int
    raw: str  # the original record (validation) or the normalized record (later stages)
    reasons: tuple[str, ...]  # codes from REASONS, most important first
    message: str  # what is wrong, what was expected and what to do; the location is prepended

    def __post_init__(self) -> None:
        unknown = [code for code in self.reasons if code not in REASONS]
        if not self.reasons or unknown:
            raise ValueError(
                f"stage {self.stage}: a rejection needs reason codes from REASONS, got {list(self.reasons)}"
            )

    @property
    def detail(self) -> str:
        """The message with the file and line in front, as the quarantine file shows it."""
        return f"{self.source}, line {self.line}: {self.message}"


def rejected_frame(rejections: Iterable[Rejection]) -> pl.DataFrame:
    """The rejected frame (REJECTED_SCHEMA) of `rejections`, in the order given."""
    rows = list(rejections)
    if not rows:
        return empty_frame(REJECTED_SCHEMA)
    return pl.DataFrame(
        {
            "line": [r.line for r in rows],
            "source": [r.source for r in rows],
            "raw": [r.raw for r in rows],
            "reasons": [list(r.reasons) for r in rows],
            "detail": [r.detail for r in rows],
            "stage": [r.stage for r in rows],
        },
        schema=REJECTED_SCHEMA,
    )


def reason_counts(rejected: pl.DataFrame) -> dict[str, int]:
    """Count each reason code over the rejected rows (a row with two codes counts for both),
    sorted by code so reports are deterministic."""
    counts: Counter[str] = Counter()
    for reasons in rejected.get_column("reasons").to_list():
        counts.update(reasons or [])
    return dict(sorted(counts.items()))


def base_report(stage: str, rows_in: int, kept: pl.DataFrame, rejected: pl.DataFrame) -> dict[str, Any]:
    """The fields every stage report has: stage, rows_in, kept, rejected and counts per reason."""
    return {
        "stage": stage,
        "rows_in": rows_in,
        "kept": kept.height,
        "rejected": rejected.height,
        "reasons": reason_counts(rejected),
    }
