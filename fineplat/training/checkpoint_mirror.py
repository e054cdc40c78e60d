"""Checkpoints that outlive the machine: a local checkpoint directory mirrored to the object store.

Why: a spot GPU node that is reclaimed takes its disk with it, and the retry lands on another node.
The trainer keeps writing checkpoints to a fast local directory (atomically, `checkpoint.py`); on
rank 0 each finished checkpoint is then uploaded under `<key>/step-XXXXXXXX/`, every file first and
`manifest.json` last, so a checkpoint exists remotely only once all of its files do (S3 writes are
strongly consistent: a listed manifest means its files are there). A new pod calls `restore()`
before training: it downloads the newest remote checkpoint whose files match the manifest's
hashes into the local directory, and the trainer resumes from it as if it had never left. Remote
copies beyond the last `keep` are deleted, as locally.

The preemption budget: after SIGTERM, spot nodes give 30 s (GCP) to 2 min (AWS); the emergency
checkpoint of a LoRA adapter is megabytes, so the upload fits. A SIGKILL during an upload leaves at
most a remote directory without a manifest, which `restore()` ignores and the next upload replaces.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

from fineplat.training.checkpoint import MANIFEST, is_complete


class CheckpointMirror:
    """Mirror of one run's checkpoints under `key` of an S3 bucket (`client`: a boto3 S3 client)."""

    def __init__(self, client: Any, bucket: str, key: str, *, keep: int = 3) -> None:
        self.client, self.bucket, self.key, self.keep = client, bucket, key.strip("/"), keep

    def _prefix(self, name: str = "") -> str:
        return f"{self.key}/{name}" if name else f"{self.key}/"

    def remote_checkpoints(self) -> list[str]:
        """Names (`step-XXXXXXXX`) of remote checkpoints that have a manifest, oldest first."""
        names: set[str] = set()
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=self._prefix()):
            for item in page.get("Contents", []):
                parts = item["Key"][len(self._prefix()) :].split("/")
                if len(parts) == 2 and parts[1] == MANIFEST and parts[0].startswith("step-"):
                    names.add(parts[0])
        return sorted(names)

    def upload(self, checkpoint: Path) -> float:
        """Upload one complete local checkpoint (manifest last), prune old remote ones; returns the
        seconds it took (logged: it counts against the preemption grace period)."""
        started = time.perf_counter()
        files = sorted(p for p in checkpoint.rglob("*") if p.is_file() and p.name != MANIFEST)
        for path in [*files, checkpoint / MANIFEST]:
            relative = path.relative_to(checkpoint).as_posix()
            self.client.upload_file(str(path), self.bucket, self._prefix(f"{checkpoint.name}/{relative}"))
        self.prune()
        return time.perf_counter() - started

    def prune(self) -> None:
        """Delete remote checkpoints older than the newest `keep` (manifest first, so a half-deleted
        one is never taken for complete)."""
        for name in self.remote_checkpoints()[: -self.keep]:
            self.client.delete_object(Bucket=self.bucket, Key=self._prefix(f"{name}/{MANIFEST}"))
            self._delete_prefix(self._prefix(f"{name}/"))

    def _delete_prefix(self, prefix: str) -> None:
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
            keys = [{"Key": item["Key"]} for item in page.get("Contents", [])]
            if keys:
                self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": keys, "Quiet": True})

    def restore(self, local_root: Path) -> Path | None:
        """Make the newest complete remote checkpoint available under `local_root` (download it
        unless an identical complete copy is already there); None when there is none. A remote
        checkpoint whose files do not match its manifest is skipped for the next older one."""
        local_root.mkdir(parents=True, exist_ok=True)
        for name in reversed(self.remote_checkpoints()):
            target = local_root / name
            if is_complete(target) and self._same_manifest(target, name):
                return target
            staging = local_root / f".{name}.tmp-download-{time.monotonic_ns()}"
            try:
                self._download(name, staging)
                if not is_complete(staging):
                    continue
                if target.exists():
                    shutil.rmtree(target)
                staging.rename(target)
                return target
            finally:
                shutil.rmtree(staging, ignore_errors=True)
        return None

    def _same_manifest(self, local: Path, name: str) -> bool:
        body = self.client.get_object(Bucket=self.bucket, Key=self._prefix(f"{name}/{MANIFEST}"))["Body"]
        return bool(json.loads(body.read()) == json.loads((local / MANIFEST).read_text()))

    def _download(self, name: str, staging: Path) -> None:
        prefix = self._prefix(f"{name}/")
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                destination = staging / item["Key"][len(prefix) :]
                destination.parent.mkdir(parents=True, exist_ok=True)
                self.client.download_file(self.bucket, item["Key"], str(destination))
