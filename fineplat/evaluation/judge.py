"""Gate 4: pairwise comparison of the candidate against the incumbent (the production adapter of the
same name, or the base model) on prompts from the task distribution.

LLM judges prefer whichever answer they read first (or second) far more often than chance
(Zheng et al. 2023, "Judging LLM-as-a-Judge", §3.3). So every pair is judged twice, once with the
candidate as answer A and once as answer B, and — as in MT-Bench's conservative rule — the
candidate wins (or loses) only when both orders agree; any disagreement is a tie. A judge that
always answers "A" therefore yields only ties, never a win.

Win rate = (wins + ½ ties) / n, with a 95% Wilson score interval (Wilson 1927). Ties count as half
a success; the Bernoulli variance p(1−p) that Wilson assumes bounds the variance of any [0, 1]
score with mean p, so the interval is conservative for the 0 / ½ / 1 outcomes. It is closed form,
so it needs no seed and stays informative for small n where a bootstrap collapses (n wins of n
resample to [1, 1]). The gate blocks when the win rate is below `min_win_rate`.

Judges:
- `OpenAICompatibleJudge`: a strong chat model behind any OpenAI-compatible endpoint, asked with a
  fixed prompt (`JUDGE_PROMPT`) to answer "A", "B" or "TIE"; replies are parsed leniently
  (`parse_verdict`), and a gate with too many unparseable verdicts blocks instead of passing.
- `ReferenceJudge`: the embedded default, no network: the reply closer to the task's reference
  answer wins (SQuAD token F1 or ROUGE-L); scores within `epsilon` are a tie. Position-independent
  by construction, and it measures what the task holdout defines as correct.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from fineplat.errors import ConfigError, EvaluationError
from fineplat.evaluation.endpoint import ChatEndpoint
from fineplat.evaluation.metrics import rouge_l, token_f1
from fineplat.evaluation.report import GateResult

Verdict = Literal["A", "B", "TIE"]
Outcome = Literal["win", "loss", "tie"]

DEFAULT_MIN_WIN_RATE = 0.5  # the candidate must be at least as good as what it replaces
# 95% two-sided normal quantile, Φ⁻¹(0.975).
Z_95 = 1.959963984540054
# More unparseable verdicts than this share and the judge, not the candidate, decided the gate.
DEFAULT_MAX_UNPARSED_SHARE = 0.1
DEFAULT_TIE_EPSILON = 0.01  # ReferenceJudge: scores closer than this are a tie
JUDGE_MAX_TOKENS = 16  # the verdict is one word; a little room for "[[A]]" or "Verdict: A"

# Adapted from MT-Bench's pairwise judge prompt (Zheng et al. 2023, "pair-v2" / "pair-ref").
JUDGE_PROMPT = """Please act as an impartial judge and evaluate the quality of the responses provided by two AI assistants to the user question displayed below. Choose the assistant that follows the user's instructions and answers the user's question better: consider helpfulness, correctness, relevance and level of detail.{reference_note} Avoid any position bias: the order in which the responses are presented must not influence your decision. Do not let response length or the assistants' names influence you. Be as objective as possible.

[User Question]
{question}
{reference_block}
[The Start of Assistant A's Answer]
{answer_a}
[The End of Assistant A's Answer]

[The Start of Assistant B's Answer]
{answer_b}
[The End of Assistant B's Answer]

Answer with exactly one word: "A" if assistant A is better, "B" if assistant B is better, "TIE" if they are equally good."""

_REFERENCE_NOTE = " A reference answer is given: judge correctness against it."
_REFERENCE_BLOCK = "\n[The Start of Reference Answer]\n{reference}\n[The End of Reference Answer]\n"
_BRACKETED = re.compile(r"\[\[\s*(A|B|C|TIE)\s*\]\]", re.IGNORECASE)
_WORDS = re.compile(r"[A-Za-z]+")
_TIE_WORDS = frozenset({"TIE", "TIED", "DRAW", "EQUAL", "EQUALLY", "C"})
# Words a judge wraps around its verdict ("Final verdict: Assistant A is better.").
_FILLER_WORDS = frozenset(
    {
        "FINAL", "VERDICT", "ANSWER", "ASSISTANT", "RESPONSE", "IS", "BETTER", "THE", "MY", "OUTPUT",
        "WINNER", "THEREFORE", "SO", "THUS", "I", "CHOOSE", "PICK", "PREFER", "WINS", "OPTION",
    }
)  # fmt: skip


@dataclass(frozen=True)
class PairwiseItem:
    """One prompt with the candidate's and the incumbent's replies (and a reference, if the task has one)."""

    prompt: str
    candidate: str
    incumbent: str
    reference: str | None = None


class PairwiseJudge(Protocol):
    """Decides which of two replies to `prompt` is better; None when its answer cannot be read."""

    def judge(self, prompt: str, reply_a: str, reply_b: str, reference: str | None) -> Verdict | None: ...


@dataclass(frozen=True)
class Comparison:
    """Both verdicts for one item and the candidate's outcome."""

    candidate_first: Verdict | None  # verdict with the candidate as A
    candidate_second: Verdict | None  # verdict with the candidate as B
    outcome: Outcome

    @property
    def unparsed(self) -> int:
        return (self.candidate_first is None) + (self.candidate_second is None)


@dataclass(frozen=True)
class WinRate:
    """Wins, losses and ties of the candidate, its win rate and 95% Wilson interval."""

    wins: int
    losses: int
    ties: int
    win_rate: float
    ci_low: float
    ci_high: float
    unparsed_verdicts: int = 0

    @property
    def n(self) -> int:
        return self.wins + self.losses + self.ties


def parse_verdict(text: str) -> Verdict | None:
    """ "A", "B" or "TIE" from a judge's answer: "[[A]]" (MT-Bench style), "B", "Tie.",
    "Verdict: Assistant A is better", … None when it names no side or both."""
    bracketed = _BRACKETED.findall(text)
    if bracketed:
        choice = bracketed[-1].upper()
        return "TIE" if choice in {"C", "TIE"} else choice
    lines = [line for line in text.strip().splitlines() if line.strip()]
    for line in [*lines[-1:], *lines[:1]]:  # the verdict is asked for last; chatty judges put it first
        words = [w.upper() for w in _WORDS.findall(line)]
        if _TIE_WORDS & set(words):
            return "TIE"
        sides = {w for w in words if w not in _FILLER_WORDS} & {"A", "B"}
        if len(sides) == 1 and len([w for w in words if w not in _FILLER_WORDS]) == 1:
            return "A" if "A" in sides else "B"
    return None


def outcome(candidate_first: Verdict | None, candidate_second: Verdict | None) -> Outcome:
    """The candidate's outcome from the two position-swapped verdicts: a win or loss only when both
    orders agree, a tie otherwise (including when a verdict could not be read)."""
    as_a = {"A": "win", "B": "loss", "TIE": "tie"}.get(candidate_first or "")
    as_b = {"B": "win", "A": "loss", "TIE": "tie"}.get(candidate_second or "")
    if as_a is not None and as_a == as_b:
        return as_a  # type: ignore[return-value]
    return "tie"


def wilson_interval(successes: float, n: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson score interval of a proportion; `successes` may be fractional (ties as ½)."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    denominator = 1.0 + z * z / n
    center = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1.0 - p) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, center - half), min(1.0, center + half)


def win_rate(comparisons: Sequence[Comparison]) -> WinRate:
    """Wins, losses, ties and the win rate (wins + ½ ties) / n with its 95% Wilson interval."""
    wins = sum(c.outcome == "win" for c in comparisons)
    losses = sum(c.outcome == "loss" for c in comparisons)
    ties = sum(c.outcome == "tie" for c in comparisons)
    n = len(comparisons)
    score = wins + 0.5 * ties
    low, high = wilson_interval(score, n)
    return WinRate(
        wins=wins,
        losses=losses,
        ties=ties,
        win_rate=score / n if n else 0.0,
        ci_low=low,
        ci_high=high,
        unparsed_verdicts=sum(c.unparsed for c in comparisons),
    )


def compare(
    items: Sequence[PairwiseItem], judge: PairwiseJudge, *, max_concurrency: int = 4
) -> list[Comparison]:
    """Judge every item in both orders (candidate as A, then as B); `max_concurrency` requests at once."""
    if not items:
        raise EvaluationError("the pairwise judge got no prompts; give it the task holdout's prompts.")

    def both_orders(item: PairwiseItem) -> Comparison:
        first = judge.judge(item.prompt, item.candidate, item.incumbent, item.reference)
        second = judge.judge(item.prompt, item.incumbent, item.candidate, item.reference)
        return Comparison(first, second, outcome(first, second))

    with ThreadPoolExecutor(max_workers=max(1, max_concurrency)) as pool:
        return list(pool.map(both_orders, items))


def pairwise_gate(
    comparisons: Sequence[Comparison],
    *,
    min_win_rate: float = DEFAULT_MIN_WIN_RATE,
    max_unparsed_share: float = DEFAULT_MAX_UNPARSED_SHARE,
    incumbent: str = "incumbent",
) -> GateResult:
    """Gate 4: block when the candidate's win rate against `incumbent` is below `min_win_rate`, or
    when more than `max_unparsed_share` of the judge's verdicts could not be read."""
    result = win_rate(comparisons)
    verdicts = 2 * result.n
    unparsed_share = result.unparsed_verdicts / verdicts if verdicts else 0.0
    judge_ok = unparsed_share <= max_unparsed_share
    passed = judge_ok and result.win_rate >= min_win_rate
    detail = (
        f"win rate vs {incumbent} {result.win_rate:.1%} (95% CI {result.ci_low:.1%}–{result.ci_high:.1%}; "
        f"{result.wins} wins, {result.ties} ties, {result.losses} losses over {result.n} prompts, both orders), "
        f"need ≥ {min_win_rate:.1%}"
    )
    if not judge_ok:
        detail += (
            f"; {result.unparsed_verdicts} of {verdicts} verdicts unreadable (> {max_unparsed_share:.0%}): "
            "fix the judge model or its endpoint"
        )
    return GateResult(
        "pairwise_judge",
        passed,
        detail,
        {
            "win_rate": result.win_rate,
            "ci_low": result.ci_low,
            "ci_high": result.ci_high,
            "wins": float(result.wins),
            "losses": float(result.losses),
            "ties": float(result.ties),
            "prompts": float(result.n),
            "unparsed_verdicts": float(result.unparsed_verdicts),
            "min_win_rate": min_win_rate,
        },
    )


@dataclass
class OpenAICompatibleJudge:
    """A chat model behind an OpenAI-compatible endpoint, asked `JUDGE_PROMPT` at temperature 0."""

    endpoint: ChatEndpoint

    def __post_init__(self) -> None:
        self._client: Any = self.endpoint.client()  # one connection pool, shared by compare's threads

    def judge(self, prompt: str, reply_a: str, reply_b: str, reference: str | None) -> Verdict | None:
        message = judge_message(prompt, reply_a, reply_b, reference)
        answer = self.endpoint.complete(
            [{"role": "user", "content": message}], max_tokens=JUDGE_MAX_TOKENS, client=self._client
        )
        return parse_verdict(answer)


def judge_message(prompt: str, reply_a: str, reply_b: str, reference: str | None) -> str:
    """`JUDGE_PROMPT` filled in (with the reference block when there is a reference)."""
    return JUDGE_PROMPT.format(
        question=prompt,
        answer_a=reply_a,
        answer_b=reply_b,
        reference_note=_REFERENCE_NOTE if reference is not None else "",
        reference_block=_REFERENCE_BLOCK.format(reference=reference) if reference is not None else "",
    )


@dataclass(frozen=True)
class ReferenceJudge:
    """The embedded judge: the reply scoring higher against the reference wins (`metric`
    "token_f1" — SQuAD token F1 — or "rouge_l"); within `epsilon` of each other, a tie."""

    metric: Literal["token_f1", "rouge_l"] = "token_f1"
    epsilon: float = DEFAULT_TIE_EPSILON

    def __post_init__(self) -> None:
        if self.metric not in ("token_f1", "rouge_l"):
            raise ConfigError(
                f"ReferenceJudge.metric: {self.metric!r} is not a reference similarity; use 'token_f1' or 'rouge_l'."
            )

    def score(self, reply: str, reference: str) -> float:
        return token_f1(reply, reference) if self.metric == "token_f1" else rouge_l(reply, reference)

    def judge(self, prompt: str, reply_a: str, reply_b: str, reference: str | None) -> Verdict | None:
        if reference is None:
            raise EvaluationError(
                f"the reference judge needs a reference answer for prompt {prompt[:60]!r}; judge prompts from the "
                "task holdout (chat rows with an assistant reply) or configure an OpenAI-compatible judge."
            )
        difference = self.score(reply_a, reference) - self.score(reply_b, reference)
        if abs(difference) <= self.epsilon:
            return "TIE"
        return "A" if difference > 0 else "B"
