"""Pack tokenized examples into fixed-length windows without cross-example attention.

Each window concatenates whole examples; `position_ids` restart at 0 for every example and no
attention mask is passed, so transformers derives a block-diagonal mask from the position ids
(sdpa/eager on CPU, flash-attention varlen on GPU). Training forwards must pass `use_cache=False`:
with a cache object, or with a 2D all-ones mask, attention silently becomes causal across examples
(see tests/training/test_packing_parity.py)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from fineplat.packing.tokenize import IGNORE_INDEX, TokenizedExample


@dataclass
class PackedRow:
    """One fixed-length window: ids, labels, restarting position ids, and which example owns each
    token (-1 for padding), kept so per-example losses can be recovered."""

    input_ids: list[int]
    labels: list[int]
    position_ids: list[int]
    example_ids: list[int]

    @property
    def real_tokens(self) -> int:
        return sum(1 for e in self.example_ids if e >= 0)


def pack_examples(
    examples: Sequence[TokenizedExample], max_seq_len: int, pad_token_id: int
) -> list[PackedRow]:
    """First-fit-decreasing bin packing of whole examples into windows of `max_seq_len`.

    Deterministic: examples are ordered by (length desc, index); ties never depend on hashing.
    Examples longer than the window are truncated to it (validation reports those earlier)."""
    order = sorted(range(len(examples)), key=lambda i: (-len(examples[i].input_ids), i))
    bins: list[list[int]] = []
    room: list[int] = []
    for index in order:
        length = min(len(examples[index].input_ids), max_seq_len)
        if length == 0:
            continue
        for b, free in enumerate(room):
            if free >= length:
                bins[b].append(index)
                room[b] -= length
                break
        else:
            bins.append([index])
            room.append(max_seq_len - length)
    rows = []
    for members in bins:
        ids: list[int] = []
        labels: list[int] = []
        positions: list[int] = []
        owners: list[int] = []
        for index in members:
            example = examples[index]
            n = min(len(example.input_ids), max_seq_len)
            ids += example.input_ids[:n]
            labels += example.labels[:n]
            positions += list(range(n))
            owners += [index] * n
        pad = max_seq_len - len(ids)
        ids += [pad_token_id] * pad
        labels += [IGNORE_INDEX] * pad
        # Padding continues the last example's positions: it joins that example's attention block
        # (attending to it, never attended to: it comes last and labels ignore it), so a window
        # with one example is one causal block, which per-example attention runs unmasked.
        last = positions[-1] + 1 if positions else 0
        positions += list(range(last, last + pad))
        owners += [-1] * pad
        rows.append(PackedRow(ids, labels, positions, owners))
    return rows


def packing_efficiency(rows: Sequence[PackedRow]) -> float:
    """Share of non-padding tokens across windows (1.0 = no padding)."""
    total = sum(len(r.input_ids) for r in rows)
    return sum(r.real_tokens for r in rows) / total if total else 0.0


def pad_batch(examples: Sequence[TokenizedExample], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Unpacked batch, right-padded to the longest example, with an attention mask (the baseline
    and evaluation path)."""
    width = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), width), pad_token_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, example in enumerate(examples):
        n = len(example.input_ids)
        ids[row, :n] = torch.tensor(example.input_ids)
        labels[row, :n] = torch.tensor(example.labels)
        mask[row, :n] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}
