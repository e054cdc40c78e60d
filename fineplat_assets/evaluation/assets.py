"""Evaluation assets, partitioned by fine-tune job: `eval_report` measures base model and adapter
on the job's held-out rows by the job's method (task metric for chat methods, preference accuracy
for DPO, perplexity for CPT) and applies the gates; `registered_adapter` records the adapter with its full
lineage and, when every gate passed, moves it to staging for the promotion sensor. Both use the
base model SHA the job spec pinned at submission instead of hashing the weights."""

import json
from typing import Any

from dagster import (
    AssetCheckResult,
    AssetCheckSpec,
    AssetExecutionContext,
    MaterializeResult,
    MetadataValue,
    asset,
)

from fineplat.basemodel import locate_base_model
from fineplat.evaluation.evaluate import evaluate_candidate
from fineplat.evaluation.report import EvalReport
from fineplat.registry import Registry
from fineplat.storage import ObjectStore
from fineplat.submission import JobSpec, read_job_spec
from fineplat_assets.partitions import job_partitions
from fineplat_assets.training.assets import adapter, holdout_records, job_keys
from fineplat_resources.registry import RegistryResource
from fineplat_resources.storage import ObjectStoreResource

GROUP = "evaluation"


def _output_key(store: ObjectStore, reg: Registry, spec: JobSpec) -> str:
    """The job's own output, or that of the identical run it reused."""
    own = job_keys(spec.job_id)["output"]
    if store.exists(own) and any(store.local(own).iterdir()):
        return own
    previous = reg.find_succeeded_job(spec.run_identity)
    if previous is None:
        raise FileNotFoundError(f"job {spec.job_id}: no trained output; materialize `adapter` first")
    return job_keys(previous.id)["output"]


@asset(
    partitions_def=job_partitions,
    group_name=GROUP,
    deps=[adapter],
    kinds={"pytorch"},
    check_specs=[
        AssetCheckSpec(
            "gates_passed", asset="eval_report", blocking=False, description="All promotion gates passed."
        )
    ],
)
def eval_report(
    context: AssetExecutionContext, object_store: ObjectStoreResource, registry: RegistryResource
) -> MaterializeResult:
    """Base vs adapter on the job's held-out rows, measured as the job's method trained for, and
    the gates."""
    store = object_store.get_store()
    reg = registry.get_registry()
    spec = read_job_spec(store, context.partition_key)
    keys = job_keys(spec.job_id)
    records = holdout_records(store.local(keys["data"]))
    report = evaluate_candidate(
        locate_base_model(spec.base_model), store.local(_output_key(store, reg, spec)), records, spec.config
    )
    with store.writing(keys["eval"]) as out:
        (out / "report.json").write_text(json.dumps(report.to_dict(), indent=2))
    gates_md = gates_table(report)
    return MaterializeResult(
        metadata={
            **report_metadata(report),
            "gates": MetadataValue.md(gates_md),
            "uri": store.uri(keys["eval"]),
        },
        check_results=[
            AssetCheckResult(
                check_name="gates_passed",
                passed=report.passed,
                metadata={"gates": MetadataValue.md(gates_md)},
            )
        ],
    )


def _cell(text: str) -> str:
    """`text` safe inside a markdown table cell."""
    return text.replace("|", "/").replace("\n", " ")


def gates_table(report: EvalReport) -> str:
    """The gates as a markdown table: name, verdict, and the numbers it was decided on."""
    rows = [
        f"| {g.name} | {'✅ passed' if g.passed else '❌ blocked'} | {_cell(g.detail)} |"
        for g in report.gates
    ]
    return "\n".join(["| gate | passed | detail |", "|---|---|---|", *rows])


def report_metadata(report: EvalReport) -> dict[str, Any]:
    """The report's numbers as asset metadata: the headline metric of base and adapter, one entry
    per gate, and for chat methods the exact-match summary and the sample replies."""
    metadata: dict[str, Any] = {
        "method": report.method,
        "metric": report.metric,
        "holdout_rows": report.holdout_rows,
        "base_value": report.base_value,
        "adapter_value": report.candidate_value,
        "passed": report.passed,
        **{
            f"gate_{g.name}": MetadataValue.json({"passed": g.passed, "detail": g.detail, **g.values})
            for g in report.gates
        },
    }
    if "candidate_exact_match" in report.scores:
        base, candidate = report.scores["base_exact_match"], report.scores["candidate_exact_match"]
        metadata |= {
            "base_exact_match": base,
            "adapter_exact_match": candidate,
            "gain_points": round(100 * (candidate - base), 1),
        }
    if report.samples:
        table = ["| prompt | reference | base | adapter |", "|---|---|---|---|"] + [
            f"| {_cell(s['prompt'][-60:])} | {_cell(s['reference'])} | {_cell(s['base_reply'][:40])} | {_cell(s['reply'][:40])} |"
            for s in report.samples
        ]
        metadata["samples"] = MetadataValue.md("\n".join(table))
    return metadata


@asset(partitions_def=job_partitions, group_name=GROUP, deps=[eval_report], kinds={"sql"})
def registered_adapter(
    context: AssetExecutionContext, object_store: ObjectStoreResource, registry: RegistryResource
) -> MaterializeResult:
    """The registry row: base SHA + dataset version + hyperparameter hash + eval results. Adapters
    that passed every gate go to `staging`, where the promotion sensor picks them up."""
    store = object_store.get_store()
    reg = registry.get_registry()
    spec = read_job_spec(store, context.partition_key)
    report = json.loads((store.local(job_keys(spec.job_id)["eval"]) / "report.json").read_text())
    model = reg.register_model(
        name=spec.name,
        base_model_sha=spec.base_model_sha,
        dataset_id=spec.dataset_id,
        hparams_hash=spec.config.hparams_hash(),
        kind="lora" if spec.config.uses_adapter else "full",
        uri=store.uri(_output_key(store, reg, spec)),
        job_id=spec.job_id,
        eval_results=report,
        gates_passed=bool(report["passed"]),
    )
    if model.gates_passed and model.stage == "dev":
        model = reg.transition(model.id, "staging", actor="fineplat-gates", reason="all eval gates passed")
    lineage = reg.lineage(model.id)
    return MaterializeResult(
        metadata={
            "model_id": model.id,
            "name": model.name,
            "version": model.version,
            "stage": model.stage,
            "serving_name": model.serving_name,
            "base_model_sha": model.base_model_sha,
            "dataset_id": model.dataset_id,
            "hparams_hash": model.hparams_hash,
            "gates_passed": model.gates_passed,
            "lineage": MetadataValue.json(json.loads(json.dumps(lineage, default=str))),
        }
    )
