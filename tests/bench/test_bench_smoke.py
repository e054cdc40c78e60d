"""The training benchmarks run end to end in their small `--quick` form and print their ratio lines
with positive, finite numbers (speed itself is measured by hand at full size: it depends on load),
and the synthetic instruction data has Alpaca's length shape, which the throughput numbers rest on."""

from __future__ import annotations

import importlib.util
import math
import re
import statistics
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
RATIO_LINE = re.compile(r"^RATIO (\S+): (\S+)x\b", re.MULTILINE)


def run_bench(script: str, *args: str) -> str:
    """Run one benchmark script as its own process (one torch thread: the machine is shared)."""
    done = subprocess.run(
        [sys.executable, str(BENCH / script), *args],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=BENCH.parent,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def ratios(output: str) -> dict[str, float]:
    """The `RATIO name: value x` lines of a benchmark's output."""
    return {name: float(value) for name, value in RATIO_LINE.findall(output)}


def assert_positive_finite(values: dict[str, float]) -> None:
    """Every ratio is a real measurement: a positive, finite number."""
    for name, value in values.items():
        assert math.isfinite(value) and value > 0, f"{name} = {value}"


def test_train_bench_quick_prints_fineplat_vs_trainer_ratios(tmp_path: Path) -> None:
    out = run_bench("train_bench.py", "--quick", "--threads", "1", "--workdir", str(tmp_path))
    found = ratios(out)
    assert set(found) == {
        "fineplat/trainer+peft",
        "fineplat/trainer+peft_cpu_time",
        "fineplat/trainer+peft_group_by_length",
        "fineplat/trainer+peft_group_by_length_cpu_time",
    }, out
    assert_positive_finite(found)
    assert re.search(r"^fineplat +median +[\d,]+ effective tok/s", out, re.MULTILINE), out
    assert re.search(r"^data: \d+ examples, tokens after chat template: median \d+", out, re.MULTILINE), out


def test_packing_bench_quick_prints_packed_vs_unpacked_ratio(tmp_path: Path) -> None:
    out = run_bench("packing_bench.py", "--quick", "--threads", "1", "--workdir", str(tmp_path))
    found = ratios(out)
    assert set(found) == {"packed/unpacked", "packed/unpacked_cpu_time"}, out
    assert_positive_finite(found)
    efficiency = re.search(r"^packing efficiency ([\d.]+) \(unpacked batches ([\d.]+)\)", out, re.MULTILINE)
    assert efficiency is not None, out
    packed, unpacked = float(efficiency.group(1)), float(efficiency.group(2))
    assert 0 < unpacked < packed <= 1.0


def test_checkpoint_bench_quick_prints_overheads_for_lora_and_full(tmp_path: Path) -> None:
    out = run_bench("checkpoint_bench.py", "--quick", "--threads", "1", "--workdir", str(tmp_path))
    found = ratios(out)
    assert set(found) == {
        "lora_checkpoint_overhead_at_500",
        "lora_checkpoint_plus_validation_overhead_at_500",
        "full_checkpoint_overhead_at_500",
        "full_checkpoint_plus_validation_overhead_at_500",
    }, out
    assert_positive_finite(found)
    assert found["lora_checkpoint_overhead_at_500"] < found["lora_checkpoint_plus_validation_overhead_at_500"]


def test_gpu_mfu_dry_run_prints_mfu_for_sft_and_lora() -> None:
    out = run_bench("gpu_mfu.py", "--dry-run")
    found = ratios(out)
    assert set(found) == {"sft_mfu", "lora_mfu"}, out
    assert_positive_finite(found)
    assert re.search(r"^(PASS|MISS) SFT MFU > 60%", out, re.MULTILINE), out


def _load_common() -> ModuleType:
    """bench/common.py as a module (bench/ is scripts, not a package)."""
    spec = importlib.util.spec_from_file_location("fineplat_bench_common", BENCH / "common.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def common() -> ModuleType:
    """The benchmarks' shared helpers, loaded from their file."""
    return _load_common()


def test_synthetic_instruction_data_has_alpacas_length_shape(common: ModuleType, tmp_path: Path) -> None:
    base = common.build_bench_model(tmp_path, quick=True)
    tokenizer = common.load_tokenizer(base.path)
    rows = common.alpaca_like_rows(1500, tokenizer)
    lengths = [len(e.input_ids) for e in common.train_split_examples(rows, tokenizer, 1 << 30)]
    assert rows["kind"].unique().to_list() == ["chat"]
    assert 58 <= statistics.median(lengths) <= 72  # Alpaca after a chat template: ~60-70
    assert 150 <= common.percentile(lengths, 90) <= 230  # long tail
    assert 380 <= max(lengths) <= 520  # reaching the 512-token window
    assert statistics.median(lengths) < 512 / 4  # well under a quarter of max_seq_len
