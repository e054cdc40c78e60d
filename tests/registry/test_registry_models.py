"""Model registration: lineage is mandatory and consistent, versions count per name, re-registering
the same artifact is harmless, serving names are unique per version."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from fineplat.errors import RegistryError
from fineplat.registry import DatasetArtifact, Job, ModelArtifact, Registry, default_model_id

BASE_SHA = "b" * 64  # the factories' base model SHA (conftest.py)
OTHER_SHA = "c" * 64
DATASET_ID = "d" * 64  # the factories' dataset content hash (conftest.py)
DatasetFactory = Callable[..., DatasetArtifact]  # the add_dataset fixture (conftest.py)
JobFactory = Callable[..., Job]  # the add_job fixture (conftest.py)
ModelFactory = Callable[..., ModelArtifact]  # the add_model fixture (conftest.py)


@pytest.fixture
def job_registry(registry: Registry, add_dataset: DatasetFactory, add_job: JobFactory) -> Registry:
    """A registry with one dataset version and one job trained on it."""
    add_dataset(registry)
    add_job(registry, "job-1")
    return registry


def test_register_model_records_lineage_in_dev(job_registry: Registry, add_model: ModelFactory) -> None:
    model = add_model(job_registry, "support-bot")
    assert model == ModelArtifact(
        id=default_model_id(
            "support-bot",
            "job-1",
            BASE_SHA,
            DATASET_ID,
            "h" * 64,
            "lora",
            "file:///objects/adapters/support-bot-job-1",
        ),
        name="support-bot",
        version=1,
        job_id="job-1",
        base_model_sha=BASE_SHA,
        dataset_id=DATASET_ID,
        hparams_hash="h" * 64,
        kind="lora",
        uri="file:///objects/adapters/support-bot-job-1",
        stage="dev",
        eval_results={"holdout_loss": 1.25, "judge_win_rate": 0.61},
        gates_passed=True,
        serving_name="support-bot-v1",
        created_at=model.created_at,
        updated_at=model.updated_at,
    )
    assert job_registry.get_model(model.id) == model


def test_versions_count_per_model_name(job_registry: Registry, add_model: ModelFactory) -> None:
    models = [
        add_model(job_registry, "support-bot", uri="file:///a"),
        add_model(job_registry, "sql-bot", uri="file:///b"),
        add_model(job_registry, "support-bot", uri="file:///c"),
    ]
    assert [(m.name, m.version, m.serving_name) for m in models] == [
        ("support-bot", 1, "support-bot-v1"),
        ("sql-bot", 1, "sql-bot-v1"),
        ("support-bot", 2, "support-bot-v2"),
    ]


def test_model_without_lineage_is_rejected(job_registry: Registry, add_model: ModelFactory) -> None:
    for field in ("base_model_sha", "dataset_id"):
        for missing in (None, ""):
            lineage: dict[str, Any] = {field: missing}
            with pytest.raises(
                RegistryError, match=rf"{field} is required \(a non-empty string\), got {missing!r}"
            ):
                add_model(job_registry, **lineage)
    assert job_registry.list_models() == []


def test_model_needs_a_registered_dataset(job_registry: Registry, add_model: ModelFactory) -> None:
    with pytest.raises(RegistryError, match=r"dataset_id 'missing' is not registered; register the dataset"):
        add_model(job_registry, job_id=None, dataset_id="missing")


def test_model_must_agree_with_the_job_that_trained_it(
    job_registry: Registry, add_dataset: DatasetFactory, add_model: ModelFactory
) -> None:
    add_dataset(job_registry, dataset_id="e" * 64)
    with pytest.raises(RegistryError, match=r"dataset_id 'e+' differs from the dataset 'd+' of job 'job-1'"):
        add_model(job_registry, dataset_id="e" * 64)
    with pytest.raises(
        RegistryError, match=r"base_model_sha cccccccccccc… differs from bbbbbbbbbbbb… of job 'job-1'"
    ):
        add_model(job_registry, base_model_sha=OTHER_SHA)
    with pytest.raises(RegistryError, match=r"training job 'job-9' is not in the registry"):
        add_model(job_registry, job_id="job-9")


def test_model_without_a_job_is_allowed(job_registry: Registry, add_model: ModelFactory) -> None:
    model = add_model(job_registry, "imported", job_id=None, kind="full")
    assert (model.job_id, model.kind, model.version) == (None, "full", 1)


def test_unknown_kind_is_rejected(job_registry: Registry, add_model: ModelFactory) -> None:
    with pytest.raises(RegistryError, match=r"kind must be one of lora, full; got 'qlora'"):
        add_model(job_registry, kind="qlora")


def test_registering_the_same_artifact_again_returns_it(
    job_registry: Registry, add_model: ModelFactory
) -> None:
    first = add_model(job_registry)
    assert add_model(job_registry) == first
    assert [m.version for m in job_registry.list_models()] == [1]


def test_same_model_id_for_a_different_artifact_is_refused(
    job_registry: Registry, add_model: ModelFactory
) -> None:
    add_model(job_registry, model_id="adapter-1", uri="file:///a")
    with pytest.raises(RegistryError, match=r"model 'adapter-1' is already registered with different uri"):
        add_model(job_registry, model_id="adapter-1", uri="file:///b")


def test_reevaluation_updates_a_dev_model_but_not_a_promoted_one(
    job_registry: Registry, add_model: ModelFactory
) -> None:
    first = add_model(job_registry, gates_passed=False, eval_results={"judge_win_rate": 0.4})
    refreshed = add_model(job_registry, gates_passed=True, eval_results={"judge_win_rate": 0.7})
    assert (refreshed.id, refreshed.version) == (first.id, 1)
    assert (refreshed.gates_passed, refreshed.eval_results) == (True, {"judge_win_rate": 0.7})
    job_registry.transition(first.id, "staging")
    with pytest.raises(RegistryError, match=r"is in staging; its evaluation is frozen"):
        add_model(job_registry, gates_passed=True, eval_results={"judge_win_rate": 0.9})
    assert job_registry.get_model(first.id).eval_results == {"judge_win_rate": 0.7}


def test_serving_names_are_unique(job_registry: Registry, add_model: ModelFactory) -> None:
    add_model(job_registry, "support-bot", uri="file:///a", serving_name="support-bot-canary")
    with pytest.raises(RegistryError, match=r"serving_name 'support-bot-canary' is already used by model"):
        add_model(job_registry, "support-bot", uri="file:///b", serving_name="support-bot-canary")


def test_list_models_filters_by_stage_and_name(job_registry: Registry, add_model: ModelFactory) -> None:
    a1 = add_model(job_registry, "a", uri="file:///a1")
    a2 = add_model(job_registry, "a", uri="file:///a2")
    b1 = add_model(job_registry, "b", uri="file:///b1")
    job_registry.transition(a2.id, "staging")
    assert [m.id for m in job_registry.list_models()] == [a1.id, a2.id, b1.id]
    assert [m.id for m in job_registry.list_models(name="a")] == [a1.id, a2.id]
    assert [m.id for m in job_registry.list_models(stage="dev")] == [a1.id, b1.id]
    assert [m.id for m in job_registry.list_models(stage="staging", name="a")] == [a2.id]
    assert job_registry.list_models(stage="production") == []
    with pytest.raises(
        RegistryError, match=r"stage must be one of dev, staging, production, archived; got 'prod'"
    ):
        job_registry.list_models(stage="prod")


def test_unknown_model_is_a_registry_error(job_registry: Registry) -> None:
    with pytest.raises(
        RegistryError, match=r"model 'nope' is not in the registry .*`fineplat registry list`"
    ):
        job_registry.get_model("nope")
