"""Metadata helpers: plots people would rather look at than numbers, rendered once as PNG files in
the object store and inlined into the Dagster UI as markdown images."""

from __future__ import annotations

import base64
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from dagster import MetadataValue


def png_markdown(path: Path, title: str) -> MetadataValue:
    """A markdown metadata value showing the PNG at `path` inline."""
    encoded = base64.b64encode(path.read_bytes()).decode("ascii")
    return MetadataValue.md(f"**{title}**\n\n![{title}](data:image/png;base64,{encoded})")


def plot_loss_curve(
    losses: Sequence[float], path: Path, *, validation: Sequence[tuple[int, float]] = ()
) -> Path:
    """Training loss per step (and validation loss at checkpoints) as a PNG."""
    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=100)
    ax.plot(range(1, len(losses) + 1), losses, label="train loss", linewidth=1.2)
    if validation:
        ax.plot([s for s, _ in validation], [v for _, v in validation], "o-", label="validation loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_histogram(values: Sequence[int], path: Path, *, title: str, xlabel: str, bins: int = 30) -> Path:
    """A histogram (e.g. token lengths) as a PNG."""
    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=100)
    ax.hist(list(values), bins=bins, color="#4c72b0")
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("rows")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def report_table(report: dict[str, Any]) -> MetadataValue:
    """A stage report's reason counts as a markdown table."""
    reasons = report.get("reasons", {})
    lines = ["| reason | rows |", "|---|---|"] + [
        f"| {code} | {count} |" for code, count in sorted(reasons.items())
    ]
    return MetadataValue.md("\n".join(lines) if reasons else "no rows rejected")
