"""How work enters fineplat: a dataset upload becomes a dataset partition, a fine-tune request
becomes a job partition. Both are content-addressed, so re-submitting identical content or an
identical job changes nothing. The CLI, the REST API, the demo and the Dagster sensors share this."""

from __future__ import annotations

import json
import shutil
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from fineplat.errors import ConfigError, DatasetError
from fineplat.hashing import hash_file, hash_json
from fineplat.storage import ObjectStore
from fineplat.training.config import TrainConfig

if TYPE_CHECKING:  # fineplat.basemodel imports torch
    from fineplat.basemodel import BaseModelInfo

UPLOAD_MANIFEST = "upload.json"
JOB_SPEC = "job.json"
PARTITION_CHARS = 16  # hex chars of a content hash used as a partition key (64 bits)
JOB_ID_HASH_CHARS = 12  # hex chars of the run identity in a job id (48 bits)
Model = TypeVar("Model", bound=BaseModel)


class DatasetPurpose(StrEnum):
    """What a dataset is for; it decides which row shape ingestion expects."""

    SFT = "sft"  # chat rows; loss on the assistant's turns
    DPO = "dpo"  # preference rows: a prompt, a chosen and a rejected reply
    CPT = "cpt"  # plain text for continued pre-training


class UploadManifest(BaseModel):
    """What the user asked ingestion to do with one uploaded file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    partition: str  # dataset partition key: hash of file content + ingestion settings
    name: str  # dataset name; versions are numbered per name
    filename: str
    content_sha256: str
    base_model: str = "fineplat-tiny"  # whose tokenizer validates token counts
    purpose: DatasetPurpose = DatasetPurpose.SFT
    max_tokens: int = 512  # context limit rows are checked against
    benchmarks: list[str] = Field(default_factory=list)  # benchmark files, relative to the upload


class JobSpec(BaseModel):
    """A fine-tune request: which dataset version, which base model (pinned to the SHA of its
    weights at submission, so no later stage hashes them again), which hyperparameters."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    job_id: str
    name: str  # the adapter's registry name
    dataset_id: str
    base_model: str  # name or path as submitted
    base_model_sha: str  # fineplat.basemodel.base_model_sha of the weights at submission
    config: TrainConfig

    @property
    def run_identity(self) -> str:
        """The run this job asks for (fineplat.training.config.run_identity)."""
        return self.config.run_identity(self.base_model_sha, self.dataset_id)


def stage_upload(
    store: ObjectStore,
    source: Path,
    *,
    name: str,
    base_model: str = "fineplat-tiny",
    purpose: DatasetPurpose | str = DatasetPurpose.SFT,
    max_tokens: int = 512,
    benchmarks: list[Path] | None = None,
) -> UploadManifest:
    """Copy `source` (and benchmark files) into the object store under a content-addressed key."""
    source = Path(source)
    try:
        purpose = DatasetPurpose(purpose)
    except ValueError as exc:
        raise ConfigError(
            f"purpose {purpose!r}: expected one of {', '.join(DatasetPurpose)} "
            "(chat, preference or plain-text rows)"
        ) from exc
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
    bench_keys = [
        f"benchmarks/{digest[:12]}-{bench.name}"
        for bench, digest in zip(benchmarks or [], bench_hashes, strict=True)
    ]
    manifest = UploadManifest(
        partition=partition,
        name=name,
        filename=source.name,
        content_sha256=content,
        base_model=base_model,
        purpose=purpose,
        max_tokens=max_tokens,
        benchmarks=bench_keys,
    )
    key = f"uploads/{partition}"
    with store.writing(key) as staging:
        if source.is_dir():
            shutil.copytree(source, staging / source.name)
        else:
            shutil.copy2(source, staging / source.name)
        for bench, bench_key in zip(benchmarks or [], bench_keys, strict=True):
            (staging / "benchmarks").mkdir(exist_ok=True)
            shutil.copy2(bench, staging / bench_key)
        (staging / UPLOAD_MANIFEST).write_text(manifest.model_dump_json(indent=2))
    return manifest


def read_upload(store: ObjectStore, partition: str) -> tuple[UploadManifest, Path]:
    """The manifest and local directory of an uploaded dataset partition."""
    root = store.local(f"uploads/{partition}")
    return _read(UploadManifest, root / UPLOAD_MANIFEST, "upload the file again"), root


def job_id_for(name: str, dataset_id: str, base_model_sha: str, config: TrainConfig) -> str:
    """A readable, content-derived job id: `<name>-<12 hex of the run identity>`."""
    return f"{name}-{config.run_identity(base_model_sha, dataset_id)[:JOB_ID_HASH_CHARS]}"


def submit_job(
    store: ObjectStore, *, name: str, dataset_id: str, base: BaseModelInfo, config: TrainConfig
) -> JobSpec:
    """Write the spec of a fine-tune of `base` (resolved by the caller: `resolve_base_model` is
    the job's one hash of the weights) and return it. The job id derives from the run identity, so
    submitting the same request again returns the same spec and writes nothing."""
    spec = JobSpec(
        job_id=job_id_for(name, dataset_id, base.sha, config),
        name=name,
        dataset_id=dataset_id,
        base_model=base.name,
        base_model_sha=base.sha,
        config=config,
    )
    write_job_spec(store, spec)
    return spec


def write_job_spec(store: ObjectStore, spec: JobSpec) -> None:
    """Persist a job spec where the job's assets read it (immutable once written)."""
    key = f"jobs/{spec.job_id}"
    if store.exists(key):
        return
    with store.writing(key) as staging:
        (staging / JOB_SPEC).write_text(spec.model_dump_json(indent=2))


def read_job_spec(store: ObjectStore, job_id: str) -> JobSpec:
    """The spec of a submitted job."""
    return _read(JobSpec, store.local(f"jobs/{job_id}") / JOB_SPEC, "submit the job again")


def _read(model: type[Model], path: Path, remedy: str) -> Model:
    """`path` as `model`; a ConfigError naming the file and each bad field if it does not fit (a
    file written by another fineplat release, or edited by hand)."""
    try:
        return model.model_validate(json.loads(path.read_text()))
    except (ValidationError, json.JSONDecodeError) as exc:
        detail = (
            "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
            if isinstance(exc, ValidationError)
            else str(exc)
        )
        raise ConfigError(f"{path}: not a valid {model.__name__} ({detail}); {remedy}") from exc
