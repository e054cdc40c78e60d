"""Task-holdout evaluation: greedy generation on held-out prompts, exact match against the
reference reply. Base and adapter are scored on the same rows so the difference is the adapter's."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import torch
from rich.progress import Progress


@dataclass
class HoldoutScore:
    """Exact match over a holdout set, with a few examples for the report."""

    exact_match: float  # share of rows whose normalized completion equals the reference
    rows: int
    samples: list[dict[str, str]] = field(default_factory=list)


def normalize_answer(text: str) -> str:
    """Whitespace-trimmed, internal whitespace collapsed: exact match should not hinge on a newline."""
    return " ".join(text.split())


def prompt_and_reference(record: str | dict[str, Any]) -> tuple[list[dict[str, Any]], str]:
    """Split a chat record into the prompt (everything before the last assistant turn) and the reference."""
    data = json.loads(record) if isinstance(record, str) else record
    messages = data["messages"]
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    return messages[:last], messages[last]["content"]


@torch.no_grad()
def generate_replies(
    model: Any,
    tokenizer: Any,
    prompts: list[list[dict[str, Any]]],
    *,
    max_new_tokens: int = 32,
    batch_size: int = 16,
    show_progress: bool = False,
) -> list[str]:
    """Greedy completions for chat prompts, batched with left padding."""
    model.eval()
    tokenizer.padding_side = "left"
    replies: list[str] = []
    with Progress(disable=not show_progress, transient=True) as progress:
        task = progress.add_task("generating", total=len(prompts))
        for start in range(0, len(prompts), batch_size):
            chunk = prompts[start : start + batch_size]
            texts = [
                tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True) for p in chunk
            ]
            enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
            out = model.generate(
                **enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id
            )
            for row in out[:, enc["input_ids"].shape[1] :]:
                replies.append(tokenizer.decode(row, skip_special_tokens=True))
            progress.update(task, advance=len(chunk))
    return replies


def exact_match(
    model: Any, tokenizer: Any, records: list[str], *, max_new_tokens: int = 32, show_progress: bool = False
) -> HoldoutScore:
    """Exact match of greedy replies against the references of `records` (chat JSON strings)."""
    pairs = [prompt_and_reference(r) for r in records]
    replies = generate_replies(
        model, tokenizer, [p for p, _ in pairs], max_new_tokens=max_new_tokens, show_progress=show_progress
    )
    hits = [normalize_answer(r) == normalize_answer(ref) for r, (_, ref) in zip(replies, pairs, strict=True)]
    samples = [
        {"prompt": p[-1]["content"], "reference": ref, "reply": r}
        for r, (p, ref) in list(zip(replies, pairs, strict=True))[:5]
    ]
    return HoldoutScore(exact_match=sum(hits) / len(hits) if hits else 0.0, rows=len(hits), samples=samples)
