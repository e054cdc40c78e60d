"""The registry's tables as SQLAlchemy 2.0 typed ORM classes: one schema that runs unchanged on the
embedded SQLite file and on production PostgreSQL, and that the Alembic migrations must reproduce
exactly (a test compares the two with autogenerate, so drift fails the build, not a deploy).

The rows are internal: `fineplat.registry.Registry` hands out frozen dataclasses instead, so
callers never hold a session-bound object that breaks once the session closes."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# Value sets, in the order of their life cycle. The database repeats them as CHECK constraints so a
# hand-written UPDATE cannot put a row into a state the code does not know.
JOB_STATUSES = ("queued", "running", "checkpointing", "preempted", "succeeded", "failed")
MODEL_STAGES = ("dev", "staging", "production", "archived")
MODEL_KINDS = ("lora", "full")

# Deterministic constraint names: Alembic needs names to alter or drop a constraint later, and
# SQLite (batch mode) and PostgreSQL must end up with the same ones.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# Identifier and name columns: content hashes are 64 hex characters; job ids, model names and
# actors are short. 255 fits every id a caller could reasonably build and indexes well everywhere.
ID_LENGTH = 255
# Surrogate keys of append-only tables. Metric rows grow with every training step of every job
# (sized for ~1,000 jobs/week), which outgrows a 32-bit key; SQLite only auto-increments an
# INTEGER PRIMARY KEY, hence the variant.
AutoIncrementId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def utcnow() -> datetime:
    """The current time in UTC: every timestamp in the registry is UTC, whatever the server zone."""
    return datetime.now(UTC)


def _in(column: str, values: tuple[str, ...]) -> str:
    """A CHECK expression restricting `column` to `values`."""
    return f"{column} IN ({', '.join(repr(value) for value in values)})"


class Base(DeclarativeBase):
    """Declarative base with the shared naming convention (the migrations use the same metadata)."""

    metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)


class DatasetArtifactRow(Base):
    """One immutable dataset version, keyed by the content hash of its rows."""

    __tablename__ = "dataset_artifacts"
    __table_args__ = (sa.UniqueConstraint("name", "version"),)

    id: Mapped[str] = mapped_column(sa.String(ID_LENGTH), primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(ID_LENGTH), nullable=False)
    version: Mapped[int] = mapped_column(sa.Integer, nullable=False)
    uri: Mapped[str] = mapped_column(sa.Text, nullable=False)
    row_count: Mapped[int] = mapped_column(sa.Integer, nullable=False)
    token_count: Mapped[int] = mapped_column(sa.BigInteger, nullable=False)
    dedup_removed: Mapped[int] = mapped_column(sa.Integer, nullable=False)
    contamination_flagged: Mapped[int] = mapped_column(sa.Integer, nullable=False)
    quarantined: Mapped[int] = mapped_column(sa.Integer, nullable=False)
    schema_kind: Mapped[str] = mapped_column(sa.String(64), nullable=False)
    report: Mapped[dict[str, Any]] = mapped_column(sa.JSON, nullable=False)
    created_at: Mapped[datetime] = mapped_column(
        sa.DateTime(timezone=True), nullable=False, default=utcnow, server_default=sa.func.now()
    )


class TrainingJobRow(Base):
    """One fine-tuning job; `run_identity` names the run so an identical submission is reused. Its
    column keeps the name `config_hash` of the first schema (renaming it would need a migration)."""

    __tablename__ = "training_jobs"
    __table_args__ = (sa.CheckConstraint(_in("status", JOB_STATUSES), name="status"),)

    id: Mapped[str] = mapped_column(sa.String(ID_LENGTH), primary_key=True)
    method: Mapped[str] = mapped_column(sa.String(64), nullable=False)
    base_model: Mapped[str] = mapped_column(sa.String(ID_LENGTH), nullable=False)
    base_model_sha: Mapped[str] = mapped_column(sa.String(ID_LENGTH), nullable=False)
    dataset_id: Mapped[str] = mapped_column(
        sa.String(ID_LENGTH), sa.ForeignKey("dataset_artifacts.id"), nullable=False, index=True
    )
    config: Mapped[dict[str, Any]] = mapped_column(sa.JSON, nullable=False)
    run_identity: Mapped[str] = mapped_column("config_hash", sa.String(ID_LENGTH), nullable=False, index=True)
    status: Mapped[str] = mapped_column(sa.String(32), nullable=False, default="queued")
    attempts: Mapped[int] = mapped_column(sa.Integer, nullable=False, default=0)
    current_step: Mapped[int] = mapped_column(sa.Integer, nullable=False, default=0)
    error: Mapped[str | None] = mapped_column(sa.Text, nullable=True)
    dagster_run_id: Mapped[str | None] = mapped_column(sa.String(ID_LENGTH), nullable=True)
    mlflow_run_id: Mapped[str | None] = mapped_column(sa.String(ID_LENGTH), nullable=True)
    created_at: Mapped[datetime] = mapped_column(
        sa.DateTime(timezone=True), nullable=False, default=utcnow, server_default=sa.func.now()
    )
    updated_at: Mapped[datetime] = mapped_column(
        sa.DateTime(timezone=True),
        nullable=False,
        default=utcnow,
        onupdate=utcnow,
        server_default=sa.func.now(),
    )


class ModelArtifactRow(Base):
    """One trained model or adapter version with everything needed to reproduce and audit it."""

    __tablename__ = "model_artifacts"
    __table_args__ = (
        sa.UniqueConstraint("name", "version"),
        sa.UniqueConstraint("serving_name"),
        sa.CheckConstraint(_in("stage", MODEL_STAGES), name="stage"),
        sa.CheckConstraint(_in("kind", MODEL_KINDS), name="kind"),
        # At most one production model per name, enforced by the database: two concurrent
        # promotions cannot both win, whichever process or host they run in.
        sa.Index(
            "uq_model_artifacts_one_production_per_name",
            "name",
            unique=True,
            sqlite_where=sa.text("stage = 'production'"),
            postgresql_where=sa.text("stage = 'production'"),
        ),
    )

    id: Mapped[str] = mapped_column(sa.String(ID_LENGTH), primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(ID_LENGTH), nullable=False)
    version: Mapped[int] = mapped_column(sa.Integer, nullable=False)
    job_id: Mapped[str | None] = mapped_column(
        sa.String(ID_LENGTH), sa.ForeignKey("training_jobs.id"), nullable=True, index=True
    )
    base_model_sha: Mapped[str] = mapped_column(sa.String(ID_LENGTH), nullable=False)
    dataset_id: Mapped[str] = mapped_column(
        sa.String(ID_LENGTH), sa.ForeignKey("dataset_artifacts.id"), nullable=False, index=True
    )
    hparams_hash: Mapped[str] = mapped_column(sa.String(ID_LENGTH), nullable=False)
    kind: Mapped[str] = mapped_column(sa.String(16), nullable=False)
    uri: Mapped[str] = mapped_column(sa.Text, nullable=False)
    stage: Mapped[str] = mapped_column(sa.String(16), nullable=False, default="dev", server_default="dev")
    eval_results: Mapped[dict[str, Any]] = mapped_column(sa.JSON, nullable=False)
    gates_passed: Mapped[bool] = mapped_column(sa.Boolean, nullable=False, default=False)
    serving_name: Mapped[str | None] = mapped_column(sa.String(ID_LENGTH), nullable=True)
    created_at: Mapped[datetime] = mapped_column(
        sa.DateTime(timezone=True), nullable=False, default=utcnow, server_default=sa.func.now()
    )
    updated_at: Mapped[datetime] = mapped_column(
        sa.DateTime(timezone=True),
        nullable=False,
        default=utcnow,
        onupdate=utcnow,
        server_default=sa.func.now(),
    )


class RunMetricRow(Base):
    """One scalar a training job reported at one step; a resumed job re-logging a step overwrites it."""

    __tablename__ = "run_metrics"
    __table_args__ = (sa.Index("uq_run_metrics_job_id_name_step", "job_id", "name", "step", unique=True),)

    id: Mapped[int] = mapped_column(AutoIncrementId, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(
        sa.String(ID_LENGTH), sa.ForeignKey("training_jobs.id"), nullable=False
    )
    step: Mapped[int] = mapped_column(sa.Integer, nullable=False)
    name: Mapped[str] = mapped_column(sa.String(ID_LENGTH), nullable=False)
    value: Mapped[float] = mapped_column(sa.Float, nullable=False)
    created_at: Mapped[datetime] = mapped_column(
        sa.DateTime(timezone=True), nullable=False, default=utcnow, server_default=sa.func.now()
    )


class StageTransitionRow(Base):
    """Audit log: who moved which model from which stage to which, when and why (append-only)."""

    __tablename__ = "stage_transitions"

    id: Mapped[int] = mapped_column(AutoIncrementId, primary_key=True, autoincrement=True)
    model_id: Mapped[str] = mapped_column(
        sa.String(ID_LENGTH), sa.ForeignKey("model_artifacts.id"), nullable=False, index=True
    )
    # NULL for the registration itself (the model enters `dev` from nowhere).
    from_stage: Mapped[str | None] = mapped_column(sa.String(16), nullable=True)
    to_stage: Mapped[str] = mapped_column(sa.String(16), nullable=False)
    actor: Mapped[str] = mapped_column(sa.String(ID_LENGTH), nullable=False)
    reason: Mapped[str] = mapped_column(sa.Text, nullable=False)
    at: Mapped[datetime] = mapped_column(
        sa.DateTime(timezone=True), nullable=False, default=utcnow, server_default=sa.func.now()
    )


# The registry's own alembic version table: the registry may share a PostgreSQL database with
# Dagster's storage, which keeps its revision in the default `alembic_version` table.
VERSION_TABLE = "fineplat_registry_version"
