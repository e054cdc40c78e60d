"""Every adapter-free method trains for real through `train()`: full SFT and continued pre-training
(CPT) change every weight and save a model directory that loads with its tokenizer; LoRA changes
only the adapter and saves a peft adapter; a preempted full fine-tune resumes bit-exactly."""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

import polars as pl
import pytest
import torch
from safetensors.torch import load_file

from fineplat.basemodel import BaseModelInfo, load_base_model, load_tokenizer
from fineplat.demo.dataset import task_row
from fineplat.packing.build import build_training_data, read_manifest
from fineplat.training import TrainConfig
from fineplat.training.checkpoint import latest_checkpoint
from fineplat.training.data import load_training_data
from fineplat.training.preemption import Preempted, PreemptionFlag
from fineplat.training.trainer import TrainResult, lm_loss_sum, train

FULL = dict(max_steps=6, batch_size=4, max_seq_len=128, learning_rate_multiplier=50.0, warmup_ratio=0.0)
LORA = dict(
    method="lora",
    max_steps=6,
    batch_size=4,
    max_seq_len=128,
    lora_rank=4,
    lora_alpha=8,
    learning_rate_multiplier=10.0,
)
LORA_MODULES_PER_LAYER = 7  # the config's default targets: all seven linear projections of a block


def _text_rows(count: int, seed: int = 5) -> pl.DataFrame:
    """Plain-text documents for CPT: the routing task written as prose (kept-rows layout)."""
    rng = random.Random(seed)
    records = []
    for _ in range(count):
        row = task_row(rng)
        message = row["messages"][0]["content"].split("\n\n", 1)[1]
        records.append(
            json.dumps({"text": f"{message} This ticket goes to the {row['messages'][1]['content']} queue."})
        )
    return pl.DataFrame(
        {
            "kind": ["text"] * count,
            "record": records,
            "content_hash": [hashlib.sha256(r.encode()).hexdigest() for r in records],
        }
    )


@pytest.fixture(scope="module")
def text_data(tiny_base_model: BaseModelInfo, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """60 short documents packed into 128-token windows."""
    out = tmp_path_factory.mktemp("text_data")
    build_training_data(_text_rows(60), load_tokenizer(tiny_base_model.path), out, max_seq_len=128)
    return out


@torch.no_grad()
def _training_set_loss(model: torch.nn.Module, data_dir: Path, pad_token_id: int) -> float:
    """Mean per-token loss over every training row: a fixed yardstick, unlike per-step losses."""
    data = load_training_data(data_dir, pad_token_id)
    model.eval()
    total, count = 0.0, 0
    for start in range(0, data.rows, 8):
        loss, n = lm_loss_sum(model, data.train_batch(list(range(start, min(start + 8, data.rows)))))
        total, count = total + float(loss), count + n
    return total / count


def _train(config: TrainConfig, base: BaseModelInfo, data: Path, root: Path, **kwargs: object) -> TrainResult:
    return train(
        config,
        base_model_dir=base.path,
        data_dir=data,
        checkpoint_dir=root / "ck",
        output_dir=root / "out",
        **kwargs,  # type: ignore[arg-type]
    )


def _assert_full_fine_tune(base: BaseModelInfo, data: Path, out: Path, result: TrainResult) -> None:
    """Every weight tensor changed, the output loads as a model with its tokenizer, and it fits the
    training data better than the base model."""
    assert result.steps == 6 and len(result.losses) == 6
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in out.iterdir()}
    # Trained with fineplat's per-example attention; saved for any loader (vLLM, plain transformers).
    assert "fineplat" not in (out / "config.json").read_text()
    tokenizer = load_tokenizer(out)
    assert tokenizer.chat_template == load_tokenizer(base.path).chat_template
    before = load_base_model(base.path)
    after = load_base_model(out)
    base_params = dict(before.named_parameters())
    tuned_params = dict(after.named_parameters())
    assert tuned_params.keys() == base_params.keys()
    for name, tensor in tuned_params.items():
        changed = (tensor != base_params[name]).float().mean().item()
        assert changed > 0.99, f"{name}: only {changed:.1%} of the elements changed"
    base_loss = _training_set_loss(before, data, tokenizer.pad_token_id)
    tuned_loss = _training_set_loss(after, data, tokenizer.pad_token_id)
    assert tuned_loss < 0.95 * base_loss, (base_loss, tuned_loss)  # measured -10% (sft), -9% (cpt)


def test_sft_trains_every_weight_and_saves_a_loadable_model(
    tiny_base_model: BaseModelInfo, small_training_data: Path, tmp_path: Path
) -> None:
    result = _train(TrainConfig(method="sft", **FULL), tiny_base_model, small_training_data, tmp_path)
    _assert_full_fine_tune(tiny_base_model, small_training_data, tmp_path / "out", result)


def test_cpt_trains_every_weight_on_packed_text(
    tiny_base_model: BaseModelInfo, text_data: Path, tmp_path: Path
) -> None:
    manifest = read_manifest(text_data)
    assert manifest.kind == "text" and manifest.packed and manifest.train_rows < manifest.train_examples
    assert manifest.loss_tokens == manifest.train_tokens  # CPT learns every token, not just replies
    result = _train(TrainConfig(method="cpt", **FULL), tiny_base_model, text_data, tmp_path)
    _assert_full_fine_tune(tiny_base_model, text_data, tmp_path / "out", result)


def test_lora_trains_only_the_adapter_and_saves_it(
    tiny_base_model: BaseModelInfo, small_training_data: Path, tmp_path: Path
) -> None:
    from peft import PeftModel

    config = TrainConfig(**LORA)
    _train(config, tiny_base_model, small_training_data, tmp_path)
    layers = 4  # TinyModelSpec.num_hidden_layers
    expected = layers * LORA_MODULES_PER_LAYER * 2  # lora_A and lora_B of each targeted projection
    adapter = load_file(str(tmp_path / "out" / "adapter_model.safetensors"))
    assert len(adapter) == expected
    assert all(".lora_A." in name or ".lora_B." in name for name in adapter)
    # What the optimizer could change: the checkpoint's trainable weights and its parameter groups.
    checkpoint = latest_checkpoint(tmp_path / "ck")
    assert checkpoint is not None
    trained = load_file(str(checkpoint / "weights.safetensors"))
    assert len(trained) == expected and all("lora_" in name for name in trained)
    optimizer = torch.load(checkpoint / "optimizer.pt", weights_only=True)
    assert sum(len(group["params"]) for group in optimizer["param_groups"]) == expected

    tokenizer = load_tokenizer(tiny_base_model.path)
    base_loss = _training_set_loss(
        load_base_model(tiny_base_model.path), small_training_data, tokenizer.pad_token_id
    )
    tuned = PeftModel.from_pretrained(load_base_model(tiny_base_model.path), str(tmp_path / "out"))
    tuned_loss = _training_set_loss(tuned, small_training_data, tokenizer.pad_token_id)
    with tuned.disable_adapter():
        untouched_loss = _training_set_loss(tuned, small_training_data, tokenizer.pad_token_id)
    assert untouched_loss == base_loss  # the base weights under the adapter are the original ones
    assert tuned_loss < 0.99 * base_loss, (base_loss, tuned_loss)  # measured -2.3% in 6 steps


def test_full_fine_tune_resumes_bit_exactly(
    tiny_base_model: BaseModelInfo, small_training_data: Path, tmp_path: Path
) -> None:
    """A full fine-tune checkpoints every weight, the optimizer's two moments for each, and resumes
    to the same final model, bit for bit, as an uninterrupted run."""
    config = TrainConfig(method="sft", gradient_accumulation_steps=2, checkpoint_interval=4, **FULL)
    reference = _train(config, tiny_base_model, small_training_data, tmp_path / "reference")
    flag = PreemptionFlag()
    with pytest.raises(Preempted) as preempted:
        _train(
            config,
            tiny_base_model,
            small_training_data,
            tmp_path / "resumed",
            preemption=flag,
            on_step=lambda step: flag.set() if step == 3 else None,
        )
    assert preempted.value.step == 3
    resumed = _train(config, tiny_base_model, small_training_data, tmp_path / "resumed")
    assert resumed.resumed_from_step == 3
    assert resumed.losses == reference.losses[3:]
    final = load_file(str(tmp_path / "resumed" / "out" / "model.safetensors"))
    expected = load_file(str(tmp_path / "reference" / "out" / "model.safetensors"))
    assert final.keys() == expected.keys()
    for name, tensor in expected.items():
        assert torch.equal(final[name], tensor), name
