"""The model/dataset registry: the one place that says which dataset version and base model a model
came from, how it scored, and which stage it is in. Dagster assets write to it, the promotion
sensor and the serving pool read from it, an auditor reads its lineage.

One code path for the embedded SQLite file and production PostgreSQL (chosen by URL). Rules that
must hold under concurrency (one version number per name, one production model per name, one row
per dataset content hash) are enforced by the database's unique constraints; the code retries or
reports a clear `RegistryError` when it loses a race, so two processes or hosts can share one
database.

Stage rules (what a user of a model registry expects, cf. MLflow's "archive existing versions"):

    dev -> staging -> production ; production -> staging (rollback) ; any -> archived (terminal)

Only models whose evaluation gates passed may enter staging or production. Promoting a model to
production demotes the current production model of the same name to *staging*, not archived:
it stays a one-step rollback target (`transition(old_id, "production")`) until someone archives
it. Every change, including such a demotion and the registration itself, is in the audit log.
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
import sqlite3
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy.dialects import postgresql as postgresql_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.orm import Session, sessionmaker

from fineplat.errors import RegistryError
from fineplat.hashing import hash_json
from fineplat.registry.artifacts import DatasetArtifact, Job, Metric, ModelArtifact, StageChange
from fineplat.registry.models import (
    JOB_STATUSES,
    MODEL_KINDS,
    MODEL_STAGES,
    VERSION_TABLE,
    Base,
    DatasetArtifactRow,
    ModelArtifactRow,
    RunMetricRow,
    StageTransitionRow,
    TrainingJobRow,
    utcnow,
)
from fineplat.training.config import run_identity

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
SUPPORTED_BACKENDS = ("sqlite", "postgresql")
# SQLite lets one writer in at a time; others wait this long (e.g. two Dagster step processes
# logging metrics) before "database is locked". pysqlite's own default is 5 s.
SQLITE_BUSY_TIMEOUT_S = 30.0
# Key for pg_advisory_xact_lock: processes migrating one PostgreSQL database at once take turns
# instead of racing to create the same tables. Arbitrary; it is b"fineplat" read as an integer.
MIGRATION_LOCK_KEY = int.from_bytes(b"fineplat", "big")
# How often an insert that lost the race for the next version number of a name is retried. On
# PostgreSQL an advisory lock per name serializes registrations, so this only backs up SQLite
# (one writer at a time, but the version is read before the write lock is taken).
VERSION_RACE_RETRIES = 10

LEGAL_TRANSITIONS: dict[str, frozenset[str]] = {
    "dev": frozenset({"staging", "archived"}),
    "staging": frozenset({"production", "archived"}),
    "production": frozenset({"staging", "archived"}),  # production -> staging is the rollback
    "archived": frozenset(),  # terminal: an archived model is never served again
}
GATED_STAGES = frozenset({"staging", "production"})
UPDATABLE_JOB_FIELDS = ("status", "attempts", "current_step", "error", "dagster_run_id", "mlflow_run_id")
REGISTRATION_REASON = "registered"
# The frozen snapshots the registry hands out (fineplat.registry.artifacts), one per table.
ArtifactT = TypeVar("ArtifactT", DatasetArtifact, Job, Metric, ModelArtifact, StageChange)


def alembic_config(url: str) -> Config:
    """An Alembic configuration for the registry's migrations without any alembic.ini, so the
    installed package migrates itself and a developer can still run `command.revision(...)`."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    # ConfigParser interpolation would read '%' in a URL-encoded password as a placeholder.
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


@cache
def head_revision() -> str:
    """The newest migration revision this version of fineplat ships."""
    head = ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()
    if head is None:
        raise RegistryError(f"no migrations found in {MIGRATIONS_DIR}; the fineplat install is incomplete")
    return head


def default_model_id(
    name: str,
    job_id: str | None,
    base_model_sha: str,
    dataset_id: str,
    hparams_hash: str,
    kind: str,
    uri: str,
) -> str:
    """A model id derived from what the model is, so re-registering the same artifact (a retried
    Dagster step) finds the existing row instead of creating a new version."""
    return hash_json(
        {
            "name": name,
            "job_id": job_id,
            "base_model_sha": base_model_sha,
            "dataset_id": dataset_id,
            "hparams_hash": hparams_hash,
            "kind": kind,
            "uri": uri,
        }
    )


def default_serving_name(name: str, version: int) -> str:
    """The adapter name in the serving pool: unique per version, because vLLM serves a stale cached
    adapter when a name is reloaded with new weights."""
    return f"{name}-v{version}"


# ---------------------------------------------------------------------------------------------
# Input validation: every message names the field, the value, what was expected and what to do.


def _require_text(field: str, value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise RegistryError(f"{field} is required (a non-empty string), got {value!r}; pass the {field}")
    return value


def _require_count(field: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise RegistryError(f"{field} must be a non-negative integer, got {value!r}")
    return value


def _require_choice(field: str, value: object, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise RegistryError(f"{field} must be one of {', '.join(choices)}; got {value!r}")
    return str(value)


def _json_object(field: str, value: Mapping[str, Any] | None) -> dict[str, Any]:
    """A JSON round trip of `value`: what is stored is exactly what is read back, on both backends
    (PostgreSQL's JSON type rejects NaN, so it is rejected here for both)."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise RegistryError(f"{field} must be a JSON object (a dict), got {type(value).__name__}")
    try:
        return dict(json.loads(json.dumps(dict(value), default=str, allow_nan=False)))
    except ValueError as exc:
        raise RegistryError(
            f"{field} contains NaN or infinity, which JSON cannot store; replace it with null or a string"
        ) from exc


def _utc(moment: datetime) -> datetime:
    """SQLite returns naive datetimes (written as UTC); PostgreSQL returns them in the session's zone."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _snapshot(artifact: type[ArtifactT], row: Base) -> ArtifactT:
    """The frozen artifact of an ORM row, copied field by field by name, so one mapper serves every
    table and a column added to both the row and the artifact needs no mapping code. Timestamps
    come back in UTC whichever backend stored them; JSON columns are copied so the snapshot shares
    no mutable state with the session that loaded it."""
    values: dict[str, Any] = {}
    for field in dataclasses.fields(artifact):
        value = getattr(row, field.name)
        if isinstance(value, datetime):
            value = _utc(value)
        elif isinstance(value, dict):
            value = dict(value)
        values[field.name] = value
    return artifact(**values)


def _configure_sqlite_connection(dbapi_connection: Any, _record: Any) -> None:
    """Per-connection SQLite settings. Foreign keys: SQLite ignores FOREIGN KEY clauses without
    this pragma. WAL journal with synchronous=NORMAL: a commit appends to the log instead of
    syncing a rollback journal (a 4-metric `log_metrics` call: 17 ms -> 1.3 ms on the dev machine), readers
    no longer wait for writers, and only a power loss (not a crash) can drop the last commits."""
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
    except sqlite3.OperationalError as exc:
        # Another fineplat connection is creating the database file this instant (switching an
        # empty file needs its lock, without waiting). That connection already asked for WAL, and
        # the mode is stored in the file, so this connection follows once the file is written.
        if "locked" not in str(exc):
            raise
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


class Registry:
    """The registry over one database URL (`sqlite:///path/registry.db` or
    `postgresql+psycopg2://user@host/db`). Call `migrate()` once before use; every method opens
    and closes its own short transaction and returns frozen snapshots, so one `Registry` may be
    shared by threads and many `Registry` objects (processes, hosts) may share one database."""

    def __init__(self, url: str) -> None:
        try:
            parsed = sa.make_url(url)
        except sa.exc.ArgumentError as exc:
            raise RegistryError(
                f"registry URL {url!r} is not a database URL; expected sqlite:///path/to/registry.db "
                "or postgresql+psycopg2://user:password@host:5432/dbname"
            ) from exc
        backend = parsed.get_backend_name()
        if backend not in SUPPORTED_BACKENDS:
            raise RegistryError(
                f"registry URL {parsed.render_as_string(hide_password=True)!r} uses {backend!r}; the registry "
                f"supports {' and '.join(SUPPORTED_BACKENDS)} only"
            )
        self.url = parsed.render_as_string(hide_password=True)
        self._backend = backend
        connect_args: dict[str, Any] = {}
        if backend == "sqlite":
            connect_args["timeout"] = SQLITE_BUSY_TIMEOUT_S
            if parsed.database and parsed.database != ":memory:":
                Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        self._engine = sa.create_engine(
            parsed, connect_args=connect_args, pool_pre_ping=backend == "postgresql"
        )
        if backend == "sqlite":
            sa.event.listen(self._engine, "connect", _configure_sqlite_connection)
        self._sessions = sessionmaker(self._engine, expire_on_commit=False)
        self._schema_ready = False

    def __repr__(self) -> str:
        return f"Registry({self.url!r})"

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close pooled connections (a Registry is cheap to recreate; the data stays in the database)."""
        self._engine.dispose()

    # -- schema --------------------------------------------------------------------------------

    def migrate(self) -> str:
        """Bring the database schema to the newest revision (creating every table on an empty
        database); idempotent and safe to call from several processes at once. Returns the revision."""
        config = alembic_config(self._engine.url.render_as_string(hide_password=False))
        try:
            with self._engine.begin() as connection:
                if self._backend == "postgresql":
                    connection.execute(
                        sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY}
                    )
                else:
                    # Take SQLite's write lock before Alembic reads the revision: parallel Dagster step
                    # processes on a fresh FINEPLAT_HOME then migrate one after another, and the whole
                    # migration commits atomically (SQLite DDL is transactional).
                    connection.exec_driver_sql("BEGIN IMMEDIATE")
                config.attributes["connection"] = connection
                command.upgrade(config, "head")
        except CommandError as exc:
            raise RegistryError(
                f"cannot migrate registry database {self.url}: {exc}. The database was probably migrated by a "
                "newer fineplat; upgrade fineplat to at least that version"
            ) from exc
        self._schema_ready = True
        return head_revision()

    def schema_revision(self) -> str | None:
        """The migration revision the database is at (None for an empty database)."""
        with self._engine.connect() as connection:
            revision: str | None = MigrationContext.configure(
                connection, opts={"version_table": VERSION_TABLE}
            ).get_current_revision()
            return revision

    def _require_schema(self) -> None:
        """Fail with an instruction instead of 'no such table' when the database is not migrated."""
        if self._schema_ready:
            return
        current = self.schema_revision()
        if current != head_revision():
            raise RegistryError(
                f"registry database {self.url} is at schema revision {current or 'none (empty database)'}, "
                f"this fineplat needs {head_revision()}; call Registry.migrate() first (the Dagster "
                "RegistryResource and the `fineplat registry` CLI do that for you)"
            )
        self._schema_ready = True

    @contextmanager
    def _session(self) -> Iterator[Session]:
        self._require_schema()
        with self._sessions() as session:
            yield session

    # -- datasets ------------------------------------------------------------------------------

    def register_dataset(
        self,
        dataset_id: str,
        name: str,
        uri: str,
        *,
        row_count: int,
        schema_kind: str,
        token_count: int = 0,
        dedup_removed: int = 0,
        contamination_flagged: int = 0,
        quarantined: int = 0,
        report: Mapping[str, Any] | None = None,
    ) -> DatasetArtifact:
        """Record a dataset version under `name`, numbered 1, 2, 3 per name. `dataset_id` is the
        content hash: registering the same content again returns the existing row unchanged (no
        new version), so retried materializations are harmless."""
        _require_text("dataset_id", dataset_id)
        _require_text("name", name)
        _require_text("uri", uri)
        _require_text("schema_kind", schema_kind)
        counts = {
            "row_count": _require_count("row_count", row_count),
            "token_count": _require_count("token_count", token_count),
            "dedup_removed": _require_count("dedup_removed", dedup_removed),
            "contamination_flagged": _require_count("contamination_flagged", contamination_flagged),
            "quarantined": _require_count("quarantined", quarantined),
        }
        report_json = _json_object("report", report)
        last_error: Exception | None = None
        for _attempt in range(VERSION_RACE_RETRIES):
            with self._session() as session:
                self._lock_name(session, DatasetArtifactRow.__tablename__, name)
                existing = session.get(DatasetArtifactRow, dataset_id)
                if existing is not None:
                    return _snapshot(DatasetArtifact, existing)
                row = DatasetArtifactRow(
                    id=dataset_id,
                    name=name,
                    version=self._next_version(session, DatasetArtifactRow, name),
                    uri=uri,
                    schema_kind=schema_kind,
                    report=report_json,
                    **counts,
                )
                session.add(row)
                try:
                    session.commit()
                except sa.exc.IntegrityError as exc:  # another process took this id or version first
                    session.rollback()
                    last_error = exc
                    continue
                return _snapshot(DatasetArtifact, row)
        raise RegistryError(
            f"could not register dataset {dataset_id!r} as a new version of {name!r}: concurrent registrations "
            f"won the race for the next version number {VERSION_RACE_RETRIES} times ({last_error}); retry"
        )

    def get_dataset(self, dataset_id: str) -> DatasetArtifact:
        """The dataset version with this content hash; RegistryError if it was never registered."""
        with self._session() as session:
            row = session.get(DatasetArtifactRow, dataset_id)
            if row is None:
                raise RegistryError(
                    f"dataset {dataset_id!r} is not registered in {self.url}; register it with register_dataset"
                )
            return _snapshot(DatasetArtifact, row)

    def _next_version(
        self, session: Session, table: type[DatasetArtifactRow] | type[ModelArtifactRow], name: str
    ) -> int:
        """One more than the highest version of `name`. Callers hold `_lock_name` for it first, so
        on PostgreSQL concurrent registrations of one name queue instead of colliding; on SQLite
        the unique constraint settles a race and the caller retries."""
        highest = session.scalar(sa.select(sa.func.max(table.version)).where(table.name == name))
        return (highest or 0) + 1

    def _lock_name(self, session: Session, table: str, name: str) -> None:
        """Transaction-scoped PostgreSQL advisory lock on one name of one table (released at commit)."""
        if self._backend == "postgresql":
            key = int.from_bytes(bytes.fromhex(hash_json([table, name])[:16]), "big", signed=True)
            session.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})

    # -- training jobs -------------------------------------------------------------------------

    def create_job(
        self,
        job_id: str,
        *,
        method: str,
        base_model: str,
        base_model_sha: str,
        dataset_id: str,
        config: Mapping[str, Any],
        status: str = "queued",
        dagster_run_id: str | None = None,
        mlflow_run_id: str | None = None,
    ) -> Job:
        """Record a new training job. Its `run_identity` (fineplat.training.config.run_identity)
        names the run.
        Creating the same job id with the same run identity again returns the existing job (a
        retried step); a different identity under an existing id is a RegistryError."""
        _require_text("job_id", job_id)
        _require_text("method", method)
        _require_text("base_model", base_model)
        _require_text("base_model_sha", base_model_sha)
        _require_text("dataset_id", dataset_id)
        _require_choice("status", status, JOB_STATUSES)
        config_json = _json_object("config", config)
        identity = run_identity(method, config_json, base_model_sha, dataset_id)
        with self._session() as session:
            existing = session.get(TrainingJobRow, job_id)
            if existing is None:
                if session.get(DatasetArtifactRow, dataset_id) is None:
                    raise RegistryError(
                        f"job {job_id!r}: dataset_id {dataset_id!r} is not registered; register the dataset "
                        "version first (register_dataset)"
                    )
                row = TrainingJobRow(
                    id=job_id,
                    method=method,
                    base_model=base_model,
                    base_model_sha=base_model_sha,
                    dataset_id=dataset_id,
                    config=config_json,
                    run_identity=identity,
                    status=status,
                    attempts=0,
                    current_step=0,
                    dagster_run_id=dagster_run_id,
                    mlflow_run_id=mlflow_run_id,
                )
                session.add(row)
                try:
                    session.commit()
                    return _snapshot(Job, row)
                except sa.exc.IntegrityError:  # created concurrently under the same id
                    session.rollback()
                    existing = session.get(TrainingJobRow, job_id)
                    if existing is None:
                        raise
            if existing.run_identity != identity:
                raise RegistryError(
                    f"job {job_id!r} already exists with a different run identity "
                    f"({existing.run_identity[:12]}…, new {identity[:12]}…); submit the new configuration "
                    "under a new job id"
                )
            return _snapshot(Job, existing)

    def get_job(self, job_id: str) -> Job:
        """The job with this id; RegistryError if there is none."""
        with self._session() as session:
            return _snapshot(Job, self._job_row(session, job_id))

    def _job_row(self, session: Session, job_id: str) -> TrainingJobRow:
        row = session.get(TrainingJobRow, job_id)
        if row is None:
            raise RegistryError(
                f"training job {job_id!r} is not in the registry {self.url}; check the job id"
            )
        return row

    def find_succeeded_job(self, identity: str) -> Job | None:
        """The most recent succeeded job with this run identity, whose result a new identical
        submission can reuse instead of training again; None if there is none."""
        with self._session() as session:
            row = session.scalars(
                sa.select(TrainingJobRow)
                .where(TrainingJobRow.run_identity == identity, TrainingJobRow.status == "succeeded")
                .order_by(TrainingJobRow.updated_at.desc(), TrainingJobRow.id)
                .limit(1)
            ).first()
            return None if row is None else _snapshot(Job, row)

    def update_job(self, job_id: str, **fields: Any) -> Job:
        """Change a job's progress fields: status (one of JOB_STATUSES), attempts, current_step,
        error, dagster_run_id, mlflow_run_id. What identifies the run cannot change."""
        unknown = sorted(set(fields) - set(UPDATABLE_JOB_FIELDS))
        if unknown:
            raise RegistryError(
                f"update_job({job_id!r}): cannot update {', '.join(unknown)}; updatable fields are "
                f"{', '.join(UPDATABLE_JOB_FIELDS)}"
            )
        if "status" in fields:
            _require_choice("status", fields["status"], JOB_STATUSES)
        for field in ("attempts", "current_step"):
            if field in fields:
                _require_count(field, fields[field])
        for field in ("error", "dagster_run_id", "mlflow_run_id"):
            if field in fields and fields[field] is not None and not isinstance(fields[field], str):
                raise RegistryError(f"{field} must be a string or None, got {type(fields[field]).__name__}")
        with self._session() as session:
            row = self._job_row(session, job_id)
            for field, value in fields.items():
                setattr(row, field, value)
            row.updated_at = utcnow()
            session.commit()
            return _snapshot(Job, row)

    # -- metrics -------------------------------------------------------------------------------

    def log_metrics(self, job_id: str, step: int, metrics: Mapping[str, float]) -> None:
        """Record scalars for one training step in one multi-row statement (cheap enough to call
        every step). Logging a step again (a job resumed from an earlier checkpoint) replaces
        the earlier values. Values must be finite: a NaN loss is a TrainingError for the trainer
        to raise, not a number to chart."""
        _require_count("step", step)
        if not metrics:
            return
        now = utcnow()
        rows: list[dict[str, Any]] = []
        for name, value in metrics.items():
            _require_text("metric name", name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
                raise RegistryError(
                    f"job {job_id!r} step {step}: metric {name!r} must be a finite number, got {value!r}"
                )
            rows.append(
                {"job_id": job_id, "step": step, "name": name, "value": float(value), "created_at": now}
            )
        self._require_schema()
        dialect = postgresql_dialect if self._backend == "postgresql" else sqlite_dialect
        insert = dialect.insert(RunMetricRow)
        upsert = insert.on_conflict_do_update(
            index_elements=["job_id", "name", "step"],
            set_={"value": insert.excluded.value, "created_at": insert.excluded.created_at},
        )
        try:
            with self._engine.begin() as connection:
                if self._backend == "postgresql":
                    # Metrics are telemetry: not waiting for the WAL flush turns a 17.6 ms call into 3-4 ms
                    # (measured on the dev machine); a crash can lose the last fraction of a second, never
                    # corrupt anything (PostgreSQL docs, "Asynchronous Commit").
                    connection.exec_driver_sql("SET LOCAL synchronous_commit TO OFF")
                connection.execute(upsert, rows)
        except sa.exc.IntegrityError as exc:
            with self._session() as session:
                self._job_row(session, job_id)  # raises the clear error for an unknown job
            raise RegistryError(f"job {job_id!r} step {step}: could not store metrics: {exc.orig}") from exc

    def metrics(self, job_id: str, name: str | None = None) -> list[Metric]:
        """A job's metrics ordered by name then step (one metric's curve when `name` is given)."""
        with self._session() as session:
            self._job_row(session, job_id)
            query = sa.select(RunMetricRow).where(RunMetricRow.job_id == job_id)
            if name is not None:
                query = query.where(RunMetricRow.name == name)
            rows = session.scalars(query.order_by(RunMetricRow.name, RunMetricRow.step)).all()
            return [_snapshot(Metric, row) for row in rows]

    # -- models --------------------------------------------------------------------------------

    def register_model(
        self,
        *,
        name: str,
        base_model_sha: str,
        dataset_id: str,
        hparams_hash: str,
        kind: str,
        uri: str,
        job_id: str | None = None,
        eval_results: Mapping[str, Any] | None = None,
        gates_passed: bool = False,
        model_id: str | None = None,
        serving_name: str | None = None,
        actor: str = "fineplat",
    ) -> ModelArtifact:
        """Record a trained model or adapter as the next version of `name`, in stage `dev`.

        Lineage is mandatory: `base_model_sha` and a registered `dataset_id` are required (the
        database enforces it too), and when `job_id` is given its dataset and base model must
        match. `model_id` defaults to a hash of what the model is, so re-registering the same
        artifact returns the existing row; a re-registration may refresh `eval_results` and
        `gates_passed` while the model is still in dev (after promotion they are frozen, since
        the promotion was decided on them). `serving_name` defaults to `<name>-v<version>`."""
        _require_text("name", name)
        _require_text("base_model_sha", base_model_sha)
        _require_text("dataset_id", dataset_id)
        _require_text("hparams_hash", hparams_hash)
        _require_text("uri", uri)
        _require_text("actor", actor)
        _require_choice("kind", kind, MODEL_KINDS)
        if job_id is not None:
            _require_text("job_id", job_id)
        if serving_name is not None:
            _require_text("serving_name", serving_name)
        evaluation = _json_object("eval_results", eval_results)
        identity: dict[str, Any] = {
            "name": name,
            "job_id": job_id,
            "base_model_sha": base_model_sha,
            "dataset_id": dataset_id,
            "hparams_hash": hparams_hash,
            "kind": kind,
            "uri": uri,
        }
        model_id = model_id or default_model_id(
            name, job_id, base_model_sha, dataset_id, hparams_hash, kind, uri
        )
        last_error: Exception | None = None
        for _attempt in range(VERSION_RACE_RETRIES):
            with self._session() as session:
                self._lock_name(session, ModelArtifactRow.__tablename__, name)
                existing = session.get(ModelArtifactRow, model_id)
                if existing is not None:
                    wanted = identity if serving_name is None else {**identity, "serving_name": serving_name}
                    return self._reregister(session, existing, wanted, evaluation, bool(gates_passed))
                self._check_lineage(session, model_id, job_id, base_model_sha, dataset_id)
                version = self._next_version(session, ModelArtifactRow, name)
                serving = serving_name or default_serving_name(name, version)
                if serving_name is not None:  # a default name taken meanwhile is a lost race: retried
                    taken = session.scalar(
                        sa.select(ModelArtifactRow.id).where(ModelArtifactRow.serving_name == serving_name)
                    )
                    if taken is not None:
                        raise RegistryError(
                            f"serving_name {serving_name!r} is already used by model {taken!r}; serving names are "
                            "unique per version (vLLM caches adapters by name), choose another"
                        )
                row = ModelArtifactRow(
                    id=model_id,
                    version=version,
                    stage="dev",
                    eval_results=evaluation,
                    gates_passed=bool(gates_passed),
                    serving_name=serving,
                    **identity,
                )
                session.add(row)
                try:
                    session.flush()
                    session.add(
                        StageTransitionRow(
                            model_id=model_id,
                            from_stage=None,
                            to_stage="dev",
                            actor=actor,
                            reason=REGISTRATION_REASON,
                        )
                    )
                    session.commit()
                except sa.exc.IntegrityError as exc:  # lost a race for the id, version or serving name
                    session.rollback()
                    last_error = exc
                    continue
                return _snapshot(ModelArtifact, row)
        raise RegistryError(
            f"could not register model {model_id!r} as a new version of {name!r}: concurrent registrations won "
            f"the race {VERSION_RACE_RETRIES} times ({last_error}); retry"
        )

    def _check_lineage(
        self, session: Session, model_id: str, job_id: str | None, base_model_sha: str, dataset_id: str
    ) -> None:
        """A model must point at a registered dataset, and agree with the job that trained it."""
        if session.get(DatasetArtifactRow, dataset_id) is None:
            raise RegistryError(
                f"model {model_id!r}: dataset_id {dataset_id!r} is not registered; register the dataset version "
                "first (register_dataset)"
            )
        if job_id is None:
            return
        job = self._job_row(session, job_id)
        if job.dataset_id != dataset_id:
            raise RegistryError(
                f"model {model_id!r}: dataset_id {dataset_id!r} differs from the dataset {job.dataset_id!r} of job "
                f"{job_id!r} that trained it; pass the job's dataset id"
            )
        if job.base_model_sha != base_model_sha:
            raise RegistryError(
                f"model {model_id!r}: base_model_sha {base_model_sha[:12]}… differs from {job.base_model_sha[:12]}… "
                f"of job {job_id!r} that trained it; pass the job's base model SHA"
            )

    def _reregister(
        self,
        session: Session,
        row: ModelArtifactRow,
        identity: dict[str, Any],
        evaluation: dict[str, Any],
        gates_passed: bool,
    ) -> ModelArtifact:
        """Registering an existing model id again: same artifact, possibly a fresh evaluation."""
        differing = sorted(field for field, value in identity.items() if getattr(row, field) != value)
        if differing:
            raise RegistryError(
                f"model {row.id!r} is already registered with different {', '.join(differing)}; a model id "
                "names one artifact, register the new one under another id (or leave model_id unset)"
            )
        if row.eval_results == evaluation and bool(row.gates_passed) == gates_passed:
            return _snapshot(ModelArtifact, row)
        if row.stage != "dev":
            raise RegistryError(
                f"model {row.id!r} is in {row.stage}; its evaluation is frozen because the promotion was decided "
                "on it. Register the re-evaluated model as a new version, or move this one back through dev"
            )
        row.eval_results = evaluation
        row.gates_passed = gates_passed
        row.updated_at = utcnow()
        session.commit()
        return _snapshot(ModelArtifact, row)

    def get_model(self, model_id: str) -> ModelArtifact:
        """The model with this id; RegistryError if there is none."""
        with self._session() as session:
            return _snapshot(ModelArtifact, self._model_row(session, model_id))

    def _model_row(self, session: Session, model_id: str) -> ModelArtifactRow:
        row = session.get(ModelArtifactRow, model_id)
        if row is None:
            raise RegistryError(
                f"model {model_id!r} is not in the registry {self.url}; `fineplat registry list` shows the ids"
            )
        return row

    def list_models(self, stage: str | None = None, name: str | None = None) -> list[ModelArtifact]:
        """Registered models, optionally only one stage and/or one name, ordered by name and version."""
        if stage is not None:
            _require_choice("stage", stage, MODEL_STAGES)
        query = sa.select(ModelArtifactRow)
        if stage is not None:
            query = query.where(ModelArtifactRow.stage == stage)
        if name is not None:
            query = query.where(ModelArtifactRow.name == name)
        with self._session() as session:
            rows = session.scalars(query.order_by(ModelArtifactRow.name, ModelArtifactRow.version)).all()
            return [_snapshot(ModelArtifact, row) for row in rows]

    # -- stages --------------------------------------------------------------------------------

    def transition(
        self, model_id: str, to_stage: str, actor: str = "fineplat", reason: str = ""
    ) -> ModelArtifact:
        """Move a model to another stage under the rules in this module's docstring and log it.

        Every stage change is a compare-and-set on the row (`WHERE stage = <the stage we read>`)
        and "one production model per name" is a unique index, so concurrent promotions from
        different processes cannot both succeed: the loser gets a RegistryError and can retry."""
        _require_choice("to_stage", to_stage, MODEL_STAGES)
        _require_text("actor", actor)
        with self._session() as session:
            row = self._model_row(session, model_id)
            from_stage = row.stage
            if to_stage not in LEGAL_TRANSITIONS[from_stage]:
                allowed = sorted(LEGAL_TRANSITIONS[from_stage])
                raise RegistryError(
                    f"model {model_id!r} ({row.name} v{row.version}) cannot move from {from_stage} to {to_stage}; "
                    f"from {from_stage} it may move to {', '.join(allowed) if allowed else 'nothing (archived is final)'}"
                )
            if to_stage in GATED_STAGES and not row.gates_passed:
                raise RegistryError(
                    f"model {model_id!r} ({row.name} v{row.version}) did not pass its evaluation gates, so it cannot "
                    f"enter {to_stage}; re-evaluate it (eval_results: {json.dumps(row.eval_results)[:200]})"
                )
            label = f"model {model_id!r} ({row.name} v{row.version})"
            lost_race = (
                f"{label} was not moved to {to_stage}: another process changed the {row.name} models at the "
                "same time; re-read the registry (`fineplat registry list`) and retry"
            )
            now = utcnow()
            try:
                if to_stage == "production":
                    previous = session.scalars(
                        sa.select(ModelArtifactRow.id).where(
                            ModelArtifactRow.name == row.name,
                            ModelArtifactRow.stage == "production",
                            ModelArtifactRow.id != model_id,
                        )
                    ).all()
                    demotion = f"demoted: {model_id} ({row.name} v{row.version}) promoted to production"
                    for previous_id in previous:
                        if not self._set_stage(
                            session, previous_id, "production", "staging", actor, demotion, now
                        ):
                            raise RegistryError(lost_race)
                if not self._set_stage(session, model_id, from_stage, to_stage, actor, reason, now):
                    raise RegistryError(lost_race)
                # The snapshot is the state this transaction wrote, even if another one moves it next.
                moved = replace(_snapshot(ModelArtifact, row), stage=to_stage, updated_at=now)
                session.commit()
            except sa.exc.IntegrityError as exc:  # the one-production-per-name index: another promotion won
                raise RegistryError(lost_race) from exc
            return moved

    def _set_stage(
        self,
        session: Session,
        model_id: str,
        from_stage: str,
        to_stage: str,
        actor: str,
        reason: str,
        now: datetime,
    ) -> bool:
        """Compare-and-set one model's stage and append the audit entry in the same transaction;
        False if the model was no longer in `from_stage` (changed by a concurrent transaction)."""
        result = session.execute(
            sa.update(ModelArtifactRow)
            .where(ModelArtifactRow.id == model_id, ModelArtifactRow.stage == from_stage)
            .values(stage=to_stage, updated_at=now)
            .execution_options(synchronize_session=False)
        )
        if getattr(result, "rowcount", 0) != 1:
            return False
        session.add(
            StageTransitionRow(
                model_id=model_id,
                from_stage=from_stage,
                to_stage=to_stage,
                actor=actor,
                reason=reason,
                at=now,
            )
        )
        return True

    def stage_history(self, model_id: str) -> list[StageChange]:
        """A model's audit log, oldest first (starting with its registration into dev)."""
        with self._session() as session:
            self._model_row(session, model_id)
            rows = session.scalars(
                sa.select(StageTransitionRow)
                .where(StageTransitionRow.model_id == model_id)
                .order_by(StageTransitionRow.id)
            ).all()
            return [_snapshot(StageChange, row) for row in rows]

    # -- lineage -------------------------------------------------------------------------------

    def lineage(self, model_id: str) -> dict[str, Any]:
        """Everything an auditor asks about a model, as JSON-ready data: the base model (name from
        the training job, SHA from the model), the dataset version, the job's configuration and
        run identity, the hyperparameter hash, the evaluation and the full stage history."""
        model = self.get_model(model_id)
        dataset = self.get_dataset(model.dataset_id)
        job = self.get_job(model.job_id) if model.job_id is not None else None
        return {
            "model": {
                "id": model.id,
                "name": model.name,
                "version": model.version,
                "kind": model.kind,
                "uri": model.uri,
                "stage": model.stage,
                "serving_name": model.serving_name,
                "gates_passed": model.gates_passed,
                "created_at": model.created_at.isoformat(),
            },
            "base_model": job.base_model if job is not None else None,
            "base_model_sha": model.base_model_sha,
            "dataset": {
                "id": dataset.id,
                "name": dataset.name,
                "version": dataset.version,
                "uri": dataset.uri,
                "row_count": dataset.row_count,
                "token_count": dataset.token_count,
            },
            "job": None
            if job is None
            else {
                "id": job.id,
                "method": job.method,
                "status": job.status,
                "config": job.config,
                "run_identity": job.run_identity,
                "dagster_run_id": job.dagster_run_id,
                "mlflow_run_id": job.mlflow_run_id,
            },
            "hparams_hash": model.hparams_hash,
            "eval_results": model.eval_results,
            "stage_history": [
                {
                    "from_stage": change.from_stage,
                    "to_stage": change.to_stage,
                    "actor": change.actor,
                    "reason": change.reason,
                    "at": change.at.isoformat(),
                }
                for change in self.stage_history(model_id)
            ],
        }
