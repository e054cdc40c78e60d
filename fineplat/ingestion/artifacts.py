"""Dataset artifacts: a content-hash id that does not depend on row order or file layout (ingesting
the same content again yields the same id), Parquet IO for kept rows, and the quarantine file that
keeps every rejected row with its line, raw content and reasons, so nothing is lost."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import polars as pl

from fineplat.errors import DatasetError
from fineplat.ingestion.result import KEPT_SCHEMA, REJECTED_SCHEMA

_VERSION_PREFIX = "ds-"  # ids read as dataset versions in logs and the registry


def dataset_version_id(kept: pl.DataFrame) -> str:
    """`ds-` + SHA-256 over the sorted SHA-256s of each row's kind and normalized record: equal
    content gives an equal id whatever the order, file names or line numbers; any edit changes it."""
    kinds = kept.get_column("kind").to_list()
    records = kept.get_column("record").to_list()
    row_hashes = sorted(
        hashlib.sha256(f"{kind}\0{record}".encode()).hexdigest()
        for kind, record in zip(kinds, records, strict=True)
    )
    digest = hashlib.sha256()
    for row_hash in row_hashes:
        digest.update(row_hash.encode("ascii"))
        digest.update(b"\n")
    return _VERSION_PREFIX + digest.hexdigest()


def write_parquet(frame: pl.DataFrame, path: str | Path) -> Path:
    """Write a frame as Parquet (zstd), atomically: a reader never sees a half-written artifact."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}.tmp")
    frame.write_parquet(temporary, compression="zstd")
    temporary.replace(target)
    return target


def read_parquet(path: str | Path, *, expect: str = "kept") -> pl.DataFrame:
    """Read a kept or rejected frame back, checking it has the documented columns."""
    source = Path(path)
    if not source.exists():
        raise DatasetError(f"{source}: dataset artifact not found.")
    frame = pl.read_parquet(source)
    schema = KEPT_SCHEMA if expect == "kept" else REJECTED_SCHEMA
    missing = [name for name in schema if name not in frame.columns]
    if missing:
        raise DatasetError(
            f"{source}: not a fineplat {expect} artifact (missing columns {', '.join(missing)})."
        )
    return frame.select(list(schema))


def write_quarantine(rejected: pl.DataFrame, path: str | Path) -> Path:
    """Write rejected rows as JSONL, one line per row: source, line, raw, reasons, detail, stage,
    sorted by (source, line) so a user reads it top to bottom beside the file."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}.tmp")
    ordered = rejected.sort(["source", "line"], maintain_order=True) if rejected.height else rejected
    with open(temporary, "w", encoding="utf-8") as handle:
        for row in ordered.iter_rows(named=True):
            entry = {
                "source": row["source"],
                "line": row["line"],
                "raw": row["raw"],
                "reasons": row["reasons"],
                "detail": row["detail"],
                "stage": row["stage"],
            }
            handle.write(json.dumps(entry, ensure_ascii=False) + "\n")
    temporary.replace(target)
    return target


def read_quarantine(path: str | Path) -> pl.DataFrame:
    """Read a quarantine JSONL back into a rejected frame."""
    rows = [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    if not rows:
        return pl.DataFrame(schema=REJECTED_SCHEMA)
    return pl.DataFrame(
        [{name: row.get(name) for name in REJECTED_SCHEMA} for row in rows], schema=REJECTED_SCHEMA
    )
