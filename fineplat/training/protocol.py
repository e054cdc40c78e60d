"""The messages between the Dagster step that launches a training attempt and the trainer process
(`k8s_ops.train_entry`), typed on both sides: request *and* replies are models, so a renamed or
missing field fails at the boundary with the field's name instead of as a KeyError deep in a run.

    launcher ──LaunchRequest──► trainer          (Dagster Pipes extras)
    launcher ◄──StepReport / PreemptedReport / FailedReport / RunSummary── trainer
                                                 (Pipes custom messages; RunSummary also on disk)

The launcher and the trainer can run different builds (a Dagster deployment and a trainer image),
so every message carries `schema_version`; a side that receives another version refuses it with a
`ProtocolError` that says which versions met, before reading any other field. Plain Python: the
Pipes plumbing lives in fineplat_resources and k8s_ops."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from fineplat.errors import ProtocolError
from fineplat.training.config import TrainConfig

# Bump on any change a peer of the previous version would misread (a renamed, removed or newly
# required field); adding an optional field with a default needs no bump.
PROTOCOL_VERSION = 1


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: int = PROTOCOL_VERSION


class LocalRunDirs(BaseModel):
    """Directories on a disk the trainer shares with the launching machine (local object store)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    data_dir: str  # packed training data (read)
    checkpoint_dir: str  # periodic and emergency checkpoints (read on resume, written)
    output_dir: str  # the adapter or full model and its RunSummary (written)


class ObjectKeys(BaseModel):
    """Object-store keys of the job's artifacts, for a trainer that reaches the store itself (S3)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    data: str
    checkpoints: str
    output: str


class MlflowTarget(BaseModel):
    """Where the trainer logs its params and per-step metrics."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tracking_uri: str
    experiment: str = "fineplat"


class LaunchRequest(_Message):
    """One training attempt: what to train, on which pinned inputs, and where results go."""

    job_id: str
    config: TrainConfig
    base_model: str  # name or path as submitted; a remote node resolves it by name
    base_model_sha: str  # pinned at submission; a node with another copy refuses to train
    base_model_dir: str  # on the launching machine; used where that path exists on the node
    dataset_id: str
    local_dirs: LocalRunDirs | None  # None: data, checkpoints and output go through the object store
    object_keys: ObjectKeys
    mlflow: MlflowTarget

    @classmethod
    def parse(cls, payload: Mapping[str, Any]) -> LaunchRequest:
        """The request in `payload` (the Pipes extras); ProtocolError on another version or shape."""
        return _parse(cls.model_validate, "launch request", payload)


class StepReport(_Message):
    """Metrics of one optimizer step (every LOG_EVERY steps, the first, and each validation)."""

    kind: Literal["step"] = "step"
    step: int
    metrics: dict[str, float]


class PreemptedReport(_Message):
    """The attempt stopped on SIGTERM after an emergency checkpoint; a retry resumes from it."""

    kind: Literal["preempted"] = "preempted"
    step: int
    checkpoint: str  # the emergency checkpoint's directory on the node


class FailedReport(_Message):
    """The attempt failed for a reason retrying will not fix (NaN loss, bad data, a bad request)."""

    kind: Literal["failed"] = "failed"
    error: str


class RunSummary(_Message):
    """What a finished run measured. Reported to the launcher and written beside the output
    (RUN_SUMMARY), so a later identical submission can reuse the output with its numbers."""

    kind: Literal["result"] = "result"
    job_id: str
    steps: int
    first_loss: float
    final_loss: float
    losses: list[float]  # one per optimizer step run by this attempt
    tokens_per_second: float
    packing_efficiency: float
    validation_loss: float | None
    resumed_from_step: int
    dtype: str  # the precision the run computed in ("auto" resolved for its device)
    attn_implementation: str  # the attention kernel it used ("auto" resolved likewise)
    wall_seconds: float
    mlflow_run_id: str

    @classmethod
    def read(cls, path: Path) -> RunSummary:
        """The summary written at `path`; ProtocolError (naming the file) on another version."""
        try:
            payload = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ProtocolError(f"{path}: not valid JSON ({exc}); the run's output is incomplete") from exc
        return _parse(cls.model_validate, str(path), payload)

    def write(self, path: Path) -> None:
        path.write_text(self.model_dump_json(indent=2))


TrainerMessage = Annotated[
    StepReport | PreemptedReport | FailedReport | RunSummary, Field(discriminator="kind")
]
_TRAINER_MESSAGE: TypeAdapter[TrainerMessage] = TypeAdapter(TrainerMessage)
M = TypeVar("M", bound=_Message)


def parse_trainer_messages(payloads: Iterable[Any]) -> list[TrainerMessage]:
    """The trainer's custom Pipes messages, typed; ProtocolError on another version or shape."""
    return [_parse(_TRAINER_MESSAGE.validate_python, "trainer message", payload) for payload in payloads]


def last_of(messages: Iterable[TrainerMessage], kind: type[M]) -> M | None:
    """The last message of one kind (e.g. the PreemptedReport of an attempt), or None."""
    found = [m for m in messages if isinstance(m, kind)]
    return found[-1] if found else None


T = TypeVar("T")


def _parse(validate: Callable[[Any], T], what: str, payload: Any) -> T:
    """Check the version first (a peer of another version may have renamed any field), then the
    shape."""
    if not isinstance(payload, Mapping):
        raise ProtocolError(f"{what}: expected a JSON object, got {type(payload).__name__}: {payload!r:.200}")
    version = payload.get("schema_version")
    if version != PROTOCOL_VERSION:
        raise ProtocolError(
            f"{what}: schema_version {version!r}, but this fineplat speaks version {PROTOCOL_VERSION}; "
            "the launcher (Dagster code location) and the trainer (image or interpreter) run different "
            "fineplat releases: deploy the same release to both"
        )
    try:
        return validate(payload)
    except ValidationError as exc:
        fields = "; ".join(
            f"{'.'.join(str(p) for p in error['loc']) or '(message)'}: {error['msg']}"
            for error in exc.errors()
        )
        raise ProtocolError(
            f"{what}: {fields}; both sides report schema_version {PROTOCOL_VERSION}, so one of them was "
            "changed without bumping PROTOCOL_VERSION (fineplat/training/protocol.py)"
        ) from exc
