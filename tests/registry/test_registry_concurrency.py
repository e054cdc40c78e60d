"""Two Registry objects (as two processes or hosts would hold) on one database, used from several
threads at once: the database's constraints and locks, not luck, keep versions, ids and the
production stage consistent. PostgreSQL is the production case; SQLite (one writer at a time,
busy timeout) must hold up too, for parallel Dagster steps on the embedded default."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from fineplat.errors import RegistryError
from fineplat.registry import DatasetArtifact, Job, ModelArtifact, Registry

DatasetFactory = Callable[..., DatasetArtifact]  # the add_dataset fixture (conftest.py)
JobFactory = Callable[..., Job]  # the add_job fixture (conftest.py)
ModelFactory = Callable[..., ModelArtifact]  # the add_model fixture (conftest.py)

WORKERS = 6


def _race(registries: list[Registry], action: Callable[[Registry, int], Any], count: int) -> list[Any]:
    """Run `action(registry, i)` for i in range(count) at the same moment, alternating registries;
    returns each result or the RegistryError it raised."""
    barrier = threading.Barrier(count)

    def run(index: int) -> Any:
        barrier.wait()
        try:
            return action(registries[index % len(registries)], index)
        except RegistryError as error:
            return error

    with ThreadPoolExecutor(max_workers=count) as pool:
        return list(pool.map(run, range(count)))


@pytest.fixture
def two_registries(registry_url: str) -> Iterator[list[Registry]]:
    first, second = Registry(registry_url), Registry(registry_url)
    results = _race([first, second], lambda registry, _: registry.migrate(), 2)  # concurrent first migration
    assert results == ["0001", "0001"]
    yield [first, second]
    first.close()
    second.close()


def test_concurrent_registrations_get_distinct_versions(
    two_registries: list[Registry], add_dataset: DatasetFactory
) -> None:
    results = _race(two_registries, lambda registry, i: add_dataset(registry, dataset_id=f"ds-{i}"), WORKERS)
    assert sorted(dataset.version for dataset in results) == list(range(1, WORKERS + 1))
    same = _race(
        two_registries, lambda registry, _: add_dataset(registry, dataset_id="same-content"), WORKERS
    )
    assert {(d.id, d.version) for d in same} == {("same-content", WORKERS + 1)}  # one row, one version


def test_concurrent_model_registrations_get_distinct_versions(
    two_registries: list[Registry], add_dataset: DatasetFactory, add_job: JobFactory, add_model: ModelFactory
) -> None:
    add_dataset(two_registries[0])
    add_job(two_registries[0], "job-1")
    results = _race(two_registries, lambda registry, i: add_model(registry, uri=f"file:///v{i}"), WORKERS)
    assert sorted(model.version for model in results) == list(range(1, WORKERS + 1))
    assert len({model.serving_name for model in results}) == WORKERS


def test_concurrent_promotions_leave_exactly_one_production_model(
    two_registries: list[Registry], add_dataset: DatasetFactory, add_job: JobFactory, add_model: ModelFactory
) -> None:
    first, second = two_registries
    add_dataset(first)
    add_job(first, "job-1")
    models = [add_model(first, uri=f"file:///v{i}") for i in range(WORKERS)]
    for model in models:
        first.transition(model.id, "staging")

    results = _race(
        two_registries,
        lambda registry, i: registry.transition(models[i].id, "production", actor=f"w{i}"),
        WORKERS,
    )

    winners = [result for result in results if not isinstance(result, RegistryError)]
    assert winners, "at least one promotion succeeds"
    assert all("retry" in str(result) for result in results if isinstance(result, RegistryError))
    production = second.list_models(stage="production")
    assert len(production) == 1
    assert {m.stage for m in second.list_models()} == {"production", "staging"}
    # The audit log agrees with the outcome: every model that reached production and left it was demoted.
    for model in models:
        history = second.stage_history(model.id)
        assert history[-1].to_stage == second.get_model(model.id).stage
