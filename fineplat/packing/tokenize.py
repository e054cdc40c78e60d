"""The one place a dataset row becomes token ids and loss labels, with the base model's own
tokenizer and chat template. Validation counts these tokens and decodes these samples into its
report; `training_data` packs these very examples; so the report shows what training sees.

What each kind of row becomes, and why:

- **chat** (SFT): the conversation rendered by the chat template and tokenized without adding
  special tokens (the template writes its own BOS, as in transformers' `apply_chat_template` and
  TRL). Loss on the tokens of every assistant reply, except replies with `weight: 0`, so the model
  learns to answer, not to imitate users. Which tokens are a reply:
  - the template's `{% generation %}` blocks (transformers' `return_assistant_tokens_mask`) when
    the template has them and they mark one span per assistant message;
  - otherwise (most hub templates carry no tags) the text each reply adds: rendering the
    conversation up to and including the reply, minus rendering it up to the reply with the
    generation prompt. That is the reply plus the template's end-of-turn token (which the model
    must learn to stop), never the role header it is prompted with. Characters map to tokens as
    transformers maps generation spans (every token that overlaps the span), so a template with
    tags and the same template without them give identical labels. A template that renders earlier
    turns differently once later turns follow (some strip past reasoning) cannot be read this way:
    BaseModelError, asking for generation tags.
- **text** (CPT): the tokenizer's own special tokens (BOS where the tokenizer adds one, as it did in
  pre-training) and EOS appended unless already last, so documents packed into one window are
  separated and the model learns where a document ends (TRL's SFTTrainer appends EOS the same way).
  Loss on every token.
- **preference** (DPO): prompt + chosen and prompt + rejected, each rendered as a chat; loss only on
  the chosen/rejected replies, never on assistant turns inside the prompt: DPO compares the policy
  on the continuation alone.

Sequences longer than a window are cut at the right (`TokenizedExample.clipped`); validation rejects
or shortens such rows first, so a row that passed validation is never cut.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from fineplat.errors import BaseModelError, DatasetError

IGNORE_INDEX = -100  # label value torch's cross-entropy skips (transformers convention)
KINDS = ("chat", "text", "preference")
# transformers' own test for generation tags (render_jinja_template in utils/chat_template_utils.py)
GENERATION_TAG = re.compile(r"\{\%-?\s*generation\s*-?\%\}")
TOKENIZE_BATCH = 256  # rows per tokenizer call: the fast tokenizer batches in Rust, memory stays bounded
# A tokenizer's model_max_length above this is transformers' "no limit" sentinel (int(1e30)), not a context size.
_NO_LIMIT_SENTINEL = 10**9

Record = Mapping[str, Any]


@dataclass
class TokenizedExample:
    """One row's token ids and labels (IGNORE_INDEX where no loss is taken; the token id where it is).

    Preference rows carry both sequences in `pair` (chosen_/rejected_ input_ids and labels);
    `input_ids`/`labels` are then the chosen side."""

    input_ids: list[int]
    labels: list[int]
    pair: dict[str, list[int]] = field(default_factory=dict)

    @property
    def loss_tokens(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE_INDEX)

    @property
    def length(self) -> int:
        """Tokens in the longest sequence training runs for this row (a pair's longer side): the
        number a context limit applies to."""
        return max([len(self.input_ids), *(len(v) for k, v in self.pair.items() if k.endswith("input_ids"))])

    def clipped(self, max_seq_len: int) -> TokenizedExample:
        """The first `max_seq_len` tokens of every sequence."""
        return TokenizedExample(
            self.input_ids[:max_seq_len],
            self.labels[:max_seq_len],
            {key: ids[:max_seq_len] for key, ids in self.pair.items()},
        )


def tokenize_rows(
    kinds: Sequence[str], records: Sequence[str | Record], tokenizer: Any
) -> list[TokenizedExample]:
    """Token ids and labels of each normalized record (a dict or its JSON) of the given kind, in
    order, by the rules in this module's docstring. Rendering is per row (Jinja); tokenizing is
    batched. A row the chat template cannot render raises the template's own error."""
    if len(kinds) != len(records):
        raise ValueError(f"{len(kinds)} kinds for {len(records)} records")
    rows = [json.loads(record) if isinstance(record, str) else record for record in records]
    positions: dict[str, list[int]] = {}
    for index, kind in enumerate(kinds):
        if kind not in KINDS:
            raise DatasetError(
                f"row {index}: unknown record kind {kind!r}; expected chat, text or preference"
            )
        positions.setdefault(kind, []).append(index)
    out: dict[int, TokenizedExample] = {}
    for kind, indices in positions.items():
        for start in range(0, len(indices), TOKENIZE_BATCH):
            chunk = indices[start : start + TOKENIZE_BATCH]
            out.update(zip(chunk, _BY_KIND[kind](tokenizer, [rows[i] for i in chunk]), strict=True))
    return [out[index] for index in range(len(rows))]


def tokenize_record(
    kind: str, record: str | Record, tokenizer: Any, max_seq_len: int | None = None
) -> TokenizedExample:
    """One record, cut to `max_seq_len` tokens when given (see `tokenize_rows`)."""
    example = tokenize_rows([kind], [record], tokenizer)[0]
    return example if max_seq_len is None else example.clipped(max_seq_len)


def token_lengths(kind: str, records: Sequence[str | Record], tokenizer: Any) -> list[int]:
    """Each record's `TokenizedExample.length`: what a context limit is checked against."""
    return [example.length for example in tokenize_rows([kind] * len(records), records, tokenizer)]


def render_chat(messages: Sequence[Record], tokenizer: Any, *, add_generation_prompt: bool = False) -> str:
    """The chat template's text for `messages` (role and content of each; other fields such as
    `weight` are fineplat's, not the template's)."""
    return str(
        tokenizer.apply_chat_template(
            _template_messages(messages), tokenize=False, add_generation_prompt=add_generation_prompt
        )
    )


def _template_messages(messages: Sequence[Record]) -> list[dict[str, Any]]:
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def context_limit(tokenizer: Any, max_tokens: int | None) -> int | None:
    """The context limit to check against: `max_tokens` when given, else the tokenizer's
    model_max_length when it is a real number."""
    if max_tokens is not None:
        return max_tokens
    limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(limit, int) and 0 < limit < _NO_LIMIT_SENTINEL:
        return limit
    return None


def _text_examples(tokenizer: Any, rows: list[Record]) -> list[TokenizedExample]:
    encoded = tokenizer([row["text"] for row in rows], add_special_tokens=True)["input_ids"]
    eos = tokenizer.eos_token_id
    examples = []
    for ids in encoded:
        ids = list(ids)
        if eos is not None and (not ids or ids[-1] != eos):
            ids.append(eos)
        examples.append(TokenizedExample(ids, list(ids)))
    return examples


def _chat_examples(tokenizer: Any, rows: list[Record]) -> list[TokenizedExample]:
    conversations = [list(row["messages"]) for row in rows]
    trained = [_trained_replies(messages, first=0) for messages in conversations]
    return [TokenizedExample(ids, labels) for ids, labels in _labelled(tokenizer, conversations, trained)]


def _preference_examples(tokenizer: Any, rows: list[Record]) -> list[TokenizedExample]:
    conversations, trained = [], []
    for row in rows:
        for side in ("chosen", "rejected"):
            messages = [*row["prompt"], *row[side]]
            conversations.append(messages)
            trained.append(_trained_replies(messages, first=len(row["prompt"])))
    labelled = _labelled(tokenizer, conversations, trained)
    examples = []
    for (chosen_ids, chosen_labels), (rejected_ids, rejected_labels) in zip(
        labelled[0::2], labelled[1::2], strict=True
    ):
        pair = {
            "chosen_input_ids": chosen_ids,
            "chosen_labels": chosen_labels,
            "rejected_input_ids": rejected_ids,
            "rejected_labels": rejected_labels,
        }
        examples.append(TokenizedExample(chosen_ids, chosen_labels, pair))
    return examples


_BY_KIND = {"chat": _chat_examples, "text": _text_examples, "preference": _preference_examples}


def _trained_replies(messages: list[Record], *, first: int) -> set[int]:
    """Indices of the assistant messages that carry loss: from `first` on, weight not 0."""
    return {
        index
        for index, message in enumerate(messages)
        if index >= first and message["role"] == "assistant" and message.get("weight", 1) != 0
    }


def _labelled(
    tokenizer: Any, conversations: list[list[Record]], trained: list[set[int]]
) -> list[tuple[list[int], list[int]]]:
    """(ids, labels) per conversation: labels are the ids inside the `trained` replies' spans."""
    if not getattr(tokenizer, "is_fast", False):
        raise BaseModelError(
            f"{getattr(tokenizer, 'name_or_path', 'the base model')}: assistant-only loss masks need a fast "
            "(Rust, tokenizer.json) tokenizer to map characters to tokens; this one is a Python tokenizer. "
            "Add a tokenizer.json to the model directory."
        )
    replies = [[i for i, m in enumerate(messages) if m["role"] == "assistant"] for messages in conversations]
    ids: list[list[int]] = [[] for _ in conversations]
    spans: list[list[tuple[int, int]] | None] = [None] * len(conversations)
    if GENERATION_TAG.search(tokenizer.get_chat_template()):
        out = tokenizer.apply_chat_template(
            [_template_messages(messages) for messages in conversations],
            tokenize=True,
            return_dict=True,
            return_assistant_tokens_mask=True,
        )
        for n, (row_ids, mask) in enumerate(zip(out["input_ids"], out["assistant_masks"], strict=True)):
            ids[n] = list(row_ids)
            runs = _runs(mask)
            if len(runs) == len(replies[n]):  # tags that miss or merge replies fall back below
                spans[n] = runs
    untagged = [n for n, found in enumerate(spans) if found is None]
    if untagged:
        texts, char_spans = zip(
            *(_reply_characters(tokenizer, conversations[n]) for n in untagged), strict=True
        )
        encoded = tokenizer(list(texts), add_special_tokens=False, return_offsets_mapping=True)
        for n, row_ids, offsets, row_spans in zip(
            untagged, encoded["input_ids"], encoded["offset_mapping"], char_spans, strict=True
        ):
            ids[n] = list(row_ids)
            spans[n] = [_overlapping_tokens(offsets, start, end) for start, end in row_spans]
    result = []
    for n, row_ids in enumerate(ids):
        labels = [IGNORE_INDEX] * len(row_ids)
        for message_index, (start, end) in zip(replies[n], spans[n] or [], strict=True):
            if message_index in trained[n]:
                labels[start:end] = row_ids[start:end]
        result.append((row_ids, labels))
    return result


def _runs(mask: Sequence[int]) -> list[tuple[int, int]]:
    """[start, end) of each run of 1s."""
    runs: list[tuple[int, int]] = []
    start: int | None = None
    for index, value in enumerate([*mask, 0]):
        if value and start is None:
            start = index
        elif not value and start is not None:
            runs.append((start, index))
            start = None
    return runs


def _reply_characters(tokenizer: Any, messages: list[Record]) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and, per assistant message, the [start, end) characters it adds
    after the generation prompt (templates without generation tags)."""
    text = render_chat(messages, tokenizer)
    spans = []
    for index, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        if index == 0:
            raise DatasetError(
                "the conversation starts with an assistant reply; without {% generation %} tags in the chat "
                "template its tokens are found after the user turn it answers. Add that turn."
            )
        before = render_chat(messages[:index], tokenizer, add_generation_prompt=True)
        after = render_chat(messages[: index + 1], tokenizer)
        if not (after.startswith(before) and text.startswith(after)):
            raise BaseModelError(
                f"{getattr(tokenizer, 'name_or_path', 'the base model')}: the chat template has no "
                "{% generation %} tags and renders assistant message "
                f"{index} differently once later turns follow, so its tokens cannot be told apart. Wrap "
                "assistant content in {% generation %}...{% endgeneration %} in the chat template."
            )
        spans.append((len(before), len(after)))
    return text, spans


def _overlapping_tokens(offsets: Sequence[tuple[int, int]], start: int, end: int) -> tuple[int, int]:
    """[first, last + 1) of the tokens whose characters overlap [start, end)."""
    inside = [
        t for t, (token_start, token_end) in enumerate(offsets) if token_end > start and token_start < end
    ]
    return (inside[0], inside[-1] + 1) if inside else (0, 0)
