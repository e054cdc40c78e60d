"""The `fineplat` command line over real files and a real registry: upload and submit add Dagster
partitions, and `runs compare` prints hyperparameters and final metrics side by side."""

from __future__ import annotations

import shlex
from pathlib import Path

from dagster import DagsterInstance
from typer.testing import CliRunner

import fineplat.cli
import fineplat.training.config
from fineplat.basemodel import BaseModelInfo
from fineplat.cli import app
from fineplat.registry import Registry
from fineplat.settings import paths


def test_upload_submit_and_compare(
    fineplat_home: Path, tiny_base_model: BaseModelInfo, tmp_path: Path
) -> None:
    runner = CliRunner()
    data = tmp_path / "rows.jsonl"
    data.write_text(
        '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "The billing team."}]}\n'
    )
    (fineplat_home / "dagster_home" / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    uploaded = runner.invoke(
        app, ["datasets", "upload", str(data), "--name", "router", "--base-model", str(tiny_base_model.path)]
    )
    assert uploaded.exit_code == 0, uploaded.output
    instance = DagsterInstance.get()
    partitions = instance.get_dynamic_partitions("dataset_uploads")
    assert len(partitions) == 1 and partitions[0] in uploaded.output

    registry = Registry(paths().registry_url)
    registry.migrate()
    registry.register_dataset("ds-test", "router", "file:///x", row_count=1, schema_kind="messages")
    jobs = []
    for lr in ("1.0", "2.0"):
        submitted = runner.invoke(
            app,
            [
                "jobs",
                "submit",
                "--name",
                "router",
                "--dataset",
                "ds-test",
                "--base-model",
                str(tiny_base_model.path),
                "--config",
                f'{{"method": "lora", "learning_rate_multiplier": {lr}}}',
            ],
        )
        assert submitted.exit_code == 0, submitted.output
        job_id = submitted.output.split("submitted job")[-1].strip()
        jobs.append(job_id)
        registry.create_job(
            job_id,
            method="lora",
            base_model="tiny",
            base_model_sha=tiny_base_model.sha,
            dataset_id="ds-test",
            config={"method": "lora", "learning_rate_multiplier": float(lr)},
        )
        registry.log_metrics(job_id, 1, {"loss": 2.5 / float(lr), "tokens_per_second": 1000.0})
    assert sorted(instance.get_dynamic_partitions("finetune_jobs")) == sorted(jobs)
    # an identical submission maps to the same job
    again = runner.invoke(
        app,
        [
            "jobs",
            "submit",
            "--name",
            "router",
            "--dataset",
            "ds-test",
            "--base-model",
            str(tiny_base_model.path),
            "--config",
            '{"method": "lora", "learning_rate_multiplier": 1.0}',
        ],
    )
    assert jobs[0] in again.output
    compared = runner.invoke(app, ["runs", "compare", *jobs], env={"COLUMNS": "200"})
    assert compared.exit_code == 0, compared.output
    assert "learning_rate_multiplier" in compared.output
    assert "2.5" in compared.output and "1.25" in compared.output


def test_every_advertised_command_line_parses() -> None:
    """The usage lines in the CLI's and the job configuration's docstrings name commands and options
    that exist: each parses (with `--help` appended, so nothing runs)."""
    runner = CliRunner()
    usage_lines = [
        line.strip()
        for module in (fineplat.cli, fineplat.training.config)
        for line in (module.__doc__ or "").splitlines()
        if line.strip().startswith("fineplat ")
    ]
    assert len(usage_lines) == 8
    for line in usage_lines:
        result = runner.invoke(app, [*shlex.split(line)[1:], "--help"])
        assert result.exit_code == 0, f"{line!r}: {result.output}"
