"""One test per malformed-row kind: the reason code, the original line number, and a detail that
names the file, the line, the field, what was expected and what to do. Plus token checks with the
base model's own tokenizer and chat template."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from fineplat.ingestion import StageResult, read_raw, validate_rows
from fineplat.packing.tokenize import IGNORE_INDEX, tokenize_record

GOOD = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]}


def _validate(write_lines: Callable[..., Path], bad: Any, **kwargs: Any) -> tuple[StageResult, Path]:
    """A file of good rows with `bad` on line 3; returns the result and the file."""
    path = write_lines([GOOD, GOOD, bad, GOOD])
    result = validate_rows(read_raw(path), **kwargs)
    assert result.report["rows_in"] == result.report["kept"] + result.report["rejected"] == 4
    return result, path


def _only_rejection(result: StageResult) -> dict[str, Any]:
    assert result.rejected.height == 1, result.rejected.to_dicts()
    row = result.rejected.row(0, named=True)
    assert row["stage"] == "validate"
    return row


@pytest.mark.parametrize(
    ("bad", "code", "detail"),
    [
        (
            b'{"messages": [{"role": "user", "content": "Hi"}',
            "json_parse_error",
            "line 3: Expecting ',' delimiter at column 48. Fix the JSON syntax",
        ),
        (
            b'{"messages": [{"role": "user", "content": "caf\xe9"}]}',
            "invalid_utf8",
            "line 3: byte 0xe9 at byte offset 46 is not valid UTF-8. Re-save the file as UTF-8",
        ),
        ("[1, 2, 3]", "not_an_object", "line 3: expected a JSON object, got an array"),
        ({"message": []}, "missing_field", "line 3: field messages: expected field `messages`"),
        (
            {
                "messages": [
                    {"role": "user", "text": "Hi", "content": "Hi"},
                    {"role": "assistant", "content": "Yo"},
                ]
            },
            "extra_field",
            "field messages[0].text: unexpected message field `text`",
        ),
        (
            {"messages": [{"role": "user", "content": 42}, {"role": "assistant", "content": "Yo"}]},
            "wrong_type",
            "field messages[0].content: expected a string, got a number; write it as a JSON string.",
        ),
        (
            {"messages": "Hi"},
            "wrong_type",
            'field messages: expected an array of messages, got a string; write [{"role": ..., "content": ...}, ...].',
        ),
        (
            {"messages": [{"role": "user", "content": "  "}, {"role": "assistant", "content": "Yo"}]},
            "empty_content",
            "field messages[0].content: expected non-empty text in this user message",
        ),
        ({"messages": []}, "empty_content", "field messages: expected at least one message"),
        (
            {"messages": [{"role": "user", "content": "Hi"}, {"role": "bot", "content": "Yo"}]},
            "unknown_role",
            "field messages[1].role: unknown role 'bot'; expected one of",
        ),
        (
            {
                "messages": [
                    {"role": "user", "content": "Hi"},
                    {"role": "system", "content": "Be nice"},
                    {"role": "assistant", "content": "Yo"},
                ]
            },
            "role_order",
            "field messages[1].role: system message at position 1; a system message is allowed only first.",
        ),
        (
            {"messages": [{"role": "assistant", "content": "Yo"}]},
            "role_order",
            "field messages[0].role: assistant turn at position 0 has no user turn before it",
        ),
        (
            {
                "messages": [
                    {"role": "user", "content": "Hi"},
                    {"role": "user", "content": "Hi?"},
                    {"role": "assistant", "content": "Yo"},
                ]
            },
            "role_order",
            "two user turns in a row (positions 0 and 1); merge them into one turn.",
        ),
        (
            {"messages": [{"role": "user", "content": "Hi"}]},
            "last_turn_not_assistant",
            "field messages[0].role: the conversation ends with a user turn",
        ),
        (
            {
                "messages": [
                    {"role": "user", "content": "Hi"},
                    {"role": "assistant", "content": "Yo", "weight": 0},
                ]
            },
            "no_loss_tokens",
            "every assistant message has weight 0, so this row trains nothing",
        ),
        (
            {
                "messages": [
                    {"role": "user", "content": "Hi"},
                    {"role": "assistant", "content": "Yo", "weight": 0.5},
                ]
            },
            "wrong_type",
            "field messages[1].weight: expected weight 0 or 1, got 0.5; use 0 (no loss) or 1 (train on it).",
        ),
        (
            {
                "messages": [
                    {"role": "user", "content": "Hi", "weight": 1},
                    {"role": "assistant", "content": "Yo"},
                ]
            },
            "extra_field",
            "field messages[0].weight: `weight` applies only to assistant messages",
        ),
        (
            '{"messages": [{"role": "user", "content": "Hi \\ud800"}, {"role": "assistant", "content": "Yo"}]}',
            "invalid_utf8",
            "unpaired surrogate",
        ),
    ],
    ids=lambda value: value if isinstance(value, str) and " " not in value else None,
)
def test_malformed_chat_row_is_rejected_with_code_line_and_detail(
    write_lines: Callable[..., Path], bad: Any, code: str, detail: str
) -> None:
    result, path = _validate(write_lines, bad)
    row = _only_rejection(result)
    assert row["line"] == 3
    assert row["source"] == str(path)
    assert row["reasons"] == [code]
    assert row["detail"].startswith(f"{path}, line 3: ")
    assert detail in row["detail"]
    assert result.report["reasons"] == {code: 1}
    assert result.kept["line"].to_list() == [1, 2, 4]


def test_raw_content_of_a_rejected_row_is_kept_verbatim(write_lines: Callable[..., Path]) -> None:
    result, _ = _validate(write_lines, '{"messages": [{"role": "robot", "content": "beep"}]}')
    assert _only_rejection(result)["raw"] == '{"messages": [{"role": "robot", "content": "beep"}]}'


def test_several_problems_in_one_row_are_all_reported(write_lines: Callable[..., Path]) -> None:
    bad = {"messages": [{"role": "bot", "content": ""}, {"role": "assistant", "content": 3}]}
    row = _only_rejection(_validate(write_lines, bad)[0])
    assert row["reasons"] == ["unknown_role", "empty_content", "wrong_type"]
    assert row["detail"].count(" | ") == 2


@pytest.mark.parametrize(
    ("bad", "code", "detail"),
    [
        (
            {"prompt": "Hi", "chosen": "Same", "rejected": "Same"},
            "chosen_equals_rejected",
            "chosen and rejected are identical",
        ),
        (
            {"prompt": "Hi", "chosen": "", "rejected": "No"},
            "empty_content",
            "field chosen: expected a non-empty `chosen` response",
        ),
        (
            {"prompt": "Hi", "chosen": 1, "rejected": "No"},
            "wrong_type",
            "field chosen: expected a string or an array of messages, got a number; convert it.",
        ),
        (
            {"chosen": "Yes", "rejected": "No"},
            "missing_field",
            "field prompt: expected `prompt` (or chosen/rejected as HH-style",
        ),
        (
            {
                "chosen": [{"role": "user", "content": "A?"}, {"role": "assistant", "content": "Yes"}],
                "rejected": [{"role": "user", "content": "B?"}, {"role": "assistant", "content": "No"}],
            },
            "prompt_mismatch",
            "chosen and rejected contain different conversation histories",
        ),
        (
            {
                "prompt": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hey"}],
                "chosen": "Yes",
                "rejected": "No",
            },
            "role_order",
            "field prompt: expected the prompt to end with a user turn",
        ),
    ],
)
def test_malformed_preference_row_is_rejected(
    write_lines: Callable[..., Path], bad: dict[str, Any], code: str, detail: str
) -> None:
    good = {"prompt": "Hi", "chosen": "Hello!", "rejected": "Go away."}
    path = write_lines([good, good, bad, good])
    result = validate_rows(read_raw(path), purpose="dpo")
    row = _only_rejection(result)
    assert (row["line"], row["reasons"]) == (3, [code])
    assert detail in row["detail"]


def test_text_rows_reject_empty_and_non_string_text(write_lines: Callable[..., Path]) -> None:
    path = write_lines([{"text": "ok"}, {"text": "   "}, {"text": ["a"]}])
    result = validate_rows(read_raw(path), purpose="cpt")
    assert [(r["line"], r["reasons"]) for r in result.rejected.iter_rows(named=True)] == [
        (2, ["empty_content"]),
        (3, ["wrong_type"]),
    ]


def test_strict_fields_rejects_top_level_fields_the_schema_does_not_read(
    write_lines: Callable[..., Path],
) -> None:
    bad = {**GOOD, "labels": [1]}
    lenient = _validate(write_lines, bad)[0]
    assert lenient.report["rejected"] == 0
    assert lenient.report["ignored_fields"] == {"labels": 1}
    strict = _validate(write_lines, bad, strict_fields=True)[0]
    row = _only_rejection(strict)
    assert row["reasons"] == ["extra_field"]
    assert "field labels: field `labels` is not part of the openai schema" in row["detail"]


def test_report_examples_are_capped_per_reason_and_totals_add_up(write_lines: Callable[..., Path]) -> None:
    path = write_lines([GOOD] + ["{oops"] * 10 + [{"messages": [{"role": "user", "content": "Hi"}]}])
    report = validate_rows(read_raw(path)).report
    assert report["reasons"] == {"json_parse_error": 10, "last_turn_not_assistant": 1}
    assert [e["line"] for e in report["examples"]["json_parse_error"]] == [2, 3, 4]
    assert report["rows_in"] == report["kept"] + report["rejected"] == 12


def test_too_many_tokens_is_rejected_with_the_count(write_lines: Callable[..., Path], tokenizer: Any) -> None:
    long_row = {
        "messages": [{"role": "user", "content": "word " * 300}, {"role": "assistant", "content": "ok"}]
    }
    path = write_lines([GOOD, long_row])
    result = validate_rows(read_raw(path), tokenizer=tokenizer, max_tokens=64)
    row = _only_rejection(result)
    assert (row["line"], row["reasons"]) == (2, ["too_many_tokens"])
    expected = len(
        tokenizer.apply_chat_template(long_row["messages"], tokenize=True, return_dict=True)["input_ids"]
    )
    assert (
        f"expected at most 64 tokens with the base model's chat template; the row has {expected}."
        in row["detail"]
    )
    assert "use overlength='truncate'" in row["detail"]
    assert result.report["tokens"]["limit"] == 64


def test_truncate_drops_trailing_turns_until_the_row_fits(
    write_lines: Callable[..., Path], tokenizer: Any
) -> None:
    messages = [
        {"role": "user", "content": "short question"},
        {"role": "assistant", "content": "short answer"},
        {"role": "user", "content": "long follow-up " * 40},
        {"role": "assistant", "content": "long answer " * 40},
    ]
    path = write_lines([{"messages": messages}])
    result = validate_rows(read_raw(path), tokenizer=tokenizer, max_tokens=64, overlength="truncate")
    assert result.rejected.height == 0
    assert json.loads(result.kept["record"][0]) == {"messages": messages[:2]}
    truncated = result.report["tokens"]["truncated_rows"]
    assert truncated[0]["line"] == 1 and truncated[0]["tokens_after"] <= 64 < truncated[0]["tokens_before"]


def test_truncate_cuts_plain_text_at_the_limit(write_lines: Callable[..., Path], tokenizer: Any) -> None:
    original = "the quick brown fox " * 100
    path = write_lines([{"text": original}])
    result = validate_rows(
        read_raw(path), purpose="cpt", tokenizer=tokenizer, max_tokens=50, overlength="truncate"
    )
    record = json.loads(result.kept["record"][0])
    tokens = len(tokenize_record("text", record, tokenizer).input_ids)
    assert 40 < tokens <= 50
    assert original.startswith(record["text"])
    assert result.report["tokens"]["truncated_rows"][0]["tokens_after"] == tokens


def test_render_check_decodes_three_samples_with_their_loss_tokens(
    write_lines: Callable[..., Path], tokenizer: Any
) -> None:
    rows = [
        {
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": f"Q{i}"},
                {"role": "assistant", "content": f"A{i}"},
            ]
        }
        for i in range(5)
    ]
    result = validate_rows(read_raw(write_lines(rows)), tokenizer=tokenizer)
    samples = result.report["render_samples"]
    assert [s["line"] for s in samples] == [1, 2, 3]
    assert samples[0]["rendered"] == (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nQ0<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\nA0<|eot_id|>"
    )
    assert samples[0]["loss_text"] == "A0<|eot_id|>"


def test_weight_zero_turns_carry_no_loss_in_the_render_check(
    write_lines: Callable[..., Path], tokenizer: Any
) -> None:
    row = {
        "messages": [
            {"role": "user", "content": "one"},
            {"role": "assistant", "content": "first", "weight": 0},
            {"role": "user", "content": "two"},
            {"role": "assistant", "content": "second"},
        ]
    }
    result = validate_rows(read_raw(write_lines([row])), tokenizer=tokenizer)
    assert result.report["render_samples"][0]["loss_text"] == "second<|eot_id|>"


def test_template_error_is_a_row_problem_not_a_crash(
    write_lines: Callable[..., Path], tokenizer: Any
) -> None:
    strict = type(tokenizer).from_pretrained(tokenizer.name_or_path)
    strict.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'tool' %}{{ raise_exception('tool turns are not supported') }}"
        "{% endif %}{{ m['role'] + ': ' + m['content'] + '\\n' }}{% endfor %}"
    )
    tool_row = {
        "messages": [
            {"role": "user", "content": "weather?"},
            {"role": "assistant", "content": "call weather()"},
            {"role": "tool", "content": "sunny"},
            {"role": "assistant", "content": "It is sunny."},
        ]
    }
    result = validate_rows(read_raw(write_lines([GOOD, tool_row])), tokenizer=strict)
    row = _only_rejection(result)
    assert (row["line"], row["reasons"]) == (2, ["template_error"])
    assert "the base model's chat template failed to render this row" in row["detail"]


def test_loss_mask_without_generation_tags_matches_the_tagged_template(tokenizer: Any) -> None:
    untagged = type(tokenizer).from_pretrained(tokenizer.name_or_path)
    untagged.chat_template = (
        "{{ bos_token }}{% for m in messages %}{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\\n\\n' "
        "+ m['content'] + '<|eot_id|>' }}{% endfor %}{% if add_generation_prompt %}"
        "{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
    )
    record = {
        "messages": [
            {"role": "user", "content": "one"},
            {"role": "assistant", "content": "first", "weight": 0},
            {"role": "user", "content": "two"},
            {"role": "assistant", "content": "second"},
        ]
    }
    tagged, plain = (
        tokenize_record("chat", record, tokenizer),
        tokenize_record("chat", record, untagged),
    )
    assert plain.input_ids == tagged.input_ids
    assert plain.labels == tagged.labels
    assert tokenizer.decode([t for t in plain.labels if t != IGNORE_INDEX]) == "second<|eot_id|>"


def test_truncate_drops_the_oldest_prompt_turns_of_a_preference_pair(
    write_lines: Callable[..., Path], tokenizer: Any
) -> None:
    prompt = [
        {"role": "system", "content": "Be kind."},
        {"role": "user", "content": "old question " * 30},
        {"role": "assistant", "content": "old answer " * 30},
        {"role": "user", "content": "Which is better?"},
    ]
    row = {"prompt": prompt, "chosen": "This one.", "rejected": "That one, obviously."}
    path = write_lines([row])
    rejected = validate_rows(read_raw(path), purpose="dpo", tokenizer=tokenizer, max_tokens=64)
    assert _only_rejection(rejected)["reasons"] == ["too_many_tokens"]
    result = validate_rows(
        read_raw(path), purpose="dpo", tokenizer=tokenizer, max_tokens=64, overlength="truncate"
    )
    assert json.loads(result.kept["record"][0])["prompt"] == [prompt[0], prompt[3]]
