"""Row-level validation: every raw record either becomes a normalized row or a quarantined row that
names its file, line, field, what was expected and what to do, before any GPU time is spent.

Checks: parse errors and invalid UTF-8, missing/extra fields, wrong types, empty content, unknown
roles, role order, SFT rows ending with an assistant turn, chosen == rejected, and (with the base
model's tokenizer) token count against the context limit (reject or truncate) plus a render check
whose samples go into the report.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from collections.abc import Iterable
from typing import Any, Literal

import polars as pl

from fineplat.errors import BaseModelError, DatasetError
from fineplat.hashing import canonical_json
from fineplat.ingestion.result import (
    KEPT_SCHEMA,
    RAW_SCHEMA,
    Rejection,
    StageResult,
    base_report,
    empty_frame,
    rejected_frame,
)
from fineplat.ingestion.schemas import (
    PURPOSE_KIND,
    SCHEMA_FIELDS,
    SCHEMA_KIND,
    SCHEMAS,
    Normalized,
    Problem,
    Purpose,
    detect_schema,
    normalize,
    record_text,
    schema_votes,
)
from fineplat.packing.tokenize import (
    IGNORE_INDEX,
    context_limit,
    render_chat,
    token_lengths,
    tokenize_record,
)

STAGE = "validate"
_SURROGATE_HINT = re.compile(r"\\u[dD][89abcdefABCDEF]")
RENDER_SAMPLES = 3  # rows decoded into the report so a human sees what training will see
EXAMPLES_PER_REASON = 3  # report examples per reason code: enough to act on, never a wall of errors
MAX_LISTED_ROWS = 100  # cap on row lists in reports (truncated rows, ignored fields)


def validate_rows(
    raw: pl.DataFrame,
    *,
    purpose: Purpose = "sft",
    schema: str | None = None,
    tokenizer: Any | None = None,
    max_tokens: int | None = None,
    overlength: Literal["reject", "truncate"] = "reject",
    strict_fields: bool = False,
) -> StageResult:
    """Validate and normalize a raw frame (see `read_raw`). `schema` overrides detection (one of
    SCHEMAS). With `tokenizer`, rows are rendered with its chat template and checked against
    `max_tokens` (default: the tokenizer's model_max_length); `overlength="truncate"` drops trailing
    turns (chat), leading prompt turns (preference) or trailing tokens (text) instead of rejecting.
    `strict_fields` rejects top-level fields the schema does not read (default: ignored, counted)."""
    if purpose not in PURPOSE_KIND:
        raise DatasetError(f"purpose must be one of sft, dpo, cpt; got {purpose!r}.")
    if overlength not in ("reject", "truncate"):
        raise DatasetError(f"overlength must be 'reject' or 'truncate'; got {overlength!r}.")
    if schema is not None and schema not in SCHEMAS:
        raise DatasetError(f"schema {schema!r} is unknown; expected one of {', '.join(SCHEMAS)}.")
    if schema is not None and SCHEMA_KIND[schema] != PURPOSE_KIND[purpose]:
        raise DatasetError(
            f"schema {schema!r} holds {SCHEMA_KIND[schema]} rows, but purpose {purpose!r} needs "
            f"{PURPOSE_KIND[purpose]} rows; change schema= or purpose=."
        )
    lines = raw.get_column("line").to_list()
    sources = raw.get_column("source").to_list()
    raws = raw.get_column("raw").to_list()
    errors = raw.get_column("parse_error").to_list()
    objects: list[Any] = [
        json.loads(data) if data is not None else None for data in raw.get_column("data").to_list()
    ]
    source_label = _source_label(sources)

    chosen_schema = schema
    schema_counts: dict[str, int] = {}
    dict_objects = [obj for obj in objects if isinstance(obj, dict)]
    if chosen_schema is None and dict_objects:
        chosen_schema, schema_counts = detect_schema(dict_objects, purpose, source_label)
    elif dict_objects:
        schema_counts = schema_votes(dict_objects, purpose)
    kind = SCHEMA_KIND[chosen_schema] if chosen_schema else PURPOSE_KIND[purpose]

    rejected_rows: list[Rejection] = []
    candidates: list[tuple[int, dict[str, Any]]] = []  # (row index, normalized record)
    ignored_fields: Counter[str] = Counter()
    allowed = set(sum(SCHEMA_FIELDS[chosen_schema], ())) if chosen_schema else set()
    for index, obj in enumerate(objects):
        if errors[index] is not None:
            code, _, message = errors[index].partition(": ")
            if code not in _PARSE_FIX:  # a raw frame built elsewhere: keep its message whole
                code, message = "json_parse_error", errors[index]
            rejected_rows.append(
                _rejection(
                    sources[index],
                    lines[index],
                    raws[index],
                    [Problem(code, "(row)", f"{message}. {_PARSE_FIX[code]}")],
                )
            )
            continue
        if chosen_schema is None:
            problem = Problem(
                "not_an_object",
                "(row)",
                "expected a JSON object per record; got a JSON value of another type.",
            )
            rejected_rows.append(_rejection(sources[index], lines[index], raws[index], [problem]))
            continue
        normalized = normalize(obj, chosen_schema, purpose)
        problems = list(normalized.problems)
        if isinstance(obj, dict) and not obj.keys() <= allowed:
            extra = sorted(set(obj) - allowed)
            if strict_fields:
                problems += [
                    Problem(
                        "extra_field",
                        name,
                        f"field `{name}` is not part of the {chosen_schema} schema ({', '.join(sorted(allowed))}); "
                        "remove it or validate without strict_fields.",
                    )
                    for name in extra
                ]
            else:
                ignored_fields.update(extra)
        if normalized.record is not None and not problems and _may_hold_surrogates(raws[index]):
            utf8_problem = _surrogates(normalized)
            if utf8_problem:
                problems.append(utf8_problem)
        if problems or normalized.record is None:
            rejected_rows.append(_rejection(sources[index], lines[index], raws[index], problems))
            continue
        candidates.append((index, normalized.record))

    report_tokens: dict[str, Any] | None = None
    render_samples: list[dict[str, Any]] = []
    truncated_lines: list[dict[str, Any]] = []
    if tokenizer is not None and candidates:
        limit = context_limit(tokenizer, max_tokens)
        candidates, token_rejections, lengths, truncated_lines = _check_tokens(
            tokenizer, kind, candidates, limit, overlength, sources, lines, raws
        )
        rejected_rows += token_rejections
        report_tokens = {
            "limit": limit,
            "max": max(lengths, default=0),
            "total": int(sum(lengths)),
            "policy": overlength,
            "truncated": len(truncated_lines),
            "truncated_rows": truncated_lines[:MAX_LISTED_ROWS],
        }
        render_samples = _render_samples(tokenizer, kind, candidates[:RENDER_SAMPLES], sources, lines)

    kept = _kept_frame(kind, candidates, sources, lines)
    rejected = rejected_frame(rejected_rows).sort(["source", "line"], maintain_order=True)
    report = base_report(STAGE, raw.height, kept, rejected)
    report.update(
        {
            "purpose": purpose,
            "schema": chosen_schema,
            "schema_detected": schema is None,
            "schema_votes": schema_counts,
            "kind": kind,
            "sources": sorted(set(sources)),
            "rows_per_source": dict(sorted(Counter(sources).items())),
            "rejected_per_source": dict(sorted(Counter(rejected.get_column("source").to_list()).items())),
            "ignored_fields": dict(sorted(ignored_fields.items())),
            "examples": _examples(rejected),
        }
    )
    if report_tokens is not None:
        report["tokens"] = report_tokens
        report["render_samples"] = render_samples
    return StageResult(kept, rejected, report)


def validate_batches(
    batches: Iterable[pl.DataFrame],
    *,
    purpose: Purpose = "sft",
    schema: str | None = None,
    tokenizer: Any | None = None,
    max_tokens: int | None = None,
    overlength: Literal["reject", "truncate"] = "reject",
    strict_fields: bool = False,
) -> StageResult:
    """`validate_rows` over raw batches (see `iter_raw`), so memory holds one raw batch at a time
    plus the normalized rows. The schema is detected on the first batch with parseable rows and
    then fixed, so every batch is judged by the same schema; the reports are merged."""
    results: list[StageResult] = []
    detected_on_first_batch = schema is None
    for batch in batches:
        result = validate_rows(
            batch,
            purpose=purpose,
            schema=schema,
            tokenizer=tokenizer,
            max_tokens=max_tokens,
            overlength=overlength,
            strict_fields=strict_fields,
        )
        if schema is None and result.report["schema"] is not None:
            schema = result.report["schema"]
        result.report["schema_detected"] = detected_on_first_batch
        results.append(result)
    if not results:
        return validate_rows(pl.DataFrame(schema=RAW_SCHEMA), purpose=purpose, schema=schema)
    if len(results) == 1:
        return results[0]
    kept = pl.concat([r.kept for r in results], how="vertical")
    rejected = pl.concat([r.rejected for r in results], how="vertical").sort(
        ["source", "line"], maintain_order=True
    )
    first = next((r.report for r in results if r.report["schema"] is not None), results[0].report)
    report = base_report(STAGE, sum(r.report["rows_in"] for r in results), kept, rejected)
    ignored: Counter[str] = Counter()
    votes: Counter[str] = Counter()
    for r in results:
        ignored.update(r.report["ignored_fields"])
        votes.update(r.report["schema_votes"])
    report.update(
        {
            "purpose": purpose,
            "schema": first["schema"],
            "schema_detected": first["schema_detected"],
            "schema_votes": {name: votes[name] for name in SCHEMAS if name in votes},
            "kind": first["kind"],
            "sources": sorted({s for r in results for s in r.report["sources"]}),
            "rows_per_source": _sum_counts(r.report["rows_per_source"] for r in results),
            "rejected_per_source": _sum_counts(r.report["rejected_per_source"] for r in results),
            "ignored_fields": dict(sorted(ignored.items())),
            "examples": _examples(rejected),
            "batches": len(results),
        }
    )
    token_reports = [r.report["tokens"] for r in results if "tokens" in r.report]
    if token_reports:
        truncated_rows = [row for t in token_reports for row in t["truncated_rows"]]
        report["tokens"] = {
            "limit": token_reports[0]["limit"],
            "max": max(t["max"] for t in token_reports),
            "total": sum(t["total"] for t in token_reports),
            "policy": token_reports[0]["policy"],
            "truncated": sum(t["truncated"] for t in token_reports),
            "truncated_rows": truncated_rows[:MAX_LISTED_ROWS],
        }
        samples = [s for r in results for s in r.report.get("render_samples", [])]
        report["render_samples"] = samples[:RENDER_SAMPLES]
    return StageResult(kept, rejected, report)


def _sum_counts(counts: Iterable[dict[str, int]]) -> dict[str, int]:
    total: Counter[str] = Counter()
    for count in counts:
        total.update(count)
    return dict(sorted(total.items()))


_PARSE_FIX = {
    "json_parse_error": "Fix the JSON syntax on that line (each line must be one complete JSON object) or delete it.",
    "invalid_utf8": "Re-save the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8`) or fix the bytes on that line.",
}


def _source_label(sources: list[str]) -> str:
    unique = sorted(set(sources))
    if not unique:
        return "(empty dataset)"
    return unique[0] if len(unique) == 1 else f"{unique[0]} (and {len(unique) - 1} more files)"


def _rejection(source: str, line: int, raw: str, problems: list[Problem]) -> Rejection:
    """All of a row's problems in one rejection: each code once, the messages joined in order."""
    codes = tuple(dict.fromkeys(p.code for p in problems))
    message = " | ".join(
        p.message if p.field == "(row)" else f"field {p.field}: {p.message}" for p in problems
    )
    return Rejection(STAGE, source, line, raw, codes, message)


def _may_hold_surrogates(raw: str) -> bool:
    """Lone surrogates reach a parsed row only through JSON escapes (\\ud800-\\udfff): the readers
    turn undecodable bytes into parse errors. A substring test skips the full check for most rows."""
    return "\\u" in raw and _SURROGATE_HINT.search(raw) is not None


def _surrogates(normalized: Normalized) -> Problem | None:
    """Lone surrogates (from JSON escapes such as "\\ud800") cannot be encoded as UTF-8 and break
    tokenizers; find the first field that holds one."""
    assert normalized.record is not None
    try:
        canonical_json(normalized.record).encode("utf-8")
        return None
    except UnicodeEncodeError as exc:
        return Problem(
            "invalid_utf8",
            "(text)",
            f"the text holds an unpaired surrogate ({exc.object[exc.start]!r}, e.g. a JSON escape like \\ud800) that is "
            "not valid UTF-8; replace it with the intended character.",
        )


def _kept_frame(
    kind: str, candidates: list[tuple[int, dict[str, Any]]], sources: list[str], lines: list[int]
) -> pl.DataFrame:
    if not candidates:
        return empty_frame(KEPT_SCHEMA)
    texts = [record_text(kind, record) for _, record in candidates]
    return pl.DataFrame(
        {
            "line": [lines[index] for index, _ in candidates],
            "source": [sources[index] for index, _ in candidates],
            "kind": [kind] * len(candidates),
            "record": [canonical_json(record) for _, record in candidates],
            "text": texts,
            "content_hash": [hashlib.sha256(text.encode("utf-8")).hexdigest() for text in texts],
        },
        schema=KEPT_SCHEMA,
    )


def _examples(rejected: pl.DataFrame) -> dict[str, list[dict[str, Any]]]:
    examples: dict[str, list[dict[str, Any]]] = {}
    for row in rejected.iter_rows(named=True):
        for code in row["reasons"]:
            bucket = examples.setdefault(code, [])
            if len(bucket) < EXAMPLES_PER_REASON:
                bucket.append({"source": row["source"], "line": row["line"], "detail": row["detail"]})
    return dict(sorted(examples.items()))


def _check_tokens(
    tokenizer: Any,
    kind: str,
    candidates: list[tuple[int, dict[str, Any]]],
    limit: int | None,
    overlength: str,
    sources: list[str],
    lines: list[int],
    raws: list[str],
) -> tuple[list[tuple[int, dict[str, Any]]], list[Rejection], list[int], list[dict[str, Any]]]:
    """Render every candidate with the base model's chat template and enforce the context limit."""
    records = [record for _, record in candidates]
    try:
        lengths = token_lengths(kind, records, tokenizer)
    except Exception:  # one bad row must not hide the others: fall back to per-row rendering
        lengths = []
        for record in records:
            try:
                lengths.append(token_lengths(kind, [record], tokenizer)[0])
            except BaseModelError:
                raise  # the template itself cannot mask replies: one clear error, not a row per row
            except Exception:
                lengths.append(-1)
    kept: list[tuple[int, dict[str, Any]]] = []
    kept_lengths: list[int] = []
    rejections: list[Rejection] = []
    truncated: list[dict[str, Any]] = []
    for (index, record), length in zip(candidates, lengths, strict=True):
        where = (sources[index], lines[index], raws[index])
        if length < 0:
            rejections.append(
                _rejection(
                    *where,
                    [
                        Problem(
                            "template_error",
                            "messages",
                            "the base model's chat template failed to render this row (it may require strictly "
                            "alternating roles or forbid a system turn); restructure the conversation.",
                        )
                    ],
                )
            )
            continue
        if limit is None or length <= limit:
            kept.append((index, record))
            kept_lengths.append(length)
            continue
        if overlength == "truncate":
            shortened = _truncate(tokenizer, kind, record, limit)
            if shortened is not None:
                new_record, new_length = shortened
                kept.append((index, new_record))
                kept_lengths.append(new_length)
                truncated.append(
                    {
                        "source": sources[index],
                        "line": lines[index],
                        "tokens_before": length,
                        "tokens_after": new_length,
                    }
                )
                continue
        what_to_do = (
            "shorten or split the row, raise max_tokens, or use overlength='truncate'"
            if overlength == "reject"
            else "even after truncation it does not fit (the first exchange alone is too long); shorten or split it"
        )
        rejections.append(
            _rejection(
                *where,
                [
                    Problem(
                        "too_many_tokens",
                        "(rendered row)",
                        f"expected at most {limit} tokens with the base model's chat template; the row has {length}. {what_to_do}.",
                    )
                ],
            )
        )
    return kept, rejections, kept_lengths, truncated


def _truncate(
    tokenizer: Any, kind: str, record: dict[str, Any], limit: int
) -> tuple[dict[str, Any], int] | None:
    """A shortened record within `limit` tokens, or None when no meaningful prefix fits. Chat drops
    trailing turns (the row still ends with an assistant turn that trains); preference drops the
    oldest prompt turns (keeping a system turn and the last user turn); text cuts tokens."""
    if kind == "text":
        ids = tokenizer(record["text"], add_special_tokens=False)["input_ids"]
        specials = token_lengths("text", [{"text": ""}], tokenizer)[0]
        text = tokenizer.decode(ids[: max(limit - specials, 0)])
        if not text.strip():
            return None
        new_record = {"text": text}
        return new_record, token_lengths("text", [new_record], tokenizer)[0]
    if kind == "chat":
        messages = record["messages"]
        for end in range(len(messages) - 1, 0, -1):
            if messages[end]["role"] != "assistant":
                continue
            head = messages[: end + 1]
            if not any(m["role"] == "assistant" and m.get("weight", 1) != 0 for m in head):
                continue
            new_record = {"messages": head}
            length = token_lengths("chat", [new_record], tokenizer)[0]
            if length <= limit:
                return new_record, length
        return None
    prompt = record["prompt"]
    system = prompt[:1] if prompt and prompt[0]["role"] == "system" else []
    body = prompt[len(system) :]
    for start in range(1, len(body)):
        if body[start]["role"] != "user":
            continue
        new_record = {**record, "prompt": system + body[start:]}
        length = token_lengths("preference", [new_record], tokenizer)[0]
        if length <= limit:
            return new_record, length
    return None


def _render_samples(
    tokenizer: Any,
    kind: str,
    samples: list[tuple[int, dict[str, Any]]],
    sources: list[str],
    lines: list[int],
) -> list[dict[str, Any]]:
    """Decode the first rows as training will see them, with the loss-carrying part separately:
    the check that catches a template that drops the system prompt or masks the wrong tokens."""
    out = []
    for index, record in samples:
        tokenized = tokenize_record(kind, record, tokenizer)
        loss_ids = [label for label in tokenized.labels if label != IGNORE_INDEX]
        entry: dict[str, Any] = {
            "source": sources[index],
            "line": lines[index],
            "tokens": len(tokenized.input_ids),
            "loss_tokens": len(loss_ids),
            "rendered": tokenizer.decode(tokenized.input_ids),
            "loss_text": tokenizer.decode(loss_ids),
        }
        if kind == "chat":
            entry["template_text"] = render_chat(record["messages"], tokenizer)
        out.append(entry)
    return out
