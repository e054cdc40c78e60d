"""GPU utilization and memory of this process's device, read per training step.

Why: throughput alone does not tell a user whether a slow run is starved (data, host, small
batches: low utilization) or saturated (high utilization, so a bigger GPU or fewer FLOPs helps),
and memory headroom tells them whether the batch can grow. Utilization is NVML's figure (percent
of the last sample period, 1/6 s to 1 s, in which a kernel ran on the device), read through
`torch.cuda.utilization`, which needs the NVML bindings (`nvidia-ml-py`, in the `gpu` extra);
without them, or on a CPU, the metric is absent rather than guessed.
"""

from __future__ import annotations

import contextlib

import torch

_GIB = 2**30


def gpu_metrics(device: torch.device) -> dict[str, float]:
    """Per-step GPU metrics for `device`: `gpu_memory_gb` (peak allocated by this process since the
    previous call), `gpu_memory_reserved_gb` (held by torch's caching allocator) and
    `gpu_utilization` (percent, NVML); empty on a CPU. Resets the peak so that each step reports
    its own."""
    if device.type != "cuda" or not torch.cuda.is_available():
        return {}
    metrics = {
        "gpu_memory_gb": torch.cuda.max_memory_allocated(device) / _GIB,
        "gpu_memory_reserved_gb": torch.cuda.memory_reserved(device) / _GIB,
    }
    torch.cuda.reset_peak_memory_stats(device)
    # No NVML bindings or driver: not measured, so not logged.
    with contextlib.suppress(ModuleNotFoundError, RuntimeError):
        metrics["gpu_utilization"] = float(torch.cuda.utilization(device))
    return metrics
