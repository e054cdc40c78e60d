"""Packing must never leak across examples: per-example losses from packed windows equal those
from single-example batches, for every attention implementation fineplat allows on CPU."""

from __future__ import annotations

import itertools
import random

import pytest
import torch
import torch.nn.functional as F

from fineplat.basemodel import BaseModelInfo, load_base_model, load_tokenizer
from fineplat.demo.dataset import task_row
from fineplat.packing.pack import pack_examples, packing_efficiency
from fineplat.packing.tokenize import IGNORE_INDEX, tokenize_record
from fineplat.training.attention import PACKED_SDPA, _Plan
from fineplat.training.config import TrainConfig
from fineplat.training.trainer import _flat_packed_forward, lm_loss_sum, prepare_model

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


@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager", PACKED_SDPA])
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


def _window_batch(rows) -> dict[str, torch.Tensor]:  # type: ignore[no-untyped-def]
    return {
        "input_ids": torch.tensor([r.input_ids for r in rows]),
        "labels": torch.tensor([r.labels for r in rows]),
        "position_ids": torch.tensor([r.position_ids for r in rows]),
    }


def test_trainer_loss_on_packed_windows_equals_single_examples(tiny_base_model: BaseModelInfo) -> None:
    """The trainer's packed path (windows run as one row under per-example sdpa, logits at label
    positions only) gives the summed loss, label count and LoRA gradients of single-example
    batches, and of transformers' masked sdpa on the same windows."""
    tokenizer = load_tokenizer(tiny_base_model.path)
    examples = _examples(tokenizer, 14)
    rows = pack_examples(examples, 160, tokenizer.pad_token_id)
    assert len(rows) >= 3, "the batch must hold several windows"
    batch = _window_batch(rows)
    config = TrainConfig(method="lora", max_seq_len=160)
    torch.manual_seed(0)  # the same LoRA A initialization for both
    fast = prepare_model(config, tiny_base_model.path, packed=True)
    torch.manual_seed(0)
    masked = prepare_model(config, tiny_base_model.path, packed=False)
    assert _flat_packed_forward(fast, batch) and not _flat_packed_forward(masked, batch)
    for model in (fast, masked):  # nonzero LoRA B, so the adapter's gradients are not all alike
        torch.manual_seed(1)
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                torch.nn.init.normal_(parameter, std=0.05)

    fast_loss, fast_count = lm_loss_sum(fast, batch)
    masked_loss, masked_count = lm_loss_sum(masked, batch)
    fast_loss.backward()
    masked_loss.backward()

    single_sum, single_count = 0.0, 0
    with torch.no_grad():
        for example in examples:
            logits = masked(input_ids=torch.tensor([example.input_ids]), use_cache=False).logits[0, :-1]
            labels = torch.tensor(example.labels[1:])
            single_sum += float(F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX, reduction="sum"))
            single_count += int((labels != IGNORE_INDEX).sum())
    assert fast_count == masked_count == single_count
    assert float(fast_loss.detach()) == pytest.approx(single_sum, rel=PARITY_TOLERANCE)
    assert float(fast_loss.detach()) == pytest.approx(float(masked_loss.detach()), rel=PARITY_TOLERANCE)
    fast_grads = {n: p.grad for n, p in fast.named_parameters() if p.requires_grad}
    masked_grads = {n: p.grad for n, p in masked.named_parameters() if p.requires_grad}
    assert fast_grads.keys() == masked_grads.keys() and fast_grads
    for name, grad in fast_grads.items():
        assert grad is not None and masked_grads[name] is not None
        assert torch.allclose(grad, masked_grads[name], rtol=1e-4, atol=1e-6), name


def test_packed_sdpa_buckets_cover_every_token_once() -> None:
    """The bucket plan gathers each token of each example exactly once, in causal order, and the
    inverse permutation puts the outputs back where they came from."""
    lengths = [5, 1, 40, 3, 17, 16, 2]
    positions = torch.tensor([[p for n in lengths for p in range(n)]])
    plan = _Plan(positions)
    covered = torch.cat([gather[valid] for gather, valid in plan.buckets])
    assert sorted(covered.tolist()) == list(range(sum(lengths)))
    assert torch.equal(covered[plan.inverse], torch.arange(sum(lengths)))
    for gather, valid in plan.buckets:
        longest = gather.size(1)
        assert all(int(v.sum()) >= 0.7 * longest for v in valid)  # the bucket's padding is bounded
        for row, mask in zip(gather, valid, strict=True):
            real = row[mask]
            assert torch.equal(real, torch.arange(int(real[0]), int(real[0]) + real.numel()))


def test_packed_sdpa_masked_and_bucketed_modes_agree(monkeypatch: pytest.MonkeyPatch) -> None:
    """Both ways the per-example attention can run a batch (buckets of examples, or one masked call
    over the windows when buckets would cost more) give the same outputs as sdpa with the dense
    block-diagonal mask, padding included."""
    from types import SimpleNamespace

    from fineplat.training import attention

    torch.manual_seed(0)
    windows = [[0, 1, 2, 3, 4, 0, 1, 2, 0, 1, 2, 3], [*range(9), 9, 10, 11]]  # 3 examples; 1 + padding
    positions = torch.tensor(windows)
    query, key, value = (torch.randn(2, 4, 12, 8) for _ in range(3))
    module = SimpleNamespace(num_key_value_groups=1, training=False)
    example = (positions == 0).cumsum(-1)
    dense = (example[:, :, None] == example[:, None, :]) & torch.ones(12, 12, dtype=torch.bool).tril()
    reference = F.scaled_dot_product_attention(query, key, value, attn_mask=dense[:, None]).transpose(1, 2)
    outputs = {}
    for mode, causal_cost in (("buckets", 0.0), ("masked", 100.0)):
        monkeypatch.setattr(attention, "CAUSAL_COST", causal_cost)
        plan = attention._Plan(positions)
        assert plan.per_example == (mode == "buckets")
        attention._cache["ref"] = None  # a fresh plan for this mode
        outputs[mode], _ = attention.packed_sdpa_attention(
            module, query, key, value, None, position_ids=positions
        )
    for mode, output in outputs.items():
        torch.testing.assert_close(output, reference, rtol=1e-5, atol=1e-6, msg=mode)


def test_flash_attention_path_runs_packed_windows_as_one_row_with_example_boundaries(
    tiny_base_model: BaseModelInfo, monkeypatch: pytest.MonkeyPatch
) -> None:
    """flash-attention's varlen kernel (GPU only) keeps the examples of packed windows apart only
    within one row, through cumulative example lengths. A CPU stand-in that attends causally within
    the `cu_seq_lens` the trainer passes and sees nothing else (no mask, no position ids) gives the
    summed loss and label count of single-example batches."""
    from transformers.integrations.sdpa_attention import repeat_kv
    from transformers.modeling_utils import AttentionInterface

    from fineplat.training import trainer

    seen: list[list[int]] = []

    def varlen_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):  # type: ignore[no-untyped-def]
        assert attention_mask is None and query.size(0) == 1, "packed windows must arrive as one row"
        bounds = kwargs["cu_seq_lens_q"].tolist()
        assert kwargs["cu_seq_lens_k"].tolist() == bounds and bounds[-1] == query.size(2)
        assert (
            kwargs["max_length_q"]
            == kwargs["max_length_k"]
            == max(b - a for a, b in itertools.pairwise(bounds))
        )
        seen.append(bounds)
        groups = module.num_key_value_groups
        key, value = repeat_kv(key, groups), repeat_kv(value, groups)
        pieces = [
            F.scaled_dot_product_attention(
                query[:, :, a:b], key[:, :, a:b], value[:, :, a:b], scale=scaling, is_causal=True
            )
            for a, b in itertools.pairwise(bounds)
        ]
        return torch.cat(pieces, dim=2).transpose(1, 2).contiguous(), None

    name = "test_varlen_stand_in"  # without "flash": transformers would load a flash kernel
    monkeypatch.setitem(AttentionInterface._global_mapping, name, varlen_attention)
    monkeypatch.setattr(trainer, "_VARLEN_ATTENTION", trainer._VARLEN_ATTENTION | {name})
    monkeypatch.setattr(trainer, "_FLASH_VARLEN_ATTENTION", frozenset({name}))
    tokenizer = load_tokenizer(tiny_base_model.path)
    examples = _examples(tokenizer, 14)
    rows = pack_examples(examples, 160, tokenizer.pad_token_id)
    assert len(rows) >= 3, "the batch must hold several windows"
    model = load_base_model(tiny_base_model.path)
    model.set_attn_implementation(name)
    reference = load_base_model(tiny_base_model.path)  # sdpa, one example per forward
    with torch.no_grad():
        loss, count = lm_loss_sum(model, _window_batch(rows))
        single_sum, single_count = 0.0, 0
        for example in examples:
            logits = reference(input_ids=torch.tensor([example.input_ids]), use_cache=False).logits[0, :-1]
            labels = torch.tensor(example.labels[1:])
            single_sum += float(F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX, reduction="sum"))
            single_count += int((labels != IGNORE_INDEX).sum())
    flat = [p for row in rows for p in row.position_ids]
    starts = [i for i, p in enumerate(flat) if p == 0]
    assert seen[0] == [*starts, len(flat)] and len(starts) > len(rows)  # windows and examples in them
    assert len(seen) == model.config.num_hidden_layers  # one flattened forward
    assert count == single_count
    assert float(loss) == pytest.approx(single_sum, rel=PARITY_TOLERANCE)
