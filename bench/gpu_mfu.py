"""Tokens/s and model FLOPs utilization (MFU) of fineplat's training step on a GPU, for full
fine-tuning (SFT) and LoRA of a ~1B-parameter Llama with random weights, in the dtype and attention
a fine-tune gets by default on that GPU.

    python bench/gpu_mfu.py                       # on a GPU node: SFT and LoRA, 1B Llama, seq 2048
    python bench/gpu_mfu.py --method sft --batch-size 8 --steps 20
    python bench/gpu_mfu.py --attn sdpa           # the fallback without flash-attn, on the same GPU
    python bench/gpu_mfu.py --dry-run             # anywhere: a tiny config on CPU, same code path

The step is fineplat's, not a re-implementation: examples are packed by
`fineplat.packing.pack.pack_examples` into 2048-token windows (restarting position ids, no attention
mask), batched by `fineplat.training.data.TrainingData.train_batch`, moved with
`fineplat.training.trainer.to_device`, and trained exactly as one iteration of `train()`'s loop on
one process (`lm_loss_sum` forward and summed cross-entropy, the strategy's backward of the token
mean, the loss `float()`, the strategy's step: clip, AdamW, LR schedule, zero_grad). The LoRA model
is `get_peft_model` with fineplat's `lora_config` (r=16, alpha=32, all seven linear projections).
Only model loading differs: the random-weight model is created directly on the device instead of
read from disk.

Dtype and attention (--dtype/--attn auto, the default): what `TrainConfig` leaves at "auto" resolves
to on this device (`fineplat.training.device_defaults.resolve_device_choice`). On a CUDA GPU: bf16
(LoRA: the frozen base in bf16; SFT: float32 master weights under bf16 autocast), and
flash-attention's varlen kernel over the packed examples (windows flattened into one row, example
boundaries as cumulative lengths) when flash-attn is installed, else sdpa, which the trainer turns
into per-example sdpa for packed windows (`use_packed_sdpa`). On a CPU (--dry-run): float32, sdpa.

Model (default): Llama, hidden 2048, 16 layers, 32 heads, 8 KV heads, intermediate 8192, vocab
32000, untied embeddings (~1.1B parameters). Example lengths: log-normal, median --median-tokens
(400), clipped to [32, seq_len].

FLOPs per token, counted as torchtitan does (`get_nparams_and_flops`): 6N + 12·L·d·T with
  N = parameters excluding the input embedding table (the output projection counts: it is a matmul),
  L = layers, d = hidden size (heads x head dim), T = window length (torchtitan counts attention over
  the whole window even where the packed examples' block-diagonal mask lets kernels skip work).
  6N = forward 2N + backward 4N (2N for gradients w.r.t. activations, 2N w.r.t. weights).
For LoRA the base weights are frozen: the backward still propagates activation gradients through
every frozen matmul (2N, because adapters sit in every layer down to the first) but computes no
weight gradients for them (the other 2N), so base cost is 4N; the adapters add 6·N_lora (tiny);
attention is unchanged. LoRA FLOPs per token = 4N + 6·N_lora + 12·L·d·T. Tokens are real
(non-padding) tokens, so padding never counts as useful work.

MFU = tokens/s x FLOPs per token / peak dense bf16 FLOP/s of the GPU, peak from PEAK_BF16_TFLOPS by
device name (--peak-tflops overrides; needed for a float32 run on a GPU). On a CPU (--dry-run) there
is no datasheet number: the peak is the measured throughput of a large matmul in the run's dtype,
labelled as such.

Target: > 60% MFU for standard SFT (TARGET_SFT_MFU).
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Any

import polars as pl
import torch

from fineplat.errors import ConfigError
from fineplat.packing.pack import pack_examples, packing_efficiency
from fineplat.packing.tokenize import TokenizedExample
from fineplat.training.attention import transformers_model, use_packed_sdpa
from fineplat.training.config import TrainConfig
from fineplat.training.data import TrainingData
from fineplat.training.device_defaults import DeviceChoice, resolve_device_choice, weights_dtype
from fineplat.training.strategy import make_strategy
from fineplat.training.trainer import lm_loss_sum, lora_config, optimizer_and_schedule, to_device

# Dense (non-sparse) bf16 tensor-core peaks from NVIDIA's datasheets, TFLOP/s. Matched by substring
# of torch.cuda.get_device_name(), most specific first.
PEAK_BF16_TFLOPS: list[tuple[str, float]] = [
    ("GH200", 989.0),  # Grace Hopper: H100-class compute
    ("H200", 989.0),  # H200 SXM datasheet (same compute as H100 SXM)
    ("H100 PCIe", 756.0),  # H100 PCIe datasheet
    ("H100 NVL", 835.0),  # H100 NVL datasheet
    ("H100", 989.0),  # H100 SXM5 datasheet
    ("B200", 2250.0),  # B200 datasheet, dense
    ("A100", 312.0),  # A100 datasheet (SXM and PCIe)
    ("L40S", 362.0),  # L40S datasheet, dense
    ("L4", 121.0),  # L4 datasheet, dense
    ("A10G", 70.0),  # AWS A10G (g5), dense
    ("A10", 125.0),  # A10 datasheet, dense
]
TARGET_SFT_MFU = 0.60  # fineplat's throughput target for standard SFT on a GPU


@dataclass(frozen=True)
class ModelShape:
    """The Llama shape benchmarked."""

    hidden_size: int = 2048
    num_hidden_layers: int = 16
    num_attention_heads: int = 32
    num_key_value_heads: int = 8
    intermediate_size: int = 8192
    vocab_size: int = 32000
    seq_len: int = 2048


BILLION_SHAPE = ModelShape()
DRY_RUN_SHAPE = ModelShape(
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    intermediate_size=128,
    vocab_size=512,
    seq_len=128,
)


@dataclass
class Measurement:
    """One method's result."""

    method: str
    tokens_per_second: float
    flops_per_token: float
    achieved_tflops: float
    mfu: float
    step_seconds: float
    data_seconds: float  # median per step: train_batch (polars rows -> tensors) + to_device
    peak_memory_gb: float


def peak_bf16_flops(
    device: torch.device, dtype: torch.dtype, override_tflops: float | None
) -> tuple[float, str]:
    """Peak FLOP/s for MFU and where the number comes from."""
    if override_tflops:
        return override_tflops * 1e12, "--peak-tflops"
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        if dtype != torch.bfloat16:
            raise SystemExit(f"the datasheet peaks are bf16; pass --peak-tflops with {name}'s {dtype} peak")
        for key, tflops in PEAK_BF16_TFLOPS:
            if key in name:
                return tflops * 1e12, f"datasheet dense bf16 for {name}"
        raise SystemExit(f"unknown GPU {name!r}: pass --peak-tflops with its dense bf16 peak")
    return measured_matmul_flops(dtype), f"measured {dtype} matmul peak of this CPU (no datasheet)"


def measured_matmul_flops(dtype: torch.dtype, size: int = 1024, repeats: int = 5) -> float:
    """Best-of-`repeats` FLOP/s of a size x size matmul: the CPU stand-in for a datasheet peak."""
    a = torch.randn(size, size, dtype=dtype)
    b = torch.randn(size, size, dtype=dtype)
    a @ b
    best = math.inf
    for _ in range(repeats):
        started = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - started)
    return 2 * size**3 / best


def build_model(shape: ModelShape, device: torch.device, dtype: torch.dtype, attn: str) -> Any:
    """A random-weight Llama of `shape`, created directly on `device` in `dtype`."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=shape.vocab_size,
        hidden_size=shape.hidden_size,
        intermediate_size=shape.intermediate_size,
        num_hidden_layers=shape.num_hidden_layers,
        num_attention_heads=shape.num_attention_heads,
        num_key_value_heads=shape.num_key_value_heads,
        max_position_embeddings=shape.seq_len,
        tie_word_embeddings=False,
    )
    with torch.device(device):
        model = LlamaForCausalLM._from_config(config, dtype=dtype, attn_implementation=attn)
    return model


def packed_data(shape: ModelShape, median_tokens: int, windows: int, seed: int) -> TrainingData:
    """At least `windows` packed windows of random-token examples with log-normal lengths,
    packed by fineplat's packer, in the trainer's data form."""
    rng = random.Random(seed)
    examples: list[TokenizedExample] = []
    tokens = 0
    while tokens < windows * shape.seq_len * 1.05:
        length = min(shape.seq_len, max(32, round(rng.lognormvariate(math.log(median_tokens), 0.8))))
        ids = [rng.randrange(4, shape.vocab_size) for _ in range(length)]
        examples.append(TokenizedExample(ids, list(ids)))
        tokens += length
    rows = pack_examples(examples, shape.seq_len, pad_token_id=0)
    table = pl.DataFrame(
        {
            "input_ids": [r.input_ids for r in rows],
            "labels": [r.labels for r in rows],
            "position_ids": [r.position_ids for r in rows],
            "example_ids": [r.example_ids for r in rows],
        }
    )
    return TrainingData(
        train=table,
        holdout=pl.DataFrame({"input_ids": [], "labels": []}),
        pad_token_id=0,
        packed=True,
        packing_efficiency=packing_efficiency(rows),
    )


def flops_per_token(model: Any, shape: ModelShape, method: str) -> tuple[float, int, int]:
    """(FLOPs per token, N, N_lora) as the module docstring derives them."""
    embedding = model.get_input_embeddings().weight.numel()
    base = sum(p.numel() for n, p in model.named_parameters() if "lora_" not in n) - embedding
    adapter = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    attention = 12 * shape.num_hidden_layers * shape.hidden_size * shape.seq_len
    if method == "lora":
        return 4 * base + 6 * adapter + attention, base, adapter
    return 6 * base + attention, base, adapter


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work (no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_config(method: str, shape: ModelShape, dtype: str, attn: str) -> TrainConfig:
    """The fine-tune config measured: defaults, with dtype and attention as given ("auto": the
    device's defaults)."""
    return TrainConfig.model_validate(
        {"method": method, "max_seq_len": shape.seq_len, "dtype": dtype, "attn_implementation": attn}
    )


def measure(
    config: TrainConfig,
    shape: ModelShape,
    device: torch.device,
    choice: DeviceChoice,
    data: TrainingData,
    batch_size: int,
    warmup: int,
    steps: int,
    peak: float,
    compile_model: bool,
) -> Measurement:
    """Train `warmup + steps` steps as fineplat's loop does on one process; time the last `steps`."""
    method = config.method
    torch.manual_seed(0)
    weights = getattr(torch, weights_dtype(config, choice))  # SFT in bf16: float32 master weights
    model = build_model(shape, device, weights, choice.attn_implementation)
    if method == "lora":
        from peft import get_peft_model

        model = get_peft_model(model, lora_config(config))
    else:
        model.requires_grad_(True)
    use_packed_sdpa(model, shape.seq_len)  # as `prepare_model` does for packed data (sdpa only)
    model.train()
    per_token, base, adapter = flops_per_token(model, shape, method)
    strategy = make_strategy(
        config,
        model,
        lambda parameters: optimizer_and_schedule(parameters, config, warmup + steps),
        rank=0,
        world=1,
        micro_batch=batch_size,
        choice=choice,
    )
    train_model = torch.compile(strategy.module) if compile_model else strategy.module
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    order = list(range(data.rows))
    durations: list[float] = []
    data_durations: list[float] = []
    real_tokens = 0
    for step in range(warmup + steps):
        rows = [order[(step * batch_size + i) % data.rows] for i in range(batch_size)]
        synchronize(device)
        started = time.perf_counter()
        batch = to_device(data.train_batch(rows), device)
        synchronize(device)
        data_seconds = time.perf_counter() - started
        with strategy.autocast():  # bf16 autocast for a full fine-tune in bf16, as the trainer runs it
            loss_sum, _ = lm_loss_sum(train_model, batch)
        strategy.backward(loss_sum / max(1, batch["loss_tokens"]))
        loss_value = float(loss_sum.detach())  # the trainer's per-step sync
        grad_norm = strategy.step()
        synchronize(device)
        if step >= warmup:
            durations.append(time.perf_counter() - started)
            data_durations.append(data_seconds)
            real_tokens += batch["real_tokens"]
        if not (math.isfinite(loss_value) and math.isfinite(grad_norm)):
            raise SystemExit(f"{method}: non-finite loss {loss_value} or gradient norm {grad_norm}")
    seconds = sum(durations)
    tokens_per_second = real_tokens / seconds
    achieved = tokens_per_second * per_token
    memory = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else 0.0
    attention = transformers_model(model).config._attn_implementation
    print(
        f"  {method}: N={base / 1e6:,.1f}M (non-embedding), N_lora={adapter / 1e6:,.2f}M, "
        f"{per_token:.4g} FLOP/token, attention {attention}, step {statistics.median(durations) * 1000:.1f} ms",
        flush=True,
    )
    del model, train_model, strategy
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return Measurement(
        method,
        tokens_per_second,
        per_token,
        achieved / 1e12,
        achieved / peak,
        statistics.median(durations),
        statistics.median(data_durations),
        memory,
    )


def main(argv: list[str] | None = None) -> int:
    """Measure SFT and/or LoRA and print tokens/s and MFU."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dry-run", action="store_true", help="tiny config on CPU (the same code path)")
    parser.add_argument("--quick", action="store_true", help="alias of --dry-run (the smoke tests' flag)")
    parser.add_argument("--method", choices=["sft", "lora", "both"], default="both")
    parser.add_argument("--batch-size", type=int, default=None, help="windows per step (8; dry run 2)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (10; dry run 2)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first (3; dry run 1)")
    parser.add_argument("--median-tokens", type=int, default=None, help="median example length (400)")
    parser.add_argument(
        "--attn",
        choices=["auto", "flash_attention_2", "sdpa", "eager"],
        default="auto",
        help="attention (auto: the device's default, as a fine-tune gets it)",
    )
    parser.add_argument(
        "--dtype",
        choices=["auto", "bfloat16", "float32"],
        default="auto",
        help="weights' dtype (auto: the device's default: bfloat16 on GPUs, float32 on CPU)",
    )
    parser.add_argument("--peak-tflops", type=float, default=None, help="override the peak bf16 TFLOP/s")
    parser.add_argument(
        "--compile", action="store_true", help="torch.compile the model (not the default path)"
    )
    args = parser.parse_args(argv)
    dry = args.dry_run or args.quick

    if dry:
        shape, device = DRY_RUN_SHAPE, torch.device("cpu")
    else:
        if not torch.cuda.is_available():
            raise SystemExit("no CUDA device: run on a GPU node, or pass --dry-run for the CPU check")
        shape, device = BILLION_SHAPE, torch.device("cuda", 0)
    batch_size = args.batch_size or (2 if dry else 8)
    steps = args.steps or (2 if dry else 10)
    warmup = args.warmup if args.warmup is not None else (1 if dry else 3)
    median_tokens = args.median_tokens or (48 if dry else 400)
    methods = ["sft", "lora"] if args.method == "both" else [args.method]
    configs = [bench_config(m, shape, args.dtype, args.attn) for m in methods]
    try:
        choice = resolve_device_choice(configs[0], device)  # the same for every method on one device
    except ConfigError as exc:
        raise SystemExit(f"--attn/--dtype: {exc}") from exc
    dtype = getattr(torch, choice.dtype)
    peak, peak_source = peak_bf16_flops(device, dtype, args.peak_tflops)
    data = packed_data(shape, median_tokens, batch_size * (warmup + steps), seed=0)
    print(
        f"device: {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}; peak "
        f"{peak / 1e12:,.1f} TFLOP/s ({peak_source}); attention {choice.attn_implementation} "
        f"(--attn {args.attn}); dtype {choice.dtype} (--dtype {args.dtype}); torch {torch.__version__}"
    )
    print(
        f"model: Llama hidden {shape.hidden_size}, {shape.num_hidden_layers} layers, "
        f"{shape.num_attention_heads} heads / {shape.num_key_value_heads} KV, intermediate "
        f"{shape.intermediate_size}, vocab {shape.vocab_size}; {batch_size} x {shape.seq_len}-token windows per "
        f"step, {data.rows} windows, packing efficiency {data.packing_efficiency:.3f}",
        flush=True,
    )
    results = [
        measure(config, shape, device, choice, data, batch_size, warmup, steps, peak, args.compile)
        for config in configs
    ]
    print()
    for r in results:
        print(
            f"{r.method:<5} {r.tokens_per_second:>12,.0f} tokens/s  {r.achieved_tflops:8.2f} TFLOP/s  "
            f"MFU {r.mfu:.1%}  step {r.step_seconds * 1000:.1f} ms (batch building {r.data_seconds * 1000:.1f} ms, "
            f"{r.data_seconds / r.step_seconds:.1%})  peak memory {r.peak_memory_gb:.1f} GiB"
        )
        print(f"RATIO {r.method}_mfu: {r.mfu:.4f}x (achieved / peak FLOP/s)")
    for r in results:
        if r.method == "sft":
            verdict = "PASS" if r.mfu > TARGET_SFT_MFU else "MISS"
            note = " (dry run: CPU, not the target's hardware)" if dry else ""
            print(f"{verdict} SFT MFU > {TARGET_SFT_MFU:.0%} ({r.mfu:.1%}){note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
