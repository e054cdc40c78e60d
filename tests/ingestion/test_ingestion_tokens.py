"""One tokenizer for validation and training: the validation report's samples and token counts are
the training data's tokens, loss masks come from a template's generation tags or, without them,
from the text each assistant reply adds, and plain text gets the tokenizer's BOS and one EOS."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from tokenizers import processors

from fineplat.errors import BaseModelError
from fineplat.ingestion import read_raw, validate_rows
from fineplat.packing.build import build_training_data, is_holdout, read_manifest, split_rows
from fineplat.packing.tokenize import IGNORE_INDEX, tokenize_record, tokenize_rows

MAX_SEQ_LEN = 256
SFT_ROWS = [
    {
        "messages": [
            *([{"role": "system", "content": "Answer in one line."}] if i % 3 == 0 else []),
            {"role": "user", "content": f"Where does ticket {i} go?"},
            {"role": "assistant", "content": f"Queue {i % 4}.", **({"weight": 0} if i % 2 else {})},
            {"role": "user", "content": "Are you sure? " * (i % 5 + 1)},
            {"role": "assistant", "content": f"Yes: ticket {i} mentions " + "billing " * (i % 7 + 1)},
        ]
    }
    for i in range(14)
]
CPT_ROWS = [
    {"text": f"Document {i}. " + "The ledger balances at the end of the month. " * (i % 6 + 1)}
    for i in range(14)
]
DPO_ROWS = [
    {
        "prompt": [
            {"role": "user", "content": f"Route ticket {i}."},
            {"role": "assistant", "content": "To which team?"},
            {"role": "user", "content": "The one that handles " + "refunds " * (i % 4 + 1)},
        ],
        "chosen": f"Billing, queue {i % 3}.",
        "rejected": "Shipping, " + "probably " * (i % 5 + 1),
    }
    for i in range(14)
]
ROWS = {"sft": SFT_ROWS, "cpt": CPT_ROWS, "dpo": DPO_ROWS}
# A template in another layout than the tiny model's, written with and without generation tags.
COLON_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{{ m['role'] + ':\\n' }}"
    "{% if m['role'] == 'assistant' %}{% generation %}{{ m['content'] + '<|eot_id|>' }}{% endgeneration %}"
    "{% else %}{{ m['content'] + '<|eot_id|>' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'assistant:\\n' }}{% endif %}"
)
# A template that shows earlier replies differently once later turns follow (as reasoning templates
# that strip past thoughts do): without generation tags no reply's tokens can be located.
REWRITING_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] + ':\\n' }}{% if m['role'] == 'assistant' and not loop.last %}"
    "{{ '(earlier reply)' }}{% else %}{{ m['content'] }}{% endif %}{{ '<|eot_id|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'assistant:\\n' }}{% endif %}"
)


CONVERSATION = {
    "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "one"},
        {"role": "assistant", "content": "first reply"},
        {"role": "user", "content": "two"},
        {"role": "assistant", "content": "second reply"},
    ]
}


def _copy(tokenizer: Any, chat_template: str | None = None) -> Any:
    """A fresh copy of the tokenizer, optionally with another chat template."""
    copy = type(tokenizer).from_pretrained(tokenizer.name_or_path)
    if chat_template is not None:
        copy.chat_template = chat_template
    return copy


def _without_tags(template: str) -> str:
    stripped = re.sub(r"\{%-?\s*(end)?generation\s*-?%\}", "", template)
    assert "generation %" not in stripped and stripped != template
    return stripped


def _loss_runs(tokenizer: Any, labels: list[int]) -> list[str]:
    """The text of each run of loss-carrying tokens."""
    runs: list[list[int]] = [[]]
    for label in labels:
        if label == IGNORE_INDEX:
            if runs[-1]:
                runs.append([])
        else:
            runs[-1].append(label)
    return [tokenizer.decode(run) for run in runs if run]


def _training_sequences(kept: pl.DataFrame, out_dir: Path) -> dict[str, list[tuple[list[int], list[int]]]]:
    """content_hash -> the (input_ids, labels) training runs for that row, read back from the built
    training data: packed windows unpacked by their example ids, preference pairs side by side."""
    train_hashes = split_rows(kept)[0]["content_hash"].to_list()
    train = pl.read_parquet(out_dir / "train.parquet")
    sequences: dict[str, list[tuple[list[int], list[int]]]] = {}
    if "chosen_input_ids" in train.columns:
        for content_hash, row in zip(train_hashes, train.iter_rows(named=True), strict=True):
            sequences[content_hash] = [
                (row["chosen_input_ids"], row["chosen_labels"]),
                (row["rejected_input_ids"], row["rejected_labels"]),
            ]
    else:
        pieces: dict[int, tuple[list[int], list[int]]] = {}
        for row in train.iter_rows(named=True):
            for token, label, owner in zip(row["input_ids"], row["labels"], row["example_ids"], strict=True):
                if owner >= 0:
                    ids, labels = pieces.setdefault(owner, ([], []))
                    ids.append(token)
                    labels.append(label)
        sequences = {train_hashes[owner]: [piece] for owner, piece in pieces.items()}
    for row in pl.read_parquet(out_dir / "holdout.parquet").iter_rows(named=True):
        sequences[row["content_hash"]] = [(row["input_ids"], row["labels"])]
    return sequences


def _rows_outside_the_holdout(
    rows: list[dict[str, Any]], write_lines: Callable[..., Path]
) -> list[dict[str, Any]]:
    """The preference rows that land in the training split: the holdout file keeps only the chosen
    side, and the report's counts cover both sides."""
    kept = validate_rows(read_raw(write_lines(rows, "candidates.jsonl")), purpose="dpo").kept
    assert kept["line"].to_list() == list(range(1, len(rows) + 1))
    return [
        row
        for row, content_hash in zip(rows, kept["content_hash"], strict=True)
        if not is_holdout(content_hash)
    ]


@pytest.mark.parametrize(
    ("purpose", "template"),
    [("sft", "tagged"), ("sft", "untagged"), ("cpt", "tagged"), ("dpo", "tagged"), ("dpo", "untagged")],
)
def test_the_validation_report_shows_the_tokens_training_packs(
    purpose: str, template: str, write_lines: Callable[..., Path], tokenizer: Any, tmp_path: Path
) -> None:
    tok = tokenizer if template == "tagged" else _copy(tokenizer, _without_tags(tokenizer.chat_template))
    rows = ROWS[purpose] if purpose != "dpo" else _rows_outside_the_holdout(ROWS[purpose], write_lines)
    result = validate_rows(read_raw(write_lines(rows)), purpose=purpose, tokenizer=tok)  # type: ignore[arg-type]
    assert result.rejected.height == 0
    out_dir = tmp_path / "training_data"
    manifest = build_training_data(result.kept, tok, out_dir, max_seq_len=MAX_SEQ_LEN)
    assert read_manifest(out_dir).truncated_examples == 0
    assert manifest.packed == (purpose != "dpo")
    sequences = _training_sequences(result.kept, out_dir)
    assert len(sequences) == result.kept.height == len(rows)

    longest = [max(len(ids) for ids, _ in sides) for sides in sequences.values()]
    assert result.report["tokens"]["total"] == sum(longest)
    assert result.report["tokens"]["max"] == max(longest)
    hashes = {(s, line): h for s, line, h in result.kept.select("source", "line", "content_hash").iter_rows()}
    samples = result.report["render_samples"]
    assert [s["line"] for s in samples] == [1, 2, 3]
    for sample in samples:
        ids, labels = sequences[hashes[(sample["source"], sample["line"])]][0]
        loss_ids = [label for label in labels if label != IGNORE_INDEX]
        assert (sample["tokens"], sample["loss_tokens"]) == (len(ids), len(loss_ids))
        assert sample["rendered"] == tok.decode(ids)
        assert sample["loss_text"] == tok.decode(loss_ids)


def test_without_generation_tags_the_loss_covers_exactly_each_assistant_reply(tokenizer: Any) -> None:
    tagged = _copy(tokenizer, COLON_TEMPLATE)
    untagged = _copy(tokenizer, _without_tags(COLON_TEMPLATE))
    example = tokenize_record("chat", CONVERSATION, untagged)
    assert untagged.decode(example.input_ids) == (
        "<|begin_of_text|>system:\nBe brief.<|eot_id|>user:\none<|eot_id|>"
        "assistant:\nfirst reply<|eot_id|>user:\ntwo<|eot_id|>assistant:\nsecond reply<|eot_id|>"
    )
    assert _loss_runs(untagged, example.labels) == ["first reply<|eot_id|>", "second reply<|eot_id|>"]
    with_tags = tokenize_record("chat", CONVERSATION, tagged)
    assert (example.input_ids, example.labels) == (with_tags.input_ids, with_tags.labels)


def test_without_generation_tags_weight_zero_replies_carry_no_loss(tokenizer: Any) -> None:
    untagged = _copy(tokenizer, _without_tags(tokenizer.chat_template))
    messages = [dict(m) for m in CONVERSATION["messages"]]
    messages[2]["weight"] = 0
    example = tokenize_record("chat", {"messages": messages}, untagged)
    assert _loss_runs(untagged, example.labels) == ["second reply<|eot_id|>"]
    assert example.labels == tokenize_record("chat", {"messages": messages}, tokenizer).labels


def test_tags_that_mark_only_some_replies_fall_back_to_every_reply(tokenizer: Any) -> None:
    last_only = _copy(
        tokenizer,
        COLON_TEMPLATE.replace("m['role'] == 'assistant' %}", "m['role'] == 'assistant' and loop.last %}"),
    )
    example = tokenize_record("chat", CONVERSATION, last_only)
    assert _loss_runs(last_only, example.labels) == ["first reply<|eot_id|>", "second reply<|eot_id|>"]


def test_a_template_that_rewrites_earlier_turns_needs_generation_tags(tokenizer: Any) -> None:
    rewriting = _copy(tokenizer, REWRITING_TEMPLATE)
    with pytest.raises(BaseModelError) as caught:
        tokenize_record("chat", CONVERSATION, rewriting)
    assert (
        "has no {% generation %} tags and renders assistant message 2 differently once later turns follow"
        in str(caught.value)
    )


def test_validation_stops_once_on_a_template_that_cannot_mask_replies(
    tokenizer: Any, write_lines: Callable[..., Path]
) -> None:
    """A template problem is the base model's, not the rows': validation raises it once instead of
    quarantining every multi-turn row as a template error."""
    rewriting = _copy(tokenizer, REWRITING_TEMPLATE)
    with pytest.raises(BaseModelError, match="has no \\{% generation %\\} tags"):
        validate_rows(read_raw(write_lines([CONVERSATION])), purpose="sft", tokenizer=rewriting)


def test_preference_loss_is_on_the_continuation_only(tokenizer: Any) -> None:
    record = {
        "prompt": [
            {"role": "user", "content": "Route ticket 7."},
            {"role": "assistant", "content": "To which team?"},
            {"role": "user", "content": "Refunds."},
        ],
        "chosen": [{"role": "assistant", "content": "Billing."}],
        "rejected": [{"role": "assistant", "content": "Shipping, probably, or maybe returns."}],
    }
    for tok in (tokenizer, _copy(tokenizer, _without_tags(tokenizer.chat_template))):
        example = tokenize_record("preference", record, tok)
        assert _loss_runs(tok, example.pair["chosen_labels"]) == ["Billing.<|eot_id|>"]
        assert _loss_runs(tok, example.pair["rejected_labels"]) == [
            "Shipping, probably, or maybe returns.<|eot_id|>"
        ]
        assert example.input_ids == example.pair["chosen_input_ids"]
        assert example.length == len(example.pair["rejected_input_ids"]) > len(example.input_ids)


def test_plain_text_gets_the_tokenizers_own_bos_and_one_eos(tokenizer: Any) -> None:
    text = "The ledger balances."
    body = tokenizer(text, add_special_tokens=False)["input_ids"]
    eos, bos = tokenizer.eos_token_id, tokenizer.bos_token_id
    # The tiny tokenizer adds no BOS of its own (its post-processor is byte-level only).
    assert tokenize_record("text", {"text": text}, tokenizer).input_ids == [*body, eos]
    adds_bos = _copy(tokenizer)
    adds_bos.backend_tokenizer.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(
                single="<|begin_of_text|> $A", special_tokens=[("<|begin_of_text|>", bos)]
            ),
        ]
    )
    example = tokenize_record("text", {"text": text}, adds_bos)
    assert example.input_ids == [bos, *body, eos]
    assert example.labels == example.input_ids
    ends_with_eos = tokenize_record("text", {"text": text + tokenizer.eos_token}, adds_bos)
    assert ends_with_eos.input_ids == [bos, *body, eos]


def test_batched_rows_equal_rows_one_by_one_and_keep_their_order(tokenizer: Any) -> None:
    kinds = ["chat", "text", "preference", "chat"]
    records: list[Any] = [
        SFT_ROWS[0],
        CPT_ROWS[1],
        {
            **DPO_ROWS[2],
            "chosen": [{"role": "assistant", "content": "Yes."}],
            "rejected": [{"role": "assistant", "content": "No."}],
        },
        SFT_ROWS[3],
    ]
    batched = tokenize_rows(kinds, records, tokenizer)
    assert batched == [
        tokenize_record(kind, record, tokenizer) for kind, record in zip(kinds, records, strict=True)
    ]
    assert [bool(example.pair) for example in batched] == [False, False, True, False]
    clipped = tokenize_record("chat", SFT_ROWS[0], tokenizer, max_seq_len=10)
    assert (clipped.input_ids, clipped.labels) == (batched[0].input_ids[:10], batched[0].labels[:10])
