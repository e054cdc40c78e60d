"""Deduplication: exact duplicates by normalized text, near duplicates at Jaccard >= 0.9 over
character 5-grams, one deterministic representative per cluster, clusters in the report."""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

import numpy as np
import polars as pl
from datasketch import MinHashLSH

from fineplat.ingestion import deduplicate_rows, read_raw, validate_rows
from fineplat.ingestion.dedup import lsh_params
from fineplat.ingestion.minhash import (
    estimated_jaccard,
    jaccard,
    lean_minhash,
    shingle_sets,
    shingle_text,
    signatures,
)

RNG_WORDS = [f"w{n}x" for n in range(5000)]


def _paragraph(seed: int, words: int = 140) -> str:
    rng = random.Random(seed)
    return " ".join(rng.choice(RNG_WORDS) for _ in range(words))


def _edit(text: str, seed: int, edits: int) -> str:
    rng = random.Random(seed)
    words = text.split(" ")
    for position in rng.sample(range(len(words)), edits):
        words[position] = "edited"
    return " ".join(words)


def _chat(user: str, assistant: str) -> dict[str, object]:
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]}


def _validated(write_lines: Callable[..., Path], rows: list[object]) -> pl.DataFrame:
    result = validate_rows(read_raw(write_lines(rows)))
    assert result.rejected.height == 0
    return result.kept


def _true_jaccard(a: str, b: str) -> float:
    first, second = shingle_sets(shingle_text([a, b]))
    return jaccard(first, second)


def test_exact_duplicates_differing_only_in_whitespace_keep_the_first(
    write_lines: Callable[..., Path],
) -> None:
    text = _paragraph(1)
    rows = [
        _chat("question", text),
        _chat("other", _paragraph(2)),
        _chat("question ", "  " + text.replace(" ", "   ", 5)),
    ]
    result = deduplicate_rows(_validated(write_lines, rows))
    assert result.kept["line"].to_list() == [1, 2]
    rejected = result.rejected.row(0, named=True)
    assert (rejected["line"], rejected["reasons"], rejected["stage"]) == (
        3,
        ["exact_duplicate"],
        "deduplicate",
    )
    assert "line 1, which is kept" in rejected["detail"]
    assert result.report["exact_clusters"] == [
        {
            "kept": {"source": result.kept["source"][0], "line": 1},
            "duplicates": [{"source": result.kept["source"][0], "line": 3}],
        }
    ]
    assert result.report["rows_in"] == result.report["kept"] + result.report["rejected"] == 3


def test_near_duplicate_above_threshold_is_removed_and_clustered(write_lines: Callable[..., Path]) -> None:
    original = _paragraph(3)
    near = _edit(original, seed=4, edits=2)
    far = _edit(original, seed=5, edits=40)
    rows = [_chat("q", original), _chat("q", near), _chat("q", far)]
    kept = _validated(write_lines, rows)
    texts = kept["text"].to_list()
    assert _true_jaccard(texts[0], texts[1]) >= 0.9 > _true_jaccard(texts[0], texts[2])
    result = deduplicate_rows(kept)
    assert result.kept["line"].to_list() == [1, 3]
    assert result.rejected["reasons"].to_list() == [["near_duplicate"]]
    cluster = result.report["near_clusters"][0]
    assert cluster["kept"]["line"] == 1
    assert cluster["duplicates"][0]["line"] == 2
    assert cluster["duplicates"][0]["jaccard"] == round(_true_jaccard(texts[0], texts[1]), 4)
    assert "near duplicate (Jaccard" in result.rejected["detail"][0]


def test_threshold_is_configurable(write_lines: Callable[..., Path]) -> None:
    original = _paragraph(6)
    rows = [_chat("q", original), _chat("q", _edit(original, seed=7, edits=12))]
    kept = _validated(write_lines, rows)
    similarity = _true_jaccard(*kept["text"].to_list())
    assert 0.6 < similarity < 0.9
    assert deduplicate_rows(kept).rejected.height == 0
    assert deduplicate_rows(kept, near_threshold=0.6).rejected["line"].to_list() == [2]


def test_representative_does_not_depend_on_input_order(write_lines: Callable[..., Path]) -> None:
    original = _paragraph(8)
    rows = [_chat("q", original), _chat("q", _edit(original, 9, 2)), _chat("q", _edit(original, 10, 2))]
    kept = _validated(write_lines, rows)
    forward = deduplicate_rows(kept)
    backward = deduplicate_rows(kept.reverse())
    assert forward.kept.equals(backward.kept)
    assert forward.report == backward.report
    assert forward.kept["line"].to_list() == [1]


def test_many_distinct_rows_are_all_kept(write_lines: Callable[..., Path]) -> None:
    rows = [_chat(f"q{i}", _paragraph(100 + i)) for i in range(300)]
    result = deduplicate_rows(_validated(write_lines, rows))
    assert result.kept.height == 300
    assert result.report["near_clusters"] == []


def test_signature_estimates_jaccard_and_works_with_datasketch_lsh() -> None:
    base = _paragraph(11)
    texts = [base, _edit(base, 12, 3), _edit(base, 13, 70), _paragraph(14)]
    sigs = signatures(texts)
    assert sigs.shape == (4, 128) and sigs.dtype == np.uint32
    sets = shingle_sets(shingle_text(texts))
    for other in (1, 2, 3):
        assert abs(estimated_jaccard(sigs[0], sigs[other]) - jaccard(sets[0], sets[other])) < 0.12
    lsh = MinHashLSH(threshold=0.9, num_perm=128, params=lsh_params(0.9, 128))
    for index in (1, 2, 3):
        lsh.insert(index, lean_minhash(sigs[index]))
    assert lsh.query(lean_minhash(sigs[0])) == [1]
    assert lean_minhash(sigs[0]).jaccard(lean_minhash(sigs[1])) == estimated_jaccard(sigs[0], sigs[1])


def test_signatures_are_deterministic_and_case_insensitive() -> None:
    first = signatures(["Hello World, this is a test sentence."])
    assert np.array_equal(first, signatures(["hello world, THIS is a test sentence."]))
    assert np.array_equal(first, signatures(["Hello World, this is a test sentence."]))


def test_lsh_bands_find_pairs_at_the_threshold() -> None:
    bands, rows = lsh_params(0.9, 128)
    assert (bands, rows) == (12, 10)
    assert 1 - (1 - 0.9**rows) ** bands >= 0.99
    assert 1 - (1 - 0.5**rows) ** bands < 0.02


def test_a_dense_cluster_collapses_to_its_first_row(write_lines: Callable[..., Path]) -> None:
    words = _paragraph(15).split(" ")
    rows = [_chat("q", " ".join([*words[:70], f"variant{i}", *words[71:]])) for i in range(300)]
    result = deduplicate_rows(_validated(write_lines, rows))
    assert result.kept["line"].to_list() == [1]
    assert len(result.report["near_clusters"]) == 1
    assert [d["line"] for d in result.report["near_clusters"][0]["duplicates"]] == list(range(2, 301))
    assert result.report["near_duplicates"] == 299
