"""Shared fixtures: a tiny base model built once per session, an isolated FINEPLAT_HOME per test,
and a throwaway PostgreSQL database on the local server (created and dropped by the test)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from fineplat.basemodel import BaseModelInfo, TinyModelSpec, build_base_model

PG_ADMIN_URL = os.environ.get("FINEPLAT_TEST_PG", "postgresql+psycopg2://postgres@127.0.0.1:5432/test")
# A briefly pre-trained tiny model: enough for shapes, masks, serving and resume tests.
TEST_SPEC = TinyModelSpec(pretrain_steps=20, corpus_documents=2000)


@pytest.fixture(scope="session")
def tiny_base_model(tmp_path_factory: pytest.TempPathFactory) -> BaseModelInfo:
    """The tiny Llama base model and tokenizer, built deterministically once per test session."""
    return build_base_model(tmp_path_factory.mktemp("base") / "fineplat-tiny", TEST_SPEC)


@pytest.fixture
def fineplat_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty FINEPLAT_HOME (and DAGSTER_HOME inside it) for one test."""
    home = tmp_path / "fineplat_home"
    home.mkdir()
    monkeypatch.setenv("FINEPLAT_HOME", str(home))
    monkeypatch.setenv("DAGSTER_HOME", str(home / "dagster_home"))
    (home / "dagster_home").mkdir()
    return home


@pytest.fixture
def pg_database() -> Iterator[str]:
    """A fresh PostgreSQL database on 127.0.0.1:5432; yields its SQLAlchemy URL, dropped afterwards."""
    import sqlalchemy as sa

    name = f"fineplat_test_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(
                sa.text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :n AND pid <> pg_backend_pid()"
                ),
                {"n": name},
            )
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}"'))
        admin.dispose()


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """A real S3 API over HTTP on 127.0.0.1 (moto's server) for the session; yields its URL. Tests
    create their own bucket in it."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """Dummy AWS credentials and region in the environment (inherited by trainer subprocesses)."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
