"""Initial registry schema: datasets, training jobs, models, run metrics and the stage audit log.

Revision ID: 0001
Revises:
Create Date: 2026-01-01

Written to match fineplat/registry/models.py exactly; tests/registry checks with Alembic's
autogenerate comparison that the two never drift apart.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ID = sa.String(255)
AUTO_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
STATUS_CHECK = "status IN ('queued', 'running', 'checkpointing', 'preempted', 'succeeded', 'failed')"
STAGE_CHECK = "stage IN ('dev', 'staging', 'production', 'archived')"
KIND_CHECK = "kind IN ('lora', 'full')"


def _timestamp(name: str) -> sa.Column:
    """A UTC timestamp column that the database fills when an insert leaves it out."""
    return sa.Column(name, sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now())


def upgrade() -> None:
    """Create every registry table."""
    op.create_table(
        "dataset_artifacts",
        sa.Column("id", ID, nullable=False),
        sa.Column("name", ID, nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("uri", sa.Text(), nullable=False),
        sa.Column("row_count", sa.Integer(), nullable=False),
        sa.Column("token_count", sa.BigInteger(), nullable=False),
        sa.Column("dedup_removed", sa.Integer(), nullable=False),
        sa.Column("contamination_flagged", sa.Integer(), nullable=False),
        sa.Column("quarantined", sa.Integer(), nullable=False),
        sa.Column("schema_kind", sa.String(64), nullable=False),
        sa.Column("report", sa.JSON(), nullable=False),
        _timestamp("created_at"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_dataset_artifacts")),
        sa.UniqueConstraint("name", "version", name=op.f("uq_dataset_artifacts_name_version")),
    )

    op.create_table(
        "training_jobs",
        sa.Column("id", ID, nullable=False),
        sa.Column("method", sa.String(64), nullable=False),
        sa.Column("base_model", ID, nullable=False),
        sa.Column("base_model_sha", ID, nullable=False),
        sa.Column("dataset_id", ID, nullable=False),
        sa.Column("config", sa.JSON(), nullable=False),
        sa.Column("config_hash", ID, nullable=False),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("current_step", sa.Integer(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("dagster_run_id", ID, nullable=True),
        sa.Column("mlflow_run_id", ID, nullable=True),
        _timestamp("created_at"),
        _timestamp("updated_at"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_training_jobs")),
        sa.ForeignKeyConstraint(
            ["dataset_id"],
            ["dataset_artifacts.id"],
            name=op.f("fk_training_jobs_dataset_id_dataset_artifacts"),
        ),
        sa.CheckConstraint(STATUS_CHECK, name=op.f("ck_training_jobs_status")),
    )
    op.create_index(op.f("ix_training_jobs_config_hash"), "training_jobs", ["config_hash"])
    op.create_index(op.f("ix_training_jobs_dataset_id"), "training_jobs", ["dataset_id"])

    op.create_table(
        "model_artifacts",
        sa.Column("id", ID, nullable=False),
        sa.Column("name", ID, nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("job_id", ID, nullable=True),
        sa.Column("base_model_sha", ID, nullable=False),
        sa.Column("dataset_id", ID, nullable=False),
        sa.Column("hparams_hash", ID, nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("uri", sa.Text(), nullable=False),
        sa.Column("stage", sa.String(16), nullable=False, server_default="dev"),
        sa.Column("eval_results", sa.JSON(), nullable=False),
        sa.Column("gates_passed", sa.Boolean(), nullable=False),
        sa.Column("serving_name", ID, nullable=True),
        _timestamp("created_at"),
        _timestamp("updated_at"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_model_artifacts")),
        sa.ForeignKeyConstraint(
            ["job_id"], ["training_jobs.id"], name=op.f("fk_model_artifacts_job_id_training_jobs")
        ),
        sa.ForeignKeyConstraint(
            ["dataset_id"],
            ["dataset_artifacts.id"],
            name=op.f("fk_model_artifacts_dataset_id_dataset_artifacts"),
        ),
        sa.UniqueConstraint("name", "version", name=op.f("uq_model_artifacts_name_version")),
        sa.UniqueConstraint("serving_name", name=op.f("uq_model_artifacts_serving_name")),
        sa.CheckConstraint(STAGE_CHECK, name=op.f("ck_model_artifacts_stage")),
        sa.CheckConstraint(KIND_CHECK, name=op.f("ck_model_artifacts_kind")),
    )
    op.create_index(op.f("ix_model_artifacts_job_id"), "model_artifacts", ["job_id"])
    op.create_index(op.f("ix_model_artifacts_dataset_id"), "model_artifacts", ["dataset_id"])
    op.create_index(
        op.f("uq_model_artifacts_one_production_per_name"),
        "model_artifacts",
        ["name"],
        unique=True,
        sqlite_where=sa.text("stage = 'production'"),
        postgresql_where=sa.text("stage = 'production'"),
    )

    op.create_table(
        "run_metrics",
        sa.Column("id", AUTO_ID, autoincrement=True, nullable=False),
        sa.Column("job_id", ID, nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("name", ID, nullable=False),
        sa.Column("value", sa.Float(), nullable=False),
        _timestamp("created_at"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_run_metrics")),
        sa.ForeignKeyConstraint(
            ["job_id"], ["training_jobs.id"], name=op.f("fk_run_metrics_job_id_training_jobs")
        ),
    )
    op.create_index(
        op.f("uq_run_metrics_job_id_name_step"), "run_metrics", ["job_id", "name", "step"], unique=True
    )

    op.create_table(
        "stage_transitions",
        sa.Column("id", AUTO_ID, autoincrement=True, nullable=False),
        sa.Column("model_id", ID, nullable=False),
        sa.Column("from_stage", sa.String(16), nullable=True),
        sa.Column("to_stage", sa.String(16), nullable=False),
        sa.Column("actor", ID, nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        _timestamp("at"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_stage_transitions")),
        sa.ForeignKeyConstraint(
            ["model_id"], ["model_artifacts.id"], name=op.f("fk_stage_transitions_model_id_model_artifacts")
        ),
    )
    op.create_index(op.f("ix_stage_transitions_model_id"), "stage_transitions", ["model_id"])


def downgrade() -> None:
    """Drop every registry table (children first)."""
    op.drop_table("stage_transitions")
    op.drop_table("run_metrics")
    op.drop_table("model_artifacts")
    op.drop_table("training_jobs")
    op.drop_table("dataset_artifacts")
