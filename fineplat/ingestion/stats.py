"""Dataset statistics for the materialization metadata and the CLI: token totals with the base
model's own tokenizer, the share of tokens that carry loss (what training actually learns from),
lengths for a histogram, and rows per source."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import polars as pl

from fineplat.ingestion.tokens import tokenize_with_mask

HISTOGRAM_BINS = 30


def dataset_statistics(kept: pl.DataFrame, tokenizer: Any) -> dict[str, Any]:
    """Token totals, loss-token share and per-row lengths of the kept rows (KEPT_SCHEMA)."""
    lengths: list[int] = []
    loss_tokens = 0
    for kind, record in zip(
        kept.get_column("kind").to_list(), kept.get_column("record").to_list(), strict=True
    ):
        tokenized = tokenize_with_mask(tokenizer, kind, json.loads(record))
        lengths.append(len(tokenized.input_ids))
        loss_tokens += sum(tokenized.loss_mask)
    total = sum(lengths)
    ordered = sorted(lengths)

    def percentile(q: float) -> int:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0

    return {
        "rows": kept.height,
        "tokens_total": total,
        "loss_tokens": loss_tokens,
        "loss_token_share": round(loss_tokens / total, 4) if total else 0.0,
        "tokens_mean": round(total / len(lengths), 2) if lengths else 0.0,
        "tokens_p50": percentile(0.5),
        "tokens_p95": percentile(0.95),
        "tokens_max": max(lengths, default=0),
        "lengths": lengths,
        "rows_per_source": dict(sorted(Counter(kept.get_column("source").to_list()).items())),
    }


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
