"""End-to-end fixtures: a FINEPLAT_HOME with the tiny base model installed under its name, a small
flawed sample dataset, and a Dagster instance (SQLite, or PostgreSQL for the production path)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from fineplat.basemodel import BaseModelInfo, TinyModelSpec, build_base_model
from fineplat.demo.dataset import SAMPLE_BENCHMARK, PlantedFlaws, benchmark_questions, generate_sample_lines

E2E_CLEAN_ROWS = 240
E2E_FLAWS = PlantedFlaws()


@pytest.fixture(scope="session")
def demo_base_model(tmp_path_factory: pytest.TempPathFactory) -> BaseModelInfo:
    """The demo's base model (default spec, fully pre-trained): the end-to-end tests check that
    fine-tuning beats it, which the barely pre-trained unit-test model cannot show."""
    return build_base_model(tmp_path_factory.mktemp("demo-base") / "fineplat-tiny", TinyModelSpec())


@pytest.fixture
def e2e_home(fineplat_home: Path, demo_base_model: BaseModelInfo) -> Path:
    """FINEPLAT_HOME with `fineplat-tiny` already built (copied from the session build)."""
    shutil.copytree(demo_base_model.path, fineplat_home / "models" / "fineplat-tiny")
    return fineplat_home


@pytest.fixture
def sample_dataset(tmp_path: Path) -> Path:
    """A small copy of the demo dataset with every kind of planted flaw."""
    path = tmp_path / "tickets.jsonl"
    path.write_text(
        "\n".join(generate_sample_lines(E2E_CLEAN_ROWS, benchmark_questions(SAMPLE_BENCHMARK), E2E_FLAWS))
        + "\n"
    )
    return path
