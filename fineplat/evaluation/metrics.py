"""Task-holdout metrics (gate 2) and the rule that decides whether the candidate beat the base.

Different tasks need different measures of "answered correctly", so the metric is chosen per job:

- `exact_match`: the reply equals the reference after whitespace is collapsed
  (`holdout.normalize_answer`); case and punctuation count. For extraction and formatting tasks,
  where "KX-4821" and "kx-4821." are different answers.
- `accuracy`: the reply, read as a class label, equals the reference label: case-folded, surrounding
  whitespace, quotes and punctuation stripped ("Billing." == "billing"), internal words kept
  ("billing team" != "billing"). For classification and routing tasks, where the label is the
  answer and its casing or a trailing full stop is not.
- `token_f1`: SQuAD v1.1's token-overlap F1 (Rajpurkar et al. 2016): lower-cased, punctuation and
  the articles a/an/the removed, F1 of the bag-of-tokens overlap. Partial credit for free-form
  answers.
- `bleu`: sacrebleu's corpus BLEU (Post 2018, default 13a tokenizer) over the whole holdout; per row,
  smoothed sentence BLEU for the report only (the mean of sentence BLEUs is not BLEU). Corpus BLEU
  needs 4-grams: a holdout whose replies are all shorter than four tokens scores 0 even when every
  reply is right, so choose BLEU for sentence-length replies and exact match or F1 for short ones.
- `rouge_l`: ROUGE-L F-measure (Lin 2004) from Google's `rouge-score`, mean over rows; its default
  tokenizer keeps lower-cased ASCII letters and digits only.

Every metric is reported on [0, 1] (BLEU divided by 100), so one absolute threshold means the same
thing for all of them.

Pass rule (`task_holdout_gate`): the candidate's score must be at least `1 + min_relative_gain`
times the base's (default +5% relative). When the base scores exactly 0 a relative gain is
undefined (a single lucky row would be an infinite improvement), so the candidate must instead
gain `min_absolute_gain_at_zero` (default 0.05, five points) in absolute terms.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from fineplat.errors import ConfigError, EvaluationError
from fineplat.evaluation.holdout import generate_replies, normalize_answer, prompt_and_reference
from fineplat.evaluation.report import GateResult

Metric = Literal["exact_match", "token_f1", "accuracy", "bleu", "rouge_l"]
METRICS: tuple[str, ...] = get_args(Metric)

DEFAULT_METRIC: Metric = "exact_match"
# The candidate must beat the base by 5% of the base's score on the chosen metric.
DEFAULT_MIN_RELATIVE_GAIN = 0.05
# Where the base scores 0 a relative gain is undefined; the candidate must then gain five points.
DEFAULT_MIN_ABSOLUTE_GAIN_AT_ZERO = 0.05
# Scores are means of floats: 0.21 vs 0.2 * 1.05 differ in the 17th digit. Comparisons allow this.
FLOAT_TOLERANCE = 1e-9

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = frozenset(string.punctuation)
_LABEL_STRIP = string.whitespace + string.punctuation + "“”‘’«»"


@dataclass(frozen=True)
class RowMetrics:
    """One reply's scores against its reference, each on [0, 1]."""

    exact_match: float
    token_f1: float
    accuracy: float
    bleu: float  # smoothed sentence BLEU / 100: for reading a row, not for aggregating
    rouge_l: float


@dataclass(frozen=True)
class MetricScores:
    """Aggregated scores of one model over a holdout, each on [0, 1], with the per-row scores."""

    rows: int
    exact_match: float
    token_f1: float
    accuracy: float
    bleu: float  # corpus BLEU / 100
    rouge_l: float
    per_row: list[RowMetrics] = field(default_factory=list, repr=False)

    def get(self, metric: str) -> float:
        """The aggregated score of `metric` (one of METRICS)."""
        return float(getattr(self, check_metric(metric)))

    def summary(self) -> dict[str, float]:
        """Every aggregated metric by name, for report metadata."""
        return {name: self.get(name) for name in METRICS}


def check_metric(metric: str) -> Metric:
    """`metric` if it is a known task-holdout metric; ConfigError naming the choices otherwise."""
    if metric not in METRICS:
        raise ConfigError(
            f"eval_config.metric: unknown task-holdout metric {metric!r}; expected one of {', '.join(METRICS)}."
        )
    return metric  # type: ignore[return-value]


def squad_normalize(text: str) -> str:
    """SQuAD v1.1's answer normalization: lower case, no punctuation, no articles, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def token_f1(reply: str, reference: str) -> float:
    """SQuAD-style token F1 of `reply` against `reference`. When either side normalizes to no
    tokens, 1.0 if both do and 0.0 otherwise (as the SQuAD v2 script)."""
    reply_tokens = squad_normalize(reply).split()
    reference_tokens = squad_normalize(reference).split()
    if not reply_tokens or not reference_tokens:
        return float(reply_tokens == reference_tokens)
    remaining = list(reference_tokens)
    common = 0
    for token in reply_tokens:
        if token in remaining:
            remaining.remove(token)
            common += 1
    if common == 0:
        return 0.0
    precision = common / len(reply_tokens)
    recall = common / len(reference_tokens)
    return 2 * precision * recall / (precision + recall)


def normalize_label(text: str) -> str:
    """A reply read as a class label: case-folded, internal whitespace collapsed, surrounding
    whitespace, quotes and punctuation stripped."""
    return " ".join(text.casefold().split()).strip(_LABEL_STRIP)


def exact_match_score(reply: str, reference: str) -> float:
    """1.0 when the whitespace-normalized reply equals the reference, else 0.0."""
    return float(normalize_answer(reply) == normalize_answer(reference))


def label_accuracy(reply: str, reference: str) -> float:
    """1.0 when the reply and the reference are the same label (see `normalize_label`), else 0.0."""
    return float(normalize_label(reply) == normalize_label(reference))


def _rouge_scorer() -> Any:
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)


def rouge_l(reply: str, reference: str) -> float:
    """ROUGE-L F-measure of `reply` against `reference` (rouge-score, no stemming)."""
    return float(_rouge_scorer().score(reference, reply)["rougeL"].fmeasure)


def _score_row(reply: str, reference: str, scorer: Any) -> RowMetrics:
    import sacrebleu

    return RowMetrics(
        exact_match=exact_match_score(reply, reference),
        token_f1=token_f1(reply, reference),
        accuracy=label_accuracy(reply, reference),
        bleu=min(1.0, float(sacrebleu.sentence_bleu(reply, [reference]).score) / 100.0),
        rouge_l=float(scorer.score(reference, reply)["rougeL"].fmeasure),
    )


def score_row(reply: str, reference: str) -> RowMetrics:
    """Every metric for one reply against its reference."""
    return _score_row(reply, reference, _rouge_scorer())


def score_replies(replies: list[str], references: list[str]) -> MetricScores:
    """Every metric over a holdout: means of the per-row scores, except BLEU, which is corpus BLEU.

    Raises EvaluationError for an empty holdout (no score means nothing was measured) and when the
    two lists differ in length."""
    import sacrebleu

    if len(replies) != len(references):
        raise EvaluationError(
            f"{len(replies)} replies for {len(references)} references; every holdout row needs one reply."
        )
    if not references:
        raise EvaluationError(
            "the task holdout has no rows; give a holdout file (eval_config.task_eval_file) or more training rows."
        )
    scorer = _rouge_scorer()
    per_row = [
        _score_row(reply, reference, scorer) for reply, reference in zip(replies, references, strict=True)
    ]
    n = len(per_row)
    return MetricScores(
        rows=n,
        exact_match=sum(r.exact_match for r in per_row) / n,
        token_f1=sum(r.token_f1 for r in per_row) / n,
        accuracy=sum(r.accuracy for r in per_row) / n,
        bleu=min(1.0, float(sacrebleu.corpus_bleu(replies, [references]).score) / 100.0),
        rouge_l=sum(r.rouge_l for r in per_row) / n,
        per_row=per_row,
    )


def holdout_metrics(
    model: Any,
    tokenizer: Any,
    records: list[str] | list[dict[str, Any]],
    *,
    max_new_tokens: int = 32,
    batch_size: int = 16,
) -> tuple[MetricScores, list[str]]:
    """Greedy replies of `model` to the holdout's chat records (JSON strings or dicts with
    `messages`), scored against each record's last assistant turn; returns the scores and replies."""
    pairs = [prompt_and_reference(record) for record in records]
    replies = generate_replies(
        model,
        tokenizer,
        [prompt for prompt, _ in pairs],
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
    )
    return score_replies(replies, [reference for _, reference in pairs]), replies


def required_score(
    base_score: float,
    *,
    min_relative_gain: float = DEFAULT_MIN_RELATIVE_GAIN,
    min_absolute_gain_at_zero: float = DEFAULT_MIN_ABSOLUTE_GAIN_AT_ZERO,
) -> float:
    """The score a candidate needs to pass: base × (1 + min_relative_gain), or base +
    min_absolute_gain_at_zero when the base scores 0."""
    if base_score <= 0.0:
        return base_score + min_absolute_gain_at_zero
    return base_score * (1.0 + min_relative_gain)


def task_holdout_gate(
    metric: str,
    base: MetricScores,
    candidate: MetricScores,
    *,
    min_relative_gain: float = DEFAULT_MIN_RELATIVE_GAIN,
    min_absolute_gain_at_zero: float = DEFAULT_MIN_ABSOLUTE_GAIN_AT_ZERO,
) -> GateResult:
    """Gate 2: the candidate must improve the chosen metric over the base by `min_relative_gain`
    of the base's score (or by `min_absolute_gain_at_zero` when the base scores 0)."""
    metric = check_metric(metric)
    base_score, candidate_score = base.get(metric), candidate.get(metric)
    needed = required_score(
        base_score, min_relative_gain=min_relative_gain, min_absolute_gain_at_zero=min_absolute_gain_at_zero
    )
    passed = candidate_score >= needed - FLOAT_TOLERANCE
    values = {
        "base": base_score,
        "candidate": candidate_score,
        "required": needed,
        "gain": candidate_score - base_score,
        "rows": float(candidate.rows),
    }
    if base_score > 0.0:
        values["relative_gain"] = (candidate_score - base_score) / base_score
        rule = f"relative gain {values['relative_gain']:+.1%}, need ≥ {min_relative_gain:+.1%}"
    else:  # no relative gain exists from 0; the values carry none rather than an infinity
        rule = f"base scores 0: absolute gain {candidate_score - base_score:+.3f}, need ≥ {min_absolute_gain_at_zero:+.3f}"
    return GateResult(
        "task_holdout",
        passed,
        f"{metric} {base_score:.3f} → {candidate_score:.3f} on {candidate.rows} rows ({rule})",
        {
            **values,
            **{f"base_{name}": value for name, value in base.summary().items()},
            **{f"candidate_{name}": value for name, value in candidate.summary().items()},
        },
    )
