"""The shipped demo files are exactly what their generators produce, and carry the planted flaws
the demo's summary reports."""

from __future__ import annotations

import json
from pathlib import Path

from fineplat.demo.dataset import SAMPLE_BENCHMARK, SAMPLE_DATASET, PlantedFlaws, write_shipped_files


def test_shipped_files_equal_generator_output(tmp_path: Path) -> None:
    dataset, benchmark = write_shipped_files(tmp_path)
    assert dataset.read_bytes() == SAMPLE_DATASET.read_bytes()
    assert benchmark.read_bytes() == SAMPLE_BENCHMARK.read_bytes()


def test_planted_flaws_are_present() -> None:
    flaws = PlantedFlaws()
    lines = SAMPLE_DATASET.read_text().splitlines()
    parsed = []
    broken = 0
    for line in lines:
        try:
            parsed.append(json.loads(line))
        except json.JSONDecodeError:
            broken += 1
    assert broken == flaws.malformed_json
    wrong_order = [r for r in parsed if r["messages"][0]["role"] == "assistant"]
    assert len(wrong_order) == flaws.wrong_role_order
    empty = [r for r in parsed if not r["messages"][-1]["content"].strip()]
    assert len(empty) == flaws.empty_reply
    questions = {json.loads(q)["question"] for q in SAMPLE_BENCHMARK.read_text().splitlines()}
    contaminated = [r for r in parsed if r["messages"][0]["content"] in questions]
    assert len(contaminated) == flaws.contaminated
    assert len(lines) - len(set(lines)) == flaws.exact_duplicates
    assert sum('Thanks!"}' in line for line in lines) == flaws.near_duplicates
