"""The evaluation report and its gates: base model and candidate measured on the same held-out
rows, by the measure the job's method trained for; only a candidate that clears every gate may be
promoted. `fineplat.evaluation.evaluate` produces it; the registry stores `EvalReport.to_dict()`."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class GateResult:
    """One gate's verdict with the numbers it was decided on."""

    name: str
    passed: bool
    detail: str
    values: dict[str, float] = field(default_factory=dict)


@dataclass
class EvalReport:
    """Scores of base and candidate on the held-out rows, and the gates they were judged by.

    `metric` names the headline measure (`exact_match`, `token_f1`, ... for chat methods,
    `preference_accuracy` for DPO, `perplexity` for CPT; lower is better for perplexity only), and
    `base_value` / `candidate_value` are its two values. `scores` holds every other measured number
    by name (`base_exact_match`, `candidate_mean_margin`, `base_perplexity`, ...)."""

    method: str
    metric: str
    holdout_rows: int
    base_value: float
    candidate_value: float
    gates: list[GateResult]
    scores: dict[str, float] = field(default_factory=dict)
    samples: list[dict[str, str]] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        """Every gate passed; a report without gates measured nothing and does not pass."""
        return bool(self.gates) and all(g.passed for g in self.gates)

    @property
    def gain(self) -> float:
        """candidate − base on the headline metric (negative is better for perplexity)."""
        return self.candidate_value - self.base_value

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serializable dict: the fields, `passed`, `gain`, and each of `scores` also at the
        top level, where readers of the registry's eval results find `base_exact_match` and the like."""
        data = asdict(self)
        return {**self.scores, **data, "passed": self.passed, "gain": self.gain}
