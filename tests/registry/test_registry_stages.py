"""Stage transitions: the legal moves, the evaluation gate, one production model per name with the
previous one kept as a rollback target, and an audit log of every change."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import sqlalchemy as sa

from fineplat.errors import RegistryError
from fineplat.registry import DatasetArtifact, Job, ModelArtifact, Registry

DatasetFactory = Callable[..., DatasetArtifact]  # the add_dataset fixture (conftest.py)
JobFactory = Callable[..., Job]  # the add_job fixture (conftest.py)
ModelFactory = Callable[..., ModelArtifact]  # the add_model fixture (conftest.py)

STAGES = ("dev", "staging", "production", "archived")
# The specification, written out rather than imported from the code under test.
LEGAL = {
    ("dev", "staging"),
    ("staging", "production"),
    ("production", "staging"),  # rollback
    ("dev", "archived"),
    ("staging", "archived"),
    ("production", "archived"),
}
PATH_TO = {
    "dev": [],
    "staging": ["staging"],
    "production": ["staging", "production"],
    "archived": ["archived"],
}


@pytest.fixture
def job_registry(registry: Registry, add_dataset: DatasetFactory, add_job: JobFactory) -> Registry:
    add_dataset(registry)
    add_job(registry, "job-1")
    return registry


ModelInStage = Callable[..., ModelArtifact]


@pytest.fixture
def model_in(job_registry: Registry, add_model: ModelFactory) -> ModelInStage:
    """`model_in(stage, name=..., uri=...)`: a gated model moved to `stage` along the legal path."""

    def make(stage: str, name: str = "support-bot", uri: str = "file:///a") -> ModelArtifact:
        model = add_model(job_registry, name, uri=uri)
        for step in PATH_TO[stage]:
            model = job_registry.transition(model.id, step)
        assert model.stage == stage
        return model

    return make


def test_legal_transitions(job_registry: Registry, model_in: ModelInStage) -> None:
    for index, (from_stage, to_stage) in enumerate(sorted(LEGAL)):
        model = model_in(from_stage, uri=f"file:///legal-{index}")
        moved = job_registry.transition(model.id, to_stage, actor="alice", reason="looks good")
        assert (moved.stage, job_registry.get_model(model.id).stage) == (to_stage, to_stage), (
            from_stage,
            to_stage,
        )
        last = job_registry.stage_history(model.id)[-1]
        assert (last.from_stage, last.to_stage, last.actor, last.reason) == (
            from_stage,
            to_stage,
            "alice",
            "looks good",
        )


def test_illegal_transitions_are_refused(job_registry: Registry, model_in: ModelInStage) -> None:
    illegal = sorted({(a, b) for a in STAGES for b in STAGES} - LEGAL)
    assert len(illegal) == 10  # dev->production, same-stage moves, staging->dev, production->dev, archived->*
    models = {stage: model_in(stage, uri=f"file:///{stage}") for stage in STAGES}
    histories = {stage: job_registry.stage_history(model.id) for stage, model in models.items()}
    for from_stage, to_stage in illegal:
        model = models[from_stage]
        with pytest.raises(
            RegistryError, match=rf"cannot move from {from_stage} to {to_stage}; from {from_stage} it may"
        ):
            job_registry.transition(model.id, to_stage)
    for stage, model in models.items():
        assert job_registry.get_model(model.id).stage == stage
        assert job_registry.stage_history(model.id) == histories[stage]  # nothing logged


def test_archived_is_terminal_and_says_so(job_registry: Registry, model_in: ModelInStage) -> None:
    model = model_in("archived")
    with pytest.raises(RegistryError, match=r"it may move to nothing \(archived is final\)"):
        job_registry.transition(model.id, "dev")


def test_only_models_that_passed_the_gates_enter_staging_or_production(
    job_registry: Registry, add_model: ModelFactory
) -> None:
    model = add_model(job_registry, gates_passed=False, eval_results={"safety_violations": 3})
    with pytest.raises(
        RegistryError, match=r"did not pass its evaluation gates, so it cannot enter staging.*safety_viol"
    ):
        job_registry.transition(model.id, "staging")
    # A model that reached staging some other way is still stopped before production.
    with job_registry._engine.begin() as connection:
        connection.execute(
            sa.text("UPDATE model_artifacts SET stage = 'staging' WHERE id = :id"), {"id": model.id}
        )
    with pytest.raises(
        RegistryError, match=r"did not pass its evaluation gates, so it cannot enter production"
    ):
        job_registry.transition(model.id, "production")
    assert job_registry.transition(model.id, "archived").stage == "archived"  # archiving is never gated


def test_unknown_stage_is_refused(job_registry: Registry, add_model: ModelFactory) -> None:
    model = add_model(job_registry)
    with pytest.raises(
        RegistryError, match=r"to_stage must be one of dev, staging, production, archived; got 'live'"
    ):
        job_registry.transition(model.id, "live")


def test_promotion_demotes_the_previous_production_model_to_staging(
    job_registry: Registry, model_in: ModelInStage
) -> None:
    v1 = model_in("production", uri="file:///v1")
    other = model_in("production", name="sql-bot", uri="file:///s1")
    v2 = model_in("staging", uri="file:///v2")
    promoted = job_registry.transition(v2.id, "production", actor="alice")
    assert promoted.stage == "production"
    assert job_registry.get_model(v1.id).stage == "staging"  # rollback target, not archived
    assert job_registry.get_model(other.id).stage == "production"  # other names untouched
    demotion = job_registry.stage_history(v1.id)[-1]
    assert (demotion.from_stage, demotion.to_stage, demotion.actor) == ("production", "staging", "alice")
    assert demotion.reason == f"demoted: {v2.id} (support-bot v2) promoted to production"
    assert [m.id for m in job_registry.list_models(stage="production", name="support-bot")] == [v2.id]


def test_rollback_by_promoting_the_previous_version_again(
    job_registry: Registry, model_in: ModelInStage
) -> None:
    v1 = model_in("production", uri="file:///v1")
    v2 = model_in("staging", uri="file:///v2")
    job_registry.transition(v2.id, "production")
    job_registry.transition(v1.id, "production", reason="v2 regressed")
    assert (job_registry.get_model(v1.id).stage, job_registry.get_model(v2.id).stage) == (
        "production",
        "staging",
    )


def test_audit_log_records_every_change_in_order(job_registry: Registry, add_model: ModelFactory) -> None:
    model = add_model(job_registry)
    job_registry.transition(model.id, "staging", actor="ci", reason="gates passed")
    job_registry.transition(model.id, "production", actor="alice", reason="ticket 42")
    job_registry.transition(model.id, "staging", actor="bob", reason="latency regression")
    job_registry.transition(model.id, "archived", actor="bob", reason="superseded")
    history = job_registry.stage_history(model.id)
    assert [(c.from_stage, c.to_stage, c.actor, c.reason) for c in history] == [
        (None, "dev", "fineplat", "registered"),
        ("dev", "staging", "ci", "gates passed"),
        ("staging", "production", "alice", "ticket 42"),
        ("production", "staging", "bob", "latency regression"),
        ("staging", "archived", "bob", "superseded"),
    ]
    assert [c.at for c in history] == sorted(c.at for c in history)
    assert all(c.model_id == model.id for c in history)
