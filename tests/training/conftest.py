"""Fixtures for trainer tests: a small packed training-data directory built from the demo task."""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

import polars as pl
import pytest

from fineplat.basemodel import BaseModelInfo, load_tokenizer
from fineplat.demo.dataset import task_row
from fineplat.packing.build import build_training_data


def task_rows(count: int, seed: int = 3) -> pl.DataFrame:
    """`count` demo-task rows in the kept-rows layout (kind, record, content_hash)."""
    rng = random.Random(seed)
    records = [json.dumps(task_row(rng)) for _ in range(count)]
    return pl.DataFrame(
        {
            "kind": ["chat"] * count,
            "record": records,
            "content_hash": [hashlib.sha256(r.encode()).hexdigest() for r in records],
        }
    )


@pytest.fixture(scope="session")
def make_task_rows():  # type: ignore[no-untyped-def]
    """`task_rows` for test modules (conftest helpers cannot be imported under importlib mode)."""
    return task_rows


@pytest.fixture(scope="session")
def small_training_data(tiny_base_model: BaseModelInfo, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """120 examples packed into 128-token windows (about 40 windows)."""
    out = tmp_path_factory.mktemp("training_data")
    build_training_data(task_rows(120), load_tokenizer(tiny_base_model.path), out, max_seq_len=128)
    return out


@pytest.fixture(scope="session")
def train_in():  # type: ignore[no-untyped-def]
    """`train_in(config, base, data, root, **kwargs)`: one in-process `train()` with its checkpoints
    and output under `root` (ck/, out/); kwargs go to `train` (preemption, hooks)."""
    from fineplat.training import TrainConfig
    from fineplat.training.trainer import train

    def run(config: dict, base: BaseModelInfo, data: Path, root: Path, **kwargs):  # type: ignore[no-untyped-def]
        return train(
            TrainConfig(**config),
            base_model_dir=base.path,
            data_dir=data,
            checkpoint_dir=root / "ck",
            output_dir=root / "out",
            **kwargs,
        )

    return run
