"""What DPO and CPT were trained to do, measured on held-out rows.

DPO (Rafailov et al. 2023) trains the policy so that its implicit reward
r(x, y) = β · (log π(y|x) − log π_ref(y|x)) ranks the chosen reply above the rejected one. On
held-out pairs we report, as TRL's DPO trainer does in evaluation:
- preference accuracy: the share of pairs with r(chosen) > r(rejected), strictly — a tie is not a
  correct ranking, so the reference scored against itself has accuracy 0 and margin 0;
- mean reward margin: the mean of r(chosen) − r(rejected).
The gate requires accuracy ≥ `min_accuracy` (default 0.55, clearly above the 0.5 of a coin) and a
positive mean margin.

CPT (continued pre-training) is meant to make the model better at predicting the domain's text, so
its measure is held-out perplexity: exp of the token-weighted mean negative log-likelihood over all
predicted tokens (BOS + text + EOS, as training tokenizes it). Texts longer than the window are cut
into windows that overlap by one token, so every token after BOS is predicted exactly once (with
less context at a window's start). The gate requires the candidate's perplexity to be at least
`min_relative_reduction` (default 5%, the task-holdout rule's margin) below the base's.

Both run `fineplat.training.dpo.sequence_logps`, the function that computes DPO's reference
log-probabilities for training: evaluation and training score a sequence the same way.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from fineplat.errors import ConfigError, EvaluationError
from fineplat.evaluation.report import GateResult
from fineplat.packing.tokenize import tokenize_record, tokenize_rows
from fineplat.training import distributed
from fineplat.training.dpo import sequence_logps

DEFAULT_DPO_BETA = 0.1  # TrainConfig.dpo_beta's default; pass the job's own β
DEFAULT_MIN_PREFERENCE_ACCURACY = 0.55
DEFAULT_MIN_PERPLEXITY_REDUCTION = 0.05
DEFAULT_PERPLEXITY_WINDOW = 1024  # tokens per forward; capped at the model's max_position_embeddings
DEFAULT_PREFERENCE_MAX_SEQ_LEN = 2048


@dataclass(frozen=True)
class PreferenceScore:
    """Held-out preference accuracy and mean implicit-reward margin of a DPO policy."""

    rows: int
    accuracy: float
    mean_margin: float
    beta: float


@dataclass(frozen=True)
class PerplexityScore:
    """Held-out perplexity of one model: exp(total NLL / predicted tokens)."""

    rows: int
    tokens: int
    mean_nll: float
    perplexity: float


def _ready(model: Any) -> Any:
    """`model` on the device `sequence_logps` puts its batches on, in eval mode (moved in place)."""
    model.to(distributed.training_device())
    model.eval()
    return model


def preference_scores(
    policy: Any,
    tokenizer: Any,
    records: Sequence[str | dict[str, Any]],
    *,
    reference: Any = None,
    beta: float = DEFAULT_DPO_BETA,
    max_seq_len: int = DEFAULT_PREFERENCE_MAX_SEQ_LEN,
) -> PreferenceScore:
    """Preference accuracy and mean reward margin of `policy` on preference records
    (`{"prompt": [...], "chosen": [...], "rejected": [...]}`, JSON strings or dicts).

    The reference is `reference` when given, else `policy` with its adapter disabled (a peft model:
    base + LoRA holds the reference inside it, so no second copy is loaded). Models are moved to the
    training device in place."""
    if not records:
        raise EvaluationError(
            "no held-out preference pairs; give a DPO holdout or keep a split of the pairs."
        )
    pairs = [tokenize_record("preference", record, tokenizer, max_seq_len).pair for record in records]
    ids = {side: [p[f"{side}_input_ids"] for p in pairs] for side in ("chosen", "rejected")}
    labels = {side: [p[f"{side}_labels"] for p in pairs] for side in ("chosen", "rejected")}
    pad_id = tokenizer.pad_token_id

    def logps(model: Any) -> dict[str, list[float]]:
        return {
            side: sequence_logps(model, ids[side], labels[side], pad_id) for side in ("chosen", "rejected")
        }

    policy_logps = logps(_ready(policy))
    if reference is not None:
        reference_logps = logps(_ready(reference))
    elif hasattr(policy, "disable_adapter"):
        with policy.disable_adapter():
            reference_logps = logps(policy)
    else:
        raise ConfigError(
            "preference_scores: the policy is a full model, so pass reference= (the base model it was trained from)."
        )
    margins = [
        beta * ((pc - rc) - (pr - rr))
        for pc, rc, pr, rr in zip(
            policy_logps["chosen"],
            reference_logps["chosen"],
            policy_logps["rejected"],
            reference_logps["rejected"],
            strict=True,
        )
    ]
    return PreferenceScore(
        rows=len(margins),
        accuracy=sum(m > 0.0 for m in margins) / len(margins),
        mean_margin=sum(margins) / len(margins),
        beta=beta,
    )


def preference_gate(
    score: PreferenceScore,
    *,
    min_accuracy: float = DEFAULT_MIN_PREFERENCE_ACCURACY,
    min_mean_margin: float = 0.0,
) -> GateResult:
    """DPO's own gate: held-out preference accuracy ≥ `min_accuracy` and mean margin > `min_mean_margin`."""
    passed = score.accuracy >= min_accuracy and score.mean_margin > min_mean_margin
    return GateResult(
        "preference_accuracy",
        passed,
        f"held-out preference accuracy {score.accuracy:.1%} (need ≥ {min_accuracy:.0%}), mean reward margin "
        f"{score.mean_margin:+.4f} (need > {min_mean_margin:+.4f}) over {score.rows} pairs, β = {score.beta}",
        {
            "accuracy": score.accuracy,
            "mean_margin": score.mean_margin,
            "pairs": float(score.rows),
            "beta": score.beta,
            "min_accuracy": min_accuracy,
        },
    )


def _text_of(record: str | dict[str, Any]) -> str:
    import json

    data = json.loads(record) if isinstance(record, str) else record
    if not isinstance(data, dict) or not isinstance(data.get("text"), str):
        raise EvaluationError(
            'perplexity needs text rows {"text": ...}; got a row without a `text` string. Give CPT a text holdout.'
        )
    return data["text"]


def perplexity(
    model: Any,
    tokenizer: Any,
    records: Sequence[str | dict[str, Any]],
    *,
    window: int = DEFAULT_PERPLEXITY_WINDOW,
) -> PerplexityScore:
    """Held-out perplexity of `model` on text records (`{"text": ...}`, JSON strings or dicts), in
    windows of at most `window` tokens overlapping by one. The model is moved to the training device."""
    if not records:
        raise EvaluationError("no held-out text rows; give a CPT holdout or keep a split of the texts.")
    window = min(window, int(getattr(getattr(model, "config", None), "max_position_embeddings", window)))
    if window < 2:
        raise ConfigError(
            f"perplexity window {window}: needs at least 2 tokens (one context, one predicted)."
        )
    chunks: list[list[int]] = []
    texts = [{"text": _text_of(record)} for record in records]
    for example in tokenize_rows(["text"] * len(texts), texts, tokenizer):
        ids = example.input_ids
        step = window - 1
        chunks.extend(ids[start : start + window] for start in range(0, max(1, len(ids) - 1), step))
    chunks = [c for c in chunks if len(c) >= 2]
    tokens = sum(len(c) - 1 for c in chunks)
    if tokens == 0:
        raise EvaluationError("the held-out texts are empty after tokenization; nothing to predict.")
    total = sum(sequence_logps(_ready(model), chunks, chunks, tokenizer.pad_token_id))
    mean_nll = -total / tokens
    return PerplexityScore(rows=len(records), tokens=tokens, mean_nll=mean_nll, perplexity=math.exp(mean_nll))


def perplexity_gate(
    base: PerplexityScore,
    candidate: PerplexityScore,
    *,
    min_relative_reduction: float = DEFAULT_MIN_PERPLEXITY_REDUCTION,
) -> GateResult:
    """CPT's own gate: held-out perplexity at least `min_relative_reduction` below the base's."""
    needed = base.perplexity * (1.0 - min_relative_reduction)
    reduction = 1.0 - candidate.perplexity / base.perplexity
    return GateResult(
        "heldout_perplexity",
        candidate.perplexity <= needed,
        f"perplexity {base.perplexity:.3f} → {candidate.perplexity:.3f} on {candidate.tokens} tokens "
        f"(reduction {reduction:+.1%}, need ≥ {min_relative_reduction:+.1%})",
        {
            "base": base.perplexity,
            "candidate": candidate.perplexity,
            "required": needed,
            "reduction": reduction,
            "tokens": float(candidate.tokens),
        },
    )
