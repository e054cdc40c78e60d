"""Benchmark contamination: rows that share word 13-grams with a registered benchmark test item are
removed, flagged or escalated, so evaluation scores measure generalization rather than memory.

Rule (default): a row is contaminated when it shares ANY 13-gram of normalized words (lower case,
punctuation removed) with a benchmark item, as GPT-3 (Brown et al. 2020, appendix C) and
lm-evaluation-harness's decontamination do. Measured on real GSM8K questions (issue #4): a copy with
two words replaced still shares a 13-gram in 19 of 20 cases but more than half of the item's
13-grams in only 11 of 20, while any-match flagged none of 999 real Alpaca rows. `min_fraction`
(e.g. 0.5: "more than half of the item's 13-grams") is the alternative for noisy corpora. Items (or
their query) shorter than 13 words are matched whole, if at least MIN_WHOLE_MATCH_WORDS long.

Implementation: lower-casing and punctuation removal run in polars; words are hashed with numpy over
code points, n-gram hashes are built for all rows at once and looked up in the benchmark n-gram
array; only matching rows get a Python pass that names the benchmark, the item and the overlapping
text. (64-bit n-gram hashes are not re-verified: a false match needs a 64-bit collision, ~1e-6 over
a 100k-row dataset against a 10k-item benchmark.)
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import polars as pl

from fineplat.ingestion.benchmarks import BenchmarkItem, BenchmarkRegistry
from fineplat.ingestion.result import Rejection, StageResult, base_report, rejected_frame

STAGE = "decontaminate"
CONTAMINATION_NGRAM = 13  # GPT-3 / lm-evaluation-harness
# A short item matched whole must still be specific: a phrase of fewer words ("what is the
# capital") occurs in ordinary text by chance; shorter items are listed in the report as skipped.
MIN_WHOLE_MATCH_WORDS = 5
MAX_ITEMS_PER_ROW = 3  # items named per contaminated row in the report (best first)
_POLY = np.uint64(0x100000001B3)  # FNV-64 prime: polynomial base over word hashes
_POLY32 = np.uint32(0x01000193)  # FNV-32 prime: polynomial base over a word's code points
_FMIX1 = np.uint32(0x85EBCA6B)  # MurmurHash3 fmix32 constants
_FMIX2 = np.uint32(0xC2B2AE35)
_MIX1 = np.uint64(0x9E3779B97F4A7C15)  # splitmix64 constants (Steele et al. 2014)
_MIX2 = np.uint64(0xBF58476D1CE4E5B9)
# Role labels that `record_text` puts between messages stay in the word sequence, so an n-gram that
# spans two messages holds a label word and matches no item; items are matched within each message.
_PUNCTUATION = r"[^\w\s]"
# Unicode White_Space (what the regex engine's \s keeps and Python's str.split splits on).
_WHITESPACE = [9, 10, 11, 12, 13, 32, 0x85, 0xA0, 0x1680, *range(0x2000, 0x200B), 0x2028, 0x2029, 0x202F, 0x205F, 0x3000]  # fmt: skip
_WHITESPACE_TABLE = np.zeros(0x3002, dtype=bool)
_WHITESPACE_TABLE[_WHITESPACE] = True
_WORD_BATCH = 8_192  # texts per numpy pass: bounds temporaries to a few hundred MB at 800 chars/text


def _stripped(texts: list[str]) -> list[str]:
    """Lower case, punctuation removed: only word characters and whitespace remain."""
    return pl.Series(texts, dtype=pl.String).str.to_lowercase().str.replace_all(_PUNCTUATION, "").to_list()


def normalize_words(texts: list[str]) -> list[list[str]]:
    """Lower-cased words with punctuation removed, per text (the contamination word space)."""
    return [text.split() for text in _stripped(texts)]


def _hashed_words(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(64-bit hash of every word of all texts concatenated, word count per text), the same words
    as `normalize_words`, hashed with numpy in batches instead of materializing word strings."""
    stripped = _stripped(texts)
    hashes: list[np.ndarray] = []
    counts: list[np.ndarray] = []
    for start in range(0, len(stripped), _WORD_BATCH):
        batch_hashes, batch_counts = _hash_words_batch(stripped[start : start + _WORD_BATCH])
        hashes.append(batch_hashes)
        counts.append(batch_counts)
    if not hashes:
        return np.zeros(0, np.uint64), np.zeros(0, np.int64)
    return np.concatenate(hashes), np.concatenate(counts)


def _hash_words_batch(stripped: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Words are maximal runs of non-whitespace code points; a word's hash is
    fmix32(sum(c_k * P^k)) over its code points (k = position in the word, arithmetic modulo 2^32),
    summed per word with one `reduceat`. 32-bit word hashes are enough: two different words
    colliding changes an n-gram only if all its other words match too."""
    joined = " ".join(stripped) + " "  # a space after every text ends its last word there
    points = np.frombuffer(joined.encode("utf-32-le"), dtype=np.uint32)
    space = _WHITESPACE_TABLE[np.minimum(points, len(_WHITESPACE_TABLE) - 1)]
    is_start = ~space
    is_start[1:] &= space[:-1]
    starts = np.flatnonzero(is_start)
    text_starts = np.cumsum([0] + [len(text) + 1 for text in stripped])
    counts = np.diff(np.searchsorted(starts, text_starts)).astype(np.int64)
    if not len(starts):
        return np.zeros(0, np.uint64), counts
    # Position of each character inside its word: index minus the index of the latest word start.
    index = np.arange(len(points), dtype=np.int32)
    latest_start = np.where(is_start, index, np.int32(0))
    np.maximum.accumulate(latest_start, out=latest_start)
    np.subtract(index, latest_start, out=index)
    terms = _powers32(int(index.max()) + 1)[index]
    np.multiply(terms, points, out=terms)
    terms[space] = 0
    words = np.add.reduceat(terms, starts)
    words ^= words >> np.uint32(16)
    np.multiply(words, _FMIX1, out=words)
    words ^= words >> np.uint32(13)
    np.multiply(words, _FMIX2, out=words)
    words ^= words >> np.uint32(16)
    return words.astype(np.uint64), counts


def _powers32(size: int) -> np.ndarray:
    """P^k modulo 2^32 for k < size."""
    powers = np.full(size, _POLY32, dtype=np.uint32)
    powers[0] = 1
    np.multiply.accumulate(powers, out=powers)
    return powers


def _grams(word_hashes: np.ndarray, n: int) -> np.ndarray:
    """Polynomial hash of every run of n consecutive words, sum(w[i+k] * P^(n-1-k)), built by
    doubling (g[a+b](i) = g[a](i) * P^b + g[b](i+a)): ~2 log2(n) array passes instead of 2n."""
    total = len(word_hashes)
    by_width = {1: word_hashes}
    width = 1
    while width * 2 <= n:
        half = by_width[width]
        factor = np.uint64(pow(int(_POLY), width, 1 << 64))
        by_width[width * 2] = half[: len(half) - width] * factor + half[width:]
        width *= 2
    result = by_width[width][: total - n + 1].copy()
    covered = width
    for part in sorted(by_width, reverse=True):
        if covered + part > n:
            continue
        np.multiply(result, np.uint64(pow(int(_POLY), part, 1 << 64)), out=result)
        np.add(result, by_width[part][covered : covered + total - n + 1], out=result)
        covered += part
    return result


def _ngram_hashes(
    word_hashes: np.ndarray, counts: np.ndarray, n: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(hash of each n-gram that lies within one text, index of its text, position in the text)."""
    total = len(word_hashes)
    if total < n:
        return np.zeros(0, np.uint64), np.zeros(0, np.int64), np.zeros(0, np.int64)
    windows = total - n + 1
    grams = _grams(word_hashes, n)
    np.multiply(grams, _MIX1, out=grams)
    grams ^= grams >> np.uint64(31)
    np.multiply(grams, _MIX2, out=grams)
    text_of = np.repeat(np.arange(len(counts), dtype=np.int64), counts)[:windows]
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    position = np.arange(windows, dtype=np.int64) - starts[text_of]
    valid = position + n <= counts[text_of]
    return grams[valid], text_of[valid], position[valid]


@dataclass
class _Index:
    """Benchmark n-grams compiled for lookup: sorted hashes and who owns each."""

    ngram: int
    sorted_grams: np.ndarray
    gram_items: dict[int, list[int]]
    item_gram_counts: list[int]
    item_words: list[list[str]]
    whole: dict[int, tuple[np.ndarray, dict[int, list[int]]]] = field(
        default_factory=dict
    )  # length -> (sorted hashes, owners)
    skipped_short: list[dict[str, str]] = field(default_factory=list)


def _compiled(registry: BenchmarkRegistry, ngram: int) -> _Index:
    """The registry's items indexed for `ngram`, compiled once and kept on the registry."""
    items = registry.items
    return registry.derived(("contamination-index", ngram), lambda: _compile(items, ngram))


def _compile(items: list[BenchmarkItem], ngram: int) -> _Index:
    """Index every item's n-grams. An item's n-grams are those inside its query and inside its
    answer (not across the two), so a row holding the question in a user turn and the answer in an
    assistant turn shares all of them."""
    segments = [segment for item in items for segment in (item.query, item.answer)]
    hashes, counts = _hashed_words(segments)
    grams, owner, _ = _ngram_hashes(hashes, counts, ngram)
    owner //= 2  # two segments per item
    gram_items: dict[int, list[int]] = defaultdict(list)
    item_grams: list[set[int]] = [set() for _ in items]
    for gram, item_index in zip(grams.tolist(), owner.tolist(), strict=True):
        if item_index not in gram_items[gram][-1:]:
            gram_items[gram].append(item_index)
        item_grams[item_index].add(gram)
    index = _Index(
        ngram=ngram,
        sorted_grams=np.unique(grams),
        gram_items=dict(gram_items),
        item_gram_counts=[len(g) for g in item_grams],
        item_words=normalize_words([item.text for item in items]),
    )
    # Whole matches: an item (or its query) shorter than n words.
    query_words = normalize_words([item.query for item in items])
    by_length: dict[int, dict[int, list[int]]] = defaultdict(lambda: defaultdict(list))
    for item_index, item in enumerate(items):
        full = tuple(index.item_words[item_index])
        for words in {full, tuple(query_words[item_index])}:
            if len(words) >= ngram or not words:
                continue
            if len(words) < MIN_WHOLE_MATCH_WORDS:
                if words == full:
                    index.skipped_short.append(
                        {"benchmark": item.benchmark, "item": item.item_id, "words": " ".join(words)}
                    )
                continue
            segment_hashes, segment_counts = _hashed_words([" ".join(words)])
            segment_grams, _, _ = _ngram_hashes(segment_hashes, segment_counts, len(words))
            by_length[len(words)][int(segment_grams[0])].append(item_index)
    for length, owners in by_length.items():
        index.whole[length] = (np.array(sorted(owners), dtype=np.uint64), dict(owners))
    return index


def _item_label(item: BenchmarkItem) -> dict[str, str]:
    return {"benchmark": item.benchmark, "item": item.item_id}


def decontaminate_rows(
    rows: pl.DataFrame,
    benchmarks: BenchmarkRegistry,
    *,
    policy: Literal["remove", "flag", "escalate"] = "remove",
    ngram: int = CONTAMINATION_NGRAM,
    min_fraction: float | None = None,
) -> StageResult:
    """Check rows (KEPT_SCHEMA) against every registered benchmark item. `remove` quarantines
    contaminated rows; `flag` keeps them and lists them in the report; `escalate` keeps them, lists
    them and marks the report `needs_review` so the asset check blocks until a human decides."""
    if policy not in ("remove", "flag", "escalate"):
        raise ValueError(f"policy must be remove, flag or escalate; got {policy!r}")
    if min_fraction is not None and not 0.0 <= min_fraction < 1.0:
        raise ValueError(f"min_fraction must be in [0, 1) or None, got {min_fraction}")
    items = benchmarks.items
    texts = rows.get_column("text").to_list()
    matches: dict[int, list[dict[str, Any]]] = {}
    index = _compiled(benchmarks, ngram) if items else None
    if index is not None and texts:
        matches = _find_matches(texts, items, index, min_fraction)
    sources = rows.get_column("source").to_list()
    lines = rows.get_column("line").to_list()
    flagged_rows = sorted(matches)
    report_matches = [
        {"source": sources[row], "line": lines[row], "items": matches[row][:MAX_ITEMS_PER_ROW]}
        for row in flagged_rows
    ]
    if policy == "remove" and flagged_rows:
        keep = np.ones(rows.height, dtype=bool)
        keep[flagged_rows] = False
        kept = rows.filter(pl.Series(keep))
        records = rows.get_column("record").to_list()
        rejected = rejected_frame(
            Rejection(
                STAGE, sources[row], lines[row], records[row], ("contaminated",), _why(matches[row][0], ngram)
            )
            for row in flagged_rows
        )
    else:
        kept, rejected = rows, rejected_frame([])
    report = base_report(STAGE, rows.height, kept, rejected)
    per_source: Counter[str] = Counter(sources[row] for row in flagged_rows)
    per_benchmark: Counter[str] = Counter(matches[row][0]["benchmark"] for row in flagged_rows)
    report.update(
        {
            "policy": policy,
            "ngram": ngram,
            "rule": "any shared n-gram"
            if min_fraction is None
            else f"more than {min_fraction:.0%} of an item's n-grams",
            "min_fraction": min_fraction,
            "benchmarks": benchmarks.describe(),
            "benchmark_items": len(items),
            "contaminated": len(flagged_rows),
            "contaminated_per_source": dict(sorted(per_source.items())),
            "contaminated_per_benchmark": dict(sorted(per_benchmark.items())),
            "matches": report_matches,
            "flagged": len(flagged_rows) if policy != "remove" else 0,
            "needs_review": policy == "escalate" and bool(flagged_rows),
            "skipped_short_items": index.skipped_short if index is not None else [],
        }
    )
    return StageResult(kept, rejected, report)


def _why(best: dict[str, Any], ngram: int) -> str:
    overlap = best["overlap"][0] if best["overlap"] else ""
    how = (
        f"contains the whole item ({best['item_words']} words)"
        if best["match"] == "whole"
        else f"shares {best['shared_ngrams']} of the item's {best['item_ngrams']} word {ngram}-grams ({best['fraction']:.0%})"
    )
    return (
        f"overlaps benchmark {best['benchmark']!r} item {best['item']}: {how}, e.g. "
        f'"{overlap[:200]}". Training on it would inflate that benchmark\'s score; remove the row or rewrite it.'
    )


def _find_matches(
    texts: list[str], items: list[BenchmarkItem], index: _Index, min_fraction: float | None
) -> dict[int, list[dict[str, Any]]]:
    word_hashes, counts = _hashed_words(texts)
    grams, row_of, position = _ngram_hashes(word_hashes, counts, index.ngram)
    hit = _isin_sorted(grams, index.sorted_grams)
    # row -> item -> matched positions
    found: dict[int, dict[int, set[int]]] = defaultdict(lambda: defaultdict(set))
    shared: dict[int, dict[int, set[int]]] = defaultdict(lambda: defaultdict(set))
    for gram, row, start in zip(
        grams[hit].tolist(), row_of[hit].tolist(), position[hit].tolist(), strict=True
    ):
        for item_index in index.gram_items.get(gram, ()):
            found[row][item_index].add(start)
            shared[row][item_index].add(gram)
    whole: dict[int, dict[int, tuple[int, int]]] = defaultdict(dict)  # row -> item -> (start, length)
    for length, (sorted_hashes, owners) in index.whole.items():
        segment_grams, segment_rows, segment_positions = _ngram_hashes(word_hashes, counts, length)
        mask = _isin_sorted(segment_grams, sorted_hashes)
        for gram, row, start in zip(
            segment_grams[mask].tolist(),
            segment_rows[mask].tolist(),
            segment_positions[mask].tolist(),
            strict=True,
        ):
            for item_index in owners.get(gram, ()):
                whole[row].setdefault(item_index, (start, length))
    rows = sorted(set(found) | set(whole))
    if not rows:
        return {}
    row_words = normalize_words([texts[row] for row in rows])
    out: dict[int, list[dict[str, Any]]] = {}
    for row, words in zip(rows, row_words, strict=True):
        candidates: list[dict[str, Any]] = []
        for item_index, (start, length) in whole.get(row, {}).items():
            candidates.append(
                {
                    **_item_label(items[item_index]),
                    "match": "whole",
                    "item_words": length,
                    "shared_ngrams": 0,
                    "item_ngrams": index.item_gram_counts[item_index],
                    "fraction": 1.0,
                    "overlap": [" ".join(words[start : start + length])],
                }
            )
        for item_index, starts in found.get(row, {}).items():
            total = max(index.item_gram_counts[item_index], 1)
            shared_count = len(shared[row][item_index])
            candidates.append(
                {
                    **_item_label(items[item_index]),
                    "match": "ngram",
                    "item_words": len(index.item_words[item_index]),
                    "shared_ngrams": shared_count,
                    "item_ngrams": total,
                    "fraction": round(shared_count / total, 4),
                    "overlap": _spans(words, sorted(starts), index.ngram),
                }
            )
        if min_fraction is not None:
            candidates = [c for c in candidates if c["fraction"] > min_fraction]
        if candidates:
            candidates.sort(key=lambda c: (-c["fraction"], -c["shared_ngrams"], c["benchmark"], c["item"]))
            out[row] = candidates
    return out


def _spans(words: list[str], starts: list[int], n: int) -> list[str]:
    """Merge overlapping matched n-gram windows into the overlapping text passages."""
    spans: list[tuple[int, int]] = []
    for start in starts:
        if spans and start <= spans[-1][1]:
            spans[-1] = (spans[-1][0], start + n)
        else:
            spans.append((start, start + n))
    return [" ".join(words[a:b]) for a, b in spans[:3]]


_FILTER_BITS = 24  # 16 MiB presence table: most row n-grams are ruled out by one gather


def _isin_sorted(values: np.ndarray, sorted_reference: np.ndarray) -> np.ndarray:
    """values[i] in sorted_reference, for millions of values: a presence table over the low bits
    rules out nearly all of them, binary search confirms the rest."""
    result = np.zeros(len(values), dtype=bool)
    if not len(sorted_reference) or not len(values):
        return result
    mask = np.uint64((1 << _FILTER_BITS) - 1)
    present = np.zeros(1 << _FILTER_BITS, dtype=bool)
    present[(sorted_reference & mask).astype(np.int64)] = True
    maybe = np.flatnonzero(present[(values & mask).astype(np.int64)])
    candidates = values[maybe]
    positions = np.searchsorted(sorted_reference, candidates)
    positions[positions == len(sorted_reference)] = 0
    result[maybe] = sorted_reference[positions] == candidates
    return result
