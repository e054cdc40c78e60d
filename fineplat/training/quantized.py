"""QLoRA (Dettmers et al. 2023): the frozen base model in 4-bit NormalFloat with double-quantized
scales, LoRA adapters trained on top in the compute dtype. Cuts a 7B model's weights from ~14 GB
(bf16) to ~4 GB, so a fine-tune fits a single 24 GB GPU.

CPU hazard (bitsandbytes 0.50, CPUs with AVX512-BF16): the first forward of a 4-bit layer in eval
mode without gradients repacks its weights into an inference-only layout (bf16 scales, a kernel
without autograd). Every later training step then computes silently wrong gradients. The trainer
evaluates the validation loss mid-run, so `load_qlora_model` turns that repacking off on every
4-bit layer; tests/training/test_qlora.py shows both the hazard and the guard."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from fineplat.errors import BaseModelError, ConfigError
from fineplat.training import distributed
from fineplat.training.config import TrainConfig
from fineplat.training.device_defaults import default_dtype, resolve_device_choice

# NF4 with double quantization is the QLoRA paper's recipe (4-bit NormalFloat is information-
# theoretically optimal for normally distributed weights; double quantization saves ~0.37 bit/param).
QUANT_TYPE = "nf4"
DOUBLE_QUANT = True


def quantization_config(device: torch.device, dtype: str | None = None) -> Any:
    """The transformers `BitsAndBytesConfig` of a QLoRA base model on `device`. The compute dtype of
    the dequantized matmuls is `dtype`, by default the device's training dtype: bf16 on GPUs (the
    paper's setting), fp32 on CPU, where gradients are checked against an fp32 reference."""
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=QUANT_TYPE,
        bnb_4bit_compute_dtype=getattr(torch, dtype or default_dtype(device)),
        bnb_4bit_use_double_quant=DOUBLE_QUANT,
    )


def load_nf4_model(
    base_model_dir: Path, *, attn_implementation: str = "sdpa", dtype: str | None = None
) -> Any:
    """The base model with every linear layer of its blocks in NF4 (embeddings, norms and the head
    stay in higher precision, as in the QLoRA paper), on this process's device, in eval mode;
    `dtype`: the compute dtype (default: the device's, see `quantization_config`)."""
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as exc:
        raise ConfigError(
            "method 'qlora' needs bitsandbytes (pip install 'fineplat[quant]'); or use method 'lora'."
        ) from exc
    from transformers import AutoModelForCausalLM

    device = distributed.training_device()
    quant = quantization_config(device, dtype)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(base_model_dir),
            quantization_config=quant,
            dtype=quant.bnb_4bit_compute_dtype,
            attn_implementation=attn_implementation,
            device_map={"": device},
        )
    except OSError as exc:
        raise BaseModelError(f"{base_model_dir}: cannot load model weights: {exc}") from exc
    model.eval()
    return model


def keep_4bit_layers_trainable(model: Any) -> int:
    """Stop bitsandbytes from repacking 4-bit weights for CPU inference (see the module docstring);
    returns how many layers were guarded. A no-op on GPUs, where no repacking happens."""
    import bitsandbytes as bnb

    guarded = 0
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit) and hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False
            guarded += 1
    return guarded


def load_qlora_model(config: TrainConfig, base_model_dir: Path) -> Any:
    """A freshly loaded NF4 base with LoRA adapters on `config.lora_target_modules`, ready to train:
    base weights frozen, norms and embeddings in fp32 (peft's `prepare_model_for_kbit_training`),
    gradient checkpointing as configured; dtype and attention as `resolve_device_choice` says."""
    from peft import get_peft_model, prepare_model_for_kbit_training

    from fineplat.training.trainer import lora_config

    choice = resolve_device_choice(config, distributed.training_device())
    model = load_nf4_model(base_model_dir, attn_implementation=choice.attn_implementation, dtype=choice.dtype)
    keep_4bit_layers_trainable(model)
    model = prepare_model_for_kbit_training(
        model,
        use_gradient_checkpointing=config.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False},
    )
    model = get_peft_model(model, lora_config(config))
    model.train()
    return model
