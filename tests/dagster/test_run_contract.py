"""One fine-tune job through its four assets and the real trainer process: the base model's
weights are hashed once, at submission, and every later stage (the trainer included) uses the SHA
the job spec pinned; a trainer handed a launch request of another protocol version refuses it."""

import hashlib
import json
import os
import random
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from dagster import AssetExecutionContext, MaterializeResult, asset, instance_for_test, materialize

from fineplat.basemodel import BaseModelInfo, resolve_base_model
from fineplat.demo.dataset import task_row
from fineplat.ingestion import dataset_version_id, write_parquet
from fineplat.registry import Registry
from fineplat.settings import paths
from fineplat.storage import LocalObjectStore
from fineplat.submission import read_job_spec, submit_job
from fineplat.training.config import TrainConfig
from fineplat.training.constants import FAILED_EXIT_CODE
from fineplat.training.protocol import PROTOCOL_VERSION, FailedReport
from fineplat_assets.evaluation.assets import eval_report, registered_adapter
from fineplat_assets.resources import build_resources
from fineplat_assets.training.assets import adapter, job_keys, launch_request, training_data
from fineplat_resources.launcher import ComputeLauncher
from fineplat_resources.tracking import ExperimentTrackerResource

CONFIG = TrainConfig(method="lora", max_steps=4, batch_size=4, lora_rank=4, lora_alpha=8, max_seq_len=128)
# Loaded by every Python process started with the fixture's PYTHONPATH (the trainer): it counts
# weight hashes there as the monkeypatch does here, and says that it was loaded.
COUNTING_SITECUSTOMIZE = """
import os

import fineplat.hashing as hashing

_log = os.environ["FINEPLAT_TEST_HASH_LOG"]
with open(_log, "a") as handle:
    handle.write(f"started {os.getpid()}\\n")
_hash_files = hashing.hash_files


def _counted(root, names):
    with open(_log, "a") as handle:
        handle.write(f"hashed {os.getpid()} {root}\\n")
    return _hash_files(root, names)


hashing.hash_files = _counted
"""


@pytest.fixture
def hash_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[[], list[str]]:
    """Every hash of a model directory's files, in this process and in the trainer processes."""
    import fineplat.basemodel.load as load

    log = tmp_path / "hashes.log"
    log.touch()
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(COUNTING_SITECUSTOMIZE)
    monkeypatch.setenv("FINEPLAT_TEST_HASH_LOG", str(log))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")])))
    original = load.hash_files

    def counted(root: Path, names: Any) -> str:
        with log.open("a") as handle:
            handle.write(f"hashed {os.getpid()} {root}\n")
        return original(root, names)

    monkeypatch.setattr(load, "hash_files", counted)
    return lambda: log.read_text().splitlines()


def _register_dataset(rows: int = 64) -> str:
    rng = random.Random(7)
    records = [json.dumps(task_row(rng)) for _ in range(rows)]
    frame = pl.DataFrame(
        {
            "line": list(range(1, rows + 1)),
            "source": ["test.jsonl"] * rows,
            "kind": ["chat"] * rows,
            "record": records,
            "text": records,
            "content_hash": [hashlib.sha256(r.encode()).hexdigest() for r in records],
        }
    )
    dataset_id = dataset_version_id(frame)
    store = LocalObjectStore(paths().objects)
    with store.writing(f"datasets/by-id/{dataset_id}") as out:
        write_parquet(frame, out / "rows.parquet")
    registry = Registry(paths().registry_url)
    registry.migrate()
    registry.register_dataset(
        dataset_id, "router", store.uri(f"datasets/by-id/{dataset_id}"), row_count=rows, schema_kind="chat"
    )
    return dataset_id


def test_one_job_hashes_the_base_model_weights_once(
    fineplat_home: Path, tiny_base_model: BaseModelInfo, hash_log: Callable[[], list[str]]
) -> None:
    dataset_id = _register_dataset()
    base = resolve_base_model(str(tiny_base_model.path))  # what `fineplat jobs submit` does
    spec = submit_job(
        LocalObjectStore(paths().objects), name="router", dataset_id=dataset_id, base=base, config=CONFIG
    )
    submission = [f"hashed {os.getpid()} {base.path}"]
    assert hash_log() == submission
    with instance_for_test() as instance:
        instance.add_dynamic_partitions("finetune_jobs", [spec.job_id])
        result = materialize(
            [training_data, adapter, eval_report, registered_adapter],
            partition_key=spec.job_id,
            instance=instance,
            resources=build_resources(),
        )
        assert result.success
        registered = result.asset_materializations_for_node("registered_adapter")[0].metadata
    assert registered["base_model_sha"].value == base.sha
    lines = hash_log()
    started = [line for line in lines if line.startswith("started ")]  # the trainer and its helpers
    assert started and f"started {os.getpid()}" not in started  # so they were counted too
    assert [line for line in lines if line.startswith("hashed ")] == submission


def test_trainer_refuses_a_launch_request_of_another_version(
    fineplat_home: Path, tiny_base_model: BaseModelInfo
) -> None:
    store = LocalObjectStore(paths().objects)
    base = replace(tiny_base_model, name=str(tiny_base_model.path))  # submitted by path
    spec = submit_job(store, name="router", dataset_id="d" * 64, base=base, config=CONFIG)
    with store.writing(job_keys(spec.job_id)["data"]):
        pass  # the request points at the job's training data; this trainer must not get that far
    request = launch_request(read_job_spec(store, spec.job_id), store, ExperimentTrackerResource())
    newer = request.model_copy(update={"schema_version": PROTOCOL_VERSION + 1})
    outcome: dict[str, Any] = {}

    @asset
    def attempt(context: AssetExecutionContext, launcher: ComputeLauncher) -> MaterializeResult:
        launched = launcher.launch_training(context, request=newer)
        outcome.update(exit_code=launched.exit_code, preempted=launched.preempted, reports=launched.reports)
        return MaterializeResult()

    with instance_for_test() as instance:
        assert materialize([attempt], instance=instance, resources={"launcher": ComputeLauncher()}).success
    assert (outcome["exit_code"], outcome["preempted"]) == (FAILED_EXIT_CODE, False)
    assert outcome["reports"] == [
        FailedReport(
            error=f"launch request: schema_version {PROTOCOL_VERSION + 1}, but this fineplat speaks version "
            f"{PROTOCOL_VERSION}; the launcher (Dagster code location) and the trainer (image or "
            "interpreter) run different fineplat releases: deploy the same release to both"
        )
    ]
