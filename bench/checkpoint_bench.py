"""Checkpoint overhead at the default interval: how much of a run's time goes into the periodic
checkpoints that make preemption cheap.

    .venv/bin/python bench/checkpoint_bench.py            # LoRA and full fine-tune, 3 rounds
    .venv/bin/python bench/checkpoint_bench.py --quick    # smoke run

Per method (LoRA adapter and full fine-tune of the tiny benchmark Llama), in each round:

1. step time: fineplat's `train()` for --steps optimizer steps on the Alpaca-like data (packing,
   512-token windows, default batch), mean step time without the first (warm-up) step;
2. save time: `fineplat.training.checkpoint.save_checkpoint` of that method's real state (trainable
   weights, AdamW moments after a real step, scheduler, RNG, data position), written repeatedly
   into one root as a run does, so the steady state includes pruning to `keep_checkpoints` (3);
   the median of the steady-state saves is used;
3. validation time: the holdout validation loss the trainer computes at each periodic checkpoint.

overhead = save_time / (checkpoint_interval x step_time) with the default interval (500); the
same with the validation pass added is printed beside it. `--in-situ` also runs the loop with a
short interval against one without periodic checkpoints and reports the measured extra time per
checkpoint. `--probe-params` saves a synthetic full fine-tune state of that many float32 parameters
to measure the checkpoint path's bytes/s (and the share of its two SHA-256 passes: the manifest of the
new checkpoint, and the re-verification of every kept checkpoint when pruning) and extrapolate to
larger models.

Target (issue #3 item 8): overhead <= 3% of training time at the default interval.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from common import LoopClock, bench_config, build_bench_model, prepare_dataset, set_threads

from fineplat.basemodel import BaseModelInfo, load_tokenizer
from fineplat.hashing import hash_file
from fineplat.packing.build import build_training_data
from fineplat.training import checkpoint as ckpt
from fineplat.training.config import TrainConfig
from fineplat.training.data import TrainingData, load_training_data
from fineplat.training.trainer import lm_loss_sum, make_scheduler, prepare_model, train, validation_loss

MAX_SEQ_LEN = 512
DEFAULT_EXAMPLES = 1500
QUICK_EXAMPLES = 96
TARGET_OVERHEAD = 0.03  # issue #3 item 8: <= 3% of training time
STEADY_SAVES = 5  # saves per measurement; the first `keep` fill the root, the rest are steady state


@dataclass
class MethodRound:
    """One round's measurements for one method."""

    step_seconds: float
    save_seconds: float  # median steady-state save (root already holds `keep` checkpoints)
    first_save_seconds: float  # save into an empty root (nothing to re-verify when pruning)
    validation_seconds: float
    checkpoint_bytes: int

    def overhead(self, interval: int, with_validation: bool = False) -> float:
        extra = self.save_seconds + (self.validation_seconds if with_validation else 0.0)
        return extra / (interval * self.step_seconds)


def measure_step_seconds(config: TrainConfig, base: BaseModelInfo, data_dir: Path, workdir: Path) -> float:
    """Mean optimizer-step time of fineplat's loop (first step dropped as warm-up)."""
    clock = LoopClock()
    run_dir = workdir / f"steps-{config.method}-{time.monotonic_ns()}"
    train(
        config,
        base_model_dir=base.path,
        data_dir=data_dir,
        checkpoint_dir=run_dir / "checkpoints",
        output_dir=run_dir / "output",
        sink=clock,
    )
    shutil.rmtree(run_dir, ignore_errors=True)
    steady = clock.step_times[1:] or clock.step_times
    return statistics.fmean(steady)


def trained_state(config: TrainConfig, base: BaseModelInfo, data: TrainingData) -> tuple[Any, Any, Any]:
    """Model, optimizer and scheduler after one real optimizer step (so AdamW holds its moments)."""
    torch.use_deterministic_algorithms(False)
    model = prepare_model(config, base.path)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.learning_rate)
    scheduler = make_scheduler(optimizer, config, 1000)
    batch = data.train_batch(list(range(min(2, data.rows))))
    loss, count = lm_loss_sum(model, batch)
    (loss / max(1, count)).backward()
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return model, optimizer, scheduler


def timed_saves(
    root: Path, model: Any, optimizer: Any, scheduler: Any, config: TrainConfig, saves: int
) -> list[float]:
    """Seconds of `saves` successive checkpoints into one root, interval steps apart."""
    seconds = []
    for index in range(1, saves + 1):
        state = ckpt.TrainerState(
            step=index * config.checkpoint_interval, epoch=0, index=0, config_hash=config.hparams_hash()
        )
        started = time.perf_counter()
        ckpt.save_checkpoint(
            root,
            model=model,
            optimizer=optimizer,
            scheduler=scheduler,
            state=state,
            keep=config.keep_checkpoints,
        )
        seconds.append(time.perf_counter() - started)
    return seconds


def directory_bytes(path: Path) -> int:
    """Total size of the files under `path`."""
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def measure_round(
    config: TrainConfig,
    step_config: TrainConfig,
    base: BaseModelInfo,
    data_dir: Path,
    workdir: Path,
    saves: int,
) -> MethodRound:
    """Step time, save time and validation time for one method, back to back."""
    step_seconds = measure_step_seconds(step_config, base, data_dir, workdir)
    tokenizer = load_tokenizer(base.path)
    data = load_training_data(data_dir, tokenizer.pad_token_id)
    model, optimizer, scheduler = trained_state(config, base, data)
    root = workdir / f"ckpt-{config.method}-{time.monotonic_ns()}"
    seconds = timed_saves(root, model, optimizer, scheduler, config, saves)
    latest = ckpt.latest_checkpoint(root)
    assert latest is not None
    size = directory_bytes(latest)
    started = time.perf_counter()
    validation_loss(model, data, config.method)
    validation_seconds = time.perf_counter() - started
    shutil.rmtree(root, ignore_errors=True)
    steady = seconds[config.keep_checkpoints :] or seconds
    return MethodRound(step_seconds, statistics.median(steady), seconds[0], validation_seconds, size)


def in_situ(
    config: TrainConfig, base: BaseModelInfo, data_dir: Path, workdir: Path, steps: int, interval: int
) -> tuple[float, float, int]:
    """(loop seconds without periodic checkpoints, with one every `interval` steps, checkpoints
    written) for the same `steps`: the measured cost inside the real loop, validation included."""
    loops = []
    for every in (10**9, interval):
        run_config = config.model_copy(update={"max_steps": steps, "checkpoint_interval": every})
        clock = LoopClock()
        run_dir = workdir / f"insitu-{config.method}-{every}-{time.monotonic_ns()}"
        train(
            run_config,
            base_model_dir=base.path,
            data_dir=data_dir,
            checkpoint_dir=run_dir / "checkpoints",
            output_dir=run_dir / "output",
            sink=clock,
        )
        loops.append(clock.loop_seconds)
        shutil.rmtree(run_dir, ignore_errors=True)
    return loops[0], loops[1], (steps - 1) // interval


@dataclass
class ProbeResult:
    """Where a large full-state checkpoint's save time goes."""

    checkpoint_bytes: int
    save_seconds: float  # median steady-state save_checkpoint
    manifest_hash_seconds: float  # SHA-256 of the new checkpoint's files (part of every save)
    verify_kept_seconds: float  # `list_checkpoints` re-hashing every kept checkpoint (every prune)

    @property
    def bytes_per_second(self) -> float:
        return self.checkpoint_bytes / self.save_seconds


def probe_checkpoint_path(params: int, workdir: Path) -> ProbeResult:
    """Save a synthetic full fine-tune state (one float32 matrix of `params` values with AdamW
    moments) through `save_checkpoint` into a steady-state root, and time the two hashing passes
    inside it separately."""
    side = int(params**0.5)
    model = torch.nn.Linear(side, side, bias=False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model(torch.randn(2, side)).sum().backward()
    optimizer.step()
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    config = bench_config(method="sft")
    root = workdir / f"probe-{time.monotonic_ns()}"
    seconds = timed_saves(root, model, optimizer, scheduler, config, config.keep_checkpoints + 2)
    latest = ckpt.latest_checkpoint(root)
    assert latest is not None
    started = time.perf_counter()
    for file in sorted(latest.iterdir()):
        if file.name != ckpt.MANIFEST:
            hash_file(file)
    manifest_hash = time.perf_counter() - started
    started = time.perf_counter()
    kept = ckpt.list_checkpoints(root)
    verify = time.perf_counter() - started
    assert len(kept) == config.keep_checkpoints
    result = ProbeResult(
        directory_bytes(latest), statistics.median(seconds[config.keep_checkpoints :]), manifest_hash, verify
    )
    shutil.rmtree(root, ignore_errors=True)
    return result


def main(argv: list[str] | None = None) -> int:
    """Measure both methods over interleaved rounds and print the overhead ratios."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small smoke run (one round, few steps)")
    parser.add_argument("--examples", type=int, default=None, help=f"rows to generate ({DEFAULT_EXAMPLES})")
    parser.add_argument("--repeats", type=int, default=None, help="interleaved rounds (3; quick: 1)")
    parser.add_argument("--steps", type=int, default=None, help="steps timed per round (12; quick: 3)")
    parser.add_argument(
        "--in-situ", action="store_true", help="also time a real loop with frequent checkpoints"
    )
    parser.add_argument(
        "--probe-params", type=float, default=0, help="synthetic state size for bytes/s (e.g. 25e6)"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: one per core)")
    parser.add_argument("--workdir", type=Path, default=None, help="where model, data and checkpoints go")
    args = parser.parse_args(argv)
    count = args.examples or (QUICK_EXAMPLES if args.quick else DEFAULT_EXAMPLES)
    repeats = args.repeats or (1 if args.quick else 3)
    steps = args.steps or (3 if args.quick else 12)
    saves = STEADY_SAVES if not args.quick else 4

    print("machine:", set_threads(args.threads), flush=True)
    with tempfile.TemporaryDirectory(prefix="fineplat-checkpoint-bench-") as scratch:
        workdir = args.workdir or Path(scratch)
        workdir.mkdir(parents=True, exist_ok=True)
        base = build_bench_model(workdir, quick=args.quick)
        tokenizer, rows = prepare_dataset(workdir, base, count)
        data_dir = workdir / f"data-packed-{count}"
        build_training_data(rows, tokenizer, data_dir, max_seq_len=MAX_SEQ_LEN, packing=True)
        configs = {method: bench_config(method=method, max_seq_len=MAX_SEQ_LEN) for method in ("lora", "sft")}
        interval = configs["lora"].checkpoint_interval
        rounds: dict[str, list[MethodRound]] = {method: [] for method in configs}
        for round_index in range(repeats):
            order = list(configs) if round_index % 2 == 0 else list(reversed(configs))
            for method in order:
                config = configs[method]
                step_config = config.model_copy(update={"max_steps": steps})
                measured = measure_round(config, step_config, base, data_dir, workdir, saves)
                rounds[method].append(measured)
                print(
                    f"  round {round_index + 1} {method:<5} step {measured.step_seconds * 1000:8.1f} ms, save "
                    f"{measured.save_seconds * 1000:7.1f} ms (first into empty root "
                    f"{measured.first_save_seconds * 1000:.1f} ms), validation "
                    f"{measured.validation_seconds * 1000:.1f} ms, checkpoint {measured.checkpoint_bytes / 1e6:.2f} MB",
                    flush=True,
                )
        print()
        worst = 0.0
        for method, measured_rounds in rounds.items():
            overheads = [r.overhead(interval) for r in measured_rounds]
            with_validation = [r.overhead(interval, with_validation=True) for r in measured_rounds]
            label = "lora" if method == "lora" else "full"
            print(
                f"{label}: step {statistics.median(r.step_seconds for r in measured_rounds) * 1000:.1f} ms, "
                f"save {statistics.median(r.save_seconds for r in measured_rounds) * 1000:.1f} ms, "
                f"validation {statistics.median(r.validation_seconds for r in measured_rounds) * 1000:.1f} ms"
            )
            rounds_text = ", ".join(f"{o:.4g}" for o in overheads)
            print(
                f"RATIO {label}_checkpoint_overhead_at_{interval}: {statistics.median(overheads):.4g}x "
                f"(save / {interval} steps; per round: {rounds_text})"
            )
            print(
                f"RATIO {label}_checkpoint_plus_validation_overhead_at_{interval}: "
                f"{statistics.median(with_validation):.4g}x"
            )
            worst = max(worst, statistics.median(overheads))
        print(
            f"{'PASS' if worst <= TARGET_OVERHEAD else 'MISS'} checkpoint overhead <= {TARGET_OVERHEAD:.0%} "
            f"at interval {interval} (worst {worst:.3%})"
        )
        if args.in_situ:
            every = max(2, steps // 4)
            for method, config in configs.items():
                without, with_checkpoints, written = in_situ(config, base, data_dir, workdir, steps, every)
                per_checkpoint = (with_checkpoints - without) / max(1, written)
                print(
                    f"in situ {method}: {steps} steps {without:.2f} s without periodic checkpoints, "
                    f"{with_checkpoints:.2f} s with {written} (every {every}); {per_checkpoint * 1000:.0f} ms "
                    f"per checkpoint incl. validation -> {per_checkpoint / (interval * without / steps):.3%} "
                    f"at interval {interval}"
                )
        if args.probe_params:
            probe = probe_checkpoint_path(int(args.probe_params), workdir)
            print(
                f"checkpoint path: {probe.checkpoint_bytes / 1e9:.2f} GB full-state checkpoint saved in "
                f"{probe.save_seconds:.2f} s ({probe.bytes_per_second / 1e6:.0f} MB/s); inside it, SHA-256 of the "
                f"new files {probe.manifest_hash_seconds:.2f} s and re-verifying the {configs['sft'].keep_checkpoints} "
                f"kept checkpoints when pruning {probe.verify_kept_seconds:.2f} s"
            )
            for billions in (1, 8):
                state_bytes = billions * 1e9 * 12  # fp32 weights + two fp32 AdamW moments
                print(
                    f"  extrapolated: {billions}B-parameter full fine-tune (fp32 + AdamW, {state_bytes / 1e9:.0f} GB)"
                    f" -> {state_bytes / probe.bytes_per_second:.0f} s per checkpoint at this rate"
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
