"""The evaluation report's contract with its readers (the registry's eval results, the asset's
metadata) and the job configuration's choice of task metric."""

from __future__ import annotations

import json
from typing import get_args

import pytest
from pydantic import ValidationError

from fineplat.evaluation.metrics import METRICS
from fineplat.evaluation.report import EvalReport, GateResult
from fineplat.training.config import EvalMetric, TrainConfig


def _report(*gates: GateResult) -> EvalReport:
    return EvalReport(
        method="cpt",
        metric="perplexity",
        holdout_rows=4,
        base_value=12.0,
        candidate_value=9.0,
        gates=list(gates),
        scores={"base_perplexity": 12.0, "candidate_perplexity": 9.0, "tokens": 80.0},
    )


def test_report_dict_is_json_with_method_metric_values_gates_and_scores() -> None:
    gate = GateResult("heldout_perplexity", True, "perplexity 12.000 → 9.000", {"reduction": 0.25})
    data = json.loads(json.dumps(_report(gate).to_dict(), allow_nan=False))
    assert data == {
        "method": "cpt",
        "metric": "perplexity",
        "holdout_rows": 4,
        "base_value": 12.0,
        "candidate_value": 9.0,
        "gain": -3.0,
        "passed": True,
        "gates": [
            {
                "name": "heldout_perplexity",
                "passed": True,
                "detail": "perplexity 12.000 → 9.000",
                "values": {"reduction": 0.25},
            }
        ],
        "scores": {"base_perplexity": 12.0, "candidate_perplexity": 9.0, "tokens": 80.0},
        "base_perplexity": 12.0,
        "candidate_perplexity": 9.0,
        "tokens": 80.0,
        "samples": [],
    }


def test_one_failed_gate_fails_the_report_and_no_gate_passes_nothing() -> None:
    passed, blocked = GateResult("a", True, ""), GateResult("b", False, "")
    assert _report(passed).passed
    assert not _report(passed, blocked).passed
    assert not _report().passed


def test_the_job_chooses_any_task_metric_and_only_those() -> None:
    assert get_args(EvalMetric) == METRICS
    assert TrainConfig().eval_metric == "exact_match"
    assert TrainConfig(eval_metric="token_f1").eval_metric == "token_f1"
    with pytest.raises(ValidationError, match="eval_metric"):
        TrainConfig(eval_metric="f1")
