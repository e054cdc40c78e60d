"""Alembic environment of the registry, driven programmatically by `Registry.migrate()`.

No alembic.ini: `fineplat.registry.alembic_config(url)` builds the configuration. `migrate()` hands
in its own connection (inside the transaction that holds the PostgreSQL migration lock) through
`config.attributes["connection"]`; without one, an engine is made from `sqlalchemy.url`.

To write a new revision after changing `fineplat/registry/models.py`:

    .venv/bin/python -c "from alembic import command; from fineplat.registry import alembic_config; \
        command.upgrade(alembic_config('sqlite:////tmp/r.db'), 'head'); \
        command.revision(alembic_config('sqlite:////tmp/r.db'), message='what changed', autogenerate=True)"

then review the generated file in versions/ (autogenerate misses CHECK constraints and renames).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context

from fineplat.registry.models import VERSION_TABLE, Base

config = context.config
target_metadata = Base.metadata


def _configure_and_run(connection: sa.Connection) -> None:
    """Run the pending revisions on one connection; SQLite alters tables in batch (copy) mode."""
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        version_table=VERSION_TABLE,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_offline() -> None:
    """Emit the SQL instead of running it (`alembic upgrade --sql`), for a DBA to review."""
    context.configure(
        url=config.get_main_option("sqlalchemy.url"),
        target_metadata=target_metadata,
        version_table=VERSION_TABLE,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    """Run against the caller's connection if it gave one, else against `sqlalchemy.url`."""
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure_and_run(connection)
        return
    engine = sa.create_engine(config.get_main_option("sqlalchemy.url") or "", poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as own_connection:
            _configure_and_run(own_connection)
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
