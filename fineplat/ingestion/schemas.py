"""Recognize the common fine-tuning dataset schemas and normalize each row into one internal form,
collecting every problem with the field it concerns, so one pass explains all that is wrong with a
row instead of stopping at the first exception.

Schemas (detected per dataset, overridable): OpenAI chat `messages`, `prompt`/`completion`, Alpaca
(`instruction`/`input`/`output`), ShareGPT (`conversations` of `from`/`value`, function-call turns
included), preference triples (`prompt`/`chosen`/`rejected`, strings, message lists or single
message objects; LLaMA-Factory's ShareGPT pairs with the prompt in `conversations`; Anthropic
HH-style transcripts without `prompt`) and plain `text`. Unpaired (KTO-style) preference rows, chat
rows with a boolean `label`, are refused with what to do instead: fineplat does not train KTO.

Normalized forms: chat `{"messages": [{"role", "content", "weight"?: 0}]}`; preference
`{"prompt": [...], "chosen": [...], "rejected": [...]}`; text `{"text": str}`. A weight of 1 is the
default and is dropped, so equal training content always has equal JSON.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal, TypeGuard

from fineplat.errors import DatasetError
from fineplat.hashing import canonical_json

Purpose = Literal["sft", "dpo", "cpt"]
SCHEMAS = ("openai", "prompt_completion", "alpaca", "sharegpt", "preference", "text")
SCHEMA_KIND = {
    "openai": "chat",
    "prompt_completion": "chat",
    "alpaca": "chat",
    "sharegpt": "chat",
    "preference": "preference",
    "text": "text",
}
PURPOSE_KIND = {"sft": "chat", "dpo": "preference", "cpt": "text"}
# Fields each schema reads; any other top-level field is metadata and is ignored (and counted).
SCHEMA_FIELDS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {  # (required, optional)
    "openai": (("messages",), ("tools", "functions", "parallel_tool_calls")),
    "prompt_completion": (("prompt", "completion"), ()),
    "alpaca": (("instruction", "output"), ("input", "system", "history")),
    "sharegpt": (("conversations",), ("system", "tools")),
    "preference": (("chosen", "rejected"), ("prompt", "conversations", "system")),
    "text": (("text",), ()),
}
ROLES = ("system", "user", "assistant", "tool")
# OpenAI message keys; `developer` is OpenAI's newer name for `system`, `function` the legacy `tool`.
_OPENAI_MESSAGE_KEYS = {"role", "content", "weight", "name", "tool_calls", "tool_call_id", "function_call"}
_OPENAI_ROLES = {
    "system": "system",
    "developer": "system",
    "user": "user",
    "assistant": "assistant",
    "tool": "tool",
}
_OPENAI_ROLES["function"] = "tool"
# ShareGPT speaker names seen in the wild (ShareGPT, Vicuna, OpenHermes, LLaMA-Factory function calls).
_SHAREGPT_ROLES = {
    "system": "system",
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "chatgpt": "assistant",
    "bard": "assistant",
    "bing": "assistant",
    "model": "assistant",
    "function_call": "assistant",
    "observation": "tool",
    "tool": "tool",
    "function": "tool",
}
_SHAREGPT_TURN_KEYS = {"from", "value", "weight", "role", "content", "name"}
_OPENAI_EXAMPLE = '{"role": ..., "content": ...}'
_OPENAI_KEYS_TEXT = ", ".join(sorted(_OPENAI_MESSAGE_KEYS))
_SHAREGPT_EXAMPLE = '{"from": ..., "value": ...}'
# Unpaired (KTO-style) preference rows: a conversation or prompt/completion plus a JSON boolean saying
# whether the completion is desirable (TRL's "unpaired preference" type; LLaMA-Factory's `kto_tag`,
# `label` in its kto_en_demo.json). fineplat trains SFT and paired DPO only, so such rows are refused:
# read as chat, they would train on the undesirable completions too.
UNPAIRED_LABEL_FIELD = "label"
_UNPAIRED_FIX = (
    "fineplat trains SFT and paired preferences (DPO), not KTO. For SFT, keep the rows with label true and "
    "delete the `label` field; for DPO, pair a desirable and an undesirable completion of the same prompt "
    "as `chosen` and `rejected`."
)
# Anthropic HH-RLHF transcripts: "\n\nHuman: ...\n\nAssistant: ..." in one string.
_HH_TURN = re.compile(r"\n\n(Human|Assistant): ?")


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a row: a reason code, the field path and a message that says what was
    expected and what to do."""

    code: str
    field: str
    message: str


@dataclass
class Normalized:
    """A row's normalized record (None when it has problems), its kind and its problems."""

    kind: str
    record: dict[str, Any] | None
    problems: list[Problem]


def row_schema(obj: dict[str, Any], purpose: Purpose) -> str | None:
    """The schema a single object looks like, preferring the ones that fit `purpose` (a row with both
    `messages` and `chosen` is a preference row for DPO and a chat row for SFT)."""
    keys = obj.keys()
    preference = "chosen" in keys and "rejected" in keys
    chat_order = [
        ("openai", "messages" in keys),
        ("sharegpt", "conversations" in keys),
        ("alpaca", "instruction" in keys and "output" in keys),
        ("prompt_completion", "prompt" in keys and "completion" in keys),
    ]
    if purpose == "dpo" and preference:
        return "preference"
    if purpose == "cpt" and "text" in keys:
        return "text"
    for name, matches in chat_order:
        if matches:
            return name
    if preference:
        return "preference"
    if "text" in keys:
        return "text"
    return None


def schema_votes(objects: Iterable[dict[str, Any]], purpose: Purpose) -> dict[str, int]:
    """How many rows look like each schema (in SCHEMAS order)."""
    counts: Counter[str] = Counter()
    for obj in objects:
        name = row_schema(obj, purpose)
        if name is not None:
            counts[name] += 1
    return {name: counts[name] for name in SCHEMAS if name in counts}


def is_unpaired_preference(obj: dict[str, Any], schema: str | None) -> bool:
    """Whether a row read under `schema` is an unpaired (KTO-style) preference row: a chat row that
    carries a boolean `label`."""
    return (
        schema is not None and SCHEMA_KIND[schema] == "chat" and type(obj.get(UNPAIRED_LABEL_FIELD)) is bool
    )


def detect_schema(
    objects: Iterable[dict[str, Any]], purpose: Purpose, source: str
) -> tuple[str, dict[str, int]]:
    """Pick the dataset's schema by majority over its rows (ties broken by SCHEMAS order), so one odd
    row is reported as that row's problem, not as a misdetected file. Raises DatasetError when the
    data fits no schema, only schemas of another purpose, or is mostly unpaired preference data."""
    objects = list(objects)
    unpaired = sum(is_unpaired_preference(obj, row_schema(obj, purpose)) for obj in objects)
    if unpaired * 2 > len(objects):
        raise DatasetError(
            f"{source}: {unpaired} of {len(objects)} rows are unpaired (KTO-style) preference data: a "
            f"conversation with a boolean `{UNPAIRED_LABEL_FIELD}` saying whether its completion is desirable. "
            + _UNPAIRED_FIX
        )
    counts = Counter(schema_votes(objects, purpose))
    wanted = PURPOSE_KIND[purpose]
    fitting = [
        (count, -SCHEMAS.index(name), name) for name, count in counts.items() if SCHEMA_KIND[name] == wanted
    ]
    ordered = {name: counts[name] for name in SCHEMAS if name in counts}
    if fitting:
        return max(fitting)[2], ordered
    if counts:
        other = counts.most_common(1)[0][0]
        suggestion = {"chat": "sft", "preference": "dpo", "text": "cpt"}[SCHEMA_KIND[other]]
        raise DatasetError(
            f"{source}: the rows look like {other} data ({SCHEMA_KIND[other]}), which does not fit purpose "
            f"{purpose!r} (expects {wanted} rows). Use purpose={suggestion!r}, or convert the file."
        )
    raise DatasetError(
        f"{source}: no row has the fields of a known schema. Expected one of: `messages` (OpenAI chat), "
        "`prompt`+`completion`, `instruction`+`output` (Alpaca), `conversations` (ShareGPT), "
        "`chosen`+`rejected` (preference) or `text`. Rename the fields or pass schema=."
    )


def collapse_whitespace(text: str) -> str:
    """NFC-normalized text with whitespace runs collapsed: the form hashed for exact duplicates."""
    return " ".join(unicodedata.normalize("NFC", text).split())


def record_text(kind: str, record: dict[str, Any]) -> str:
    """The plain text of a normalized record used for hashing, dedup and contamination checks: one
    line per message, `role: content` with whitespace runs collapsed, NFC-normalized."""
    if kind == "text":
        return collapse_whitespace(record["text"])

    def render(messages: list[dict[str, Any]]) -> list[str]:
        return [f"{m['role']}: {' '.join(m['content'].split())}" for m in messages]

    if kind == "chat":
        lines = render(record["messages"])
    else:
        lines = render(record["prompt"])
        lines += ["[chosen]", *render(record["chosen"]), "[rejected]", *render(record["rejected"])]
    text = "\n".join(lines)
    # Line breaks and role labels are starters, so normalizing the whole text equals normalizing
    # each message; the quick check makes this nearly free for text that already is NFC.
    return text if unicodedata.is_normalized("NFC", text) else unicodedata.normalize("NFC", text)


_PLAIN_ROLES = {"system": "system", "user": "user", "assistant": "assistant"}


def _plain_openai(obj: dict[str, Any], purpose: Purpose) -> dict[str, Any] | None:
    """The record of the most common row, checked in one tight loop: only `messages` of plain
    {role, content} strings, system first if at all, user and assistant alternating, ending with an
    assistant for SFT. None when anything differs; `normalize` then explains it in full."""
    messages = obj.get("messages")
    if type(messages) is not list or not messages:
        return None
    out: list[dict[str, Any]] = []
    previous = None
    for index, message in enumerate(messages):
        if type(message) is not dict or len(message) != 2:
            return None
        role, content = message.get("role"), message.get("content")
        if type(role) is not str or type(content) is not str or not content.strip():
            return None
        role = _PLAIN_ROLES.get(role)
        if role is None or (role == "system") != (index == 0 and role == "system"):
            return None
        if (role == "user" and previous not in (None, "system", "assistant")) or (
            role == "assistant" and previous != "user"
        ):
            return None
        out.append({"role": role, "content": content})
        previous = role
    if previous != "assistant" and purpose == "sft":
        return None
    if not any(m["role"] != "system" for m in out):
        return None
    return {"messages": out}


def normalize(obj: Any, schema: str, purpose: Purpose) -> Normalized:
    """Normalize one parsed row under `schema`, collecting every problem."""
    kind = SCHEMA_KIND[schema]
    if type(obj) is dict and is_unpaired_preference(obj, schema):
        desirable: bool = obj[UNPAIRED_LABEL_FIELD]
        message = (
            f"`{UNPAIRED_LABEL_FIELD}: {str(desirable).lower()}` marks this row as unpaired (KTO-style) "
            f"preference data, one completion judged {'desirable' if desirable else 'undesirable'}; it is not "
            f"trained as plain chat. {_UNPAIRED_FIX}"
        )
        return Normalized(kind, None, [Problem("unpaired_preference", UNPAIRED_LABEL_FIELD, message)])
    if schema == "openai" and type(obj) is dict:
        plain = _plain_openai(obj, purpose)
        if plain is not None:
            return Normalized(kind, plain, [])
    problems: list[Problem] = []
    if not isinstance(obj, dict):
        problems.append(
            Problem(
                "not_an_object",
                "(row)",
                f"expected a JSON object, got {_type_name(obj)}; each record must be an object.",
            )
        )
        return Normalized(kind, None, problems)
    required, _ = SCHEMA_FIELDS[schema]
    missing = [name for name in required if name not in obj]
    for name in missing:
        problems.append(
            Problem(
                "missing_field",
                name,
                f"expected field `{name}` ({schema} schema, detected for this file: needs "
                f"{' + '.join(f'`{r}`' for r in required)}); add it or remove the row.",
            )
        )
    if missing:
        return Normalized(kind, None, problems)
    record: dict[str, Any] | None
    if schema == "openai":
        messages = _messages(obj["messages"], "messages", problems)
        record = {"messages": messages}
    elif schema == "sharegpt":
        messages = _sharegpt_turns(obj, problems)
        record = {"messages": messages}
    elif schema == "alpaca":
        record = {"messages": _alpaca(obj, problems)}
    elif schema == "prompt_completion":
        record = {"messages": _prompt_completion(obj, problems)}
    elif schema == "preference":
        record = _preference(obj, problems)
    else:
        text = obj["text"]
        if not isinstance(text, str):
            problems.append(
                Problem(
                    "wrong_type",
                    "text",
                    f"expected a string, got {_type_name(text)}; write the text as a JSON string.",
                )
            )
        elif not text.strip():
            problems.append(
                Problem("empty_content", "text", "expected non-empty text; fill it in or delete the row.")
            )
        record = {"text": text}
    if kind == "chat" and record is not None and not problems:
        _check_chat_order(record["messages"], "messages", problems, final_assistant=purpose == "sft")
        _check_weights(record["messages"], problems)
    if problems:
        return Normalized(kind, None, problems)
    return Normalized(kind, record, problems)


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    return {
        dict: "an object",
        list: "an array",
        str: "a string",
        bool: "a boolean",
        int: "a number",
        float: "a number",
    }.get(type(value), type(value).__name__)


def _content_text(value: Any, field: str, problems: list[Problem]) -> str | None:
    """A message's content as text: a string, or OpenAI content parts of type text."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        texts: list[str] = []
        for index, part in enumerate(value):
            if isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str):
                texts.append(part["text"])
            else:
                problems.append(
                    Problem(
                        "wrong_type",
                        f"{field}[{index}]",
                        "expected a text part {'type': 'text', 'text': ...}; only text content is supported "
                        "(remove image/audio parts).",
                    )
                )
                return None
        return "".join(texts)
    problems.append(
        Problem(
            "wrong_type", field, f"expected a string, got {_type_name(value)}; write it as a JSON string."
        )
    )
    return None


_MessageReader = Callable[[Any, str, list[Problem]], dict[str, Any] | None]


def _message_list(
    value: Any, field: str, problems: list[Problem], read: _MessageReader, *, noun: str, example: str
) -> list[dict[str, Any]]:
    """Normalize a JSON array of messages with `read` (one message, its field path), collecting the
    problems of every message; `noun` and `example` say in the messages what the array should hold."""
    if not isinstance(value, list):
        problems.append(
            Problem(
                "wrong_type",
                field,
                f"expected an array of {noun}s, got {_type_name(value)}; write [{example}, ...].",
            )
        )
        return []
    if not value:
        problems.append(
            Problem(
                "empty_content",
                field,
                f"expected at least one {noun}; the list is empty. Add the conversation or delete the row.",
            )
        )
        return []
    out: list[dict[str, Any]] = []
    for index, item in enumerate(value):
        message = read(item, f"{field}[{index}]", problems)
        if message is not None:
            out.append(message)
    return out


def _messages(value: Any, field: str, problems: list[Problem]) -> list[dict[str, Any]]:
    """Normalize an OpenAI-style message list (role/content/weight, tool calls as JSON content)."""
    return _message_list(value, field, problems, _openai_message, noun="message", example=_OPENAI_EXAMPLE)


def _openai_message(message: Any, path: str, problems: list[Problem]) -> dict[str, Any] | None:
    """One OpenAI-style message: {role, content, weight?, name?, tool_calls?, ...}."""
    if not _is_message_object(
        message, path, problems, "message", _OPENAI_EXAMPLE, _OPENAI_MESSAGE_KEYS, _OPENAI_KEYS_TEXT
    ):
        return None
    if "role" not in message:
        problems.append(
            Problem(
                "missing_field",
                f"{path}.role",
                "expected `role` (system, user, assistant or tool); add it.",
            )
        )
        return None
    role = _role(message["role"], f"{path}.role", _OPENAI_ROLES, problems)
    content = _openai_content(message, path, role, problems)
    if role is None or content is None:
        return None
    return _weighted(message, path, role, content, problems)


def _is_message_object(
    value: Any, path: str, problems: list[Problem], noun: str, example: str, keys: set[str], keys_text: str
) -> TypeGuard[dict[str, Any]]:
    """Whether `value` is an object (a problem when not); any key outside `keys` is a problem too."""
    if not isinstance(value, dict):
        problems.append(
            Problem(
                "wrong_type", path, f"expected a {noun} object, got {_type_name(value)}; write {example}."
            )
        )
        return False
    for key in sorted(set(value) - keys):
        problems.append(
            Problem(
                "extra_field",
                f"{path}.{key}",
                f"unexpected {noun} field `{key}`; a {noun} has {keys_text}. Rename or remove it.",
            )
        )
    return True


def _weighted(
    source: dict[str, Any], path: str, role: str, content: str, problems: list[Problem]
) -> dict[str, Any]:
    """The normalized message; weight 0 is kept, weight 1 (the default) is dropped."""
    message: dict[str, Any] = {"role": role, "content": content}
    if _weight(source, path, role, problems) == 0:
        message["weight"] = 0
    return message


def _role(value: Any, field: str, role_map: dict[str, str], problems: list[Problem]) -> str | None:
    if not isinstance(value, str):
        problems.append(
            Problem(
                "wrong_type",
                field,
                f"expected a role string, got {_type_name(value)}; use system, user, assistant or tool.",
            )
        )
        return None
    role = role_map.get(value.strip().lower())
    if role is None:
        known = ", ".join(sorted(set(role_map)))
        problems.append(
            Problem(
                "unknown_role",
                field,
                f"unknown role {value!r}; expected one of {known}. Map it to one of these.",
            )
        )
    return role


def _openai_content(
    message: dict[str, Any], path: str, role: str | None, problems: list[Problem]
) -> str | None:
    calls = message.get("tool_calls") or message.get("function_call")
    if "content" not in message and not calls:
        problems.append(
            Problem("missing_field", f"{path}.content", "expected `content` (the message text); add it.")
        )
        return None
    raw = message.get("content")
    text: str | None
    if raw is None and calls:
        text = ""
    elif raw is None:
        problems.append(
            Problem("wrong_type", f"{path}.content", "expected a string, got null; fill in the text.")
        )
        return None
    else:
        text = _content_text(raw, f"{path}.content", problems)
        if text is None:
            return None
    if calls:
        if role != "assistant":
            problems.append(
                Problem(
                    "extra_field",
                    f"{path}.tool_calls",
                    "tool calls are allowed only on assistant messages; move them to the assistant turn.",
                )
            )
        text = (text + "\n" if text.strip() else "") + canonical_json(calls)
    if not text.strip():
        problems.append(
            Problem(
                "empty_content",
                f"{path}.content",
                f"expected non-empty text in this {role or ''} message; fill it in or delete the row.",
            )
        )
        return None
    return text


def _weight(message: dict[str, Any], path: str, role: str, problems: list[Problem]) -> int | None:
    """A message's loss weight. Weight 0 on a non-assistant turn says what fineplat does anyway
    (SlimOrca-style ShareGPT files carry it on every human turn) and is accepted; weight 1 there
    asks for loss on a prompt turn, which fineplat never takes."""
    if "weight" not in message or message["weight"] is None:
        return None
    weight = message["weight"]
    if role != "assistant" and weight == 0 and not isinstance(weight, bool):
        return None
    if role != "assistant":
        problems.append(
            Problem(
                "extra_field",
                f"{path}.weight",
                "`weight` applies only to assistant messages (loss is never taken on others); remove it.",
            )
        )
        return None
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or weight not in (0, 1):
        problems.append(
            Problem(
                "wrong_type",
                f"{path}.weight",
                f"expected weight 0 or 1, got {weight!r}; use 0 (no loss) or 1 (train on it).",
            )
        )
        return None
    return int(weight)


def _sharegpt_turns(obj: dict[str, Any], problems: list[Problem]) -> list[dict[str, Any]]:
    """The `system` field (if any) and the `conversations` turns of a ShareGPT row."""
    system = _system_turn(obj, problems)
    return system + _message_list(
        obj["conversations"],
        "conversations",
        problems,
        _sharegpt_turn,
        noun="turn",
        example=_SHAREGPT_EXAMPLE,
    )


def _system_turn(obj: dict[str, Any], problems: list[Problem]) -> list[dict[str, Any]]:
    """The row's `system` field as a leading system message ([] when absent or blank)."""
    system = obj.get("system")
    if system is None:
        return []
    if not isinstance(system, str):
        problems.append(
            Problem(
                "wrong_type",
                "system",
                f"expected a string, got {_type_name(system)}; write the system prompt as a string.",
            )
        )
        return []
    return [{"role": "system", "content": system}] if system.strip() else []


def _sharegpt_turn(turn: Any, path: str, problems: list[Problem]) -> dict[str, Any] | None:
    """One ShareGPT turn: {from, value, weight?} (or {role, content}, which some exports use)."""
    if not _is_message_object(
        turn, path, problems, "turn", _SHAREGPT_EXAMPLE, _SHAREGPT_TURN_KEYS, "`from` and `value`"
    ):
        return None
    role_key, content_key = ("from", "value") if "from" in turn else ("role", "content")
    if role_key not in turn:
        problems.append(
            Problem(
                "missing_field",
                f"{path}.from",
                "expected `from` (human, gpt, system, function_call, observation); add it.",
            )
        )
        return None
    if content_key not in turn:
        problems.append(Problem("missing_field", f"{path}.{content_key}", "expected the turn text; add it."))
        return None
    role = _role(turn[role_key], f"{path}.{role_key}", _SHAREGPT_ROLES, problems)
    content = turn[content_key]
    if not isinstance(content, str):
        problems.append(
            Problem(
                "wrong_type",
                f"{path}.{content_key}",
                f"expected a string, got {_type_name(content)}; write the text as a JSON string.",
            )
        )
        return None
    if not content.strip():
        problems.append(
            Problem(
                "empty_content",
                f"{path}.{content_key}",
                "expected non-empty text; fill it in or delete the turn.",
            )
        )
        return None
    if role is None:
        return None
    return _weighted(turn, path, role, content, problems)


def _any_message(message: Any, path: str, problems: list[Problem]) -> dict[str, Any] | None:
    """A message in either common shape: a ShareGPT turn (`from`/`value`) or an OpenAI message."""
    if isinstance(message, dict) and ("from" in message or "value" in message):
        return _sharegpt_turn(message, path, problems)
    return _openai_message(message, path, problems)


def _string_field(obj: dict[str, Any], name: str, problems: list[Problem], *, required: bool) -> str | None:
    value = obj.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, str):
        problems.append(
            Problem(
                "wrong_type", name, f"expected a string, got {_type_name(value)}; write it as a JSON string."
            )
        )
        return None
    if required and not value.strip():
        problems.append(
            Problem("empty_content", name, "expected non-empty text; fill it in or delete the row.")
        )
        return None
    return value


def _alpaca(obj: dict[str, Any], problems: list[Problem]) -> list[dict[str, Any]]:
    instruction = _string_field(obj, "instruction", problems, required=True)
    extra_input = _string_field(obj, "input", problems, required=False)
    output = _string_field(obj, "output", problems, required=True)
    system = _string_field(obj, "system", problems, required=False)
    messages: list[dict[str, Any]] = []
    if system and system.strip():
        messages.append({"role": "system", "content": system})
    history = obj.get("history")
    if history is not None:
        if not isinstance(history, list) or not all(
            isinstance(pair, list) and len(pair) == 2 and all(isinstance(x, str) for x in pair)
            for pair in history
        ):
            problems.append(
                Problem(
                    "wrong_type",
                    "history",
                    "expected an array of [instruction, response] string pairs; fix or remove `history`.",
                )
            )
        else:
            for question, answer in history:
                messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    if instruction is None or output is None:
        return messages
    prompt = instruction if not (extra_input and extra_input.strip()) else f"{instruction}\n\n{extra_input}"
    return [*messages, {"role": "user", "content": prompt}, {"role": "assistant", "content": output}]


def _prompt_completion(obj: dict[str, Any], problems: list[Problem]) -> list[dict[str, Any]]:
    prompt, completion = obj["prompt"], obj["completion"]
    messages: list[dict[str, Any]] = []
    if isinstance(prompt, list):
        messages += _messages(prompt, "prompt", problems)
    elif (text := _string_field(obj, "prompt", problems, required=True)) is not None:
        messages.append({"role": "user", "content": text})
    if isinstance(completion, list):
        messages += _messages(completion, "completion", problems)
    elif (text := _string_field(obj, "completion", problems, required=True)) is not None:
        messages.append({"role": "assistant", "content": text})
    return messages


def _parse_hh(text: str) -> list[dict[str, Any]] | None:
    """Split an HH-RLHF transcript into messages; None when the text is not in that format."""
    parts = _HH_TURN.split(text)
    if len(parts) < 3 or parts[0].strip():
        return None
    messages = []
    for speaker, content in zip(parts[1::2], parts[2::2], strict=True):
        messages.append({"role": "user" if speaker == "Human" else "assistant", "content": content.strip()})
    return messages


def _side(obj: dict[str, Any], name: str, problems: list[Problem]) -> list[dict[str, Any]] | str | None:
    """`chosen` or `rejected`: a response string, one message object (LLaMA-Factory's ShareGPT
    preference rows hold a single {"from": "gpt", "value": ...}) or an array of messages."""
    value = obj[name]
    if isinstance(value, str):
        if not value.strip():
            problems.append(
                Problem(
                    "empty_content",
                    name,
                    f"expected a non-empty `{name}` response; fill it in or delete the row.",
                )
            )
            return None
        return value
    before = len(problems)
    messages = _preference_messages(value, name, problems)
    return None if messages is None or len(problems) > before else messages


def _preference_messages(value: Any, field: str, problems: list[Problem]) -> list[dict[str, Any]] | None:
    """A message array or a single message object, each message in OpenAI or ShareGPT shape; None
    (with a problem) for any other JSON type."""
    if isinstance(value, dict):
        message = _any_message(value, field, problems)
        return [message] if message is not None else []
    if isinstance(value, list):
        return _message_list(value, field, problems, _any_message, noun="message", example=_OPENAI_EXAMPLE)
    problems.append(
        Problem(
            "wrong_type",
            field,
            f"expected a string or an array of messages, got {_type_name(value)}; convert it.",
        )
    )
    return None


def _preference_prompt(obj: dict[str, Any], problems: list[Problem]) -> list[dict[str, Any]] | None:
    """The conversation the responses answer, from `prompt` (a string, a message or messages) or
    from ShareGPT `conversations` (LLaMA-Factory's preference rows); None when neither is given."""
    if obj.get("prompt") is not None and obj.get("conversations") is not None:
        problems.append(
            Problem(
                "extra_field",
                "conversations",
                "expected the prompt in `prompt` or in `conversations`, not both; remove one of them.",
            )
        )
        return None
    if obj.get("conversations") is not None:
        return _preference_messages(obj["conversations"], "conversations", problems)
    prompt_value = obj.get("prompt")
    if prompt_value is None:
        return None
    if not isinstance(prompt_value, str):
        return _preference_messages(prompt_value, "prompt", problems)
    if not prompt_value.strip():
        problems.append(
            Problem("empty_content", "prompt", "expected a non-empty prompt; fill it in or delete the row.")
        )
        return None
    return [{"role": "user", "content": prompt_value}]


def _split_context(messages: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(context up to and including the last user turn, the response after it)."""
    last_user = max((i for i, m in enumerate(messages) if m["role"] == "user"), default=-1)
    return messages[: last_user + 1], messages[last_user + 1 :]


def _strip_weights(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def _preference(obj: dict[str, Any], problems: list[Problem]) -> dict[str, Any] | None:
    chosen = _side(obj, "chosen", problems)
    rejected = _side(obj, "rejected", problems)
    prompt = _preference_prompt(obj, problems)
    system = _system_turn(obj, problems)
    if chosen is None or rejected is None or problems:
        return None
    if prompt is None and isinstance(chosen, str) and isinstance(rejected, str):
        chosen_turns, rejected_turns = _parse_hh(chosen), _parse_hh(rejected)
        if chosen_turns is None or rejected_turns is None:
            problems.append(
                Problem(
                    "missing_field",
                    "prompt",
                    "expected `prompt` (or chosen/rejected as HH-style '\\n\\nHuman: ... \\n\\nAssistant: ...' "
                    "transcripts); add the prompt.",
                )
            )
            return None
        chosen, rejected = chosen_turns, rejected_turns
    if isinstance(chosen, str):
        chosen = [{"role": "assistant", "content": chosen}]
    if isinstance(rejected, str):
        rejected = [{"role": "assistant", "content": rejected}]
    full_conversations = any(m["role"] != "assistant" for m in chosen + rejected)
    if full_conversations:
        chosen_context, chosen = _split_context(chosen)
        rejected_context, rejected = _split_context(rejected)
        if _strip_weights(chosen_context) != _strip_weights(rejected_context):
            problems.append(
                Problem(
                    "prompt_mismatch",
                    "chosen/rejected",
                    "chosen and rejected contain different conversation histories; a preference pair must "
                    "answer the same prompt. Align the histories or split the row.",
                )
            )
            return None
        if prompt is not None and chosen_context and not _same_prompt(prompt, chosen_context):
            problems.append(
                Problem(
                    "prompt_mismatch",
                    "prompt",
                    "`prompt` differs from the conversation inside chosen/rejected; make them equal or drop `prompt`.",
                )
            )
            return None
        prompt = chosen_context or prompt
    if not prompt:
        problems.append(
            Problem(
                "missing_field",
                "prompt",
                "expected a prompt (a user turn) before the responses; add `prompt`.",
            )
        )
        return None
    prompt = [*system, *prompt]
    for name, side in (("chosen", chosen), ("rejected", rejected)):
        if not side:
            problems.append(
                Problem(
                    "empty_content",
                    name,
                    f"expected an assistant response in `{name}`, found none; add the response.",
                )
            )
    if problems:
        return None
    _check_chat_order(prompt, "prompt", problems, final_assistant=False)
    if prompt and prompt[-1]["role"] != "user":
        problems.append(
            Problem(
                "role_order",
                "prompt",
                "expected the prompt to end with a user turn (the responses answer it); move the last assistant turn into chosen/rejected.",
            )
        )
    for name, side in (("chosen", chosen), ("rejected", rejected)):
        if side[0]["role"] != "assistant":
            problems.append(
                Problem(
                    "role_order",
                    name,
                    f"expected `{name}` to start with an assistant turn; move earlier turns into `prompt`.",
                )
            )
    if problems:
        return None
    if _strip_weights(chosen) == _strip_weights(rejected) or [
        collapse_whitespace(m["content"]) for m in chosen
    ] == [collapse_whitespace(m["content"]) for m in rejected]:
        problems.append(
            Problem(
                "chosen_equals_rejected",
                "chosen/rejected",
                "chosen and rejected are identical, so the pair carries no preference; fix or delete the row.",
            )
        )
        return None
    return {
        "prompt": _strip_weights(prompt),
        "chosen": _strip_weights(chosen),
        "rejected": _strip_weights(rejected),
    }


def _same_prompt(prompt: list[dict[str, Any]], context: list[dict[str, Any]]) -> bool:
    if _strip_weights(prompt) == _strip_weights(context):
        return True
    return len(prompt) == 1 and collapse_whitespace(prompt[0]["content"]) == collapse_whitespace(
        context[-1]["content"]
    )


def _check_chat_order(
    messages: list[dict[str, Any]], field: str, problems: list[Problem], *, final_assistant: bool
) -> None:
    """System only first; each assistant turn follows a user (or tool result) turn; a tool result
    follows an assistant call; users and assistants alternate; SFT rows end with an assistant."""
    previous: str | None = None
    for index, message in enumerate(messages):
        role = message["role"]
        path = f"{field}[{index}].role"
        problem: str | None = None
        if role == "system" and index != 0:
            problem = f"system message at position {index}; a system message is allowed only first. Move or merge it."
        elif role == "user" and previous == "user":
            problem = (
                f"two user turns in a row (positions {index - 1} and {index}); merge them into one turn."
            )
        elif role == "user" and previous == "tool":
            problem = f"user turn at position {index} follows a tool result; add the assistant turn that answers the tool result first."
        elif role == "assistant" and previous not in ("user", "tool"):
            problem = f"assistant turn at position {index} has no user turn before it; add the user turn it answers."
        elif role == "tool" and previous not in ("assistant", "tool"):
            problem = f"tool result at position {index} does not follow an assistant tool call; add the call or drop the result."
        if problem:
            problems.append(Problem("role_order", path, problem))
            return
        previous = role
    if final_assistant and messages and messages[-1]["role"] != "assistant":
        problems.append(
            Problem(
                "last_turn_not_assistant",
                f"{field}[{len(messages) - 1}].role",
                f"the conversation ends with a {messages[-1]['role']} turn; SFT trains on the assistant's reply, so "
                "the last turn must be an assistant's. Add the reply or drop the trailing turn.",
            )
        )


def _check_weights(messages: list[dict[str, Any]], problems: list[Problem]) -> None:
    assistants = [m for m in messages if m["role"] == "assistant"]
    if assistants and all(m.get("weight") == 0 for m in assistants):
        problems.append(
            Problem(
                "no_loss_tokens",
                "messages[*].weight",
                "every assistant message has weight 0, so this row trains nothing; set weight 1 on at least one.",
            )
        )
