"""Content hashes: every artifact in fineplat is addressed by what it contains, so reproducing a
run reproduces its ids (dataset versions, base model SHA, hyperparameter hash, checkpoints)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

_CHUNK = 1 << 20


def canonical_json(value: Any) -> str:
    """JSON with sorted keys and no whitespace: the one serialization that is hashed."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def hash_json(value: Any) -> str:
    """SHA-256 of the canonical JSON of `value`."""
    return hashlib.sha256(canonical_json(value).encode("utf-8")).hexdigest()


def hash_file(path: Path) -> str:
    """SHA-256 of one file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def hash_files(root: Path, names: Iterable[str]) -> str:
    """SHA-256 over (name, file hash) pairs in sorted name order: a directory's identity that does
    not depend on timestamps or listing order."""
    digest = hashlib.sha256()
    for name in sorted(names):
        digest.update(name.encode("utf-8") + b"\0" + hash_file(root / name).encode("ascii") + b"\n")
    return digest.hexdigest()
