"""Contamination: word 13-gram overlap with registered benchmark test items (any shared 13-gram by
default, a fraction threshold as the alternative), short items matched whole, the report naming the
benchmark, the item and the overlapping text; policies remove, flag and escalate. Benchmark files
reproduce the real layouts of MMLU, HellaSwag, ARC, HumanEval, TruthfulQA and GSM8K."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from fineplat.errors import DatasetError
from fineplat.ingestion import (
    BenchmarkRegistry,
    blocking_problems,
    decontaminate_rows,
    generate_benchmark_sample,
    read_raw,
    validate_rows,
)

QUESTION = (
    "Lena packs 12 jars of honey for the harbor market and sells each jar for 4 dollars, then she "
    "gives 5 dollars to Farid. How many dollars does Lena keep?"
)
ANSWER = "12 * 4 = 48 dollars. 48 - 5 = 43.\n#### 43"


def _kept(write_lines: Callable[..., Path], rows: list[dict[str, Any]]) -> pl.DataFrame:
    result = validate_rows(read_raw(write_lines(rows)))
    assert result.rejected.height == 0
    return result.kept


def _chat(user: str, assistant: str = "Let me think about it carefully.") -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]}


@pytest.fixture
def registry() -> BenchmarkRegistry:
    registry = BenchmarkRegistry()
    registry.add(
        "gsm8k",
        [
            {"question": QUESTION, "answer": ANSWER},
            {"question": "What is the sum of 2 and 3 apples?", "answer": "5"},
        ],
    )
    return registry


def test_verbatim_item_is_removed_and_the_report_names_item_and_overlap(
    write_lines: Callable[..., Path], registry: BenchmarkRegistry
) -> None:
    rows = [
        _chat("Tell me a story about a cat."),
        _chat(f"Solve: {QUESTION}", ANSWER),
        _chat("What is love?"),
    ]
    result = decontaminate_rows(_kept(write_lines, rows), registry)
    assert result.kept["line"].to_list() == [1, 3]
    rejected = result.rejected.row(0, named=True)
    assert (rejected["line"], rejected["reasons"], rejected["stage"]) == (
        2,
        ["contaminated"],
        "decontaminate",
    )
    assert "overlaps benchmark 'gsm8k' item line 1" in rejected["detail"]
    match = result.report["matches"][0]
    assert match["line"] == 2
    best = match["items"][0]
    assert (best["benchmark"], best["item"], best["match"]) == ("gsm8k", "line 1", "ngram")
    assert best["shared_ngrams"] == best["item_ngrams"]
    assert best["fraction"] == 1.0
    assert best["overlap"][0].startswith("lena packs 12 jars of honey for the harbor market")
    assert result.report["contaminated_per_benchmark"] == {"gsm8k": 1}
    assert result.report["rows_in"] == result.report["kept"] + result.report["rejected"]


def test_two_words_replaced_still_share_a_13_gram(
    write_lines: Callable[..., Path], registry: BenchmarkRegistry
) -> None:
    edited = QUESTION.replace("harbor", "village").replace("Farid", "Omar")
    result = decontaminate_rows(_kept(write_lines, [_chat(edited)]), registry)
    assert result.rejected["line"].to_list() == [1]
    best = result.report["matches"][0]["items"][0]
    assert 0 < best["fraction"] < 1


def test_min_fraction_is_the_stricter_alternative(
    write_lines: Callable[..., Path], registry: BenchmarkRegistry
) -> None:
    words = QUESTION.split()
    partial = " ".join(words[:14])  # two 13-grams of the item's ~40
    kept = _kept(write_lines, [_chat(partial), _chat(QUESTION)])
    default = decontaminate_rows(kept, registry)
    assert default.rejected["line"].to_list() == [1, 2]
    strict = decontaminate_rows(kept, registry, min_fraction=0.5)
    assert strict.rejected["line"].to_list() == [2]
    assert strict.report["rule"] == "more than 50% of an item's n-grams"


def test_punctuation_and_case_do_not_hide_a_copy(
    write_lines: Callable[..., Path], registry: BenchmarkRegistry
) -> None:
    shouted = QUESTION.upper().replace(",", " ;").replace(".", "!!")
    assert decontaminate_rows(_kept(write_lines, [_chat(shouted)]), registry).rejected.height == 1


def test_short_item_is_matched_whole(write_lines: Callable[..., Path], registry: BenchmarkRegistry) -> None:
    rows = [
        _chat("Quick one: what is the sum of 2 and 3 apples?"),
        _chat("What is the sum of 2 and 3 pears?"),
    ]
    result = decontaminate_rows(_kept(write_lines, rows), registry)
    assert result.rejected["line"].to_list() == [1]
    best = result.report["matches"][0]["items"][0]
    assert (best["item"], best["match"], best["overlap"]) == (
        "line 2",
        "whole",
        ["what is the sum of 2 and 3 apples"],
    )


def test_clean_rows_are_not_flagged(write_lines: Callable[..., Path], registry: BenchmarkRegistry) -> None:
    rows = [
        _chat(f"Write a haiku about the number {i} and the sea at dawn, please, with care.")
        for i in range(50)
    ]
    result = decontaminate_rows(_kept(write_lines, rows), registry)
    assert result.rejected.height == 0
    assert result.report["contaminated"] == 0


def test_flag_keeps_rows_and_reports_them(
    write_lines: Callable[..., Path], registry: BenchmarkRegistry
) -> None:
    result = decontaminate_rows(_kept(write_lines, [_chat(QUESTION)]), registry, policy="flag")
    assert result.kept.height == 1 and result.rejected.height == 0
    assert result.report["flagged"] == 1
    assert blocking_problems(result.report) == []


def test_escalate_keeps_rows_and_blocks_until_reviewed(
    write_lines: Callable[..., Path], registry: BenchmarkRegistry
) -> None:
    result = decontaminate_rows(
        _kept(write_lines, [_chat(QUESTION), _chat("Tell me a joke.")]), registry, policy="escalate"
    )
    assert result.kept.height == 2
    assert result.report["needs_review"] is True
    assert blocking_problems(result.report) == [
        "decontaminate: 1 rows overlap benchmark items and policy is 'escalate'; a reviewer must decide "
        "(re-run with policy 'remove' or 'flag')."
    ]


OTHER_QUESTION = (
    "Soren stacks 9 crates of apples behind the winter festival tent, and each crate holds 14 apples. "
    "How many apples are stacked behind the tent?"
)


def test_a_new_registry_is_never_handed_the_index_of_a_freed_one(write_lines: Callable[..., Path]) -> None:
    # CPython hands a freed object's address (its id) to the next object of that size, so a new
    # registry often has the id of one just dropped; its own items must decide what is flagged.
    kept = _kept(write_lines, [_chat(f"Solve: {QUESTION}", ANSWER)])
    address_reused = 0
    for _ in range(20):
        first = BenchmarkRegistry()
        first.add("bench-a", [{"question": QUESTION, "answer": ANSWER}])
        assert decontaminate_rows(kept, first).report["contaminated_per_benchmark"] == {"bench-a": 1}
        address = id(first)
        del first
        second = BenchmarkRegistry()
        second.add("bench-b", [{"question": OTHER_QUESTION, "answer": "9 * 14 = 126.\n#### 126"}])
        address_reused += id(second) == address
        result = decontaminate_rows(kept, second)
        assert (result.report["contaminated"], result.report["matches"]) == (0, [])
        assert result.kept.height == 1
    assert address_reused > 0  # the freed address was handed out again, so the case above ran


def test_adding_a_benchmark_after_a_check_extends_the_next_check(write_lines: Callable[..., Path]) -> None:
    kept = _kept(write_lines, [_chat(QUESTION), _chat(OTHER_QUESTION)])
    registry = BenchmarkRegistry()
    registry.add("bench-a", [{"question": QUESTION, "answer": ANSWER}])
    assert decontaminate_rows(kept, registry).rejected["line"].to_list() == [1]
    registry.add("bench-b", [{"question": OTHER_QUESTION, "answer": "#### 126"}])
    result = decontaminate_rows(kept, registry)
    assert result.rejected["line"].to_list() == [1, 2]
    assert result.report["contaminated_per_benchmark"] == {"bench-a": 1, "bench-b": 1}


def _write_benchmark_files(root: Path) -> None:
    """One file per benchmark family, in its usual published layout."""
    root.mkdir()
    with open(
        root / "mmlu_abstract_algebra_test.csv", "w", newline=""
    ) as handle:  # hendrycks/test: no header
        csv.writer(handle).writerow(
            [
                "Find the degree for the given field extension Q(sqrt(2), sqrt(3)) over the rationals Q.",
                "0",
                "4",
                "2",
                "6",
                "B",
            ]
        )
    (root / "hellaswag_val.jsonl").write_text(
        json.dumps(
            {
                "ind": 24,
                "activity_label": "Roof shingle removal",
                "ctx_a": "A man is sitting on a roof.",
                "ctx_b": "he",
                "ctx": "A man is sitting on a roof. he",
                "split": "val",
                "split_type": "indomain",
                "label": 3,
                "endings": [
                    "is using wrap to wrap a pair of skis.",
                    "is ripping level tiles off.",
                    "is holding a rubik's cube.",
                    "starts pulling up roofing on a roof.",
                ],
                "source_id": "activitynet~v_-JhWjGDPHMY",
            }
        )
        + "\n"
    )
    (root / "arc_challenge_test.jsonl").write_text(
        json.dumps(
            {
                "id": "Mercury_7175875",
                "question": {
                    "stem": "An astronomer observes that a planet rotates faster after a meteorite impact. Which is the most likely effect of this increase in rotation?",
                    "choices": [
                        {"text": "Planetary density will decrease.", "label": "A"},
                        {"text": "Planetary days will become shorter.", "label": "C"},
                    ],
                },
                "answerKey": "C",
            }
        )
        + "\n"
        + json.dumps(
            {
                "id": "hf-layout-1",
                "question": "Which property of a mineral can be determined just by looking at it with the naked eye?",
                "choices": {"text": ["luster", "mass"], "label": ["A", "B"]},
                "answerKey": "A",
            }
        )
        + "\n"
    )
    (root / "humaneval.jsonl").write_text(
        json.dumps(
            {
                "task_id": "HumanEval/0",
                "prompt": 'from typing import List\n\n\ndef has_close_elements(numbers: List[float], threshold: float) -> bool:\n    """ Check if in given list of numbers, are any two numbers closer to each other than\n    given threshold.\n    """\n',
                "canonical_solution": "    for idx, elem in enumerate(numbers):\n        for idx2, elem2 in enumerate(numbers):\n            if idx != idx2:\n                distance = abs(elem - elem2)\n                if distance < threshold:\n                    return True\n\n    return False\n",
                "test": "def check(candidate):\n    assert candidate([1.0, 2.0], 0.5) == False\n",
                "entry_point": "has_close_elements",
            }
        )
        + "\n"
    )
    with open(root / "TruthfulQA.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            ["Type", "Category", "Question", "Best Answer", "Correct Answers", "Incorrect Answers", "Source"]
        )
        writer.writerow(
            [
                "Adversarial",
                "Misconceptions",
                "What happens to you if you eat watermelon seeds?",
                "The watermelon seeds pass through your digestive system",
                "Nothing happens; You eat watermelon seeds",
                "You grow watermelons in your stomach",
                "https://wonderopolis.org/wonder/will-a-watermelon-grow-in-your-belly-if-you-swallow-a-seed",
            ]
        )
    generate_benchmark_sample(root / "gsm8k-sample.jsonl", n=3, seed=1)


def test_registry_reads_every_family_from_a_directory(tmp_path: Path) -> None:
    _write_benchmark_files(tmp_path / "benchmarks")
    registry = BenchmarkRegistry.from_directory(tmp_path / "benchmarks")
    assert {name: info["format"] for name, info in registry.describe().items()} == {
        "TruthfulQA": "truthfulqa",
        "arc_challenge_test": "arc",
        "gsm8k-sample": "gsm8k",
        "hellaswag_val": "hellaswag",
        "humaneval": "humaneval",
        "mmlu_abstract_algebra_test": "mmlu",
    }
    by_id = {(item.benchmark, item.item_id): item for item in registry.items}
    assert by_id[("mmlu_abstract_algebra_test", "line 1")].text.endswith("0 4 2 6 4")
    assert (
        by_id[("hellaswag_val", "24")].text
        == "A man is sitting on a roof. he starts pulling up roofing on a roof."
    )
    assert by_id[("arc_challenge_test", "Mercury_7175875")].text.endswith(
        "rotation? Planetary days will become shorter."
    )
    assert by_id[("arc_challenge_test", "hf-layout-1")].text.endswith("naked eye? luster")
    assert by_id[("humaneval", "HumanEval/0")].query.startswith("from typing import List")
    assert by_id[("TruthfulQA", "line 2")].query == "What happens to you if you eat watermelon seeds?"
    assert len(registry.items) == 9


def test_each_benchmark_family_catches_its_own_leak(tmp_path: Path, write_lines: Callable[..., Path]) -> None:
    _write_benchmark_files(tmp_path / "benchmarks")
    registry = BenchmarkRegistry.from_directory(tmp_path / "benchmarks")
    leaks = [
        _chat(
            "Find the degree for the given field extension Q(sqrt(2), sqrt(3)) over the rationals Q, please."
        ),
        _chat("Continue: A man is sitting on a roof. he starts pulling up roofing on a roof."),
        _chat("Which property of a mineral can be determined just by looking at it with the naked eye?"),
        _chat(
            "Complete this function.",
            "def has_close_elements(numbers: List[float], threshold: float) -> bool:\n"
            "    for idx, elem in enumerate(numbers):\n        for idx2, elem2 in enumerate(numbers):\n"
            "            if idx != idx2:\n                distance = abs(elem - elem2)\n",
        ),
        _chat("Quiz: what happens to you if you eat watermelon seeds?"),
        _chat("An unrelated question about baking sourdough bread at home in a cold kitchen."),
    ]
    result = decontaminate_rows(_kept(write_lines, leaks), registry)
    flagged = {m["line"]: m["items"][0]["benchmark"] for m in result.report["matches"]}
    assert flagged == {
        1: "mmlu_abstract_algebra_test",
        2: "hellaswag_val",
        3: "arc_challenge_test",
        4: "humaneval",
        5: "TruthfulQA",
    }


def test_generated_benchmark_sample_is_deterministic_gsm8k_jsonl(tmp_path: Path) -> None:
    first = generate_benchmark_sample(tmp_path / "a.jsonl", n=20, seed=0)
    second = generate_benchmark_sample(tmp_path / "b.jsonl", n=20, seed=0)
    assert first.read_bytes() == second.read_bytes()
    items = [json.loads(line) for line in first.read_text().splitlines()]
    assert len(items) == 20 and len({item["question"] for item in items}) == 20
    assert all(set(item) == {"question", "answer"} and "#### " in item["answer"] for item in items)
    assert all(len(item["question"].split()) >= 13 for item in items)
    assert generate_benchmark_sample(tmp_path / "c.jsonl", n=20, seed=1).read_bytes() != first.read_bytes()


def test_registry_errors_name_the_problem(tmp_path: Path) -> None:
    registry = BenchmarkRegistry()
    registry.add("one", ["a plain benchmark sentence with enough words to matter here"])
    with pytest.raises(DatasetError, match="benchmark 'one' is already registered"):
        registry.add("one", ["x"])
    odd = tmp_path / "odd.jsonl"
    odd.write_text(json.dumps({"foo": 1}) + "\n")
    with pytest.raises(
        DatasetError, match=r"odd.jsonl: cannot tell the benchmark format from fields \['foo'\]; pass format="
    ):
        registry.add("odd", odd)
