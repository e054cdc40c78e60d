"""The evaluation report and its gates: base model and candidate scored on the same task holdout;
only a candidate that clears every gate may be promoted."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fineplat.basemodel import load_base_model, load_tokenizer
from fineplat.evaluation.holdout import HoldoutScore, exact_match

# The adapter must beat the base model on its own task by at least this much exact match to be
# promoted; otherwise the fine-tune did not do what it was for.
MIN_HOLDOUT_GAIN = 0.05


@dataclass
class GateResult:
    """One gate's verdict with the numbers it was decided on."""

    name: str
    passed: bool
    detail: str
    values: dict[str, float] = field(default_factory=dict)


@dataclass
class EvalReport:
    """Scores of base and candidate, and the gates they were judged by."""

    holdout_rows: int
    base_exact_match: float
    candidate_exact_match: float
    gates: list[GateResult]
    samples: list[dict[str, str]]

    @property
    def passed(self) -> bool:
        return all(g.passed for g in self.gates)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["passed"] = self.passed
        data["gain"] = self.candidate_exact_match - self.base_exact_match
        return data


def load_candidate(base_model_dir: Path, candidate_dir: Path) -> Any:
    """A peft adapter on the base model, or a full fine-tuned model directory."""
    if (candidate_dir / "adapter_config.json").exists():
        from peft import PeftModel

        return PeftModel.from_pretrained(load_base_model(base_model_dir), str(candidate_dir))
    return load_base_model(candidate_dir)


def holdout_gate(base: HoldoutScore, candidate: HoldoutScore, min_gain: float) -> GateResult:
    """The candidate must improve exact match on the task holdout by `min_gain`."""
    gain = candidate.exact_match - base.exact_match
    return GateResult(
        "task_holdout",
        gain >= min_gain,
        f"exact match {base.exact_match:.1%} → {candidate.exact_match:.1%} (gain {gain:+.1%}, need ≥ {min_gain:+.1%})",
        {"base": base.exact_match, "candidate": candidate.exact_match, "gain": gain},
    )


def evaluate_candidate(
    base_model_dir: Path,
    candidate_dir: Path,
    holdout_records: list[str],
    *,
    min_gain: float = MIN_HOLDOUT_GAIN,
    show_progress: bool = False,
) -> EvalReport:
    """Score base and candidate on the holdout (greedy, exact match) and apply the gates."""
    tokenizer = load_tokenizer(base_model_dir)
    base_score = exact_match(
        load_base_model(base_model_dir), tokenizer, holdout_records, show_progress=show_progress
    )
    candidate_score = exact_match(
        load_candidate(base_model_dir, candidate_dir), tokenizer, holdout_records, show_progress=show_progress
    )
    samples = [
        {**s, "base_reply": b["reply"]}
        for s, b in zip(candidate_score.samples, base_score.samples, strict=True)
    ]
    return EvalReport(
        holdout_rows=candidate_score.rows,
        base_exact_match=base_score.exact_match,
        candidate_exact_match=candidate_score.exact_match,
        gates=[holdout_gate(base_score, candidate_score, min_gain)],
        samples=samples,
    )
