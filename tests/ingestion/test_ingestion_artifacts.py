"""Dataset artifacts: the content-hash version id (order- and format-independent, deterministic),
Parquet round trips, the quarantine file, totals across stages, and the statistics."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fineplat.hashing import canonical_json
from fineplat.ingestion import (
    KEPT_SCHEMA,
    REJECTED_SCHEMA,
    BenchmarkRegistry,
    Rejection,
    dataset_version_id,
    decontaminate_rows,
    deduplicate_rows,
    generate_benchmark_sample,
    ingestion_totals,
    read_parquet,
    read_quarantine,
    read_raw,
    rejected_frame,
    run_ingestion,
    validate_rows,
    write_parquet,
    write_quarantine,
)
from fineplat.ingestion.stats import dataset_statistics, plot_length_histogram, source_breakdown
from fineplat.ingestion.validate import validate_batches

ROWS = [
    {
        "messages": [
            {"role": "user", "content": f"Question number {i}?"},
            {"role": "assistant", "content": f"Answer {i}."},
        ]
    }
    for i in range(6)
]


def test_version_id_ignores_order_file_format_and_line_numbers(
    tmp_path: Path, write_lines: Callable[..., Path]
) -> None:
    jsonl = validate_rows(read_raw(write_lines(ROWS))).kept
    reversed_file = validate_rows(read_raw(write_lines(list(reversed(ROWS)), name="reversed.jsonl"))).kept
    parquet_path = tmp_path / "rows.parquet"
    pq.write_table(pa.Table.from_pylist(ROWS), parquet_path)
    from_parquet = validate_rows(read_raw(parquet_path)).kept
    version = dataset_version_id(jsonl)
    assert version.startswith("ds-") and len(version) == 3 + 64
    assert dataset_version_id(reversed_file) == version
    assert dataset_version_id(from_parquet) == version
    assert dataset_version_id(jsonl.sample(fraction=1.0, shuffle=True, seed=3)) == version


def test_version_id_changes_when_content_changes(write_lines: Callable[..., Path]) -> None:
    kept = validate_rows(read_raw(write_lines(ROWS))).kept
    edited = [
        *ROWS[:-1],
        {
            "messages": [
                {"role": "user", "content": "Question number 5?"},
                {"role": "assistant", "content": "Answer 5!"},
            ]
        },
    ]
    weighted = [
        *ROWS[:-1],
        {
            "messages": [
                ROWS[-1]["messages"][0],
                {**ROWS[-1]["messages"][1], "weight": 0},
                *ROWS[0]["messages"],
            ]
        },
    ]
    assert dataset_version_id(
        validate_rows(read_raw(write_lines(edited, name="e.jsonl"))).kept
    ) != dataset_version_id(kept)
    assert dataset_version_id(
        validate_rows(read_raw(write_lines(weighted, name="w.jsonl"))).kept
    ) != dataset_version_id(kept)
    assert dataset_version_id(kept.head(5)) != dataset_version_id(kept)


def test_parquet_round_trip_keeps_the_documented_columns(
    tmp_path: Path, write_lines: Callable[..., Path]
) -> None:
    kept = validate_rows(read_raw(write_lines(ROWS))).kept
    path = write_parquet(kept, tmp_path / "out" / "kept.parquet")
    back = read_parquet(path)
    assert back.schema == pl.Schema(KEPT_SCHEMA)
    assert back.equals(kept)
    assert dataset_version_id(back) == dataset_version_id(kept)
    assert not list((tmp_path / "out").glob(".*.tmp"))


def test_quarantine_has_one_line_per_rejected_row(tmp_path: Path, write_lines: Callable[..., Path]) -> None:
    path = write_lines([ROWS[0], "{not json", {"messages": [{"role": "user", "content": "unanswered"}]}])
    rejected = validate_rows(read_raw(path)).rejected
    quarantine = write_quarantine(rejected, tmp_path / "quarantine.jsonl")
    lines = [json.loads(line) for line in quarantine.read_text().splitlines()]
    assert [(entry["line"], entry["reasons"], entry["raw"]) for entry in lines] == [
        (2, ["json_parse_error"], "{not json"),
        (3, ["last_turn_not_assistant"], '{"messages": [{"role": "user", "content": "unanswered"}]}'),
    ]
    assert all(entry["detail"].startswith(f"{path}, line {entry['line']}: ") for entry in lines)
    back = read_quarantine(quarantine)
    assert back.schema == pl.Schema(REJECTED_SCHEMA)
    assert back.equals(rejected)


def test_every_row_is_kept_quarantined_or_removed_with_a_reason(
    tmp_path: Path, write_lines: Callable[..., Path]
) -> None:
    benchmark = generate_benchmark_sample(tmp_path / "gsm.jsonl", n=2)
    question = json.loads(benchmark.read_text().splitlines()[0])["question"]
    rows: list[Any] = [
        *ROWS,
        ROWS[0],
        "{bad",
        {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": "42"}]},
    ]
    registry = BenchmarkRegistry()
    registry.add("gsm8k-sample", benchmark)
    result = run_ingestion(write_lines(rows), benchmarks=registry)
    assert result.totals == {
        "rows_in": 9,
        "kept": 6,
        "quarantined": 1,
        "removed_duplicate": 1,
        "removed_contaminated": 1,
    }
    assert sorted(result.rejected["line"].to_list()) == [7, 8, 9]
    for report in result.reports:  # reports become Dagster metadata: plain JSON, no custom encoder
        assert json.loads(json.dumps(report, allow_nan=False)) == report
    assert result.version_id == dataset_version_id(
        validate_rows(read_raw(write_lines(ROWS, name="clean.jsonl"))).kept
    )
    # The stage functions chained by hand (as the Dagster assets do) give the same totals.
    validated = validate_rows(read_raw(write_lines(rows, name="again.jsonl")))
    deduplicated = deduplicate_rows(validated.kept)
    decontaminated = decontaminate_rows(deduplicated.kept, registry)
    assert ingestion_totals([validated.report, deduplicated.report, decontaminated.report]) == result.totals


def test_every_stage_writes_the_same_quarantine_line(
    tmp_path: Path, write_lines: Callable[..., Path]
) -> None:
    benchmark = generate_benchmark_sample(tmp_path / "gsm.jsonl", n=1)
    question = json.loads(benchmark.read_text())["question"]
    leak = {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": "42"}]}
    path = write_lines([*ROWS[:2], "{bad", ROWS[0], leak])
    registry = BenchmarkRegistry()
    registry.add("gsm8k-sample", benchmark)
    quarantine = write_quarantine(
        run_ingestion(path, benchmarks=registry).rejected, tmp_path / "quarantine.jsonl"
    )
    entries = [json.loads(line) for line in quarantine.read_text(encoding="utf-8").splitlines()]
    assert [(e["line"], e["stage"], e["reasons"]) for e in entries] == [
        (3, "validate", ["json_parse_error"]),
        (4, "deduplicate", ["exact_duplicate"]),
        (5, "decontaminate", ["contaminated"]),
    ]
    for entry in entries:
        assert list(entry) == ["source", "line", "raw", "reasons", "detail", "stage"]
        assert entry["source"] == str(path)
        assert entry["detail"].startswith(f"{path}, line {entry['line']}: ")
    assert entries[1]["raw"] == canonical_json(ROWS[0])  # later stages keep the normalized record
    assert entries[1]["detail"].endswith(
        f"identical to {path}, line 1, which is kept. Nothing to fix unless "
        "the repetition was intended (then vary the rows)."
    )


def test_a_rejection_needs_a_known_reason_code() -> None:
    made = Rejection("validate", "data.jsonl", 3, "{}", ("missing_field",), "expected `messages`; add it.")
    assert made.detail == "data.jsonl, line 3: expected `messages`; add it."
    for reasons in [(), ("misspelled_code",)]:
        with pytest.raises(ValueError, match="a rejection needs reason codes from REASONS"):
            Rejection("validate", "data.jsonl", 3, "{}", reasons, "message")
    assert rejected_frame([made]).row(0, named=True) == {
        "line": 3,
        "source": "data.jsonl",
        "raw": "{}",
        "reasons": ["missing_field"],
        "detail": "data.jsonl, line 3: expected `messages`; add it.",
        "stage": "validate",
    }
    assert rejected_frame([]).schema == pl.Schema(REJECTED_SCHEMA)


def test_source_breakdown_names_the_file_that_carries_the_problems(tmp_path: Path) -> None:
    clean = tmp_path / "repo" / "train-a.jsonl"
    noisy = tmp_path / "repo" / "train-b.jsonl"
    clean.parent.mkdir()
    clean.write_text("".join(json.dumps(row) + "\n" for row in ROWS[:3]))
    noisy.write_text("".join(json.dumps(row) + "\n" for row in [ROWS[3], ROWS[0], ROWS[3]]) + "{oops\n")
    result = run_ingestion(tmp_path / "repo")
    assert source_breakdown(result.reports) == {
        str(clean): {"rows_in": 3, "quarantined": 0, "duplicates": 0, "contaminated": 0, "kept": 3},
        str(noisy): {"rows_in": 4, "quarantined": 1, "duplicates": 2, "contaminated": 0, "kept": 1},
    }


def test_totals_that_do_not_add_up_are_an_error() -> None:
    reports = [
        {"stage": "validate", "rows_in": 10, "kept": 8, "rejected": 2},
        {"stage": "deduplicate", "rows_in": 7, "kept": 7, "rejected": 0},
    ]
    with pytest.raises(AssertionError, match="stage deduplicate received 7 rows, validate kept 8"):
        ingestion_totals(reports)


def test_batched_validation_equals_one_pass(write_lines: Callable[..., Path]) -> None:
    rows: list[Any] = [*ROWS, "{bad", *ROWS[:2]]
    path = write_lines(rows)
    whole = validate_rows(read_raw(path))
    from fineplat.ingestion import iter_raw

    batched = validate_batches(iter_raw(path, batch_size=3))
    assert batched.kept.equals(whole.kept)
    assert batched.rejected.equals(whole.rejected)
    assert {k: v for k, v in batched.report.items() if k != "batches"} == whole.report
    assert batched.report["batches"] == 3


def test_statistics_count_tokens_and_loss_share_with_the_chat_template(
    tmp_path: Path, write_lines: Callable[..., Path], tokenizer: Any
) -> None:
    kept = validate_rows(read_raw(write_lines(ROWS[:2]))).kept
    stats = dataset_statistics(kept, tokenizer)
    expected_lengths = [
        len(tokenizer.apply_chat_template(row["messages"], tokenize=True, return_dict=True)["input_ids"])
        for row in ROWS[:2]
    ]
    answer_tokens = [
        len(tokenizer(f"Answer {i}.<|eot_id|>", add_special_tokens=False)["input_ids"]) for i in range(2)
    ]
    assert stats["lengths"] == expected_lengths
    assert stats["tokens_total"] == sum(expected_lengths)
    assert stats["loss_tokens"] == sum(answer_tokens)
    assert stats["loss_token_share"] == round(sum(answer_tokens) / sum(expected_lengths), 4)
    assert stats["rows_per_source"] == {kept["source"][0]: 2}
    sampled = dataset_statistics(
        validate_rows(read_raw(write_lines(ROWS * 2, name="twelve.jsonl"))).kept, tokenizer, max_rows=4
    )
    assert sampled["sampled_rows"] == 4 and sampled["rows"] == 12
    png = plot_length_histogram(stats["lengths"], tmp_path / "plots" / "lengths.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
