"""LoRA training throughput: fineplat's trainer (packing, default config, gradient checkpointing
off) against a plain `transformers.Trainer` + peft script on the same model, the same examples and
the same LoRA adapter, interleaved in one process.

    .venv/bin/python bench/train_bench.py              # 1,500 Alpaca-like rows, 3 interleaved rounds
    .venv/bin/python bench/train_bench.py --quick      # smoke run (a few seconds of training)
    .venv/bin/python bench/train_bench.py --ablation   # + fineplat without per-example attention
    .venv/bin/python bench/train_bench.py --profile    # + cProfile of one fineplat run

What is measured: effective (non-padding) tokens per second over one epoch of the training split,
timed from the start of the training loop to the end of its last optimizer step (model loading,
final checkpoint and saving fall outside for every contender). The contenders:

- `fineplat`: `fineplat.training.trainer.train` with `TrainConfig(method="lora", n_epochs=1)`:
  packing into 512-token windows, batch "auto" (16 windows), LoRA r=16/alpha=32 on all seven linear
  projections, float32, sdpa (per-example sdpa on packed windows, logits at label positions only).
- `trainer+peft`: `transformers.Trainer` defaults (batch 8 examples, random order, fused AdamW,
  linear schedule), `DataCollatorForSeq2Seq` padding each batch to its longest example, the same
  peft `LoraConfig`, the same tokenized examples (fineplat's tokenization of the same split), one
  epoch; `save_strategy="no"` and no progress bar, the only changes from defaults.
- `trainer+peft group_by_length`: the same with `train_sampling_strategy="group_by_length"`
  (transformers 5's name for the old `group_by_length=True`), which batches similar lengths.
- `--ablation` adds `fineplat masked-sdpa`: the same run with transformers' own sdpa on the packed
  windows (a dense block-diagonal mask over every 512 x 512 window, full logits): what the
  per-example attention of `fineplat.training.attention` is worth.

Each contender's rate is printed per wall-clock second and per CPU-second of this process: with one
torch thread (`--threads 1`, advisable on a shared machine) CPU time excludes the time other jobs
held the cores, so the CPU-time ratios are the steadier ones.

Target (issue #3 item 8): fineplat >= 1.0x the Trainer baseline, and >= ~19.4k effective tokens/s
absolute on the 2-core development machine (LLaMA-Factory's best there, neat_packing, is ~16.9k;
plain Trainer + peft ~14.4k; fineplat should beat LLaMA-Factory's best by >= 15%).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import (
    Throughput,
    bench_config,
    build_bench_model,
    interleave,
    median_rate,
    prepare_dataset,
    ratio_lines,
    report,
    run_fineplat,
    set_threads,
    train_split_examples,
)

from fineplat.basemodel import BaseModelInfo, load_base_model
from fineplat.packing.build import build_training_data
from fineplat.packing.tokenize import IGNORE_INDEX, TokenizedExample
from fineplat.training.config import TrainConfig

MAX_SEQ_LEN = 512  # fineplat's default window (TrainConfig.max_seq_len)
DEFAULT_EXAMPLES = 1500  # rows generated; ~1,350 train after the holdout split, ~125k tokens
QUICK_EXAMPLES = 96
# LLaMA-Factory 0.9.5 with neat_packing on the same 2-core machine and data (issue #3 item 8), and
# the required margin over it.
LLAMA_FACTORY_BEST_TOKENS_PER_SECOND = 16_900
REQUIRED_MARGIN = 1.15
MASKED_SDPA = "fineplat masked-sdpa"  # the --ablation contender
TRAINER_PEFT_ORIENTATION_TOKENS_PER_SECOND = 14_400  # plain Trainer + peft, same machine idle (issue #3)


def trainer_peft_run(
    name: str,
    base: BaseModelInfo,
    tokenizer: Any,
    examples: list[TokenizedExample],
    config: TrainConfig,
    workdir: Path,
    *,
    group_by_length: bool,
) -> Throughput:
    """One epoch of a plain Trainer + peft script over `examples`, timed from `on_train_begin` to
    the last `on_step_end` (the same span fineplat's clock covers)."""
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainerCallback, TrainingArguments

    class Clock(TrainerCallback):  # type: ignore[misc]
        started: float | None = None
        last_step_end: float | None = None
        cpu_started = cpu_last_step_end = 0.0
        steps = 0

        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.started = time.perf_counter()
            self.cpu_started = time.process_time()

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.last_step_end = time.perf_counter()
            self.cpu_last_step_end = time.process_time()
            self.steps += 1

    model = load_base_model(base.path)
    model = get_peft_model(
        model,
        LoraConfig(
            r=config.lora_rank,
            lora_alpha=config.lora_alpha,
            lora_dropout=config.lora_dropout,
            target_modules=list(config.lora_target_modules),
            task_type="CAUSAL_LM",
        ),
    )
    dataset = Dataset.from_dict(
        {
            "input_ids": [e.input_ids for e in examples],
            "attention_mask": [[1] * len(e.input_ids) for e in examples],
            "labels": [e.labels for e in examples],
        }
    )
    arguments = TrainingArguments(
        output_dir=str(workdir / f"hf-{name.replace(' ', '-')}-{time.monotonic_ns()}"),
        num_train_epochs=1,
        save_strategy="no",
        disable_tqdm=True,
        train_sampling_strategy="group_by_length" if group_by_length else "random",
    )
    clock = Clock()
    trainer = Trainer(
        model=model,
        args=arguments,
        train_dataset=dataset,
        data_collator=DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=IGNORE_INDEX),
        processing_class=tokenizer,
        callbacks=[clock],
    )
    trainer.train()
    if clock.started is None or clock.last_step_end is None:
        raise RuntimeError("Trainer ran no step")
    tokens = sum(len(e.input_ids) for e in examples)
    return Throughput(
        name,
        tokens,
        clock.last_step_end - clock.started,
        clock.steps,
        clock.cpu_last_step_end - clock.cpu_started,
    )


def masked_sdpa_run(
    config: TrainConfig, base: BaseModelInfo, data_dir: Path, workdir: Path, tokens: int
) -> Throughput:
    """fineplat with transformers' own masked sdpa on packed windows (the ablation)."""
    import fineplat.training.trainer as trainer

    shipped = trainer.use_packed_sdpa
    trainer.use_packed_sdpa = lambda model, max_seq_len: False
    try:
        return run_fineplat("masked-sdpa", config, base, data_dir, workdir, tokens)
    finally:
        trainer.use_packed_sdpa = shipped


def profile_fineplat(config: TrainConfig, base: BaseModelInfo, data_dir: Path, workdir: Path) -> None:
    """Print where fineplat's steps spend their time: torch.profiler's operator table (self CPU
    time) over a 3-step run, then the Python functions (cProfile, own time) of the same run."""
    from torch.profiler import ProfilerActivity, profile

    short = config.model_copy(update={"max_steps": 3})
    profiler = cProfile.Profile()
    with profile(activities=[ProfilerActivity.CPU]) as operators:
        profiler.enable()
        run_fineplat("profiled", short, base, data_dir, workdir, 0)
        profiler.disable()
    print("operators of a 3-step fineplat run (self CPU time):")
    print(operators.key_averages().table(sort_by="self_cpu_time_total", row_limit=20))
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(15)
    print("Python functions of the same run (own time):")
    print(text.getvalue())


def main(argv: list[str] | None = None) -> int:
    """Build model and data, run the contenders interleaved, print rates and ratios."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small smoke run (one round, few rows)")
    parser.add_argument("--examples", type=int, default=None, help=f"rows to generate ({DEFAULT_EXAMPLES})")
    parser.add_argument("--repeats", type=int, default=None, help="interleaved rounds (3; quick: 1)")
    parser.add_argument("--no-grouped", action="store_true", help="skip the group_by_length baseline")
    parser.add_argument(
        "--ablation",
        action="store_true",
        help="also run fineplat with masked sdpa (no per-example attention)",
    )
    parser.add_argument("--profile", action="store_true", help="also cProfile one fineplat run")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: one per core)")
    parser.add_argument("--workdir", type=Path, default=None, help="where model, data and runs go")
    args = parser.parse_args(argv)
    count = args.examples or (QUICK_EXAMPLES if args.quick else DEFAULT_EXAMPLES)
    repeats = args.repeats or (1 if args.quick else 3)

    print("machine:", set_threads(args.threads), flush=True)
    with tempfile.TemporaryDirectory(prefix="fineplat-train-bench-") as scratch:
        workdir = args.workdir or Path(scratch)
        workdir.mkdir(parents=True, exist_ok=True)
        base = build_bench_model(workdir, quick=args.quick)
        tokenizer, rows = prepare_dataset(workdir, base, count)
        config = bench_config(method="lora", n_epochs=1, max_seq_len=MAX_SEQ_LEN)
        data_dir = workdir / f"data-packed-{count}"
        manifest = build_training_data(rows, tokenizer, data_dir, max_seq_len=MAX_SEQ_LEN, packing=True)
        examples = train_split_examples(rows, tokenizer, MAX_SEQ_LEN)
        tokens = manifest.train_tokens
        assert tokens == sum(len(e.input_ids) for e in examples), "baseline and fineplat see different data"
        print(
            f"model: {base.path.name} (Llama, random weights); {manifest.train_examples} train examples, "
            f"{tokens} tokens; fineplat packs them into {manifest.train_rows} windows of {MAX_SEQ_LEN} "
            f"(packing efficiency {manifest.packing_efficiency:.3f})",
            flush=True,
        )

        runners = {
            "fineplat": lambda: run_fineplat("fineplat", config, base, data_dir, workdir, tokens),
            "trainer+peft": lambda: trainer_peft_run(
                "trainer+peft", base, tokenizer, examples, config, workdir, group_by_length=False
            ),
        }
        if not args.no_grouped:
            runners["trainer+peft group_by_length"] = lambda: trainer_peft_run(
                "trainer+peft group_by_length",
                base,
                tokenizer,
                examples,
                config,
                workdir,
                group_by_length=True,
            )
        if args.ablation:
            runners[MASKED_SDPA] = lambda: masked_sdpa_run(config, base, data_dir, workdir, tokens)
        results = interleave(runners, repeats)

        print()
        report(results)
        ratio = ratio_lines("fineplat/trainer+peft", results["fineplat"], results["trainer+peft"])
        if "trainer+peft group_by_length" in results:
            ratio_lines(
                "fineplat/trainer+peft_group_by_length",
                results["fineplat"],
                results["trainer+peft group_by_length"],
            )
        if MASKED_SDPA in results:
            ratio_lines("fineplat/fineplat_masked_sdpa", results["fineplat"], results[MASKED_SDPA])
        fineplat_rate = median_rate(results["fineplat"])
        required = LLAMA_FACTORY_BEST_TOKENS_PER_SECOND * REQUIRED_MARGIN
        print(f"{'PASS' if ratio >= 1.0 else 'MISS'} fineplat >= 1.0x trainer+peft ({ratio:.2f}x)")
        print(
            f"{'PASS' if fineplat_rate >= required else 'MISS'} fineplat >= {required:,.0f} effective tok/s "
            f"(LLaMA-Factory best {LLAMA_FACTORY_BEST_TOKENS_PER_SECOND:,} x {REQUIRED_MARGIN}) "
            f"on this machine now: {fineplat_rate:,.0f}"
        )
        print(
            f"     scaled to the idle-machine Trainer+peft rate of the orientation run "
            f"({TRAINER_PEFT_ORIENTATION_TOKENS_PER_SECOND:,} tok/s): fineplat ~ "
            f"{ratio * TRAINER_PEFT_ORIENTATION_TOKENS_PER_SECOND:,.0f} tok/s"
        )
        if args.profile:
            profile_fineplat(config, base, data_dir, workdir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
