"""A config that leaves dtype and attention at "auto" trains in bf16 with flash-attention's varlen
kernel on a CUDA GPU that has both (sdpa without flash-attn), and in float32 with sdpa on a CPU;
what a config sets explicitly wins, flash attention where it cannot run is a config error, and a
run records what it trained with. The GPU cases run on a fake CUDA (this machine has none)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from fineplat.basemodel import BaseModelInfo
from fineplat.errors import ConfigError
from fineplat.training import TrainConfig, device_defaults
from fineplat.training.attention import PACKED_SDPA
from fineplat.training.device_defaults import DeviceChoice, resolve_device_choice

CPU = torch.device("cpu")
GPU = torch.device("cuda", 0)


@pytest.fixture
def flash_attn(monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """`flash_attn(installed)`: whether transformers finds the flash-attn package, for one test."""

    def install(installed: bool) -> None:
        monkeypatch.setattr(device_defaults, "flash_attention_installed", lambda: installed)

    return install


def test_cpu_defaults_to_float32_and_sdpa(flash_attn) -> None:  # type: ignore[no-untyped-def]
    flash_attn(True)  # installed or not, a CPU has no flash kernel
    assert TrainConfig().dtype == TrainConfig().attn_implementation == "auto"
    assert resolve_device_choice(TrainConfig(), CPU) == DeviceChoice("float32", "sdpa")


def test_cuda_defaults_to_bf16_and_flash_attention_when_installed(fake_cuda, flash_attn) -> None:  # type: ignore[no-untyped-def]
    fake_cuda()
    flash_attn(True)
    assert resolve_device_choice(TrainConfig(), GPU) == DeviceChoice("bfloat16", "flash_attention_2")
    assert resolve_device_choice(TrainConfig(method="qlora"), GPU) == DeviceChoice(
        "bfloat16", "flash_attention_2"
    )


def test_cuda_without_flash_attn_defaults_to_bf16_and_sdpa(fake_cuda, flash_attn) -> None:  # type: ignore[no-untyped-def]
    fake_cuda()
    flash_attn(False)
    assert resolve_device_choice(TrainConfig(), GPU) == DeviceChoice("bfloat16", "sdpa")


def test_gpu_without_native_bf16_defaults_to_float32_and_sdpa(fake_cuda, flash_attn) -> None:  # type: ignore[no-untyped-def]
    """A pre-Ampere GPU (V100, T4) would only emulate bf16, and flash attention has no float32."""
    fake_cuda(bf16=False)
    flash_attn(True)
    assert resolve_device_choice(TrainConfig(), GPU) == DeviceChoice("float32", "sdpa")


def test_explicit_dtype_and_attention_win_over_the_device_defaults(fake_cuda, flash_attn) -> None:  # type: ignore[no-untyped-def]
    fake_cuda()
    flash_attn(True)
    explicit = TrainConfig(dtype="float32", attn_implementation="eager")
    assert resolve_device_choice(explicit, GPU) == DeviceChoice("float32", "eager")
    # float32 set, attention left to the device: flash attention has no float32 kernel
    assert resolve_device_choice(TrainConfig(dtype="float32"), GPU) == DeviceChoice("float32", "sdpa")
    assert resolve_device_choice(TrainConfig(attn_implementation="sdpa"), GPU) == DeviceChoice(
        "bfloat16", "sdpa"
    )
    assert resolve_device_choice(TrainConfig(dtype="bfloat16"), CPU) == DeviceChoice("bfloat16", "sdpa")


def test_flash_attention_where_it_cannot_run_is_a_config_error(fake_cuda, flash_attn) -> None:  # type: ignore[no-untyped-def]
    flash = TrainConfig(attn_implementation="flash_attention_2")
    flash_attn(True)
    with pytest.raises(
        ConfigError, match=r"needs a CUDA GPU .* trains on cpu\); set attn_implementation='auto'"
    ):
        resolve_device_choice(flash, CPU)
    fake_cuda()
    with pytest.raises(ConfigError, match=r"runs in bfloat16, not dtype='float32'; set dtype='bfloat16'"):
        resolve_device_choice(TrainConfig(attn_implementation="flash_attention_2", dtype="float32"), GPU)
    flash_attn(False)
    with pytest.raises(ConfigError, match=r"needs a CUDA GPU and the flash-attn package"):
        resolve_device_choice(flash, GPU)
    flash_attn(True)
    assert resolve_device_choice(flash, GPU) == DeviceChoice("bfloat16", "flash_attention_2")


def test_a_cpu_run_records_float32_and_per_example_sdpa(
    tiny_base_model: BaseModelInfo, small_training_data: Path, tmp_path: Path, train_in
) -> None:  # type: ignore[no-untyped-def]
    """The result says what the run trained with: the packed data turned sdpa into per-example
    sdpa, and the weights stayed float32."""
    result = train_in(
        dict(method="lora", max_steps=1, batch_size=2, max_seq_len=128, lora_rank=2),
        tiny_base_model,
        small_training_data,
        tmp_path,
    )
    assert (result.dtype, result.attn_implementation) == ("float32", PACKED_SDPA)


def test_a_full_fine_tune_in_bf16_keeps_float32_weights_so_small_updates_land(
    tiny_base_model: BaseModelInfo, small_training_data: Path, tmp_path: Path, train_in
) -> None:  # type: ignore[no-untyped-def]
    """bf16 compute (autocast) over float32 master weights: updates far below bf16's spacing, which
    pure-bf16 weights would round away, still change the weights, and the output is float32."""
    result = train_in(
        dict(method="sft", dtype="bfloat16", max_steps=2, batch_size=2, max_seq_len=128, warmup_ratio=0.0),
        tiny_base_model,
        small_training_data,
        tmp_path,
    )
    assert result.dtype == "bfloat16" and all(math.isfinite(loss) for loss in result.losses)
    name = "model.layers.0.self_attn.q_proj.weight"
    before = load_file(str(tiny_base_model.path / "model.safetensors"))[name].float()
    after = load_file(str(tmp_path / "out" / "model.safetensors"))[name]
    assert after.dtype == torch.float32
    half_spacing = 2.0 ** (torch.floor(torch.log2(before.abs())) - 8)  # bf16: 7 stored mantissa bits
    below = (after - before).abs() < half_spacing
    assert below.float().mean() > 0.5  # most updates are smaller than bf16 could represent
    assert bool((after != before)[below].all())  # and every one of them landed
