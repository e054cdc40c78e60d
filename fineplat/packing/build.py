"""Build the `training_data` artifact from a dataset version: tokenize every record with the base
model's own chat template, split a deterministic task holdout (by content hash), and pack the
training split into fixed-length windows. Written as Parquet plus a manifest with its statistics."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import polars as pl

from fineplat.packing.pack import pack_examples, packing_efficiency
from fineplat.packing.tokenize import TokenizedExample, tokenize_rows

HOLDOUT_FRACTION = 0.1  # share of rows held out for validation loss and the task-holdout eval
MAX_HOLDOUT_ROWS = 100  # cap: evaluation generates token by token, keep it bounded
MANIFEST = "manifest.json"


@dataclass
class TrainingDataManifest:
    """What the training_data artifact holds, recorded as metadata and read by the trainer."""

    kind: str
    max_seq_len: int
    packed: bool
    train_examples: int
    train_rows: int
    holdout_examples: int
    train_tokens: int
    loss_tokens: int
    packing_efficiency: float
    truncated_examples: int


def is_holdout(content_hash: str, fraction: float = HOLDOUT_FRACTION) -> bool:
    """Deterministic membership in the holdout split: a function of the row's content alone."""
    return int(content_hash[:8], 16) % 10_000 < fraction * 10_000


def split_rows(
    rows: pl.DataFrame, fraction: float = HOLDOUT_FRACTION, cap: int = MAX_HOLDOUT_ROWS
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(train, holdout) by content hash; the holdout is capped, the overflow goes to train."""
    rows = rows.sort("content_hash")
    flags = [is_holdout(h, fraction) for h in rows["content_hash"].to_list()]
    mask = pl.Series(flags)
    holdout = rows.filter(mask)
    if holdout.height > cap:
        holdout = holdout.head(cap)
    train = rows.join(holdout.select("content_hash"), on="content_hash", how="anti")
    return train, holdout


def _tokenize_all(rows: pl.DataFrame, tokenizer: Any, max_seq_len: int) -> tuple[list[TokenizedExample], int]:
    """Every row's example cut to `max_seq_len`, and how many were cut (a preference pair counts
    when either side is: the rejected one is often the longer)."""
    full = tokenize_rows(rows["kind"].to_list(), rows["record"].to_list(), tokenizer)
    truncated = sum(1 for example in full if example.length > max_seq_len)
    return [example.clipped(max_seq_len) for example in full], truncated


def build_training_data(
    rows: pl.DataFrame, tokenizer: Any, out_dir: Path, *, max_seq_len: int, packing: bool = True
) -> TrainingDataManifest:
    """Tokenize, split and pack `rows` (columns kind, record, content_hash) into `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    kinds = sorted(set(rows["kind"].to_list()))
    kind = kinds[0] if len(kinds) == 1 else "mixed"
    train_rows, holdout_rows = split_rows(rows)
    train_examples, truncated = _tokenize_all(train_rows, tokenizer, max_seq_len)
    holdout_examples, _ = _tokenize_all(holdout_rows, tokenizer, max_seq_len)
    if kind == "preference":
        packing = False  # DPO compares whole sequences; nothing to pack
    if packing:
        packed = pack_examples(train_examples, max_seq_len, tokenizer.pad_token_id)
        table = pl.DataFrame(
            {
                "input_ids": [r.input_ids for r in packed],
                "labels": [r.labels for r in packed],
                "position_ids": [r.position_ids for r in packed],
                "example_ids": [r.example_ids for r in packed],
            }
        )
        efficiency = packing_efficiency(packed)
    else:
        columns: dict[str, list[Any]] = {
            "input_ids": [e.input_ids for e in train_examples],
            "labels": [e.labels for e in train_examples],
        }
        for key in ("chosen_input_ids", "chosen_labels", "rejected_input_ids", "rejected_labels"):
            if kind == "preference":
                columns[key] = [e.pair[key] for e in train_examples]
        table = pl.DataFrame(columns)
        lengths = [len(e.input_ids) for e in train_examples]
        efficiency = sum(lengths) / (max(lengths) * len(lengths)) if lengths else 0.0
    table.write_parquet(out_dir / "train.parquet")
    pl.DataFrame(
        {
            "input_ids": [e.input_ids for e in holdout_examples],
            "labels": [e.labels for e in holdout_examples],
            "kind": holdout_rows["kind"],
            "record": holdout_rows["record"],
            "content_hash": holdout_rows["content_hash"],
        },
        schema_overrides={"input_ids": pl.List(pl.Int64), "labels": pl.List(pl.Int64)},
    ).write_parquet(out_dir / "holdout.parquet")
    manifest = TrainingDataManifest(
        kind=kind,
        max_seq_len=max_seq_len,
        packed=packing,
        train_examples=len(train_examples),
        train_rows=table.height,
        holdout_examples=len(holdout_examples),
        train_tokens=sum(len(e.input_ids) for e in train_examples),
        loss_tokens=sum(e.loss_tokens for e in train_examples),
        packing_efficiency=round(efficiency, 6),
        truncated_examples=truncated,
    )
    (out_dir / MANIFEST).write_text(json.dumps(asdict(manifest), indent=2, sort_keys=True))
    return manifest


def read_manifest(out_dir: Path) -> TrainingDataManifest:
    """The manifest of a built training_data directory."""
    return TrainingDataManifest(**json.loads((out_dir / MANIFEST).read_text()))
