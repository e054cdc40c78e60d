"""Alembic migrations of the registry schema, shipped inside the package so `Registry.migrate()`
runs them from an installed wheel without an alembic.ini at the repository root."""
