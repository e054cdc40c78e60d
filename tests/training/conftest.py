"""Fixtures for trainer tests: a small packed training-data directory built from the demo task."""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

import polars as pl
import pytest
import torch

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


class FakeCuda:
    """Stands in for torch.cuda's availability, bf16 support, memory and NVML readers (this machine
    has no GPU): `bf16` says whether the fake GPU has native bf16 (compute capability 8.0+),
    `utilization` is NVML's reading, or the exception reading it raises."""

    def __init__(self, utilization: float | Exception = 87.0, *, bf16: bool = True) -> None:
        self.peak = 3 * 2**30
        self._utilization = utilization
        self._bf16 = bf16
        self.resets = 0

    def is_available(self) -> bool:
        return True

    def is_bf16_supported(self, including_emulation: bool = True) -> bool:
        return self._bf16 or including_emulation

    def max_memory_allocated(self, device: torch.device) -> int:
        return self.peak

    def memory_reserved(self, device: torch.device) -> int:
        return 4 * 2**30

    def reset_peak_memory_stats(self, device: torch.device) -> None:
        self.resets += 1
        self.peak = 0

    def utilization(self, device: torch.device) -> float:
        if isinstance(self._utilization, Exception):
            raise self._utilization
        return self._utilization


@pytest.fixture
def fake_cuda(monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """`fake_cuda(utilization=87.0, bf16=True)`: install a `FakeCuda` in torch.cuda for one test."""

    def install(utilization: float | Exception = 87.0, *, bf16: bool = True) -> FakeCuda:
        fake = FakeCuda(utilization, bf16=bf16)
        for name in (
            "is_available",
            "is_bf16_supported",
            "max_memory_allocated",
            "memory_reserved",
            "reset_peak_memory_stats",
            "utilization",
        ):
            monkeypatch.setattr(torch.cuda, name, getattr(fake, name))
        return fake

    return install
