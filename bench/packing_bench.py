"""Packing gain: fineplat's own trainer with `packing=True` against `packing=False` on the same
long-tailed Alpaca-like data, interleaved in one process.

    .venv/bin/python bench/packing_bench.py            # 1,500 rows, 3 interleaved rounds
    .venv/bin/python bench/packing_bench.py --quick    # smoke run

Both runs use `TrainConfig(method="lora", n_epochs=1, max_seq_len=512)` and differ only in
`packing`. Packed: whole examples first-fit-decreasing into 512-token windows with restarting
position ids (no cross-example attention), 16 windows per step. Unpacked: 16 examples per step,
each batch right-padded to its longest example. The median example (~66 tokens) is well under a
quarter of the window, so the unpacked run spends most of its compute on padding.

Measured: effective (non-padding) tokens/s over one epoch, timed inside fineplat's loop (see
bench/common.py). Also printed: packing efficiency (real tokens / window tokens) and the padding
efficiency the unpacked run actually had (real tokens / padded batch tokens, batch by batch).

Target (issue #3 item 8): packed >= 2x unpacked.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from common import (
    bench_config,
    build_bench_model,
    interleave,
    prepare_dataset,
    ratio_lines,
    report,
    run_fineplat,
    set_threads,
)

from fineplat.packing.build import build_training_data
from fineplat.training.config import TrainConfig
from fineplat.training.data import load_training_data
from fineplat.training.trainer import epoch_order, resolve_batch_size

MAX_SEQ_LEN = 512  # fineplat's default window
DEFAULT_EXAMPLES = 1500
QUICK_EXAMPLES = 96
TARGET_RATIO = 2.0  # issue #3 item 8


def unpacked_padding_efficiency(data_dir: Path, config: TrainConfig, pad_token_id: int) -> float:
    """Real tokens / padded tokens over the batches the unpacked run of one epoch really forms
    (same seed, same order, same batch size as the trainer)."""
    data = load_training_data(data_dir, pad_token_id)
    lengths = [len(ids) for ids in data.train["input_ids"].to_list()]
    batch = resolve_batch_size(config, data.rows)
    order = epoch_order(config.seed, 0, data.rows)
    real = padded = 0
    for start in range(0, len(order), batch):
        members = [lengths[i] for i in order[start : start + batch]]
        real += sum(members)
        padded += max(members) * len(members)
    return real / padded


def main(argv: list[str] | None = None) -> int:
    """Build both training-data layouts, run packed and unpacked interleaved, print the ratio."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small smoke run (one round, few rows)")
    parser.add_argument("--examples", type=int, default=None, help=f"rows to generate ({DEFAULT_EXAMPLES})")
    parser.add_argument("--repeats", type=int, default=None, help="interleaved rounds (3; quick: 1)")
    parser.add_argument("--method", choices=["lora", "sft"], default="lora", help="training method")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: one per core)")
    parser.add_argument("--workdir", type=Path, default=None, help="where model, data and runs go")
    args = parser.parse_args(argv)
    count = args.examples or (QUICK_EXAMPLES if args.quick else DEFAULT_EXAMPLES)
    repeats = args.repeats or (1 if args.quick else 3)

    print("machine:", set_threads(args.threads), flush=True)
    with tempfile.TemporaryDirectory(prefix="fineplat-packing-bench-") as scratch:
        workdir = args.workdir or Path(scratch)
        workdir.mkdir(parents=True, exist_ok=True)
        base = build_bench_model(workdir, quick=args.quick)
        tokenizer, rows = prepare_dataset(workdir, base, count)
        configs = {
            packing: bench_config(method=args.method, n_epochs=1, max_seq_len=MAX_SEQ_LEN, packing=packing)
            for packing in (True, False)
        }
        dirs = {
            packing: workdir / f"data-{'packed' if packing else 'unpacked'}-{count}" for packing in configs
        }
        manifests = {
            packing: build_training_data(
                rows, tokenizer, dirs[packing], max_seq_len=MAX_SEQ_LEN, packing=packing
            )
            for packing in configs
        }
        tokens = manifests[True].train_tokens
        assert tokens == manifests[False].train_tokens, "packed and unpacked runs see different data"
        padding_efficiency = unpacked_padding_efficiency(dirs[False], configs[False], tokenizer.pad_token_id)
        print(
            f"packed: {manifests[True].train_examples} examples in {manifests[True].train_rows} windows of "
            f"{MAX_SEQ_LEN}, packing efficiency {manifests[True].packing_efficiency:.3f}; unpacked: "
            f"{manifests[False].train_rows} rows, padding efficiency of its batches {padding_efficiency:.3f}",
            flush=True,
        )
        results = interleave(
            {
                "packed": lambda: run_fineplat("packed", configs[True], base, dirs[True], workdir, tokens),
                "unpacked": lambda: run_fineplat(
                    "unpacked", configs[False], base, dirs[False], workdir, tokens
                ),
            },
            repeats,
        )
        print()
        report(results)
        print(
            f"packing efficiency {manifests[True].packing_efficiency:.3f} (unpacked batches {padding_efficiency:.3f})"
        )
        ratio = ratio_lines("packed/unpacked", results["packed"], results["unpacked"])
        print(
            f"{'PASS' if ratio >= TARGET_RATIO else 'MISS'} packed >= {TARGET_RATIO}x unpacked ({ratio:.2f}x)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
