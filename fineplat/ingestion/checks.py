"""Whether a dataset may go on to training, decided from stage reports alone, so the Dagster asset
checks, the CLI's exit code and the demo all apply the same rule, and whether the totals add up:
rows_in = kept + quarantined + removed as duplicate + removed as contaminated."""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Any

# A few bad rows are quarantined and the rest trains; more than this share usually means a
# systematic problem (wrong schema, wrong encoding, truncated export) that quarantine would hide.
MAX_QUARANTINED_FRACTION = 0.05


def blocking_problems(
    report: Mapping[str, Any], *, max_quarantined_fraction: float = MAX_QUARANTINED_FRACTION
) -> list[str]:
    """Human-readable reasons this stage's output must not be used; empty when it may go on."""
    problems: list[str] = []
    stage = report.get("stage", "?")
    rows_in = int(report.get("rows_in", 0))
    kept = int(report.get("kept", 0))
    rejected = int(report.get("rejected", 0))
    if rows_in != kept + rejected:
        problems.append(
            f"{stage}: totals do not add up (rows_in {rows_in} != kept {kept} + rejected {rejected})."
        )
    if rows_in == 0:
        problems.append(f"{stage}: the dataset has no rows.")
    elif kept == 0:
        problems.append(
            f"{stage}: no row survived ({rejected} rejected); see the quarantine file for each reason."
        )
    if stage == "validate" and rows_in and rejected / rows_in > max_quarantined_fraction:
        top = ", ".join(
            f"{code} x{count}"
            for code, count in sorted(report.get("reasons", {}).items(), key=lambda kv: -kv[1])[:3]
        )
        problems.append(
            f"validate: {rejected} of {rows_in} rows ({rejected / rows_in:.1%}) are invalid, more than the "
            f"{max_quarantined_fraction:.0%} allowed ({top}); fix the file (see the quarantine) and ingest it again."
        )
    if stage == "decontaminate" and report.get("needs_review"):
        problems.append(
            f"decontaminate: {report.get('contaminated', 0)} rows overlap benchmark items and policy is 'escalate'; "
            "a reviewer must decide (re-run with policy 'remove' or 'flag')."
        )
    return problems


def ingestion_totals(reports: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    """Totals over a chain of stage reports (validate, deduplicate, decontaminate). Raises
    AssertionError when rows were lost: every row is kept, quarantined or removed with a reason."""
    by_stage = {report["stage"]: report for report in reports}
    first, last = reports[0], reports[-1]
    totals = {
        "rows_in": int(first["rows_in"]),
        "kept": int(last["kept"]),
        "quarantined": int(by_stage.get("validate", {}).get("rejected", 0)),
        "removed_duplicate": int(by_stage.get("deduplicate", {}).get("rejected", 0)),
        "removed_contaminated": int(by_stage.get("decontaminate", {}).get("rejected", 0)),
    }
    for earlier, later in itertools.pairwise(reports):
        if int(earlier["kept"]) != int(later["rows_in"]):
            raise AssertionError(
                f"stage {later['stage']} received {later['rows_in']} rows, {earlier['stage']} kept {earlier['kept']}"
            )
    accounted = (
        totals["kept"] + totals["quarantined"] + totals["removed_duplicate"] + totals["removed_contaminated"]
    )
    if accounted != totals["rows_in"]:
        raise AssertionError(f"ingestion lost rows: rows_in {totals['rows_in']} != accounted {accounted}")
    return totals
