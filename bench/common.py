"""Shared pieces of the training benchmarks: the tiny benchmark model, an Alpaca-like synthetic
instruction dataset, a clock that times fineplat's training loop from inside (through its metrics
sink), and interleaved repetition so that the load of a shared machine hits every contender alike.

Why synthetic data: these machines have no hub access, so Alpaca itself cannot be downloaded. What
matters for throughput is the token-length distribution, not the words, so the generator draws each
example's total length (after the chat template) from a log-normal fitted to Alpaca's shape and
fills it with words of the base model's own pre-training vocabulary (`fineplat.basemodel.corpus`).

Alpaca-like length distribution (tokens of the whole rendered conversation, template included):
    drawn total ~ round(LogNormal(mu=ln(62), sigma=0.8)), clipped to [24, 512]; instruction
    openers add ~4 tokens, so the rendered set measures median 65, mean 93, p90 ~192, p99 ~442,
    max 513 (1,500 rows): a long tail reaching the 512-token window.
The user turn (instruction, plus an "input" paragraph in 40% of rows as in Alpaca) takes a uniform
15-45% share of the content tokens, the assistant reply the rest. Each benchmark prints the measured
median / p90 / p99 / max of the generated set.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl
import torch

from fineplat.basemodel import BaseModelInfo, TinyModelSpec, build_base_model, load_tokenizer
from fineplat.basemodel.corpus import ADJECTIVES, NOUNS, VERBS, pseudo_word
from fineplat.packing.build import split_rows
from fineplat.packing.tokenize import TokenizedExample, tokenize_record
from fineplat.training.config import TrainConfig
from fineplat.training.trainer import train

# Alpaca (52k rows) rendered with a Llama-style chat template: median ~60-70 tokens, long tail to
# ~512 (issue #3 item 8). A log-normal with this median and sigma matches that shape.
ALPACA_MEDIAN_TOKENS = 62  # drawn median; instruction openers add ~4, rendered median ~66
ALPACA_LOG_SIGMA = 0.8
ALPACA_MIN_TOKENS = 24
ALPACA_MAX_TOKENS = 512
ALPACA_INPUT_FRACTION = 0.4  # share of Alpaca rows with a non-empty "input" field
PROMPT_SHARE = (0.15, 0.45)  # range of the user turn's share of content tokens
DATA_SEED = 20260801
# The benchmark model: the default tiny Llama (~1M parameters); its weights do not matter for speed,
# so it is not pre-trained. Quick mode trains its tokenizer on a smaller corpus to start faster.
BENCH_SPEC = TinyModelSpec(pretrain_steps=0)
QUICK_SPEC = TinyModelSpec(pretrain_steps=0, corpus_documents=2000)
INSTRUCTION_OPENERS = [
    "Explain why",
    "Describe how",
    "Write a short story in which",
    "Summarize the passage where",
    "Give three reasons why",
    "Rewrite the sentence so that",
    "Classify whether",
    "List the steps by which",
]
RATIO_PREFIX = "RATIO"  # machine-readable result lines: `RATIO <name>: <value>x`


def set_threads(threads: int | None) -> str:
    """Use `threads` intra-op threads (None: torch's default, one per core) and describe the setup.

    On a shared, oversubscribed machine OpenMP worker threads that get descheduled stall every
    parallel region; one thread is then several times faster, so both contenders get the same
    setting and it is printed with the load average."""
    if threads is not None:
        torch.set_num_threads(threads)
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    return f"torch threads {torch.get_num_threads()}, cpus {os.cpu_count()}, load average {load}"


def build_bench_model(workdir: Path, *, quick: bool) -> BaseModelInfo:
    """The tiny benchmark base model (random weights), built once per workdir and reused."""
    target = workdir / ("tiny-quick" if quick else "tiny")
    if (target / "config.json").is_file():
        from fineplat.basemodel import base_model_sha

        return BaseModelInfo(target.name, target, base_model_sha(target))
    return build_base_model(target, QUICK_SPEC if quick else BENCH_SPEC)


def sample_total_lengths(count: int, seed: int = DATA_SEED) -> list[int]:
    """Target rendered lengths (tokens) of `count` Alpaca-like examples."""
    rng = random.Random(seed)
    mu = math.log(ALPACA_MEDIAN_TOKENS)
    return [
        min(ALPACA_MAX_TOKENS, max(ALPACA_MIN_TOKENS, round(rng.lognormvariate(mu, ALPACA_LOG_SIGMA))))
        for _ in range(count)
    ]


class TextMaker:
    """Writes English-like text of a requested token count in the benchmark tokenizer.

    Byte-level BPE pre-tokenizes on spaces and punctuation, so a text's token count is the sum of
    its pre-tokens' counts; caching those makes hitting a target count cheap and nearly exact."""

    def __init__(self, tokenizer: Any, rng: random.Random) -> None:
        self.tokenizer = tokenizer
        self.rng = rng
        self._cache: dict[str, int] = {}

    def _count(self, piece: str) -> int:
        if piece not in self._cache:
            self._cache[piece] = len(self.tokenizer.encode(piece, add_special_tokens=False))
        return self._cache[piece]

    def _sentence_words(self) -> list[str]:
        rng = self.rng
        name = pseudo_word(rng).capitalize()
        return [
            *rng.choice(
                [
                    ["The", rng.choice(ADJECTIVES), rng.choice(NOUNS)],
                    [name],
                    ["A", rng.choice(NOUNS), "near", name],
                ]
            ),
            rng.choice(VERBS),
            "the",
            rng.choice(ADJECTIVES),
            rng.choice(NOUNS),
            ".",
        ]

    def text(self, tokens: int, opener: str = "") -> str:
        """About `tokens` tokens (never fewer than one word) of sentences, optionally opened by `opener`."""
        words: list[str] = opener.split()
        used = sum(self._count((" " if i else "") + w) for i, w in enumerate(words))
        budget = tokens - 1  # one token kept for the closing full stop
        full = False
        while not full:
            for word in self._sentence_words():
                cost = self._count(word if word == "." or not words else " " + word)
                if words and used + cost > budget:
                    full = True
                    break
                words.append(word)
                used += cost
        if words[-1] != ".":
            words.append(".")
        out = ""
        for word in words:
            out += word if word == "." or not out else " " + word
        return out


def alpaca_like_rows(count: int, tokenizer: Any, seed: int = DATA_SEED) -> pl.DataFrame:
    """`count` synthetic instruction rows in the normalized chat form ({"messages": [...]}, kind
    "chat"), laid out as kept rows (kind, record, content_hash) for `build_training_data`."""
    rng = random.Random(seed + 1)
    maker = TextMaker(tokenizer, rng)
    empty = tokenizer.apply_chat_template(
        [{"role": "user", "content": "x"}, {"role": "assistant", "content": "x"}],
        tokenize=True,
        return_dict=True,
    )["input_ids"]
    overhead = len(empty) - 2  # template tokens around the two one-token contents
    records: list[str] = []
    for total in sample_total_lengths(count, seed):
        content = max(2, total - overhead)
        user_tokens = max(3, round(rng.uniform(*PROMPT_SHARE) * content))
        reply_tokens = max(1, content - user_tokens)
        if rng.random() < ALPACA_INPUT_FRACTION and user_tokens >= 12:
            instruction = maker.text(user_tokens // 3, rng.choice(INSTRUCTION_OPENERS))
            user = instruction + "\n\n" + maker.text(user_tokens - user_tokens // 3 - 1)
        else:
            user = maker.text(user_tokens, rng.choice(INSTRUCTION_OPENERS))
        messages = [
            {"role": "user", "content": user},
            {"role": "assistant", "content": maker.text(reply_tokens)},
        ]
        records.append(json.dumps({"messages": messages}, sort_keys=True))
    return pl.DataFrame(
        {
            "kind": ["chat"] * count,
            "record": records,
            "content_hash": [hashlib.sha256(r.encode()).hexdigest() for r in records],
        }
    )


def train_split_examples(rows: pl.DataFrame, tokenizer: Any, max_seq_len: int) -> list[TokenizedExample]:
    """The training split exactly as fineplat's `build_training_data` tokenizes it (same holdout
    split, same chat template, same assistant-only labels), for baselines that take examples."""
    train_rows, _ = split_rows(rows)
    return [
        tokenize_record(kind, record, tokenizer, max_seq_len)
        for kind, record in zip(train_rows["kind"].to_list(), train_rows["record"].to_list(), strict=True)
    ]


def percentile(values: list[int] | list[float], q: float) -> float:
    """The q-th percentile (0-100) by the nearest-rank method."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return float(ordered[rank - 1])


def describe_lengths(lengths: list[int]) -> str:
    """One line with the length distribution of a dataset (tokens after the chat template)."""
    return (
        f"{len(lengths)} examples, tokens after chat template: median {statistics.median(lengths):.0f}, "
        f"mean {statistics.fmean(lengths):.1f}, p90 {percentile(lengths, 90):.0f}, "
        f"p99 {percentile(lengths, 99):.0f}, max {max(lengths)}, total {sum(lengths)}"
    )


def prepare_dataset(workdir: Path, base: BaseModelInfo, count: int) -> tuple[Any, pl.DataFrame]:
    """The tokenizer and the Alpaca-like rows for a benchmark, with their length line printed."""
    tokenizer = load_tokenizer(base.path)
    rows = alpaca_like_rows(count, tokenizer)
    lengths = [len(e.input_ids) for e in train_split_examples(rows, tokenizer, 1 << 30)]
    print("data:", describe_lengths(lengths), flush=True)
    return tokenizer, rows


@dataclass
class LoopClock:
    """A fineplat `MetricsSink` that times the training loop itself: from the trainer's "running"
    status (just before the first batch) to the end of the last optimizer step. Model loading,
    the final checkpoint, validation and saving the output fall outside, as they do for the
    Trainer baseline's clock."""

    started: float | None = None
    last_step_end: float | None = None
    cpu_started: float = 0.0
    cpu_last_step_end: float = 0.0
    step_times: list[float] = field(default_factory=list)
    step_tokens_per_second: list[float] = field(default_factory=list)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        if "tokens_per_second" in metrics:
            now = time.perf_counter()
            self.step_times.append(now - (self.last_step_end or self.started or now))
            self.last_step_end = now
            self.cpu_last_step_end = time.process_time()
            self.step_tokens_per_second.append(metrics["tokens_per_second"])

    def status(self, status: str, step: int) -> None:
        if status == "running" and self.started is None:
            self.started = time.perf_counter()
            self.cpu_started = time.process_time()

    @property
    def loop_seconds(self) -> float:
        if self.started is None or self.last_step_end is None:
            raise RuntimeError("the training loop did not run a step")
        return self.last_step_end - self.started

    @property
    def loop_cpu_seconds(self) -> float:
        return self.cpu_last_step_end - self.cpu_started


@dataclass
class Throughput:
    """One measured training run: effective (non-padding) tokens over the loop's wall time, and
    over the CPU time the process consumed in it. On a shared machine wall time also counts the
    time other people's jobs held the cores; with one torch thread, CPU time counts only this
    run's own work, so it is the steadier of the two (both are printed)."""

    name: str
    tokens: int
    seconds: float
    steps: int
    cpu_seconds: float
    step_seconds: list[float] = field(default_factory=list)
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds

    @property
    def tokens_per_cpu_second(self) -> float:
        return self.tokens / self.cpu_seconds


def run_fineplat(
    name: str, config: TrainConfig, base: BaseModelInfo, data_dir: Path, workdir: Path, tokens: int
) -> Throughput:
    """Train with fineplat's own `train()` in a fresh checkpoint directory (never a resume) and time
    its loop; `tokens` is the number of real tokens the configured steps consume."""
    run_dir = workdir / f"run-{name}-{time.monotonic_ns()}"
    clock = LoopClock()
    result = train(
        config,
        base_model_dir=base.path,
        data_dir=data_dir,
        checkpoint_dir=run_dir / "checkpoints",
        output_dir=run_dir / "output",
        sink=clock,
    )
    return Throughput(
        name,
        tokens,
        clock.loop_seconds,
        result.steps,
        clock.loop_cpu_seconds,
        clock.step_times,
        {"packing_efficiency": result.packing_efficiency, "final_loss": result.final_loss},
    )


def bench_config(**fields: Any) -> TrainConfig:
    """A `TrainConfig` from keyword fields, validated by pydantic (the same as the job API's
    `TrainConfig(**json)`; spelled so because the project runs mypy without the pydantic plugin)."""
    return TrainConfig.model_validate(fields)


def reset_global_torch_state() -> None:
    """Undo process-wide switches one contender sets (fineplat's trainer turns on deterministic
    algorithms), so that the next contender runs as it would alone."""
    torch.use_deterministic_algorithms(False)


def interleave(runners: dict[str, Callable[[], Throughput]], repeats: int) -> dict[str, list[Throughput]]:
    """Run every contender once per round, `repeats` rounds, in rotating order, so that changes in
    machine load fall on all of them alike; print each measurement as it lands."""
    results: dict[str, list[Throughput]] = {name: [] for name in runners}
    names = list(runners)
    for round_index in range(repeats):
        order = names[round_index % len(names) :] + names[: round_index % len(names)]
        for name in order:
            reset_global_torch_state()
            measured = runners[name]()
            results[name].append(measured)
            print(
                f"  round {round_index + 1} {name:<28} {measured.tokens_per_second:>10,.0f} tok/s "
                f"{measured.tokens_per_cpu_second:>10,.0f} tok/CPU-s ({measured.tokens} tokens, "
                f"{measured.steps} steps, {measured.seconds:.2f} s, CPU {measured.cpu_seconds:.2f} s)",
                flush=True,
            )
    return results


def _rate(run: Throughput, cpu: bool) -> float:
    return run.tokens_per_cpu_second if cpu else run.tokens_per_second


def median_rate(runs: list[Throughput], cpu: bool = False) -> float:
    """Median effective tokens per second (wall clock, or CPU time with `cpu`) over the repeats."""
    return statistics.median(_rate(r, cpu) for r in runs)


def spread(runs: list[Throughput], cpu: bool = False) -> str:
    """Half the min-max range of the repeats as a percentage of their median: the run-to-run noise."""
    rates = [_rate(r, cpu) for r in runs]
    middle = statistics.median(rates)
    return f"±{(max(rates) - min(rates)) / 2 / middle * 100:.0f}%" if len(rates) > 1 else "single run"


def paired_ratios(
    numerator: list[Throughput], denominator: list[Throughput], cpu: bool = False
) -> list[float]:
    """Per-round ratios (the rounds ran back to back, so each pair saw similar load)."""
    return [_rate(a, cpu) / _rate(b, cpu) for a, b in zip(numerator, denominator, strict=True)]


def report(results: dict[str, list[Throughput]]) -> None:
    """The per-contender summary: median wall-clock and CPU-time rates with their noise."""
    for name, runs in results.items():
        print(
            f"{name:<36} median {median_rate(runs):>9,.0f} effective tok/s ({spread(runs)} across rounds), "
            f"{median_rate(runs, cpu=True):>9,.0f} per CPU-second ({spread(runs, cpu=True)})"
        )


def ratio_lines(name: str, numerator: list[Throughput], denominator: list[Throughput]) -> float:
    """Print the wall-clock ratio line and its CPU-time twin (`<name>_cpu_time`); return the
    wall-clock median ratio, the headline number."""
    wall = paired_ratios(numerator, denominator)
    print(ratio_line(name, wall))
    print(ratio_line(f"{name}_cpu_time", paired_ratios(numerator, denominator, cpu=True)))
    return statistics.median(wall)


def ratio_line(name: str, ratios: list[float]) -> str:
    """`RATIO <name>: <median>x (rounds: ...)` — the line tests and readers look for."""
    rounds = ", ".join(f"{r:.2f}" for r in ratios)
    return f"{RATIO_PREFIX} {name}: {statistics.median(ratios):.3f}x (per round: {rounds})"
