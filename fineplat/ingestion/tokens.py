"""Token counts and loss masks computed with the base model's own tokenizer and chat template, the
same rendering training uses, so a row that fits here fits in training and the share of tokens that
carry loss is the real one."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# A tokenizer's model_max_length above this is transformers' "no limit" sentinel (int(1e30)), not a context size.
_NO_LIMIT_SENTINEL = 10**9
_RENDER_BATCH = 256


def context_limit(tokenizer: Any, max_tokens: int | None) -> int | None:
    """The context limit to check against: `max_tokens` when given, else the tokenizer's
    model_max_length when it is a real number."""
    if max_tokens is not None:
        return max_tokens
    limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(limit, int) and 0 < limit < _NO_LIMIT_SENTINEL:
        return limit
    return None


def plain_messages(messages: list[dict[str, Any]]) -> list[dict[str, str]]:
    """Messages as chat templates expect them (role and content only)."""
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def conversation_of(kind: str, record: dict[str, Any]) -> list[dict[str, Any]] | None:
    """The conversation a record renders as: chat messages, or a preference pair's prompt + chosen
    (the longer side is checked separately); None for plain text."""
    if kind == "chat":
        return list(record["messages"])
    if kind == "preference":
        return [*record["prompt"], *record["chosen"]]
    return None


def rendered_lengths(tokenizer: Any, kind: str, records: list[dict[str, Any]]) -> list[int]:
    """Token count of each record as training will see it (for a preference pair: the longer of
    prompt+chosen and prompt+rejected). Rendering is per row (Jinja); tokenizing is batched."""
    if not records:
        return []
    if kind == "text":
        return _token_counts(tokenizer, [r["text"] for r in records], add_special_tokens=True)
    if kind == "chat":
        texts = [render(tokenizer, plain_messages(r["messages"])) for r in records]
        return _token_counts(tokenizer, texts, add_special_tokens=False)
    chosen = [render(tokenizer, plain_messages([*r["prompt"], *r["chosen"]])) for r in records]
    rejected = [render(tokenizer, plain_messages([*r["prompt"], *r["rejected"]])) for r in records]
    return [
        max(a, b)
        for a, b in zip(
            _token_counts(tokenizer, chosen, add_special_tokens=False),
            _token_counts(tokenizer, rejected, add_special_tokens=False),
            strict=True,
        )
    ]


def render(tokenizer: Any, messages: list[dict[str, str]]) -> str:
    """The chat template's text for `messages` (no generation prompt)."""
    return str(tokenizer.apply_chat_template(messages, tokenize=False))


def _token_counts(tokenizer: Any, texts: list[str], *, add_special_tokens: bool) -> list[int]:
    counts: list[int] = []
    for start in range(0, len(texts), _RENDER_BATCH):
        encoded = tokenizer(texts[start : start + _RENDER_BATCH], add_special_tokens=add_special_tokens)
        counts.extend(len(ids) for ids in encoded["input_ids"])
    return counts


@dataclass(frozen=True)
class TokenizedRow:
    """A row's token ids and which of them carry loss (1) as training will compute it."""

    input_ids: list[int]
    loss_mask: list[int]


def tokenize_with_mask(tokenizer: Any, kind: str, record: dict[str, Any]) -> TokenizedRow:
    """Token ids and loss mask of one record. Chat: assistant tokens per the template's
    `{% generation %}` blocks (or, for templates without them, by rendering prefixes), with
    weight-0 assistant turns masked out. Preference: prompt + chosen, loss on chosen. Text: all."""
    if kind == "text":
        ids = list(tokenizer(record["text"], add_special_tokens=True)["input_ids"])
        return TokenizedRow(ids, [1] * len(ids))
    messages = conversation_of(kind, record)
    assert messages is not None
    plain = plain_messages(messages)
    out = tokenizer.apply_chat_template(
        plain, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    ids = list(out["input_ids"])
    mask = list(out.get("assistant_masks") or [0] * len(ids))
    assistant_indices = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    if kind == "preference":
        assistant_indices = [i for i in assistant_indices if i >= len(record["prompt"])]
    spans = _mask_spans(mask)
    if len(spans) != len([i for i, m in enumerate(messages) if m["role"] == "assistant"]):
        spans = _prefix_spans(tokenizer, plain, ids)
    all_assistant = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    loss = [0] * len(ids)
    for message_index, (start, end) in zip(all_assistant, spans, strict=False):
        if message_index in assistant_indices and messages[message_index].get("weight", 1) != 0:
            loss[start:end] = [1] * (end - start)
    return TokenizedRow(ids, loss)


def _mask_spans(mask: list[int]) -> list[tuple[int, int]]:
    spans: list[tuple[int, int]] = []
    start: int | None = None
    for index, value in enumerate([*mask, 0]):
        if value and start is None:
            start = index
        elif not value and start is not None:
            spans.append((start, index))
            start = None
    return spans


def _prefix_spans(tokenizer: Any, messages: list[dict[str, str]], ids: list[int]) -> list[tuple[int, int]]:
    """Assistant token spans found by rendering growing prefixes, for templates without generation
    tags: the tokens an assistant turn adds after the generation prompt are its span."""
    spans: list[tuple[int, int]] = []
    for index, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = tokenizer.apply_chat_template(messages[:index], tokenize=True, add_generation_prompt=True)
        after = tokenizer.apply_chat_template(messages[: index + 1], tokenize=True)
        before_ids = before["input_ids"] if isinstance(before, dict) or hasattr(before, "keys") else before
        after_ids = after["input_ids"] if isinstance(after, dict) or hasattr(after, "keys") else after
        spans.append((len(before_ids), min(len(after_ids), len(ids))))
    return spans
