"""The schema: migrations create exactly the ORM's tables, re-running them changes nothing, and the
database itself (not only the Python code) refuses rows without lineage."""

from __future__ import annotations

import tomllib
from collections.abc import Callable
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from setuptools import find_namespace_packages

from fineplat.errors import RegistryError
from fineplat.registry import DatasetArtifact, Job, ModelArtifact, Registry, head_revision
from fineplat.registry.models import VERSION_TABLE, Base

BASE_SHA = "b" * 64  # the factories' base model SHA (conftest.py)
DATASET_ID = "d" * 64  # the factories' dataset content hash (conftest.py)
DatasetFactory = Callable[..., DatasetArtifact]  # the add_dataset fixture (conftest.py)
JobFactory = Callable[..., Job]  # the add_job fixture (conftest.py)
ModelFactory = Callable[..., ModelArtifact]  # the add_model fixture (conftest.py)

REPO_ROOT = Path(__file__).resolve().parents[2]
TABLES = {"dataset_artifacts", "training_jobs", "model_artifacts", "run_metrics", "stage_transitions"}


def test_migrate_creates_every_table_on_an_empty_database(registry_url: str) -> None:
    registry = Registry(registry_url)
    assert registry.schema_revision() is None
    assert registry.migrate() == head_revision() == "0001"
    tables = set(sa.inspect(sa.create_engine(registry_url)).get_table_names())
    assert tables == TABLES | {VERSION_TABLE}
    registry.close()


def test_migrate_is_idempotent_and_keeps_data(
    registry: Registry, registry_url: str, add_dataset: DatasetFactory
) -> None:
    add_dataset(registry)
    assert registry.migrate() == "0001"
    assert Registry(registry_url).migrate() == "0001"
    engine = sa.create_engine(registry_url)
    with engine.connect() as connection:
        assert connection.execute(sa.text(f"SELECT version_num FROM {VERSION_TABLE}")).scalars().all() == [
            "0001"
        ]
        assert connection.execute(sa.text("SELECT count(*) FROM dataset_artifacts")).scalar_one() == 1
    engine.dispose()


def test_orm_models_and_migrations_have_no_drift(registry: Registry, registry_url: str) -> None:
    engine = sa.create_engine(registry_url)
    with engine.connect() as connection:
        context = MigrationContext.configure(
            connection, opts={"compare_type": True, "version_table": VERSION_TABLE}
        )
        assert compare_metadata(context, Base.metadata) == []
        # The comparison can fail: a column the migration lacks is reported.
        drifted = sa.MetaData()
        for table in Base.metadata.sorted_tables:
            table.to_metadata(drifted)
        drifted.tables["model_artifacts"].append_column(sa.Column("notes", sa.Text()))
        assert [diff[0] for diff in compare_metadata(context, drifted)] == ["add_column"]
    engine.dispose()


def test_check_constraints_match_the_models(registry: Registry, registry_url: str) -> None:
    # Autogenerate ignores CHECK constraints, so their names are compared here.
    inspector = sa.inspect(sa.create_engine(registry_url))
    for table in Base.metadata.sorted_tables:
        expected = sorted(
            str(constraint.name)
            for constraint in table.constraints
            if isinstance(constraint, sa.CheckConstraint)
        )
        assert sorted(str(check["name"]) for check in inspector.get_check_constraints(table.name)) == expected
    assert inspector.get_check_constraints("model_artifacts")  # not vacuous: stage and kind are checked


def test_unmigrated_database_gives_an_instruction(registry_url: str) -> None:
    registry = Registry(registry_url)
    with pytest.raises(
        RegistryError, match=r"schema revision none \(empty database\).*call Registry.migrate\(\)"
    ):
        registry.list_models()
    registry.close()


def test_database_rejects_a_model_without_lineage(
    registry: Registry, registry_url: str, add_dataset: DatasetFactory
) -> None:
    add_dataset(registry)
    for column in ("base_model_sha", "dataset_id"):
        _assert_not_null_enforced(registry_url, column)


def _assert_not_null_enforced(registry_url: str, column: str) -> None:
    """A raw INSERT (no fineplat code involved) without `column` fails; with it, succeeds."""
    values = {
        "id": f"m-{column}",
        "name": f"support-bot-{column}",
        "version": 1,
        "base_model_sha": BASE_SHA,
        "dataset_id": DATASET_ID,
        "hparams_hash": "h",
        "kind": "lora",
        "uri": "file:///a",
        "eval_results": "{}",
        "gates_passed": False,
    }
    values[column] = None
    insert = sa.text(
        "INSERT INTO model_artifacts (id, name, version, base_model_sha, dataset_id, hparams_hash, kind, uri, "
        "eval_results, gates_passed) VALUES (:id, :name, :version, :base_model_sha, :dataset_id, :hparams_hash, "
        ":kind, :uri, :eval_results, :gates_passed)"
    )
    engine = sa.create_engine(registry_url)
    not_null = rf"(?i)not[ -]null.*{column}|{column}.*not[ -]null"
    with pytest.raises(sa.exc.IntegrityError, match=not_null), engine.begin() as connection:
        connection.execute(insert, values)
    values[column] = BASE_SHA if column == "base_model_sha" else DATASET_ID
    with engine.begin() as connection:  # the same row with the value present is accepted
        connection.execute(insert, values)
    engine.dispose()


def test_database_rejects_a_model_whose_dataset_is_not_registered(
    registry: Registry, add_dataset: DatasetFactory
) -> None:
    # Through the registry's own engine: on SQLite, foreign keys need the per-connection pragma it sets.
    add_dataset(registry)
    insert = sa.text(
        "INSERT INTO model_artifacts (id, name, version, base_model_sha, dataset_id, hparams_hash, kind, uri, "
        "eval_results, gates_passed) VALUES ('m1', 'x', 1, 'sha', 'no-such-dataset', 'h', 'lora', 'file:///a', "
        "'{}', false)"
    )
    with (
        pytest.raises(sa.exc.IntegrityError, match=r"(?i)foreign key"),
        registry._engine.begin() as connection,
    ):
        connection.execute(insert)


def test_database_allows_one_production_model_per_name(
    registry: Registry, add_dataset: DatasetFactory, add_job: JobFactory, add_model: ModelFactory
) -> None:
    add_dataset(registry)
    add_job(registry)
    first = add_model(registry, uri="file:///v1")
    second = add_model(registry, uri="file:///v2")
    update = sa.text("UPDATE model_artifacts SET stage = 'production' WHERE id = :id")
    with registry._engine.begin() as connection:
        connection.execute(update, {"id": first.id})
    with pytest.raises(sa.exc.IntegrityError, match=r"(?i)unique"), registry._engine.begin() as connection:
        connection.execute(update, {"id": second.id})


def test_database_rejects_an_unknown_stage(
    registry: Registry, add_dataset: DatasetFactory, add_job: JobFactory, add_model: ModelFactory
) -> None:
    add_dataset(registry)
    add_job(registry)
    model = add_model(registry)
    update = sa.text("UPDATE model_artifacts SET stage = 'canary' WHERE id = :id")
    with (
        pytest.raises(sa.exc.IntegrityError, match=r"(?i)check constraint"),
        registry._engine.begin() as connection,
    ):
        connection.execute(update, {"id": model.id})


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("not a url", r"'not a url' is not a database URL; expected sqlite:///"),
        ("mysql+pymysql://u:secret@host/db", r"'mysql\+pymysql://u:\*\*\*@host/db' uses 'mysql'"),
    ],
)
def test_bad_url_is_a_registry_error_without_the_password(url: str, message: str) -> None:
    with pytest.raises(RegistryError, match=message):
        Registry(url)


def test_sqlite_parent_directory_is_created(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'fresh_home' / 'registry.db'}"
    with Registry(url) as registry:
        registry.migrate()
    assert (tmp_path / "fresh_home" / "registry.db").is_file()


def test_migrations_ship_in_the_package() -> None:
    # setuptools' own discovery with the include list of pyproject.toml, as the wheel build uses it.
    config = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    packages = find_namespace_packages(str(REPO_ROOT), include=config["packages"]["find"]["include"])
    assert {
        "fineplat.registry",
        "fineplat.registry.migrations",
        "fineplat.registry.migrations.versions",
    } <= set(packages)
    assert "*.mako" in config["package-data"]["*"]  # script.py.mako, used by `alembic revision`
    migrations = REPO_ROOT / "fineplat" / "registry" / "migrations"
    assert (migrations / "env.py").is_file() and (migrations / "script.py.mako").is_file()
    assert (migrations / "versions" / "0001_initial.py").is_file()
