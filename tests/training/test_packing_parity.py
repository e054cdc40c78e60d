"""Packing must never leak across examples: per-example losses from packed windows equal those
from single-example batches, for every attention implementation fineplat allows on CPU."""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F

from fineplat.basemodel import BaseModelInfo, load_base_model, load_tokenizer
from fineplat.demo.dataset import task_row
from fineplat.packing import pack_examples, packing_efficiency, tokenize_record
from fineplat.packing.tokenize import IGNORE_INDEX

PARITY_TOLERANCE = 1e-5  # fp32, as the design requires


def _examples(tokenizer, count: int = 9):  # type: ignore[no-untyped-def]
    rng = random.Random(7)
    return [tokenize_record("chat", task_row(rng), tokenizer, 512) for _ in range(count)]


def _per_example_losses_packed(model, rows, count: int, *, all_ones_mask: bool = False) -> dict[int, float]:  # type: ignore[no-untyped-def]
    losses: dict[int, float] = {}
    for row in rows:
        ids = torch.tensor([row.input_ids])
        forward = {"position_ids": torch.tensor([row.position_ids])}
        if all_ones_mask:
            forward["attention_mask"] = torch.ones_like(ids)
        logits = model(input_ids=ids, use_cache=False, **forward).logits[0].float()
        owners = row.example_ids
        for example in set(owners) - {-1}:
            positions = [
                t
                for t in range(len(owners) - 1)
                if owners[t] == example and owners[t + 1] == example and row.labels[t + 1] != IGNORE_INDEX
            ]
            targets = torch.tensor([row.labels[t + 1] for t in positions])
            losses[example] = float(F.cross_entropy(logits[positions], targets))
    assert len(losses) == count
    return losses


def _per_example_losses_single(model, examples) -> dict[int, float]:  # type: ignore[no-untyped-def]
    losses = {}
    for index, example in enumerate(examples):
        ids = torch.tensor([example.input_ids])
        logits = model(input_ids=ids, use_cache=False).logits[0, :-1].float()
        labels = torch.tensor(example.labels[1:])
        losses[index] = float(F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX))
    return losses


@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
def test_packed_losses_equal_unpacked_losses(
    tiny_base_model: BaseModelInfo, attn_implementation: str
) -> None:
    tokenizer = load_tokenizer(tiny_base_model.path)
    model = load_base_model(tiny_base_model.path, attn_implementation=attn_implementation)
    examples = _examples(tokenizer)
    rows = pack_examples(examples, 256, tokenizer.pad_token_id)
    assert len(rows) < len(examples), "several examples must share a window for this test to mean anything"
    with torch.no_grad():
        packed = _per_example_losses_packed(model, rows, len(examples))
        single = _per_example_losses_single(model, examples)
    for index in single:
        assert packed[index] == pytest.approx(single[index], abs=PARITY_TOLERANCE)


def test_all_ones_mask_leaks_across_examples(tiny_base_model: BaseModelInfo) -> None:
    """The control: a 2D all-ones mask turns on plain causal attention across examples, so the
    parity check above is able to fail."""
    tokenizer = load_tokenizer(tiny_base_model.path)
    model = load_base_model(tiny_base_model.path)
    examples = _examples(tokenizer)
    rows = pack_examples(examples, 256, tokenizer.pad_token_id)
    with torch.no_grad():
        leaky = _per_example_losses_packed(model, rows, len(examples), all_ones_mask=True)
        single = _per_example_losses_single(model, examples)
    worst = max(abs(leaky[i] - single[i]) for i in single)
    assert worst > 1e-3


def test_packing_keeps_whole_examples_and_restarts_positions(tiny_base_model: BaseModelInfo) -> None:
    tokenizer = load_tokenizer(tiny_base_model.path)
    examples = _examples(tokenizer, 20)
    rows = pack_examples(examples, 200, tokenizer.pad_token_id)
    seen: dict[int, list[int]] = {}
    for row in rows:
        assert len(row.input_ids) == len(row.labels) == len(row.position_ids) == 200
        for t, owner in enumerate(row.example_ids):
            if owner >= 0:
                seen.setdefault(owner, []).append(row.position_ids[t])
    assert sorted(seen) == list(range(20))
    for owner, positions in seen.items():
        assert positions == list(range(len(examples[owner].input_ids)))
    real = sum(len(e.input_ids) for e in examples)
    assert packing_efficiency(rows) == pytest.approx(real / (200 * len(rows)))


def test_assistant_only_labels(tiny_base_model: BaseModelInfo) -> None:
    tokenizer = load_tokenizer(tiny_base_model.path)
    record = {
        "messages": [{"role": "user", "content": "Which queue?"}, {"role": "assistant", "content": "billing"}]
    }
    example = tokenize_record("chat", record, tokenizer, 512)
    learned = tokenizer.decode([t for t in example.labels if t != IGNORE_INDEX])
    assert learned == "billing<|eot_id|>"


def test_zero_weight_assistant_turns_carry_no_loss(tiny_base_model: BaseModelInfo) -> None:
    tokenizer = load_tokenizer(tiny_base_model.path)
    record = {
        "messages": [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "old answer", "weight": 0},
            {"role": "user", "content": "again"},
            {"role": "assistant", "content": "shipping"},
        ]
    }
    example = tokenize_record("chat", record, tokenizer, 512)
    assert tokenizer.decode([t for t in example.labels if t != IGNORE_INDEX]) == "shipping<|eot_id|>"
