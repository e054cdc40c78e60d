"""The model/dataset registry: datasets, training jobs, metrics, models, stages and lineage in one
SQL database (SQLite file by default, PostgreSQL in production), so every deployed adapter can be
traced back to its base model weights, dataset version, configuration and evaluation.

    from fineplat.registry import Registry
    registry = Registry("sqlite:///.fineplat/registry.db")
    registry.migrate()
    registry.lineage(model_id)
"""

from fineplat.registry.artifacts import DatasetArtifact, Job, Metric, ModelArtifact, StageChange
from fineplat.registry.models import JOB_STATUSES, MODEL_KINDS, MODEL_STAGES
from fineplat.registry.registry import (
    GATED_STAGES,
    LEGAL_TRANSITIONS,
    Registry,
    alembic_config,
    default_model_id,
    default_serving_name,
    head_revision,
)

__all__ = [
    "GATED_STAGES",
    "JOB_STATUSES",
    "LEGAL_TRANSITIONS",
    "MODEL_KINDS",
    "MODEL_STAGES",
    "DatasetArtifact",
    "Job",
    "Metric",
    "ModelArtifact",
    "Registry",
    "StageChange",
    "alembic_config",
    "default_model_id",
    "default_serving_name",
    "head_revision",
]
