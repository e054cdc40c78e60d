"""The pairwise judge: position swapping, win rate with its Wilson interval, the embedded reference
judge on real strings, and an OpenAI-compatible judge served over real HTTP on 127.0.0.1."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest

from fineplat.errors import ConfigError, EvaluationError
from fineplat.evaluation.endpoint import ChatEndpoint
from fineplat.evaluation.judge import (
    Comparison,
    OpenAICompatibleJudge,
    PairwiseItem,
    ReferenceJudge,
    compare,
    outcome,
    pairwise_gate,
    parse_verdict,
    wilson_interval,
    win_rate,
)
from fineplat.serving.embedded import free_port

Answer = Callable[[list[dict[str, str]]], str]  # what the chat_server fixture answers a request with
ChatServer = Any  # conftest.ChatServer: base_url, model, requests

ROUTING = [
    ("Where do refund questions go?", "billing"),
    ("Where do parcel questions go?", "shipping"),
    ("Where do router questions go?", "technical"),
    ("Where do password questions go?", "account"),
    ("Where do invoice questions go?", "billing"),
]


def answers_in(message: str) -> tuple[str, str, str | None]:
    """Answer A, answer B and the reference (if any) from a filled-in judge prompt."""

    def between(label: str) -> str | None:
        found = re.search(rf"\[The Start of {label}\]\n(.*?)\n\[The End of {label}\]", message, re.DOTALL)
        return found.group(1) if found else None

    a, b = between("Assistant A's Answer"), between("Assistant B's Answer")
    assert a is not None and b is not None
    return a, b, between("Reference Answer")


@pytest.mark.parametrize(
    ("text", "verdict"),
    [
        ("A", "A"),
        ("B", "B"),
        ("TIE", "TIE"),
        ("[[A]]", "A"),
        ("My verdict: [[C]]", "TIE"),
        ("Tie.", "TIE"),
        ("It's a tie", "TIE"),
        ("Verdict: Assistant B is better", "B"),
        ("**A**", "A"),
        ("Assistant A misses the code.\nTherefore, B", "B"),
        ("B is better than A", None),
        ("I cannot decide.", None),
        ("", None),
    ],
)
def test_parse_verdict_reads_the_forms_judges_answer_in(text: str, verdict: str | None) -> None:
    assert parse_verdict(text) == verdict


@pytest.mark.parametrize(
    ("candidate_first", "candidate_second", "expected"),
    [
        ("A", "B", "win"),  # preferred in both positions
        ("B", "A", "loss"),
        ("TIE", "TIE", "tie"),
        ("A", "A", "tie"),  # always the first answer: position bias, not preference
        ("B", "B", "tie"),
        ("A", "TIE", "tie"),
        ("A", None, "tie"),
    ],
)
def test_only_verdicts_that_agree_across_both_orders_decide(
    candidate_first: str | None, candidate_second: str | None, expected: str
) -> None:
    assert outcome(candidate_first, candidate_second) == expected  # type: ignore[arg-type]


def test_wilson_interval_matches_the_closed_form() -> None:
    low, high = wilson_interval(8, 10)
    assert (low, high) == (pytest.approx(0.4902, abs=1e-4), pytest.approx(0.9433, abs=1e-4))
    low, high = wilson_interval(5, 5)  # all wins: still an interval, not [1, 1]
    assert low == pytest.approx(0.5655, abs=1e-4) and high == 1.0


def test_win_rate_counts_ties_as_half() -> None:
    comparisons = [Comparison("A", "B", "win")] * 3 + [Comparison("A", "A", "tie")] * 2
    comparisons += [Comparison("B", "A", "loss")]
    result = win_rate(comparisons)
    assert (result.wins, result.ties, result.losses) == (3, 2, 1)
    assert result.win_rate == pytest.approx(4 / 6)
    assert (result.ci_low, result.ci_high) == pytest.approx(wilson_interval(4, 6))


def test_reference_judge_prefers_the_reply_closer_to_the_reference_in_either_position() -> None:
    judge = ReferenceJudge()
    assert judge.judge("Where do refund questions go?", "billing", "the shipping team", "billing") == "A"
    assert judge.judge("Where do refund questions go?", "the shipping team", "billing", "billing") == "B"
    # Against "billing team queue", "the billing team" scores F1 4/5 and "billing" 1/2.
    assert judge.judge("q", "the billing team", "billing", "billing team queue") == "A"
    assert judge.judge("q", "shipping", "technical", "billing") == "TIE"  # both wrong
    assert (
        ReferenceJudge(epsilon=0.35).judge("q", "the billing team", "billing", "billing team queue") == "TIE"
    )
    assert ReferenceJudge(metric="rouge_l").judge("q", "billing team", "team billing", "billing team") == "A"


def test_reference_judge_needs_a_reference_and_a_similarity_metric() -> None:
    with pytest.raises(EvaluationError, match="needs a reference answer"):
        ReferenceJudge().judge("Where do refund questions go?", "billing", "shipping", None)
    with pytest.raises(ConfigError, match="token_f1"):
        ReferenceJudge(metric="bleu")  # type: ignore[arg-type]


def test_reference_judge_gate_blocks_a_candidate_worse_than_the_incumbent() -> None:
    references = [answer for _, answer in ROUTING]
    wrong = ["shipping", "billing", "account", "technical", "shipping"]
    better = [PairwiseItem(q, a, w, a) for (q, a), w in zip(ROUTING, wrong, strict=True)]
    result = pairwise_gate(compare(better, ReferenceJudge()), incumbent="production")
    assert result.passed and result.name == "pairwise_judge"
    assert result.values["wins"] == 5.0 and result.values["win_rate"] == 1.0
    worse = [PairwiseItem(q, w, r, r) for (q, _), w, r in zip(ROUTING, wrong, references, strict=True)]
    blocked = pairwise_gate(compare(worse, ReferenceJudge()), incumbent="production")
    assert not blocked.passed
    assert "win rate vs production 0.0%" in blocked.detail and "5 losses" in blocked.detail


def test_compare_refuses_an_empty_prompt_set() -> None:
    with pytest.raises(EvaluationError, match="no prompts"):
        compare([], ReferenceJudge())


def always(text: str) -> Answer:
    return lambda messages: text


def test_an_order_biased_judge_over_http_yields_only_ties(
    chat_server: Callable[[Answer], ChatServer],
) -> None:
    server = chat_server(always("A"))  # prefers whichever reply it reads first
    judge = OpenAICompatibleJudge(ChatEndpoint(server.base_url, server.model))
    items = [PairwiseItem(q, a, "I do not know.", a) for q, a in ROUTING]
    comparisons = compare(items, judge, max_concurrency=2)
    assert [c.outcome for c in comparisons] == ["tie"] * 5
    assert len(server.requests) == 10
    # Each item was shown once with the candidate first and once with it second.
    shown = sorted(answers_in(r["messages"][0]["content"])[:2] for r in server.requests)
    expected = sorted(
        [(a, "I do not know.") for _, a in ROUTING] + [("I do not know.", a) for _, a in ROUTING]
    )
    assert shown == expected
    assert all(r["temperature"] == 0.0 and r["model"] == "judge-model" for r in server.requests)
    assert pairwise_gate(comparisons).values["win_rate"] == 0.5
    assert not pairwise_gate(comparisons, min_win_rate=0.6).passed


def test_a_judge_that_prefers_the_correct_reply_over_http_gives_consistent_wins(
    chat_server: Callable[[Answer], ChatServer],
) -> None:
    def correct_side(messages: list[dict[str, str]]) -> str:
        a, b, reference = answers_in(messages[0]["content"])
        if (a == reference) == (b == reference):
            return "TIE"
        return "[[A]]" if a == reference else "Verdict: Assistant B is better"

    server = chat_server(correct_side)
    judge = OpenAICompatibleJudge(ChatEndpoint(server.base_url, server.model))
    candidate = [a for _, a in ROUTING[:4]] + ["shipping"]  # wrong on the last prompt only
    items = [
        PairwiseItem(q, c, "I do not know." if i < 4 else a, a)
        for i, ((q, a), c) in enumerate(zip(ROUTING, candidate, strict=True))
    ]
    comparisons = compare(items, judge)
    assert [c.outcome for c in comparisons] == ["win"] * 4 + ["loss"]
    result = pairwise_gate(comparisons, min_win_rate=0.6)
    assert result.passed
    assert result.values["win_rate"] == pytest.approx(0.8)
    assert (result.values["ci_low"], result.values["ci_high"]) == pytest.approx(wilson_interval(4, 5))
    refund = [r for r in server.requests if "Where do refund questions go?" in r["messages"][0]["content"]]
    assert len(refund) == 2 and all(answers_in(r["messages"][0]["content"])[2] == "billing" for r in refund)


def test_a_judge_whose_answers_cannot_be_read_blocks_the_gate(
    chat_server: Callable[[Answer], ChatServer],
) -> None:
    server = chat_server(always("Both answers have merits and drawbacks."))
    judge = OpenAICompatibleJudge(ChatEndpoint(server.base_url, server.model))
    comparisons = compare([PairwiseItem(q, a, "no idea", a) for q, a in ROUTING], judge)
    result = pairwise_gate(comparisons, min_win_rate=0.0)
    assert not result.passed
    assert result.values["unparsed_verdicts"] == 10.0
    assert "10 of 10 verdicts unreadable" in result.detail


def test_an_unreachable_judge_is_an_evaluation_error_naming_the_endpoint() -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"
    judge = OpenAICompatibleJudge(ChatEndpoint(url, "judge-model", timeout_s=5, max_retries=0))
    with pytest.raises(EvaluationError, match=re.escape(url)):
        judge.judge("q", "a", "b", None)
