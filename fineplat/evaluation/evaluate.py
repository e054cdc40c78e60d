"""Evaluation by method: each method is measured by what it was trained to do, on the job's
held-out rows (the records `fineplat.packing.build` kept in `holdout.parquet`, in the ingestion's
normalized form), base model against candidate.

- sft / lora / qlora (chat rows): greedy replies scored by the job's `eval_metric`
  (`fineplat.evaluation.metrics`), gated on a relative gain over the base.
- dpo (preference rows): held-out preference accuracy and mean reward margin of the candidate
  policy with the base as reference (`fineplat.evaluation.preference`). The base scored against
  itself has no preference (every pair a tie), so its accuracy and margin are 0.
- cpt (text rows): held-out perplexity of base and candidate, gated on a relative reduction.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fineplat.basemodel import load_base_model, load_tokenizer
from fineplat.evaluation.holdout import prompt_and_reference
from fineplat.evaluation.metrics import holdout_metrics, task_holdout_gate
from fineplat.evaluation.preference import (
    perplexity,
    perplexity_gate,
    preference_gate,
    preference_scores,
)
from fineplat.evaluation.report import EvalReport
from fineplat.training.config import TrainConfig

SAMPLE_ROWS = 5  # held-out rows shown side by side (base, adapter, reference) in the report


def load_candidate(base_model_dir: Path, candidate_dir: Path) -> Any:
    """A peft adapter on the base model, or a full fine-tuned model directory."""
    if (candidate_dir / "adapter_config.json").exists():
        from peft import PeftModel

        return PeftModel.from_pretrained(load_base_model(base_model_dir), str(candidate_dir))
    return load_base_model(candidate_dir)


def evaluate_candidate(
    base_model_dir: Path, candidate_dir: Path, holdout_records: Sequence[str], config: TrainConfig
) -> EvalReport:
    """Base and candidate measured on `holdout_records` by `config.method`'s measure, and gated."""
    if config.method == "dpo":
        return evaluate_preference(base_model_dir, candidate_dir, holdout_records, config)
    if config.method == "cpt":
        return evaluate_text(base_model_dir, candidate_dir, holdout_records, config)
    return evaluate_chat(base_model_dir, candidate_dir, holdout_records, config)


def evaluate_chat(
    base_model_dir: Path, candidate_dir: Path, holdout_records: Sequence[str], config: TrainConfig
) -> EvalReport:
    """Greedy replies of base and candidate to the held-out chat prompts, every task metric, and
    the task-holdout gate on `config.eval_metric`."""
    tokenizer = load_tokenizer(base_model_dir)
    records = list(holdout_records)
    base, base_replies = holdout_metrics(load_base_model(base_model_dir), tokenizer, records)
    candidate, replies = holdout_metrics(load_candidate(base_model_dir, candidate_dir), tokenizer, records)
    gate = task_holdout_gate(config.eval_metric, base, candidate)
    samples = []
    for record, base_reply, reply in list(zip(records, base_replies, replies, strict=True))[:SAMPLE_ROWS]:
        prompt, reference = prompt_and_reference(record)
        samples.append(
            {
                "prompt": prompt[-1]["content"],
                "reference": reference,
                "reply": reply,
                "base_reply": base_reply,
            }
        )
    return EvalReport(
        method=config.method,
        metric=config.eval_metric,
        holdout_rows=candidate.rows,
        base_value=base.get(config.eval_metric),
        candidate_value=candidate.get(config.eval_metric),
        gates=[gate],
        scores={
            **{f"base_{name}": value for name, value in base.summary().items()},
            **{f"candidate_{name}": value for name, value in candidate.summary().items()},
        },
        samples=samples,
    )


def evaluate_preference(
    base_model_dir: Path, candidate_dir: Path, holdout_records: Sequence[str], config: TrainConfig
) -> EvalReport:
    """Held-out preference accuracy and reward margin of the DPO policy (β = the job's
    `dpo_beta`), the base as reference, and the preference gate."""
    tokenizer = load_tokenizer(base_model_dir)
    policy = load_candidate(base_model_dir, candidate_dir)
    # A peft policy holds the base inside it (adapter disabled); a full model needs the base loaded.
    reference = None if hasattr(policy, "disable_adapter") else load_base_model(base_model_dir)
    score = preference_scores(
        policy,
        tokenizer,
        list(holdout_records),
        reference=reference,
        beta=config.dpo_beta,
        max_seq_len=config.max_seq_len,
    )
    return EvalReport(
        method=config.method,
        metric="preference_accuracy",
        holdout_rows=score.rows,
        base_value=0.0,
        candidate_value=score.accuracy,
        gates=[preference_gate(score)],
        scores={
            "base_preference_accuracy": 0.0,
            "candidate_preference_accuracy": score.accuracy,
            "base_mean_margin": 0.0,
            "candidate_mean_margin": score.mean_margin,
            "beta": score.beta,
        },
    )


def evaluate_text(
    base_model_dir: Path, candidate_dir: Path, holdout_records: Sequence[str], config: TrainConfig
) -> EvalReport:
    """Held-out perplexity of base and candidate in windows of the job's `max_seq_len`, and the
    perplexity gate."""
    tokenizer = load_tokenizer(base_model_dir)
    records = list(holdout_records)
    base = perplexity(load_base_model(base_model_dir), tokenizer, records, window=config.max_seq_len)
    candidate = perplexity(
        load_candidate(base_model_dir, candidate_dir), tokenizer, records, window=config.max_seq_len
    )
    return EvalReport(
        method=config.method,
        metric="perplexity",
        holdout_rows=candidate.rows,
        base_value=base.perplexity,
        candidate_value=candidate.perplexity,
        gates=[perplexity_gate(base, candidate)],
        scores={
            "base_perplexity": base.perplexity,
            "candidate_perplexity": candidate.perplexity,
            "base_mean_nll": base.mean_nll,
            "candidate_mean_nll": candidate.mean_nll,
            "tokens": float(candidate.tokens),
        },
    )
