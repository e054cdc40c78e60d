"""Alembic revision scripts of the registry schema (a package so setuptools ships them)."""
