"""The ingestion benchmark runs end to end at a small size and meets its quality targets against
the planted truth (throughput is measured at full size by hand: it depends on machine load)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "ingest_bench.py"


def test_small_benchmark_meets_its_quality_targets(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(BENCH), "--rows", "3000", "--naive-rows", "30", "--workdir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "planted: exact 60, near 90, contaminated verbatim 9, edited 9, malformed 15" in out
    assert "exact duplicates:  precision 1.0000  recall 1.0000" in out
    assert "malformed rows:    recall 1.000  (validation rejected 15)" in out
    assert "totals: rows_in 3000 = kept 2817 + quarantined 15 + duplicates 150 + contaminated 18: True" in out
    for target in (
        "near-duplicate recall",
        "recall 1.0 verbatim",
        "lightly edited",
        "no contamination false positives",
    ):
        assert any(line.strip().startswith("PASS") and target in line for line in out.splitlines()), out
    assert "rows/s" in out and "naive baseline: 30 rows" in out
