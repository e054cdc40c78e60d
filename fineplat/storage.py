"""The object store: where dataset versions, training data, checkpoints and adapters live. A local
directory by default, S3 (or any S3-compatible endpoint such as MinIO) in production; callers
see one interface and never branch on which."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol


class ObjectStore(Protocol):
    """Directories addressed by key (e.g. `datasets/<id>`), readable as local paths."""

    def uri(self, key: str) -> str: ...

    def exists(self, key: str) -> bool: ...

    @contextmanager
    def writing(self, key: str) -> Iterator[Path]: ...

    def local(self, key: str) -> Path: ...


class LocalObjectStore:
    """A directory tree: keys are relative paths under `root`. Writes are staged and renamed into
    place, so a reader never sees a half-written artifact."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def uri(self, key: str) -> str:
        return (self.root / key).resolve().as_uri()

    def exists(self, key: str) -> bool:
        return (self.root / key).exists()

    @contextmanager
    def writing(self, key: str) -> Iterator[Path]:
        target = self.root / key
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        try:
            yield staging
            if target.exists():
                shutil.rmtree(target)
            staging.rename(target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def local(self, key: str) -> Path:
        path = self.root / key
        if not path.exists():
            raise FileNotFoundError(f"object store: no artifact at {path}")
        return path


class S3ObjectStore:
    """S3 or an S3-compatible endpoint. `local()` downloads into a cache directory once; `writing()`
    uploads the staged directory when the block exits without error."""

    def __init__(self, bucket: str, prefix: str, client: Any, cache_dir: Path) -> None:
        self.bucket, self.prefix, self.client, self.cache_dir = (
            bucket,
            prefix.strip("/"),
            client,
            Path(cache_dir),
        )

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}".strip("/")

    def object_key(self, key: str) -> str:
        """The bucket key of an artifact key (the prefix applied), for clients that list or write
        under it themselves (the checkpoint mirror)."""
        return self._key(key)

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._key(key)}"

    def exists(self, key: str) -> bool:
        response = self.client.list_objects_v2(Bucket=self.bucket, Prefix=self._key(key) + "/", MaxKeys=1)
        return bool(response.get("KeyCount", 0))

    @contextmanager
    def writing(self, key: str) -> Iterator[Path]:
        staging = Path(tempfile.mkdtemp(prefix="fineplat-upload-"))
        try:
            yield staging
            for path in sorted(p for p in staging.rglob("*") if p.is_file()):
                self.client.upload_file(
                    str(path), self.bucket, f"{self._key(key)}/{path.relative_to(staging).as_posix()}"
                )
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def local(self, key: str) -> Path:
        target = self.cache_dir / key
        if target.exists():
            return target
        paginator = self.client.get_paginator("list_objects_v2")
        found = False
        for page in paginator.paginate(Bucket=self.bucket, Prefix=self._key(key) + "/"):
            for item in page.get("Contents", []):
                found = True
                relative = item["Key"][len(self._key(key)) + 1 :]
                (target / relative).parent.mkdir(parents=True, exist_ok=True)
                self.client.download_file(self.bucket, item["Key"], str(target / relative))
        if not found:
            raise FileNotFoundError(f"object store: no artifact at {self.uri(key)}")
        return target


def local_path(store: ObjectStore, key: str) -> Path:
    """A local directory for `key` that a process on this machine may write in place (checkpoints,
    which must survive the process). Only the local store has one; S3 runs sync through `writing`."""
    if isinstance(store, LocalObjectStore):
        path = store.root / key
        path.mkdir(parents=True, exist_ok=True)
        return path
    raise NotImplementedError(
        "in-place directories need the local object store; with S3 the trainer reads and writes "
        "through the store itself (k8s_ops.train_entry.run_files)"
    )
