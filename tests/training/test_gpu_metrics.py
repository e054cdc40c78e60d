"""GPU metrics per step: measured through torch/NVML on a GPU, absent (never zero) elsewhere."""

from __future__ import annotations

import pytest
import torch

from fineplat.training import gpu_metrics as gm


def test_cpu_training_reports_no_gpu_metrics() -> None:
    assert gm.gpu_metrics(torch.device("cpu")) == {}


class _FakeCuda:
    """Stands in for torch.cuda's memory and NVML readers (this machine has no GPU)."""

    def __init__(self, utilization: float | Exception) -> None:
        self.peak = 3 * 2**30
        self._utilization = utilization
        self.resets = 0

    def is_available(self) -> bool:
        return True

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


def _install(monkeypatch: pytest.MonkeyPatch, fake: _FakeCuda) -> _FakeCuda:
    for name in (
        "is_available",
        "max_memory_allocated",
        "memory_reserved",
        "reset_peak_memory_stats",
        "utilization",
    ):
        monkeypatch.setattr(gm.torch.cuda, name, getattr(fake, name))
    return fake


def test_gpu_step_reports_peak_memory_per_step_and_nvml_utilization(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = _install(monkeypatch, _FakeCuda(87.0))
    first = gm.gpu_metrics(torch.device("cuda", 0))
    assert first == {"gpu_memory_gb": 3.0, "gpu_memory_reserved_gb": 4.0, "gpu_utilization": 87.0}
    second = gm.gpu_metrics(torch.device("cuda", 0))
    assert second["gpu_memory_gb"] == 0.0, "the peak is per step: reset after each reading"
    assert fake.resets == 2


def test_gpu_utilization_is_left_out_without_nvml(monkeypatch: pytest.MonkeyPatch) -> None:
    _install(monkeypatch, _FakeCuda(ModuleNotFoundError("nvidia-ml-py does not seem to be installed")))
    metrics = gm.gpu_metrics(torch.device("cuda", 0))
    assert "gpu_utilization" not in metrics
    assert metrics["gpu_memory_gb"] == 3.0
