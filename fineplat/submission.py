"""How work enters fineplat: a dataset upload becomes a dataset partition, a fine-tune request
becomes a job partition. Both are content-addressed, so re-submitting identical content or an
identical job changes nothing. The CLI, the REST API, the demo and the Dagster sensors share this."""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fineplat.errors import DatasetError
from fineplat.hashing import hash_file, hash_json
from fineplat.storage import ObjectStore
from fineplat.training.config import TrainConfig

UPLOAD_MANIFEST = "upload.json"
PARTITION_CHARS = 16  # hex chars of a content hash used as a partition key (64 bits)


@dataclass
class UploadManifest:
    """What the user asked ingestion to do with one uploaded file."""

    partition: str  # dataset partition key: hash of file content + ingestion settings
    name: str  # dataset name; versions are numbered per name
    filename: str
    content_sha256: str
    base_model: str = "fineplat-tiny"  # whose tokenizer validates token counts
    purpose: str = "sft"  # sft | dpo | cpt
    max_tokens: int = 512  # context limit rows are checked against
    benchmarks: list[str] = field(default_factory=list)  # object-store keys of benchmark files


@dataclass
class JobSpec:
    """A fine-tune request: which dataset version, which base model, which hyperparameters."""

    job_id: str
    name: str  # the adapter's registry name
    dataset_id: str
    base_model: str
    config: dict[str, Any]

    @property
    def train_config(self) -> TrainConfig:
        return TrainConfig(**self.config)


def stage_upload(
    store: ObjectStore,
    source: Path,
    *,
    name: str,
    base_model: str = "fineplat-tiny",
    purpose: str = "sft",
    max_tokens: int = 512,
    benchmarks: list[Path] | None = None,
) -> UploadManifest:
    """Copy `source` (and benchmark files) into the object store under a content-addressed key."""
    source = Path(source)
    if not source.exists():
        raise DatasetError(
            f"{source}: no such file or directory; pass the path of a JSONL, JSON, Parquet or CSV file"
        )
    content = hash_file(source) if source.is_file() else hash_json(sorted(str(p) for p in source.rglob("*")))
    bench_hashes = [hash_file(b) for b in benchmarks or []]
    settings = {
        "name": name,
        "base_model": base_model,
        "purpose": purpose,
        "max_tokens": max_tokens,
        "benchmarks": bench_hashes,
    }
    partition = hash_json({"content": content, **settings})[:PARTITION_CHARS]
    manifest = UploadManifest(partition, name, source.name, content, base_model, purpose, max_tokens, [])
    key = f"uploads/{partition}"
    with store.writing(key) as staging:
        if source.is_dir():
            shutil.copytree(source, staging / source.name)
        else:
            shutil.copy2(source, staging / source.name)
        for bench, digest in zip(benchmarks or [], bench_hashes, strict=True):
            (staging / "benchmarks").mkdir(exist_ok=True)
            shutil.copy2(bench, staging / "benchmarks" / f"{digest[:12]}-{bench.name}")
            manifest.benchmarks.append(f"benchmarks/{digest[:12]}-{bench.name}")
        (staging / UPLOAD_MANIFEST).write_text(json.dumps(asdict(manifest), indent=2, sort_keys=True))
    return manifest


def read_upload(store: ObjectStore, partition: str) -> tuple[UploadManifest, Path]:
    """The manifest and local directory of an uploaded dataset partition."""
    root = store.local(f"uploads/{partition}")
    return UploadManifest(**json.loads((root / UPLOAD_MANIFEST).read_text())), root


def job_id_for(name: str, dataset_id: str, base_model_sha: str, config: TrainConfig) -> str:
    """A readable, content-derived job id: `<name>-<12 hex of the run key>`."""
    return f"{name}-{config.run_key(base_model_sha, dataset_id)[:12]}"


def write_job_spec(store: ObjectStore, spec: JobSpec) -> None:
    """Persist a job spec where the job's assets read it (immutable once written)."""
    key = f"jobs/{spec.job_id}"
    if store.exists(key):
        return
    with store.writing(key) as staging:
        (staging / "job.json").write_text(json.dumps(asdict(spec), indent=2, sort_keys=True))


def read_job_spec(store: ObjectStore, job_id: str) -> JobSpec:
    """The spec of a submitted job."""
    return JobSpec(**json.loads((store.local(f"jobs/{job_id}") / "job.json").read_text()))
