"""How work enters fineplat: an upload's purpose is one of three, a job spec pins the base model
SHA and derives its id from the run identity, and a spec file that does not fit is named."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fineplat.basemodel import BaseModelInfo
from fineplat.errors import ConfigError
from fineplat.storage import LocalObjectStore
from fineplat.submission import (
    DatasetPurpose,
    JobSpec,
    read_job_spec,
    read_upload,
    stage_upload,
    submit_job,
)
from fineplat.training.config import TrainConfig, run_identity

BASE = BaseModelInfo("fineplat-tiny", Path("/models/fineplat-tiny"), "b" * 64)  # already resolved
DATASET_ID = "d" * 64
ROW = '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Billing."}]}\n'


def test_upload_purpose_is_read_back_as_the_enum(tmp_path: Path) -> None:
    store = LocalObjectStore(tmp_path / "objects")
    (tmp_path / "rows.jsonl").write_text(ROW)
    staged = stage_upload(store, tmp_path / "rows.jsonl", name="router", purpose="dpo")
    manifest, root = read_upload(store, staged.partition)
    assert manifest == staged and manifest.purpose is DatasetPurpose.DPO
    assert json.loads((root / "upload.json").read_text())["purpose"] == "dpo"


def test_unknown_upload_purpose_is_refused(tmp_path: Path) -> None:
    (tmp_path / "rows.jsonl").write_text(ROW)
    with pytest.raises(ConfigError, match=r"^purpose 'kto': expected one of sft, dpo, cpt"):
        stage_upload(LocalObjectStore(tmp_path / "objects"), tmp_path / "rows.jsonl", name="r", purpose="kto")


def test_job_spec_pins_the_base_sha_and_derives_its_id(tmp_path: Path) -> None:
    store = LocalObjectStore(tmp_path / "objects")
    config = TrainConfig(method="lora", lora_rank=4)
    spec = submit_job(store, name="router", dataset_id=DATASET_ID, base=BASE, config=config)
    identity = run_identity("lora", config.model_dump(mode="json"), BASE.sha, DATASET_ID)
    assert spec.run_identity == identity
    assert spec.job_id == f"router-{identity[:12]}"
    assert (spec.base_model, spec.base_model_sha) == ("fineplat-tiny", BASE.sha)
    assert read_job_spec(store, spec.job_id) == spec
    again = submit_job(store, name="router", dataset_id=DATASET_ID, base=BASE, config=config)
    assert again == spec


def test_a_job_spec_file_that_does_not_fit_is_named(tmp_path: Path) -> None:
    store = LocalObjectStore(tmp_path / "objects")
    spec = JobSpec(
        job_id="router-1",
        name="router",
        dataset_id=DATASET_ID,
        base_model="fineplat-tiny",
        base_model_sha=BASE.sha,
        config=TrainConfig(),
    )
    older = spec.model_dump(mode="json")
    del older["base_model_sha"]  # as written before specs pinned the SHA
    with store.writing("jobs/router-1") as staging:
        (staging / "job.json").write_text(json.dumps(older))
    path = store.local("jobs/router-1") / "job.json"
    with pytest.raises(ConfigError) as raised:
        read_job_spec(store, "router-1")
    assert str(raised.value) == (
        f"{path}: not a valid JobSpec (base_model_sha: Field required); submit the job again"
    )
