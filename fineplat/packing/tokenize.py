"""Turn normalized records into token ids and labels with the base model's own tokenizer and
chat template: loss only on assistant tokens (the template's `{% generation %}` spans), respecting
per-message `weight`, so the model learns to answer, not to imitate users."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from fineplat.errors import DatasetError

IGNORE_INDEX = -100  # label value torch's cross-entropy skips (transformers convention)


@dataclass
class TokenizedExample:
    """One example's token ids and labels (IGNORE_INDEX where no loss is taken).

    Preference examples carry the chosen and rejected continuations in `pair` instead."""

    input_ids: list[int]
    labels: list[int]
    pair: dict[str, list[int]] = field(default_factory=dict)

    @property
    def loss_tokens(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE_INDEX)


def _assistant_spans(mask: list[int]) -> list[tuple[int, int]]:
    spans, start = [], None
    for index, flag in enumerate([*mask, 0]):
        if flag and start is None:
            start = index
        elif not flag and start is not None:
            spans.append((start, index))
            start = None
    return spans


def tokenize_chat(messages: list[dict[str, Any]], tokenizer: Any, max_seq_len: int) -> TokenizedExample:
    """Render `messages` with the chat template; labels on assistant spans with weight != 0."""
    rendered = tokenizer.apply_chat_template(
        messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    input_ids: list[int] = list(rendered["input_ids"])
    mask: list[int] = list(rendered["assistant_masks"])
    assistant_messages = [m for m in messages if m["role"] == "assistant"]
    spans = _assistant_spans(mask)
    if len(spans) != len(assistant_messages):
        raise DatasetError(
            f"chat template produced {len(spans)} assistant spans for {len(assistant_messages)} assistant "
            "messages; the template needs {% generation %} tags around each assistant reply."
        )
    labels = [IGNORE_INDEX] * len(input_ids)
    for (start, end), message in zip(spans, assistant_messages, strict=True):
        if message.get("weight", 1) != 0:
            labels[start:end] = input_ids[start:end]
    return TokenizedExample(input_ids[:max_seq_len], labels[:max_seq_len])


def tokenize_text(text: str, tokenizer: Any, max_seq_len: int) -> TokenizedExample:
    """Plain text for continued pre-training: BOS + text + EOS, loss on every token."""
    ids = tokenizer.encode(text, add_special_tokens=False)
    ids = [tokenizer.bos_token_id, *ids, tokenizer.eos_token_id]
    ids = [i for i in ids if i is not None][:max_seq_len]
    return TokenizedExample(ids, list(ids))


def tokenize_preference(record: dict[str, Any], tokenizer: Any, max_seq_len: int) -> TokenizedExample:
    """Prompt + chosen and prompt + rejected, labels on the continuation only (for DPO)."""
    pair: dict[str, list[int]] = {}
    for side in ("chosen", "rejected"):
        example = tokenize_chat([*record["prompt"], *record[side]], tokenizer, max_seq_len)
        pair[f"{side}_input_ids"] = example.input_ids
        pair[f"{side}_labels"] = example.labels
    return TokenizedExample(pair["chosen_input_ids"], pair["chosen_labels"], pair)


def tokenize_record(
    kind: str, record: str | dict[str, Any], tokenizer: Any, max_seq_len: int
) -> TokenizedExample:
    """Tokenize one normalized record of the given kind ("chat", "text" or "preference")."""
    data = json.loads(record) if isinstance(record, str) else record
    if kind == "chat":
        return tokenize_chat(data["messages"], tokenizer, max_seq_len)
    if kind == "text":
        return tokenize_text(data["text"], tokenizer, max_seq_len)
    if kind == "preference":
        return tokenize_preference(data, tokenizer, max_seq_len)
    raise DatasetError(f"unknown record kind {kind!r}; expected chat, text or preference")
