"""Remove duplicates so the model does not over-learn repeated rows and evaluation splits stay honest:
exact duplicates by SHA-256 of the normalized text, then near duplicates by MinHash LSH over
character 5-grams at Jaccard >= 0.9 (configurable). One representative per cluster is kept, chosen
deterministically (the first row by source, then line); every other member is quarantined with a
detail naming the representative, and the clusters are in the report.

Near duplicates: vectorized one-permutation MinHash signatures (`fineplat.ingestion.minhash`)
indexed by datasketch `MinHashLSH`; LSH candidates are confirmed with the exact Jaccard similarity of
their shingle sets, so a removed row is always within the threshold of the row that was kept.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any

import numpy as np
import polars as pl
from datasketch import MinHashLSH

from fineplat.ingestion.minhash import (
    NUM_PERM,
    SHINGLE_CHARS,
    estimated_jaccard,
    jaccard,
    lean_minhash,
    shingle_sets,
    shingle_text,
    signatures,
)
from fineplat.ingestion.result import (
    KEPT_SCHEMA,
    Rejection,
    StageResult,
    base_report,
    empty_frame,
    rejected_frame,
)

STAGE = "deduplicate"
NEAR_DUPLICATE_THRESHOLD = 0.9  # Jaccard over character 5-grams (issue #4)
# LSH must find a pair at the threshold itself with at least this probability; the rows per band
# are as many as that allows (fewer false candidates). At 0.9/128 this gives 12 bands of 10 rows:
# P(candidate | J=0.9) = 1-(1-0.9^10)^12 = 0.994, P(candidate | J=0.5) = 0.012.
LSH_RECALL_AT_THRESHOLD = 0.99
# Candidates whose signature estimate is this far below the threshold skip the exact check
# (the estimate's standard deviation at 128 bins is <= 0.045).
_ESTIMATE_MARGIN = 0.15
_BAND_POLY = np.uint64(0x100000001B3)  # FNV-64 prime, to fold a band's values into one key


def lsh_params(threshold: float, num_perm: int) -> tuple[int, int]:
    """(bands, rows per band) for datasketch MinHashLSH: the most rows per band whose banding still
    finds a pair at `threshold` with probability >= LSH_RECALL_AT_THRESHOLD."""
    best = (num_perm // 2, 2)
    for rows in range(2, num_perm // 2 + 1):
        bands = num_perm // rows
        if 1 - (1 - threshold**rows) ** bands >= LSH_RECALL_AT_THRESHOLD:
            best = (bands, rows)
    return best


def deduplicate_rows(
    rows: pl.DataFrame,
    *,
    near_threshold: float = NEAR_DUPLICATE_THRESHOLD,
    num_perm: int = NUM_PERM,
    shingle: int = SHINGLE_CHARS,
) -> StageResult:
    """Drop exact and near duplicates from a validated frame (KEPT_SCHEMA). Rows come back in
    (source, line) order; the first row of each cluster in that order is the one kept.
    `near_threshold` is the Jaccard similarity over character `shingle`-grams at or above which a
    row is a near duplicate (1.0: exact duplicates only); `num_perm` is the signature length."""
    if not 0.0 < near_threshold <= 1.0:
        raise ValueError(f"near_threshold must be in (0, 1], got {near_threshold}")
    ordered = rows if _in_source_line_order(rows) else rows.sort(["source", "line"], maintain_order=True)
    n = ordered.height
    hashes = ordered.get_column("content_hash").to_list()
    sources = ordered.get_column("source").to_list()
    lines = ordered.get_column("line").to_list()
    records = ordered.get_column("record").to_list()

    removed: dict[int, Rejection] = {}  # row index -> rejection

    def rejection(index: int, code: str, message: str) -> Rejection:
        return Rejection(STAGE, sources[index], lines[index], records[index], (code,), message)

    first_with_hash: dict[str, int] = {}
    exact_members: dict[int, list[int]] = defaultdict(list)
    for index, content_hash in enumerate(hashes):
        representative = first_with_hash.setdefault(content_hash, index)
        if representative != index:
            exact_members[representative].append(index)
            removed[index] = rejection(
                index,
                "exact_duplicate",
                f"the normalized text is identical to {sources[representative]}, line {lines[representative]}, "
                "which is kept. Nothing to fix unless the repetition was intended (then vary the rows).",
            )

    unique = [index for index in range(n) if index not in removed]
    near_members: dict[int, list[tuple[int, float]]] = defaultdict(list)
    bands, rows_per_band = lsh_params(near_threshold, num_perm)
    if len(unique) > 1 and near_threshold < 1.0:
        texts = ordered.get_column("text").to_list()
        prepared = shingle_text([texts[index] for index in unique])
        sigs = signatures(prepared, num_perm=num_perm, shingle=shingle, prepared=True)
        band_keys = _lsh_band_keys(sigs, near_threshold, num_perm, (bands, rows_per_band))
        indexed = sorted(band_keys)
        exact_sets = dict(zip(indexed, shingle_sets([prepared[p] for p in indexed], shingle), strict=True))
        # Greedy in (source, line) order: a row is removed when it is within the threshold of a row
        # already kept. Buckets remember only kept rows, so a dense cluster costs O(cluster), not
        # O(cluster^2).
        kept_in_bucket: dict[tuple[int, bytes], list[int]] = defaultdict(list)
        for position in indexed:
            keys = band_keys[position]
            earlier_kept = sorted({earlier for key in keys for earlier in kept_in_bucket.get(key, ())})
            best: tuple[float, int] | None = None
            for earlier in earlier_kept:
                if estimated_jaccard(sigs[position], sigs[earlier]) < near_threshold - _ESTIMATE_MARGIN:
                    continue
                similarity = jaccard(exact_sets[position], exact_sets[earlier])
                if similarity >= near_threshold and (
                    best is None or (similarity, -earlier) > (best[0], -best[1])
                ):
                    best = (similarity, earlier)
            if best is None:
                for key in keys:
                    kept_in_bucket[key].append(position)
                continue
            similarity, earlier = best
            index, representative = unique[position], unique[earlier]
            near_members[representative].append((index, similarity))
            removed[index] = rejection(
                index,
                "near_duplicate",
                f"near duplicate (Jaccard {similarity:.3f} over character {shingle}-grams, threshold "
                f"{near_threshold}) of {sources[representative]}, line {lines[representative]}, which is kept. "
                "Nothing to fix unless both rows are needed (then make them differ more).",
            )

    keep_mask = np.ones(n, dtype=bool)
    keep_mask[list(removed)] = False
    kept = ordered.filter(pl.Series(keep_mask)) if n else empty_frame(KEPT_SCHEMA)
    rejected = rejected_frame([removed[index] for index in sorted(removed)])
    report = base_report(STAGE, rows.height, kept, rejected)
    per_source: Counter[str] = Counter()
    for index in removed:
        per_source[sources[index]] += 1
    report.update(
        {
            "exact_duplicates": sum(len(v) for v in exact_members.values()),
            "near_duplicates": sum(len(v) for v in near_members.values()),
            "exact_clusters": [
                {
                    "kept": _where(sources, lines, representative),
                    "duplicates": [_where(sources, lines, member) for member in members],
                }
                for representative, members in sorted(exact_members.items())
            ],
            "near_clusters": [
                {
                    "kept": _where(sources, lines, representative),
                    "duplicates": [
                        {**_where(sources, lines, member), "jaccard": round(similarity, 4)}
                        for member, similarity in members
                    ],
                }
                for representative, members in sorted(near_members.items())
            ],
            "duplicates_per_source": dict(sorted(per_source.items())),
            "params": {
                "near_threshold": near_threshold,
                "num_perm": num_perm,
                "shingle": shingle,
                "lsh_bands": bands,
                "lsh_rows_per_band": rows_per_band,
                "method": "one-permutation MinHash (densified) + datasketch MinHashLSH, exact Jaccard confirmation",
            },
        }
    )
    return StageResult(kept, rejected, report)


def _in_source_line_order(rows: pl.DataFrame) -> bool:
    """Whether rows already are in (source, line) order (validated rows of one file are), which
    spares sorting a frame of long strings."""
    keys = rows.select("source", "line")
    previous = keys.shift(1)
    out_of_order = (keys["source"] < previous["source"]) | (
        (keys["source"] == previous["source"]) & (keys["line"] <= previous["line"])
    )
    return not bool(out_of_order.fill_null(False).any())


def _where(sources: list[str], lines: list[int], index: int) -> dict[str, Any]:
    return {"source": sources[index], "line": lines[index]}


def _rows_sharing_a_band(sigs: np.ndarray, params: tuple[int, int]) -> np.ndarray:
    """Rows whose signature shares at least one LSH band with another row, found with one
    vectorized pass per band. Only these can ever be LSH candidates, so only they go into the
    datasketch index: same candidates, without ~30 us of Python per row for the rest (at 100k
    rows, inserting every row costs more than everything else in deduplication together)."""
    bands, rows_per_band = params
    sharing = np.zeros(len(sigs), dtype=bool)
    for band in range(bands):
        block = sigs[:, band * rows_per_band : (band + 1) * rows_per_band].astype(np.uint64)
        key = np.zeros(len(sigs), dtype=np.uint64)
        for column in range(rows_per_band):
            np.multiply(key, _BAND_POLY, out=key)
            np.add(key, block[:, column], out=key)
        _, inverse, counts = np.unique(key, return_inverse=True, return_counts=True)
        sharing |= (
            counts[inverse] > 1
        )  # a 64-bit key collision only adds a row; datasketch compares exact bytes
    return sharing


def _lsh_band_keys(
    sigs: np.ndarray, threshold: float, num_perm: int, params: tuple[int, int]
) -> dict[int, list[tuple[int, bytes]]]:
    """Index the rows that share a band with another row in a datasketch MinHashLSH and return,
    per indexed row position, its (band, bucket key) pairs as the index stored them."""
    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm, params=params)
    positions = np.flatnonzero(_rows_sharing_a_band(sigs, params)).tolist()
    with lsh.insertion_session(buffer_size=max(len(positions), 1)) as session:
        for position in positions:
            session.insert(position, lean_minhash(sigs[position]), check_duplication=False)
    return {position: list(enumerate(lsh.keys.get(position))) for position in positions}
