"""DPO held-out preference accuracy and reward margin, and CPT held-out perplexity, on the tiny base
model."""

from __future__ import annotations

import json
import math
import random
import string
from typing import Any

import pytest
import torch
from transformers import LlamaForCausalLM

from fineplat.basemodel import BaseModelInfo, load_base_model
from fineplat.basemodel.corpus import GENERIC_REPLIES, corpus_documents
from fineplat.errors import ConfigError, EvaluationError
from fineplat.evaluation.preference import (
    PerplexityScore,
    PreferenceScore,
    perplexity,
    perplexity_gate,
    preference_gate,
    preference_scores,
)
from fineplat.packing.tokenize import tokenize_record

# Pre-training-style text the base model has learned to predict (a seed its corpus did not use).
PASSAGES = [d for d in corpus_documents(seed=7, count=30) if isinstance(d, str)][:4]


def random_letters(like: str, rng: random.Random) -> str:
    return "".join(rng.choice(string.ascii_letters + " ") for _ in like)


def pairs(chosen: list[str], rejected: list[str]) -> list[dict[str, Any]]:
    prompts = [
        "Hello! Tell me about the red train.",
        "Hi there, please check ticket KX-4821.",
        "Good morning!",
    ]
    return [
        {
            "prompt": [{"role": "user", "content": p}],
            "chosen": [{"role": "assistant", "content": c}],
            "rejected": [{"role": "assistant", "content": r}],
        }
        for p, c, r in zip(prompts, chosen, rejected, strict=True)
    ]


GOOD = GENERIC_REPLIES[:3]  # replies from the base model's own pre-training conversations
GARBAGE = [random_letters(reply, random.Random(i)) for i, reply in enumerate(GOOD)]


def test_perplexity_is_lower_on_pretraining_style_text_than_on_random_letters(
    tiny_model: tuple[Any, Any],
) -> None:
    model, tokenizer = tiny_model
    text = perplexity(model, tokenizer, [{"text": t} for t in PASSAGES])
    rng = random.Random(0)
    noise = perplexity(model, tokenizer, [{"text": random_letters(t, rng)} for t in PASSAGES])
    assert text.perplexity < noise.perplexity / 5
    assert text.tokens == sum(
        len(tokenize_record("text", {"text": t}, tokenizer).input_ids) - 1 for t in PASSAGES
    )
    assert text.rows == 4


def test_perplexity_is_the_exponent_of_the_token_weighted_mean_nll(tiny_model: tuple[Any, Any]) -> None:
    model, tokenizer = tiny_model
    ids = tokenize_record("text", {"text": PASSAGES[0]}, tokenizer).input_ids
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0, :-1].float()
    nll = -torch.log_softmax(logits, -1).gather(1, torch.tensor(ids[1:]).unsqueeze(1)).sum().item()
    result = perplexity(model, tokenizer, [json.dumps({"text": PASSAGES[0]})])
    assert result.tokens == len(ids) - 1
    assert result.mean_nll == pytest.approx(nll / (len(ids) - 1), rel=1e-5)
    assert result.perplexity == pytest.approx(math.exp(nll / (len(ids) - 1)), rel=1e-5)


def test_windows_predict_every_token_exactly_once(tiny_model: tuple[Any, Any]) -> None:
    model, tokenizer = tiny_model
    whole = perplexity(model, tokenizer, [{"text": t} for t in PASSAGES])
    windowed = perplexity(model, tokenizer, [{"text": t} for t in PASSAGES], window=16)
    assert windowed.tokens == whole.tokens
    assert windowed.perplexity != whole.perplexity  # less context at each window's start


def test_perplexity_needs_text_rows(tiny_model: tuple[Any, Any]) -> None:
    model, tokenizer = tiny_model
    with pytest.raises(EvaluationError, match="text rows"):
        perplexity(model, tokenizer, [{"messages": []}])
    with pytest.raises(EvaluationError, match="no held-out text rows"):
        perplexity(model, tokenizer, [])


def test_perplexity_gate_needs_a_five_percent_reduction() -> None:
    base = PerplexityScore(rows=10, tokens=500, mean_nll=math.log(20.0), perplexity=20.0)
    assert perplexity_gate(base, PerplexityScore(10, 500, math.log(19.0), 19.0)).passed
    blocked = perplexity_gate(base, PerplexityScore(10, 500, math.log(19.5), 19.5))
    assert not blocked.passed and blocked.name == "heldout_perplexity"
    assert blocked.values["reduction"] == pytest.approx(0.025)
    assert "20.000 → 19.500" in blocked.detail
    assert perplexity_gate(
        base, PerplexityScore(10, 500, math.log(19.5), 19.5), min_relative_reduction=0.02
    ).passed


def test_the_reference_against_itself_has_accuracy_zero_and_margin_zero(tiny_model: tuple[Any, Any]) -> None:
    model, tokenizer = tiny_model
    score = preference_scores(model, tokenizer, pairs(GOOD, GARBAGE), reference=model, beta=0.1)
    assert score == PreferenceScore(rows=3, accuracy=0.0, mean_margin=0.0, beta=0.1)


def test_a_fresh_lora_policy_uses_its_disabled_adapter_as_the_reference(
    tiny_base_model: BaseModelInfo, tiny_model: tuple[Any, Any]
) -> None:
    from peft import LoraConfig, get_peft_model

    _, tokenizer = tiny_model
    policy = get_peft_model(load_base_model(tiny_base_model.path), LoraConfig(r=4, target_modules=["q_proj"]))
    fresh = preference_scores(policy, tokenizer, pairs(GOOD, GARBAGE))
    assert (fresh.accuracy, fresh.mean_margin) == (0.0, pytest.approx(0.0, abs=1e-6))
    with torch.no_grad():
        for name, parameter in policy.named_parameters():
            if "lora_B" in name:
                parameter.fill_(0.05)
    trained = preference_scores(policy, tokenizer, pairs(GOOD, GARBAGE))
    assert trained.mean_margin != pytest.approx(0.0, abs=1e-4)  # the adapter, not the base, moved


def test_a_policy_that_prefers_the_chosen_replies_more_than_its_reference_ranks_every_pair(
    tiny_model: tuple[Any, Any],
) -> None:
    model, tokenizer = tiny_model
    torch.manual_seed(0)
    untrained = LlamaForCausalLM(model.config)  # no preference between natural text and noise
    right = preference_scores(model, tokenizer, pairs(GOOD, GARBAGE), reference=untrained, beta=0.5)
    assert right.accuracy == 1.0 and right.mean_margin > 0.0
    wrong = preference_scores(model, tokenizer, pairs(GARBAGE, GOOD), reference=untrained, beta=0.5)
    assert wrong.accuracy == 0.0
    assert wrong.mean_margin == pytest.approx(-right.mean_margin, rel=1e-5)
    assert preference_gate(right).passed
    assert not preference_gate(wrong).passed


def test_a_full_model_policy_needs_an_explicit_reference_and_pairs(tiny_model: tuple[Any, Any]) -> None:
    model, tokenizer = tiny_model
    with pytest.raises(ConfigError, match="pass reference="):
        preference_scores(model, tokenizer, pairs(GOOD, GARBAGE))
    with pytest.raises(EvaluationError, match="no held-out preference pairs"):
        preference_scores(model, tokenizer, [], reference=model)


def test_preference_gate_needs_accuracy_and_a_positive_margin() -> None:
    assert preference_gate(PreferenceScore(rows=20, accuracy=0.55, mean_margin=0.3, beta=0.1)).passed
    low = preference_gate(PreferenceScore(rows=20, accuracy=0.5, mean_margin=0.3, beta=0.1))
    assert not low.passed and low.name == "preference_accuracy"
    assert "50.0% (need ≥ 55%)" in low.detail
    assert not preference_gate(PreferenceScore(rows=20, accuracy=0.7, mean_margin=0.0, beta=0.1)).passed
    assert preference_gate(
        PreferenceScore(rows=20, accuracy=0.5, mean_margin=0.1, beta=0.1), min_accuracy=0.5
    ).passed
