"""Task-holdout metrics on real strings with hand-computed values, and the relative-gain pass rule."""

from __future__ import annotations

import json
from typing import Any

import pytest

from fineplat.errors import ConfigError, EvaluationError
from fineplat.evaluation.holdout import generate_replies
from fineplat.evaluation.metrics import (
    METRICS,
    MetricScores,
    exact_match_score,
    holdout_metrics,
    label_accuracy,
    rouge_l,
    score_replies,
    score_row,
    task_holdout_gate,
    token_f1,
)


def scores(**values: float) -> MetricScores:
    """Aggregated scores with every metric 0 except those given."""
    return MetricScores(rows=20, **{name: values.get(name, 0.0) for name in METRICS})


def test_token_f1_follows_squad_normalization_and_counts_repeated_tokens_once_each() -> None:
    assert token_f1("The cat sat on the mat!", "the cat sat on a mat") == 1.0  # articles, case, punctuation
    assert token_f1("billing team", "billing") == pytest.approx(2 / 3)  # precision 1/2, recall 1
    assert token_f1("red red cat", "red cat cat") == pytest.approx(2 / 3)  # one 'red' and one 'cat' in common
    assert token_f1("dog", "cat") == 0.0
    assert token_f1("the", "") == 1.0  # both normalize to nothing
    assert token_f1("dog", "") == 0.0


def test_exact_match_is_strict_about_case_and_punctuation_where_label_accuracy_is_not() -> None:
    assert exact_match_score("  KX-4821 \n", "KX-4821") == 1.0
    assert exact_match_score("kx-4821", "KX-4821") == 0.0
    assert label_accuracy("kx-4821", "KX-4821") == 1.0
    assert exact_match_score("Billing.", "billing") == 0.0
    assert label_accuracy("Billing.", "billing") == 1.0
    assert label_accuracy(' "Billing" ', "billing") == 1.0
    assert label_accuracy("billing team", "billing") == 0.0  # another label, not a formatting variant


def test_rouge_l_is_the_longest_common_subsequence_f_measure() -> None:
    # LCS of "the cat sat on the mat" and "the cat sat on a mat" is 5 tokens of 6 on each side.
    assert rouge_l("the cat sat on the mat", "the cat sat on a mat") == pytest.approx(5 / 6)
    assert score_row("the cat sat on the mat", "the cat sat on a mat").rouge_l == pytest.approx(5 / 6)


def test_bleu_is_corpus_bleu_not_the_mean_of_sentence_bleus() -> None:
    # One pair: clipped n-gram precisions 5/6, 3/5, 2/4, 1/3, equal lengths (no brevity penalty).
    single = score_replies(["the cat sat on the mat"], ["the cat sat on a mat"])
    assert single.bleu == pytest.approx((1 / 12) ** 0.25)
    # Two pairs pooled: 5/7, 3/5, 2/4, 1/3 — not the mean of the two sentence scores.
    pooled = score_replies(["the cat sat on the mat", "hello"], ["the cat sat on a mat", "goodbye"])
    assert pooled.bleu == pytest.approx((1 / 14) ** 0.25)
    assert pooled.bleu != pytest.approx(sum(r.bleu for r in pooled.per_row) / 2)
    assert score_replies(["four words right here"], ["four words right here"]).bleu == 1.0


def test_corpus_bleu_of_replies_shorter_than_four_tokens_is_zero_even_when_right() -> None:
    short = score_replies(["same words here"], ["same words here"])
    assert short.bleu == 0.0  # no 4-grams at all: why BLEU is for sentence-length replies
    assert short.exact_match == short.token_f1 == short.rouge_l == 1.0
    assert short.per_row[0].bleu == 1.0  # sentence BLEU uses the orders that exist


def test_aggregated_scores_are_means_over_rows() -> None:
    result = score_replies(["Billing.", "KX-4821", "dog"], ["billing", "KX-4821", "cat"])
    assert result.rows == 3
    assert result.exact_match == pytest.approx(1 / 3)
    assert result.accuracy == pytest.approx(2 / 3)
    assert result.token_f1 == pytest.approx(2 / 3)
    assert result.summary()["accuracy"] == pytest.approx(2 / 3)
    assert [r.exact_match for r in result.per_row] == [0.0, 1.0, 0.0]


def test_an_empty_holdout_or_mismatched_lists_are_errors_not_scores() -> None:
    with pytest.raises(EvaluationError, match="no rows"):
        score_replies([], [])
    with pytest.raises(EvaluationError, match="2 replies for 1 references"):
        score_replies(["a", "b"], ["a"])


def test_gate_passes_at_exactly_five_percent_relative_gain_and_blocks_just_below() -> None:
    passed = task_holdout_gate("token_f1", scores(token_f1=0.4), scores(token_f1=0.42))
    assert passed.passed and passed.name == "task_holdout"
    assert passed.values["relative_gain"] == pytest.approx(0.05)
    assert passed.values["required"] == pytest.approx(0.42)
    blocked = task_holdout_gate("token_f1", scores(token_f1=0.4), scores(token_f1=0.419))
    assert not blocked.passed
    assert "token_f1 0.400 → 0.419" in blocked.detail and "need ≥ +5.0%" in blocked.detail


def test_gate_judges_only_the_chosen_metric() -> None:
    base = scores(exact_match=0.5, bleu=0.2)
    candidate = scores(exact_match=0.4, bleu=0.3)
    assert task_holdout_gate("bleu", base, candidate).passed
    assert not task_holdout_gate("exact_match", base, candidate).passed


def test_gate_requires_an_absolute_gain_when_the_base_scores_zero() -> None:
    assert task_holdout_gate("exact_match", scores(), scores(exact_match=0.05)).passed
    blocked = task_holdout_gate("exact_match", scores(), scores(exact_match=0.04))
    assert not blocked.passed
    assert "base scores 0" in blocked.detail
    assert "relative_gain" not in blocked.values  # undefined from zero, never an infinity
    assert task_holdout_gate(
        "exact_match", scores(), scores(exact_match=0.04), min_absolute_gain_at_zero=0.02
    ).passed


def test_a_configured_relative_gain_replaces_the_default() -> None:
    base, candidate = scores(rouge_l=0.5), scores(rouge_l=0.55)
    assert task_holdout_gate("rouge_l", base, candidate).passed
    assert not task_holdout_gate("rouge_l", base, candidate, min_relative_gain=0.2).passed


def test_an_unknown_metric_is_a_config_error_naming_the_choices() -> None:
    with pytest.raises(ConfigError, match="exact_match, token_f1, accuracy, bleu, rouge_l"):
        task_holdout_gate("f1", scores(), scores())


def test_holdout_metrics_scores_the_models_greedy_replies_against_the_last_assistant_turn(
    tiny_model: tuple[Any, Any],
) -> None:
    model, tokenizer = tiny_model
    conversations = [
        [{"role": "user", "content": "Hello, please check ticket KX-4821 about the red printer."}],
        [{"role": "user", "content": "Hi there! Tell me about the quiet garden."}],
    ]
    references = ["KX-4821", "Thank you for the message. Have a nice day."]
    records: list[Any] = [
        json.dumps({"messages": [*c, {"role": "assistant", "content": r}]})
        for c, r in zip(conversations, references, strict=True)
    ]
    result, replies = holdout_metrics(model, tokenizer, records, max_new_tokens=8)
    assert replies == generate_replies(model, tokenizer, conversations, max_new_tokens=8)
    assert result == score_replies(replies, references)
