"""What a fine-tune trains with when its config leaves `dtype` or `attn_implementation` at "auto":
one function decides from the device this process trains on, and the run records the choice
(`TrainResult.dtype`, `TrainResult.attn_implementation`).

Why these defaults:
- **bfloat16 on CUDA GPUs with native bf16** (compute capability 8.0+: A100, L4, H100, ...): half
  the memory and bandwidth of float32 at the tensor-core rate, with float32's exponent range, so no
  loss scaling (float16 needs it and is not offered). float32 elsewhere: CPUs (bf16 matmuls there
  are slow or emulated on most hosts, and the CPU tests compare against float32 references) and
  older GPUs that would only emulate bf16.
- **The weights that train stay float32** in a bf16 run (`weights_dtype`): bf16 keeps 8 bits of
  mantissa, so an AdamW update of 2e-5 (the full fine-tune learning rate) on a weight of 0.02 is
  below half its spacing and rounds away (measured: 71% of a 0.02-scale matrix unchanged after ten
  such steps in pure bf16). Adapter methods load the frozen base in bf16 and peft keeps the LoRA
  weights in float32; full fine-tunes load float32 master weights and compute under bf16 autocast
  (`mixed_precision`; DeepSpeed ZeRO instead casts the model to bf16 and keeps float32 copies in
  its optimizer).
- **flash-attention's varlen kernel on CUDA when `flash-attn` is installed** (and the run is in
  bf16: the kernel has no float32 path). For packed windows it computes only each example's own
  causal block, from cumulative example lengths derived from the restarting `position_ids`, with
  the windows flattened into one row (`fineplat.training.trainer.lm_loss_sum`). Otherwise sdpa,
  which the trainer turns into per-example sdpa for packed data (`fineplat.training.attention`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fineplat.errors import ConfigError
from fineplat.training.config import AUTO, TrainConfig

FLASH_ATTENTION = "flash_attention_2"
# The kernel runs in half precision only; bf16 is the one half-precision dtype a run can have.
FLASH_ATTENTION_DTYPE = "bfloat16"


@dataclass(frozen=True)
class DeviceChoice:
    """The concrete numerics of a run on one device: what `auto` resolved to, or what was set."""

    dtype: str  # "float32" | "bfloat16": the compute dtype (see `weights_dtype` for the weights)
    attn_implementation: str  # "sdpa" | "eager" | "flash_attention_2": what the model loads with


def native_bf16(device: torch.device) -> bool:
    """Whether `device` is a CUDA GPU with native bf16 arithmetic (compute capability 8.0+)."""
    return (
        device.type == "cuda"
        and torch.cuda.is_available()
        and torch.cuda.is_bf16_supported(including_emulation=False)
    )


def flash_attention_installed() -> bool:
    """Whether transformers can load `flash_attention_2` here: the `flash-attn` package (>= 2.3.3,
    transformers' own check) and a CUDA build of torch."""
    from transformers.utils import is_flash_attn_2_available

    return bool(is_flash_attn_2_available())


def default_dtype(device: torch.device) -> str:
    """bfloat16 on a CUDA GPU with native bf16, float32 everywhere else."""
    return "bfloat16" if native_bf16(device) else "float32"


def default_attention(device: torch.device, dtype: str) -> str:
    """flash_attention_2 on CUDA in bf16 when flash-attn is installed, sdpa otherwise."""
    if device.type == "cuda" and dtype == FLASH_ATTENTION_DTYPE and flash_attention_installed():
        return FLASH_ATTENTION
    return "sdpa"


def weights_dtype(config: TrainConfig, choice: DeviceChoice) -> str:
    """The dtype the base model loads in: the compute dtype for adapter methods (the base is
    frozen), float32 for full fine-tunes (their master weights; see `mixed_precision`)."""
    return choice.dtype if config.uses_adapter else "float32"


def mixed_precision(config: TrainConfig, choice: DeviceChoice) -> bool:
    """Whether forward passes run under bf16 autocast over float32 weights: full fine-tunes in bf16."""
    return choice.dtype == "bfloat16" and weights_dtype(config, choice) == "float32"


def resolve_device_choice(config: TrainConfig, device: torch.device) -> DeviceChoice:
    """The dtype and attention a run of `config` trains with on `device`: the config's values, with
    "auto" replaced by this device's defaults. Raises ConfigError for flash attention where it
    cannot run (no CUDA, no flash-attn, or float32)."""
    dtype = default_dtype(device) if config.dtype == AUTO else config.dtype
    attention = (
        default_attention(device, dtype) if config.attn_implementation == AUTO else config.attn_implementation
    )
    if attention == FLASH_ATTENTION:
        if device.type != "cuda" or not flash_attention_installed():
            raise ConfigError(
                f"attn_implementation: {FLASH_ATTENTION!r} needs a CUDA GPU and the flash-attn package "
                f"(this process trains on {device.type}); set attn_implementation='auto' or 'sdpa'."
            )
        if dtype != FLASH_ATTENTION_DTYPE:
            raise ConfigError(
                f"attn_implementation: {FLASH_ATTENTION!r} runs in bfloat16, not dtype={dtype!r}; set "
                "dtype='bfloat16' or 'auto', or attn_implementation='sdpa'."
            )
    return DeviceChoice(dtype=dtype, attn_implementation=attention)
