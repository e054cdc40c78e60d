"""Tokens/s and model FLOPs utilization (MFU) of fineplat's training step on a GPU, for full
fine-tuning (SFT) and LoRA of a ~1B-parameter Llama with random weights in bfloat16.

    python bench/gpu_mfu.py                       # on a GPU node: SFT and LoRA, 1B Llama, seq 2048
    python bench/gpu_mfu.py --method sft --batch-size 8 --steps 20
    python bench/gpu_mfu.py --dry-run             # anywhere: a tiny config on CPU, same code path

The step is fineplat's, not a re-implementation: examples are packed by
`fineplat.packing.pack.pack_examples` into 2048-token windows (restarting position ids, no attention
mask), batched by `fineplat.training.data.TrainingData.train_batch`, moved with
`fineplat.training.trainer.to_device`, and trained exactly as one iteration of `train()`'s loop
(`lm_loss_sum` forward and summed cross-entropy, backward of the token mean, the loss `float()`,
`clip_grad_norm_`, AdamW, zero_grad). The LoRA model is `get_peft_model` with fineplat's
`lora_config` (r=16, alpha=32, all seven linear projections). Only model loading differs: the
random-weight model is created directly on the GPU in bf16 instead of read from disk.

Model (default): Llama, hidden 2048, 16 layers, 32 heads, 8 KV heads, intermediate 8192, vocab
32000, untied embeddings (~1.1B parameters). Attention: flash_attention_2 if the flash_attn package
is installed (varlen over the packed examples), else sdpa. Example lengths: log-normal, median
--median-tokens (400), clipped to [32, seq_len].

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
device name (--peak-tflops overrides). On a CPU (--dry-run) there is no datasheet number: the peak is
the measured throughput of a large matmul in the same dtype, labelled as such.

Target (the seed, issue #3 item 8): > 60% MFU for standard SFT.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import random
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Any

import polars as pl
import torch

from fineplat.packing.pack import pack_examples, packing_efficiency
from fineplat.packing.tokenize import TokenizedExample
from fineplat.training.config import TrainConfig
from fineplat.training.data import TrainingData
from fineplat.training.trainer import lm_loss_sum, lora_config, to_device

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
TARGET_SFT_MFU = 0.60  # the seed's target for standard SFT


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


def measure(
    method: str,
    shape: ModelShape,
    device: torch.device,
    dtype: torch.dtype,
    attn: str,
    data: TrainingData,
    batch_size: int,
    warmup: int,
    steps: int,
    peak: float,
    compile_model: bool,
) -> Measurement:
    """Train `warmup + steps` steps as fineplat's loop does; time the last `steps`."""
    config = TrainConfig.model_validate({"method": method, "max_seq_len": shape.seq_len, "dtype": "bfloat16"})
    torch.manual_seed(0)
    model = build_model(shape, device, dtype, attn)
    if method == "lora":
        from peft import get_peft_model

        model = get_peft_model(model, lora_config(config))
    else:
        model.requires_grad_(True)
    model.train()
    per_token, base, adapter = flops_per_token(model, shape, method)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.learning_rate, weight_decay=config.weight_decay)
    train_model = torch.compile(model) if compile_model else model
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
        loss_sum, _ = lm_loss_sum(train_model, batch)
        (loss_sum / max(1, batch["loss_tokens"])).backward()
        loss_value = float(loss_sum.detach())  # the trainer's per-step sync
        grad_norm = float(torch.nn.utils.clip_grad_norm_(trainable, config.max_grad_norm))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
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
    print(
        f"  {method}: N={base / 1e6:,.1f}M (non-embedding), N_lora={adapter / 1e6:,.2f}M, "
        f"{per_token:.4g} FLOP/token, step {statistics.median(durations) * 1000:.1f} ms",
        flush=True,
    )
    del model, train_model, optimizer, trainable
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
    parser.add_argument("--attn", choices=["auto", "flash_attention_2", "sdpa"], default="auto")
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
    dtype = torch.bfloat16
    batch_size = args.batch_size or (2 if dry else 8)
    steps = args.steps or (2 if dry else 10)
    warmup = args.warmup if args.warmup is not None else (1 if dry else 3)
    median_tokens = args.median_tokens or (48 if dry else 400)
    attn = args.attn
    if attn == "auto":
        has_flash = importlib.util.find_spec("flash_attn") is not None
        attn = "flash_attention_2" if device.type == "cuda" and has_flash else "sdpa"
    peak, peak_source = peak_bf16_flops(device, dtype, args.peak_tflops)
    data = packed_data(shape, median_tokens, batch_size * (warmup + steps), seed=0)
    print(
        f"device: {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}; peak "
        f"{peak / 1e12:,.1f} TFLOP/s ({peak_source}); attention {attn}; dtype {dtype}; torch {torch.__version__}"
    )
    print(
        f"model: Llama hidden {shape.hidden_size}, {shape.num_hidden_layers} layers, "
        f"{shape.num_attention_heads} heads / {shape.num_key_value_heads} KV, intermediate "
        f"{shape.intermediate_size}, vocab {shape.vocab_size}; {batch_size} x {shape.seq_len}-token windows per "
        f"step, {data.rows} windows, packing efficiency {data.packing_efficiency:.3f}",
        flush=True,
    )
    methods = ["sft", "lora"] if args.method == "both" else [args.method]
    results = [
        measure(m, shape, device, dtype, attn, data, batch_size, warmup, steps, peak, args.compile)
        for m in methods
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
