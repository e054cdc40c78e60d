"""Dataset statistics for the materialization metadata and the CLI: token totals with the base
model's own tokenizer, the share of tokens that carry loss (what training actually learns from),
lengths for a histogram, and rows per source."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import polars as pl

from fineplat.packing.tokenize import tokenize_rows

HISTOGRAM_BINS = 30


def dataset_statistics(kept: pl.DataFrame, tokenizer: Any, *, max_rows: int | None = None) -> dict[str, Any]:
    """Token totals, loss-token share and per-row lengths of the kept rows (KEPT_SCHEMA).
    Tokenizing with loss masks costs ~1 ms per row; `max_rows` measures an evenly spaced,
    deterministic sample instead and scales the totals (`sampled_rows` says how many were read)."""
    rows = kept
    if max_rows is not None and kept.height > max_rows:
        rows = kept.gather_every(-(-kept.height // max_rows))
    lengths: list[int] = []
    sampled_loss = 0
    for tokenized in tokenize_rows(
        rows.get_column("kind").to_list(), rows.get_column("record").to_list(), tokenizer
    ):
        lengths.append(len(tokenized.input_ids))
        sampled_loss += tokenized.loss_tokens
    scale = kept.height / rows.height if rows.height else 1.0
    total = round(sum(lengths) * scale)
    loss_tokens = round(sampled_loss * scale)
    ordered = sorted(lengths)

    def percentile(q: float) -> int:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0

    return {
        "rows": kept.height,
        "sampled_rows": rows.height,
        "tokens_total": total,
        "loss_tokens": loss_tokens,
        "loss_token_share": round(sampled_loss / sum(lengths), 4) if lengths and sum(lengths) else 0.0,
        "tokens_mean": round(sum(lengths) / len(lengths), 2) if lengths else 0.0,
        "tokens_p50": percentile(0.5),
        "tokens_p95": percentile(0.95),
        "tokens_max": max(lengths, default=0),
        "lengths": lengths,
        "rows_per_source": dict(sorted(Counter(kept.get_column("source").to_list()).items())),
    }


def source_breakdown(reports: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, int]]:
    """Per source file: rows in, quarantined, removed as duplicate, removed as contaminated and
    kept, from the stage reports (validate, deduplicate, decontaminate), so a user sees which file
    of a multi-file dataset carries the problems."""
    by_stage = {report["stage"]: report for report in reports}
    validated = by_stage.get("validate", {})
    rows = validated.get("rows_per_source", {})
    quarantined = validated.get("rejected_per_source", {})
    duplicates = by_stage.get("deduplicate", {}).get("duplicates_per_source", {})
    decontaminate = by_stage.get("decontaminate", {})
    contaminated = (
        decontaminate.get("contaminated_per_source", {}) if decontaminate.get("policy") == "remove" else {}
    )
    out: dict[str, dict[str, int]] = {}
    for source in sorted(set(rows) | set(quarantined) | set(duplicates) | set(contaminated)):
        entry = {
            "rows_in": rows.get(source, 0),
            "quarantined": quarantined.get(source, 0),
            "duplicates": duplicates.get(source, 0),
            "contaminated": contaminated.get(source, 0),
        }
        entry["kept"] = entry["rows_in"] - entry["quarantined"] - entry["duplicates"] - entry["contaminated"]
        out[source] = entry
    return out


def plot_length_histogram(lengths: list[int], path: str | Path, *, title: str = "Tokens per row") -> Path:
    """Save a histogram of row lengths in tokens as PNG (matplotlib, Agg: no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    figure, axes = plt.subplots(figsize=(6, 3.5), dpi=100)
    try:
        axes.hist(lengths or [0], bins=HISTOGRAM_BINS, color="#3b6ea5", edgecolor="white")
        axes.set_xlabel("tokens (base model chat template)")
        axes.set_ylabel("rows")
        axes.set_title(f"{title} (n={len(lengths)})")
        figure.tight_layout()
        figure.savefig(target)
    finally:
        plt.close(figure)
    return target
