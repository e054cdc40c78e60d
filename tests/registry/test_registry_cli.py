"""`fineplat registry list|show|promote`: the same rules as the API, readable output, JSON for
scripts, errors as one line and exit status 1."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fineplat.registry import DatasetArtifact, Job, ModelArtifact, Registry
from fineplat.registry.cli import app

DatasetFactory = Callable[..., DatasetArtifact]  # the add_dataset fixture (conftest.py)
JobFactory = Callable[..., Job]  # the add_job fixture (conftest.py)
ModelFactory = Callable[..., ModelArtifact]  # the add_model fixture (conftest.py)

REPO_ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()


@pytest.fixture
def staged_model(
    registry: Registry, add_dataset: DatasetFactory, add_job: JobFactory, add_model: ModelFactory
) -> ModelArtifact:
    add_dataset(registry)
    add_job(registry, "job-1")
    model = add_model(registry, "support-bot")
    return registry.transition(model.id, "staging", actor="ci", reason="gates passed")


def _invoke(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args), env={"COLUMNS": "250"})
    return result.exit_code, result.stdout, result.stderr


def test_list_shows_models(registry_url: str, staged_model: ModelArtifact) -> None:
    code, out, _ = _invoke("list", "--url", registry_url)
    assert code == 0
    assert staged_model.id in out and "support-bot-v1" in out and "staging" in out and "passed" in out
    code, out, _ = _invoke("list", "--url", registry_url, "--stage", "production", "--json")
    assert (code, json.loads(out)) == (0, [])
    code, out, _ = _invoke("list", "--url", registry_url, "--json")
    [listed] = json.loads(out)
    assert (listed["id"], listed["stage"], listed["version"]) == (staged_model.id, "staging", 1)


def test_show_prints_lineage(registry: Registry, registry_url: str, staged_model: ModelArtifact) -> None:
    code, out, _ = _invoke("show", staged_model.id, "--url", registry_url, "--json")
    assert code == 0
    assert json.loads(out) == json.loads(json.dumps(registry.lineage(staged_model.id)))
    code, out, _ = _invoke("show", staged_model.id, "--url", registry_url)
    assert code == 0
    for expected in ("fineplat-tiny", "support-chat v1", "learning_rate", "judge_win_rate", "gates passed"):
        assert expected in out


def test_promote_moves_the_model_and_logs_the_actor(
    registry: Registry, registry_url: str, staged_model: ModelArtifact
) -> None:
    code, out, _ = _invoke(
        "promote", staged_model.id, "production", "--url", registry_url, "--reason", "ticket 7"
    )
    assert code == 0
    assert f"support-bot v1 ({staged_model.id}) is now in production" in out
    last = registry.stage_history(staged_model.id)[-1]
    assert (last.to_stage, last.reason) == ("production", "ticket 7")
    assert last.actor.startswith("cli:")


def test_illegal_promotion_is_one_line_on_stderr(
    registry: Registry, registry_url: str, staged_model: ModelArtifact
) -> None:
    code, out, err = _invoke("promote", staged_model.id, "dev", "--url", registry_url)
    assert (code, out) == (1, "")
    assert err.strip() == (
        f"error: model '{staged_model.id}' (support-bot v1) cannot move from staging to dev; "
        "from staging it may move to archived, production"
    )
    assert registry.get_model(staged_model.id).stage == "staging"


def test_default_url_is_under_fineplat_home_and_works_on_a_fresh_home(fineplat_home: Path) -> None:
    code, out, _ = _invoke("migrate")
    assert code == 0
    assert f"registry sqlite:///{fineplat_home / 'registry.db'} is at schema revision 0001" in out
    code, out, _ = _invoke("list", "--json")
    assert (code, json.loads(out)) == (0, [])


def test_cli_runs_as_a_real_process(tmp_path: Path) -> None:
    env = {**os.environ, "FINEPLAT_REGISTRY_URL": f"sqlite:///{tmp_path / 'r.db'}"}
    completed = subprocess.run(
        [sys.executable, "-m", "fineplat.registry.cli", "show", "missing-model"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 1
    assert "error: model 'missing-model' is not in the registry" in completed.stderr
