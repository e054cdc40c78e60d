"""`fineplat datasets validate`: a dry run in a real process, without Dagster; exit code 0 when the
dataset would be accepted, 1 when rejected, 2 when unreadable."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import typer
from typer.testing import CliRunner

from fineplat.basemodel import BaseModelInfo
from fineplat.ingestion import generate_benchmark_sample
from fineplat.ingestion.cli import app

GOOD = [
    {
        "messages": [
            {"role": "user", "content": f"Name the color number {i}."},
            {"role": "assistant", "content": f"Color {i} is blue."},
        ]
    }
    for i in range(30)
]


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fineplat.ingestion.cli", "validate", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "200", **(env or {})},
        timeout=300,
    )


def test_clean_file_passes_with_tokens_benchmarks_and_version(
    tmp_path: Path, write_lines: Callable[..., Path], tiny_base_model: BaseModelInfo
) -> None:
    benchmarks = tmp_path / "benchmarks"
    generate_benchmark_sample(benchmarks / "gsm8k-sample.jsonl", n=5)
    done = _cli(
        str(write_lines(GOOD)), "--base-model", str(tiny_base_model.path), "--benchmarks", str(benchmarks)
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "schema openai (detected)" in done.stdout
    assert "render check: line 1" in done.stdout
    assert "contamination: 0 rows overlap 5 items of gsm8k-sample (policy remove)" in done.stdout
    assert "rows in 30 = kept 30 + quarantined 0 + duplicates 0 + contaminated 0" in done.stdout
    assert "OK dataset version ds-" in done.stdout


def test_invalid_rows_are_listed_and_the_exit_code_is_1(
    tmp_path: Path, write_lines: Callable[..., Path]
) -> None:
    rows = [*GOOD[:5], "{broken", {"messages": [{"role": "user", "content": "unanswered"}]}]
    quarantine = tmp_path / "quarantine.jsonl"
    done = _cli(str(write_lines(rows)), "--quarantine", str(quarantine))
    assert done.returncode == 1, done.stdout + done.stderr
    assert "json_parse_error" in done.stdout and "last_turn_not_assistant" in done.stdout
    assert "REJECTED" in done.stdout
    assert "validate: 2 of 7 rows (28.6%) are invalid, more than the 5% allowed" in done.stdout
    assert [json.loads(line)["line"] for line in quarantine.read_text().splitlines()] == [6, 7]


def test_json_output_carries_every_report(write_lines: Callable[..., Path]) -> None:
    done = _cli(str(write_lines([*GOOD, GOOD[0]])), "--json")
    assert done.returncode == 0, done.stderr
    payload = json.loads(done.stdout)
    assert payload["totals"] == {
        "rows_in": 31,
        "kept": 30,
        "quarantined": 0,
        "removed_duplicate": 1,
        "removed_contaminated": 0,
    }
    assert [r["stage"] for r in payload["reports"]] == ["validate", "deduplicate", "decontaminate"]
    assert payload["version_id"].startswith("ds-")


def test_unreadable_input_exits_2_with_the_reason(tmp_path: Path) -> None:
    done = _cli(str(tmp_path / "missing.jsonl"))
    assert done.returncode == 2
    assert "missing.jsonl: no such file or directory" in done.stdout.replace("\n", " ")


def test_hub_dataset_id_from_the_local_cache(tmp_path: Path) -> None:
    commit = "fedcba9876543210fedcba9876543210fedcba98"
    repo = tmp_path / "hub" / "datasets--acme--colors"
    (repo / "snapshots" / commit).mkdir(parents=True)
    (repo / "snapshots" / commit / "train.jsonl").write_text("".join(json.dumps(row) + "\n" for row in GOOD))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    done = _cli("acme/colors", "--json", env={"HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["reports"][0]["sources"] == ["acme/colors/train.jsonl"]


def test_mounted_as_fineplat_datasets(write_lines: Callable[..., Path]) -> None:
    root = typer.Typer()
    root.add_typer(app, name="datasets")
    result = CliRunner().invoke(root, ["datasets", "validate", str(write_lines(GOOD)), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["totals"]["kept"] == 30
