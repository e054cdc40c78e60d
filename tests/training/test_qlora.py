"""QLoRA is LoRA on an NF4-quantized base: its LoRA gradients equal those of the same LoRA on the
exactly dequantized fp32 model; an eval forward does not corrupt later gradients (the bitsandbytes
CPU repacking hazard, shown here unguarded); a run through `train()` learns and saves an adapter."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import bitsandbytes as bnb
import pytest
import torch
from bitsandbytes.functional import dequantize_4bit, has_avx512bf16
from peft import PeftModel, get_peft_model, prepare_model_for_kbit_training
from safetensors.torch import load_file

from fineplat.basemodel import BaseModelInfo, load_base_model, load_tokenizer
from fineplat.training import TrainConfig
from fineplat.training.data import load_training_data
from fineplat.training.quantized import load_nf4_model, load_qlora_model
from fineplat.training.trainer import TrainResult, lm_loss_sum, lora_config

CONFIG = dict(method="qlora", lora_rank=4, lora_alpha=8, max_seq_len=128)
RUN = dict(CONFIG, max_steps=6, batch_size=4, learning_rate_multiplier=10.0, gradient_checkpointing=True)
# Same fp32 arithmetic on the same (dequantized) weights: only summation order may differ.
GRADIENT_TOLERANCE = 1e-5  # relative L2 error per LoRA tensor
REPACK_DAMAGE = 0.1  # relative error the repacked (inference-only) kernels cause, measured ~1.3


def _lora_weights(model: Any, seed: int = 1) -> dict[str, torch.Tensor]:
    """Random non-zero values for every LoRA matrix (B is zero at init, which would leave A's
    gradient zero and the comparison half empty)."""
    generator = torch.Generator().manual_seed(seed)
    return {
        name: torch.randn(p.shape, generator=generator) * 0.05
        for name, p in model.named_parameters()
        if p.requires_grad
    }


def _set(model: Any, weights: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.requires_grad:
                p.copy_(weights[name])


def _lora_gradients(model: Any, batch: dict) -> dict[str, torch.Tensor]:
    model.train()
    model.zero_grad(set_to_none=True)
    loss, tokens = lm_loss_sum(model, batch)
    (loss / tokens).backward()
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.requires_grad}


def _relative_errors(grads: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]) -> dict[str, float]:
    assert grads.keys() == reference.keys()
    return {name: float((grads[name] - g).norm() / g.norm()) for name, g in reference.items()}


def _dequantized_reference(qlora: Any, base_dir: Path, config: TrainConfig) -> Any:
    """A plain fp32 Llama whose linear weights are the NF4 weights of `qlora`, dequantized by
    bitsandbytes, with the same LoRA on top."""
    reference = load_base_model(base_dir)
    weights = {}
    for name, module in qlora.named_modules():
        if isinstance(module, bnb.nn.Linear4bit):
            plain = name.removeprefix("base_model.model.").removesuffix(".base_layer")
            weights[f"{plain}.weight"] = dequantize_4bit(
                module.weight.data, module.weight.quant_state
            ).float()
    assert len(weights) == 4 * 7  # every linear projection of the four blocks is 4-bit
    original = {name: p.detach() for name, p in reference.named_parameters()}
    for name, tensor in weights.items():  # the quantization is real: NF4 error of a few percent
        error = float((tensor - original[name]).norm() / original[name].norm())
        assert 0.01 < error < 0.2, (name, error)
    result = reference.load_state_dict(weights, strict=False)
    assert not result.unexpected_keys
    return get_peft_model(reference, lora_config(config))


@pytest.fixture(scope="module")
def batch(tiny_base_model: BaseModelInfo, small_training_data: Path) -> dict:
    """Three packed windows (position ids restart per example, no attention mask)."""
    data = load_training_data(small_training_data, load_tokenizer(tiny_base_model.path).pad_token_id)
    return data.train_batch([0, 1, 2])


@pytest.fixture(scope="module")
def reference_gradients(tiny_base_model: BaseModelInfo, batch: dict) -> dict[str, torch.Tensor]:
    config = TrainConfig(**CONFIG)
    qlora = load_qlora_model(config, tiny_base_model.path)
    reference = _dequantized_reference(qlora, tiny_base_model.path, config)
    lora = _lora_weights(reference)
    _set(reference, lora)
    return _lora_gradients(reference, batch)


def test_qlora_gradients_equal_the_dequantized_fp32_reference(
    tiny_base_model: BaseModelInfo, batch: dict, reference_gradients: dict[str, torch.Tensor]
) -> None:
    qlora = load_qlora_model(TrainConfig(**CONFIG), tiny_base_model.path)
    assert sum(isinstance(m, bnb.nn.Linear4bit) for m in qlora.modules()) == 4 * 7
    _set(qlora, _lora_weights(qlora))
    errors = _relative_errors(_lora_gradients(qlora, batch), reference_gradients)
    assert len(errors) == 4 * 7 * 2  # lora_A and lora_B of every projection
    assert all(g.norm() > 0 for g in reference_gradients.values())
    assert max(errors.values()) < GRADIENT_TOLERANCE, max(errors.items(), key=lambda kv: kv[1])


def _eval_forward(model: Any, batch: dict) -> None:
    """What the trainer's validation does between steps: eval mode, no gradients."""
    model.eval()
    with torch.no_grad():
        lm_loss_sum(model, batch)
    model.train()


def _repacked(model: Any) -> bool:
    return any(
        getattr(module.weight.quant_state, "packing_format_for_cpu", False)
        for module in model.modules()
        if isinstance(module, bnb.nn.Linear4bit)
    )


def test_an_unguarded_eval_forward_repacks_cpu_weights_and_corrupts_gradients(
    tiny_base_model: BaseModelInfo, batch: dict, reference_gradients: dict[str, torch.Tensor]
) -> None:
    """The hazard `keep_4bit_layers_trainable` guards against, on a model prepared the usual way
    (peft's recipe alone). bitsandbytes repacks only on CPUs with AVX512-BF16; elsewhere the
    gradients stay exact, and this test checks that instead."""
    config = TrainConfig(**CONFIG)
    model = prepare_model_for_kbit_training(
        load_nf4_model(tiny_base_model.path), use_gradient_checkpointing=False
    )
    model = get_peft_model(model, lora_config(config))
    _set(model, _lora_weights(model))
    _eval_forward(model, batch)
    errors = _relative_errors(_lora_gradients(model, batch), reference_gradients)
    if has_avx512bf16():
        assert _repacked(model)
        assert max(errors.values()) > REPACK_DAMAGE, max(errors.values())
    else:
        assert not _repacked(model)
        assert max(errors.values()) < GRADIENT_TOLERANCE


def test_guarded_model_keeps_exact_gradients_after_an_eval_forward(
    tiny_base_model: BaseModelInfo, batch: dict, reference_gradients: dict[str, torch.Tensor]
) -> None:
    qlora = load_qlora_model(TrainConfig(**CONFIG), tiny_base_model.path)
    _set(qlora, _lora_weights(qlora))
    _eval_forward(qlora, batch)
    assert not _repacked(qlora)
    errors = _relative_errors(_lora_gradients(qlora, batch), reference_gradients)
    assert max(errors.values()) < GRADIENT_TOLERANCE


@pytest.fixture(scope="module")
def qlora_run(
    tiny_base_model: BaseModelInfo,
    small_training_data: Path,
    tmp_path_factory: pytest.TempPathFactory,
    train_in,
) -> tuple[TrainResult, Path]:  # type: ignore[no-untyped-def]
    """Six QLoRA steps with gradient checkpointing and a validation pass after steps 2 and 4."""
    root = tmp_path_factory.mktemp("qlora")
    return train_in(
        dict(RUN, checkpoint_interval=2), tiny_base_model, small_training_data, root
    ), root / "out"


def test_mid_run_validation_does_not_change_qlora_training(
    qlora_run: tuple[TrainResult, Path],
    train_in,
    tiny_base_model: BaseModelInfo,
    small_training_data: Path,
    tmp_path: Path,
) -> None:  # type: ignore[no-untyped-def]
    """The trainer's validation forwards (eval, no grad) leave every later step bit-identical to a
    run without them."""
    with_validation, _ = qlora_run
    without = train_in(dict(RUN, checkpoint_interval=100), tiny_base_model, small_training_data, tmp_path)
    assert with_validation.losses == without.losses


@torch.no_grad()
def _training_set_loss(model: Any, data_dir: Path, pad_token_id: int) -> float:
    data = load_training_data(data_dir, pad_token_id)
    model.eval()
    total, count = 0.0, 0
    for start in range(0, data.rows, 8):
        loss, n = lm_loss_sum(model, data.train_batch(list(range(start, min(start + 8, data.rows)))))
        total, count = total + float(loss), count + n
    return total / count


def test_qlora_run_learns_and_saves_a_loadable_adapter(
    qlora_run: tuple[TrainResult, Path], tiny_base_model: BaseModelInfo, small_training_data: Path
) -> None:
    result, out = qlora_run
    assert result.steps == 6
    adapter = load_file(str(out / "adapter_model.safetensors"))
    assert len(adapter) == 4 * 7 * 2 and all("lora_" in name for name in adapter)
    pad = load_tokenizer(tiny_base_model.path).pad_token_id
    # Evaluated on fresh loads: an eval forward is what repacks weights, never on a model to train.
    base_loss = _training_set_loss(load_nf4_model(tiny_base_model.path), small_training_data, pad)
    tuned = PeftModel.from_pretrained(load_nf4_model(tiny_base_model.path), str(out))
    tuned_loss = _training_set_loss(tuned, small_training_data, pad)
    assert tuned_loss < 0.99 * base_loss, (base_loss, tuned_loss)  # measured -2.3% in 6 steps
    # The adapter also applies to the unquantized base (how it is served).
    full_precision = PeftModel.from_pretrained(load_base_model(tiny_base_model.path), str(out))
    assert _training_set_loss(full_precision, small_training_data, pad) < 0.99 * base_loss
