"""GPU metrics per step: measured through torch/NVML on a GPU, absent (never zero) elsewhere."""

from __future__ import annotations

import torch

from fineplat.training import gpu_metrics as gm


def test_cpu_training_reports_no_gpu_metrics() -> None:
    assert gm.gpu_metrics(torch.device("cpu")) == {}


def test_gpu_step_reports_peak_memory_per_step_and_nvml_utilization(fake_cuda) -> None:  # type: ignore[no-untyped-def]
    fake = fake_cuda(87.0)
    first = gm.gpu_metrics(torch.device("cuda", 0))
    assert first == {"gpu_memory_gb": 3.0, "gpu_memory_reserved_gb": 4.0, "gpu_utilization": 87.0}
    second = gm.gpu_metrics(torch.device("cuda", 0))
    assert second["gpu_memory_gb"] == 0.0, "the peak is per step: reset after each reading"
    assert fake.resets == 2


def test_gpu_utilization_is_left_out_without_nvml(fake_cuda) -> None:  # type: ignore[no-untyped-def]
    fake_cuda(ModuleNotFoundError("nvidia-ml-py does not seem to be installed"))
    metrics = gm.gpu_metrics(torch.device("cuda", 0))
    assert "gpu_utilization" not in metrics
    assert metrics["gpu_memory_gb"] == 3.0
