"""LoRA training throughput: fineplat's trainer (packing, default config, gradient checkpointing
off) against a plain `transformers.Trainer` + peft script on the same model, the same examples and
the same LoRA adapter, interleaved in one process.

    .venv/bin/python bench/train_bench.py              # 1,500 Alpaca-like rows, 3 interleaved rounds
    .venv/bin/python bench/train_bench.py --quick      # smoke run (a few seconds of training)
    .venv/bin/python bench/train_bench.py --prototype  # + prototypes of trainer changes (below)
    .venv/bin/python bench/train_bench.py --profile    # + cProfile of one fineplat run

What is measured: effective (non-padding) tokens per second over one epoch of the training split,
timed from the start of the training loop to the end of its last optimizer step (model loading,
final checkpoint and saving fall outside for every contender). The contenders:

- `fineplat`: `fineplat.training.trainer.train` with `TrainConfig(method="lora", n_epochs=1)`:
  packing into 512-token windows, batch "auto" (16 windows), LoRA r=16/alpha=32 on all seven linear
  projections, float32, sdpa.
- `trainer+peft`: `transformers.Trainer` defaults (batch 8 examples, random order, fused AdamW,
  linear schedule), `DataCollatorForSeq2Seq` padding each batch to its longest example, the same
  peft `LoraConfig`, the same tokenized examples (fineplat's tokenization of the same split), one
  epoch; `save_strategy="no"` and no progress bar, the only changes from defaults.
- `trainer+peft group_by_length`: the same with `train_sampling_strategy="group_by_length"`
  (transformers 5's name for the old `group_by_length=True`), which batches similar lengths.
- `--prototype` adds fineplat runs with changes the trainer does not have (measured, not shipped):
  per-example attention for packed windows (`document_sdpa_prototype`), 2-window micro-batches with
  8-step gradient accumulation (the same 16-window optimizer step and gradients), and both.

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
from collections.abc import Callable
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
# Names of the --prototype contenders (changes measured here, not shipped in the trainer).
DOC_ATTENTION = "proto: doc-attention"
MICRO = "proto: micro-batch 2x8"
MICRO_DOC_ATTENTION = "proto: micro 2x8 + doc-attention"
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


def document_sdpa_prototype() -> Any:
    """A context manager that, while open, makes transformers' "sdpa" attention attend within each
    packed example only, instead of over the whole window through a dense block-diagonal mask.
    A prototype of a trainer change, measured here and not shipped.

    Why: sdpa with a [B, 1, T, T] mask computes all T x T scores of a 512-token window although
    its ~5 examples need only the blocks on the diagonal (about a third of them here). Flash
    attention's varlen kernel skips the rest on GPUs; CPU sdpa has no varlen kernel, and one sdpa
    call per example costs more in call overhead than it saves. So the prototype gathers the batch's
    examples into a few length buckets (each padded to its longest member, members within 30% of
    it), runs one causal sdpa per bucket and scatters the outputs back."""
    import contextlib

    import torch
    import torch.nn.functional as F
    from transformers.integrations.sdpa_attention import repeat_kv
    from transformers.modeling_utils import AttentionInterface

    original: Callable[..., tuple[torch.Tensor, None]] = AttentionInterface._global_mapping["sdpa"]  # type: ignore[assignment]
    bucket_ratio = 0.7  # a new bucket starts below 70% of the current bucket's longest example

    def plan(positions: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        flat = positions.flatten()
        starts = (flat == 0).nonzero().flatten().tolist()
        examples = sorted(
            ((end - start, start) for start, end in zip(starts, [*starts[1:], flat.numel()], strict=True)),
            reverse=True,
        )
        buckets: list[list[tuple[int, int]]] = []
        for length, start in examples:
            if not buckets or length < bucket_ratio * buckets[-1][0][0]:
                buckets.append([])
            buckets[-1].append((length, start))
        out = []
        for bucket in buckets:
            steps = torch.arange(bucket[0][0], device=positions.device)
            first = torch.tensor([s for _, s in bucket], device=positions.device)[:, None]
            lengths = torch.tensor([n for n, _ in bucket], device=positions.device)[:, None]
            gather = first + torch.minimum(
                steps[None, :], lengths - 1
            )  # right-pad by repeating the last token
            valid = steps[None, :] < lengths
            out.append((gather, valid, gather[valid]))
        return out

    def attention(
        module: Any,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: torch.Tensor | None,
        dropout: float = 0.0,
        scaling: float | None = None,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, None]:
        positions = kwargs.get("position_ids")
        batch, heads, length, dim = query.shape
        if (
            positions is None
            or length == 1
            or key.shape[2] != length
            or not bool((positions[:, 1:] == 0).any())
        ):
            return original(
                module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
            )
        groups = getattr(module, "num_key_value_groups", 1)
        key, value = repeat_kv(key, groups), repeat_kv(value, groups)
        q, k, v = (t.transpose(1, 2).reshape(batch * length, heads, dim) for t in (query, key, value))
        output = q.new_zeros(batch * length, heads, dim)
        for gather, valid, destination in plan(positions.expand(batch, -1)):
            attended = F.scaled_dot_product_attention(
                q[gather].transpose(1, 2),
                k[gather].transpose(1, 2),
                v[gather].transpose(1, 2),
                dropout_p=dropout,
                scale=scaling,
                is_causal=True,
            )
            output = output.index_put((destination,), attended.transpose(1, 2)[valid])
        return output.reshape(batch, length, heads, dim), None

    @contextlib.contextmanager
    def swapped() -> Any:
        AttentionInterface._global_mapping["sdpa"] = attention
        try:
            yield
        finally:
            AttentionInterface._global_mapping["sdpa"] = original

    return swapped()


def prototype_parity(base: BaseModelInfo, data_dir: Path, tokenizer: Any) -> float:
    """Largest relative difference of the summed loss of packed batches between the shipped sdpa
    path and the per-example prototype (they must agree: same math, fewer masked scores)."""
    import torch

    from fineplat.training.data import load_training_data
    from fineplat.training.trainer import lm_loss_sum, prepare_model

    data = load_training_data(data_dir, tokenizer.pad_token_id)
    model = prepare_model(bench_config(method="lora"), base.path)
    worst = 0.0
    with torch.no_grad():
        for start in range(data.rows - 8, data.rows, 4):  # the last windows hold the most examples
            batch = data.train_batch(list(range(start, min(start + 4, data.rows))))
            reference, _ = lm_loss_sum(model, batch)
            with document_sdpa_prototype():
                candidate, _ = lm_loss_sum(model, batch)
            worst = max(worst, abs(float(candidate) - float(reference)) / abs(float(reference)))
    assert worst < 1e-4, f"prototype attention disagrees with sdpa: {worst}"
    return worst


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
        "--prototype",
        action="store_true",
        help="also run prototypes of trainer changes: per-example attention, 2-window micro-batches, both",
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
        if args.prototype:
            parity = prototype_parity(base, data_dir, tokenizer)
            print(f"prototype parity: max relative loss difference {parity:.2e}")
            # Same optimizer steps and gradients, smaller forward/backward passes: 2 windows per
            # micro-batch, 8 accumulated (the loop normalizes by the step's total label tokens).
            micro = config.model_copy(update={"batch_size": 2, "gradient_accumulation_steps": 8})

            def with_document_attention(name: str, run_config: TrainConfig) -> Callable[[], Throughput]:
                def run() -> Throughput:
                    with document_sdpa_prototype():
                        return run_fineplat(name, run_config, base, data_dir, workdir, tokens)

                return run

            runners[DOC_ATTENTION] = with_document_attention("doc-attention", config)
            runners[MICRO] = lambda: run_fineplat("micro", micro, base, data_dir, workdir, tokens)
            runners[MICRO_DOC_ATTENTION] = with_document_attention("micro-doc-attention", micro)
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
        for name, label in (
            (DOC_ATTENTION, "doc_attention"),
            (MICRO, "micro"),
            (MICRO_DOC_ATTENTION, "micro_doc_attention"),
        ):
            if name in results:
                ratio_lines(f"prototype_{label}/fineplat", results[name], results["fineplat"])
        if MICRO_DOC_ATTENTION in results:
            ratio_lines(
                "prototype_micro_doc_attention/trainer+peft",
                results[MICRO_DOC_ATTENTION],
                results["trainer+peft"],
            )
            if "trainer+peft group_by_length" in results:
                ratio_lines(
                    "prototype_micro_doc_attention/trainer+peft_group_by_length",
                    results[MICRO_DOC_ATTENTION],
                    results["trainer+peft group_by_length"],
                )
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
