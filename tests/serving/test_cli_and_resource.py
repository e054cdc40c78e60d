"""`python -m fineplat.serving` as a process (option parsing, startup failures) and the Dagster
resource that hands out clients for the pool."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import typer

from fineplat.errors import ServingError
from fineplat.serving import EmbeddedServingPool
from fineplat.serving.cli import parse_adapters
from fineplat_resources.serving import ServingPoolResource


def test_adapter_options_parse_as_name_equals_path() -> None:
    assert parse_adapters(["support-v1=/a/b", "x=/c=d"]) == {"support-v1": "/a/b", "x": "/c=d"}


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (["/only/a/path"], "'/only/a/path': expected NAME=PATH, e.g. support-v1=/adapters/support-v1"),
        (["a=/x", "a=/y"], "'a=/y': adapter name 'a' given twice; names are unique"),
    ],
)
def test_malformed_adapter_options_are_usage_errors(values: list[str], message: str) -> None:
    with pytest.raises(typer.BadParameter) as raised:
        parse_adapters(values)

    assert str(raised.value) == message


def test_the_module_entry_point_rejects_a_malformed_adapter_with_a_usage_error() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "fineplat.serving", "--adapter", "no-equals-sign"],
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert result.returncode == 2
    assert "expected NAME=PATH" in result.stderr


def test_a_pool_whose_base_model_is_missing_fails_to_start_with_the_servers_message(tmp_path: Path) -> None:
    missing = tmp_path / "no-model-here"
    pool = EmbeddedServingPool(str(missing), startup_timeout=120, log_path=tmp_path / "serve.log")

    with pytest.raises(ServingError) as raised:
        pool.start()

    assert "serving pool exited with code 1 during startup" in str(raised.value)
    assert f"fineplat serve: base model '{missing}': not a local directory" in str(raised.value)
    assert not pool.running


def test_the_resource_defaults_to_the_embedded_servers_address() -> None:
    assert ServingPoolResource().base_url == "http://127.0.0.1:8000"


def test_the_resource_hands_out_clients_for_the_configured_pool(serving_pool: EmbeddedServingPool) -> None:
    resource = ServingPoolResource(base_url=serving_pool.url, timeout_seconds=30)

    with resource.get_client() as client:
        assert client.health() is True
        assert client.list_models() == [serving_pool.base_model]
