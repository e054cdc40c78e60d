"""The training loop, readable top to bottom: set up, loop, step, log, checkpoint.

One loop serves every method: `lora`, `qlora` and `dpo` train a peft LoRA adapter, `sft` and `cpt`
train all weights. The data order is a pure function of (seed, epoch), so the data position
(epoch, index) plus weights, optimizer, scheduler and RNG states resume a run bit-exactly.

    python -m k8s_ops.train_entry   # under Dagster Pipes; or torchrun --nproc_per_node=N -m k8s_ops.train_entry
"""

from __future__ import annotations

import inspect
import math
import os
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from fineplat.basemodel import load_base_model, load_tokenizer
from fineplat.errors import TrainingError
from fineplat.packing.tokenize import IGNORE_INDEX
from fineplat.training import checkpoint as ckpt
from fineplat.training import distributed, zero
from fineplat.training.attention import (
    PACKED_SDPA,
    prefers_per_example,
    restore_sdpa,
    transformers_model,
    use_packed_sdpa,
)
from fineplat.training.config import TrainConfig
from fineplat.training.data import TrainingData, load_training_data
from fineplat.training.dpo import check_data_fits_method, check_first_step_loss
from fineplat.training.gpu_metrics import gpu_metrics
from fineplat.training.preemption import Preempted, PreemptionFlag

# Token budget of one forward/backward pass on a CPU (see `forward_rows`).
CPU_MICRO_TOKENS = 2048


class MetricsSink(Protocol):
    """Where the loop reports: MLflow, the registry's run_metrics, Dagster Pipes (see k8s_ops)."""

    def log(self, step: int, metrics: dict[str, float]) -> None: ...

    def status(self, status: str, step: int) -> None: ...


class NullSink:
    """A sink that drops everything (library use and tests that read the result instead)."""

    def log(self, step: int, metrics: dict[str, float]) -> None:
        return None

    def status(self, status: str, step: int) -> None:
        return None


@dataclass
class TrainResult:
    """What a finished run produced."""

    output_dir: Path  # adapter (peft) or full model directory
    steps: int
    losses: list[float]  # one per optimizer step, in order (only those run by this process)
    first_loss: float
    final_loss: float
    tokens_per_second: float
    packing_efficiency: float
    validation_loss: float | None
    resumed_from_step: int
    metrics: dict[str, float] = field(default_factory=dict)


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch; deterministic algorithms where torch has them."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    # Deterministic mode also fills every new uninitialized tensor with NaN (a guard for code that
    # reads memory it never wrote); the loop writes every buffer it reads, and the fills cost ~9% of
    # a CPU step (measured in bench/train_bench.py --profile), so they are off.
    torch.utils.deterministic.fill_uninitialized_memory = False  # type: ignore[attr-defined]


def _dist() -> tuple[int, int]:
    """(rank, world), joining torchrun's process group when started by it (else (0, 1))."""
    return distributed.init_distributed()


def resolve_batch_size(config: TrainConfig, rows: int) -> int:
    """`auto`: the largest power of two up to 16 that still gives ≥ 8 steps per epoch (small data
    needs more steps, not bigger ones); a number is used as given."""
    if config.batch_size != "auto":
        return int(config.batch_size)
    size = 16
    while size > 1 and rows // (size * config.gradient_accumulation_steps) < 8:
        size //= 2
    return size


def epoch_order(seed: int, epoch: int, rows: int) -> list[int]:
    """The shuffled row order of one epoch: a pure function, so resuming needs only (epoch, index)."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(rows, generator=generator).tolist()


def lora_config(config: TrainConfig) -> Any:
    """The peft LoRA configuration of a run (shared by lora, qlora and dpo)."""
    from peft import LoraConfig

    return LoraConfig(
        r=config.lora_rank,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=list(config.lora_target_modules),
        task_type="CAUSAL_LM",
    )


def prepare_model(config: TrainConfig, base_model_dir: Path, *, packed: bool = False) -> Any:
    """Load the base model onto this process's device and make the right parameters trainable.
    `packed`: the training data is packed windows, so sdpa becomes per-example sdpa
    (`fineplat.training.attention`, same math without the dense block-diagonal mask)."""
    if config.method == "qlora":
        from fineplat.training.quantized import load_qlora_model

        model = load_qlora_model(config, base_model_dir)
        if packed:
            use_packed_sdpa(model, config.max_seq_len)
        return model
    model = load_base_model(
        base_model_dir, dtype=config.dtype, attn_implementation=config.attn_implementation
    ).to(distributed.training_device())
    if config.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if config.uses_adapter:
        from peft import get_peft_model

        model = get_peft_model(model, lora_config(config))
    else:
        for parameter in model.parameters():
            parameter.requires_grad_(True)
    if packed:
        use_packed_sdpa(model, config.max_seq_len)
    model.train()
    return model


def token_logprobs(model: Any, input_ids: torch.Tensor, labels: torch.Tensor, **forward: Any) -> torch.Tensor:
    """Per-token log-probabilities of the labels (0 where label is IGNORE_INDEX), shape [B, T-1]."""
    logits = model(input_ids=input_ids, use_cache=False, **forward).logits[:, :-1].float()
    targets = labels[:, 1:]
    mask = targets != IGNORE_INDEX
    logp = torch.gather(F.log_softmax(logits, dim=-1), 2, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return logp * mask


# Attention implementations that keep the examples of one long row apart by `position_ids` alone,
# without a [T, T] mask: for them a batch of packed windows can run as a single row.
_VARLEN_ATTENTION = frozenset({PACKED_SDPA, "flash_attention_2", "flash_attention_3"})


def _flat_packed_forward(model: Any, batch: dict[str, torch.Tensor]) -> bool:
    """Whether `lm_loss_sum` may run this batch as one row and compute logits at label positions
    only: packed windows (position ids, no mask), a varlen attention, and a causal LM head that
    takes `logits_to_keep` (Llama, Mistral, Qwen, Gemma, … do)."""
    if "position_ids" not in batch or "attention_mask" in batch:
        return False
    inner = transformers_model(model)
    implementation = getattr(inner.config, "_attn_implementation", None)
    if implementation not in _VARLEN_ATTENTION:
        return False
    if implementation == PACKED_SDPA and not prefers_per_example(batch["position_ids"]):
        return False  # windows of long examples: masked attention over the windows is cheaper
    return "logits_to_keep" in inspect.signature(inner.forward).parameters


def lm_loss_sum(model: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """Summed next-token cross-entropy over label tokens, and their count. Packed batches carry
    `position_ids` and no attention mask; `use_cache=False` keeps examples apart.

    Packed windows under a varlen attention run as one row with logits at label positions only
    (prompt tokens need no vocabulary projection or softmax: for assistant-only loss masks that is
    roughly half the LM head and cross-entropy work); the windows never attend to each other, since
    every window starts a new example."""
    targets = batch["labels"][:, 1:]
    if _flat_packed_forward(model, batch):
        ids = batch["input_ids"]
        rows, cols = (targets != IGNORE_INDEX).nonzero(as_tuple=True)
        keep = rows * ids.size(1) + cols  # flat index of each position whose next token is a label
        logits = model(
            input_ids=ids.reshape(1, -1),
            position_ids=batch["position_ids"].reshape(1, -1),
            use_cache=False,
            logits_to_keep=keep,
        ).logits[0]
        loss = F.cross_entropy(logits.float(), targets[rows, cols], reduction="sum")
        return loss, int(keep.numel())
    forward = {k: batch[k] for k in ("position_ids", "attention_mask") if k in batch}
    logits = model(input_ids=batch["input_ids"], use_cache=False, **forward).logits[:, :-1].float()
    loss = F.cross_entropy(
        logits.reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum"
    )
    return loss, int((targets != IGNORE_INDEX).sum())


def dpo_loss_sum(model: Any, batch: dict[str, torch.Tensor], beta: float) -> tuple[torch.Tensor, int]:
    """Summed DPO loss over the pairs in the batch (reference log-probs precomputed in the data)."""
    chosen = token_logprobs(
        model,
        batch["chosen_input_ids"],
        batch["chosen_labels"],
        attention_mask=batch["chosen_attention_mask"],
    ).sum(-1)
    rejected = token_logprobs(
        model,
        batch["rejected_input_ids"],
        batch["rejected_labels"],
        attention_mask=batch["rejected_attention_mask"],
    ).sum(-1)
    margin = beta * ((chosen - batch["ref_chosen_logp"]) - (rejected - batch["ref_rejected_logp"]))
    return -F.logsigmoid(margin).sum(), int(chosen.numel())


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """The batch's tensors on `device` (counts stay Python ints)."""
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def make_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig, total_steps: int) -> Any:
    """Linear warm-up, then cosine/linear decay to zero or constant."""
    warmup = int(config.warmup_ratio * total_steps)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = (step - warmup) / max(1, total_steps - warmup)
        if config.scheduler == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
        if config.scheduler == "linear":
            return max(0.0, 1.0 - progress)
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _positions(
    data: TrainingData, config: TrainConfig, batch_size: int, start: tuple[int, int]
) -> Iterator[tuple[int, int, list[int]]]:
    """Yield (epoch, index, row ids) micro-batches from a data position onwards, forever."""
    epoch, index = start
    while True:
        order = epoch_order(config.seed, epoch, data.rows)
        while index < data.rows:
            yield epoch, index, order[index : index + batch_size]
            index += batch_size
        epoch, index = epoch + 1, 0


def rank_batches(
    data: TrainingData, rows: list[int], rank: int, world: int, device: torch.device, max_rows: int
) -> list[dict[str, Any]]:
    """This process's share `rows[rank::world]` of a global micro-batch, on its device, in chunks of
    at most `max_rows` rows, each with a loss `weight`: a rank left without rows (the short last
    micro-batch of an epoch) reruns the first row with weight 0, because every rank must join each
    backward's gradient all-reduce."""
    mine = rows[rank::world]
    if not mine:
        batch = to_device(data.train_batch(rows[:1]), device)
        batch["loss_tokens"], batch["real_tokens"], batch["weight"] = 0, 0, 0.0
        return [batch]
    chunks = [mine[start : start + max_rows] for start in range(0, len(mine), max_rows)]
    return [{**to_device(data.train_batch(chunk), device), "weight": 1.0} for chunk in chunks]


def forward_rows(config: TrainConfig, device: torch.device, world: int, batch_size: int) -> int:
    """Rows per forward/backward pass. On one CPU process, at most CPU_MICRO_TOKENS tokens: the
    step's gradients are the same (the loss is normalized by the step's label tokens), and smaller
    passes keep activations in cache (measured ~8% faster per token for 4 x 512 than 16 x 512
    windows, 1 thread). GPUs and multi-process runs use the whole batch (ranks must run the same
    number of passes for their all-reduces)."""
    if device.type != "cpu" or world > 1:
        return batch_size
    return max(1, min(batch_size, CPU_MICRO_TOKENS // config.max_seq_len))


@torch.no_grad()
def validation_loss(model: Any, data: TrainingData, method: str) -> float | None:
    """Mean per-token loss on the holdout split (None without one, or for DPO)."""
    if data.holdout_rows == 0 or method == "dpo":
        return None
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for start in range(0, data.holdout_rows, 16):
        batch = data.holdout_batch(list(range(start, min(start + 16, data.holdout_rows))))
        batch = to_device(batch, distributed.training_device())
        loss, n = lm_loss_sum(model, batch)
        total, count = total + float(loss), count + n
    model.train(was_training)
    return total / max(1, count)


def save_output(
    model: Any, tokenizer: Any, config: TrainConfig, out_dir: Path, state_dict: dict | None = None
) -> Path:
    """The deliverable: a peft adapter directory, or a full model directory with its tokenizer.
    `state_dict`: the gathered full weights of an FSDP-sharded model."""
    out_dir.mkdir(parents=True, exist_ok=True)
    restore_sdpa(model)  # a saved full model's config names transformers' own sdpa
    target = model.module if hasattr(model, "module") else model
    target.save_pretrained(str(out_dir), safe_serialization=True, state_dict=state_dict)
    if not config.uses_adapter:
        tokenizer.save_pretrained(str(out_dir))
    return out_dir


def train(
    config: TrainConfig,
    *,
    base_model_dir: Path,
    data_dir: Path,
    checkpoint_dir: Path,
    output_dir: Path,
    sink: MetricsSink | None = None,
    preemption: PreemptionFlag | None = None,
    on_step: Callable[[int], None] | None = None,
    on_checkpoint: Callable[[Path], None] | None = None,
) -> TrainResult:
    """Train (or resume) one run to completion and write its output.

    `on_checkpoint` runs on rank 0 after each checkpoint is written (the object-store mirror).
    Raises `Preempted` after an emergency checkpoint when `preemption` is requested, and
    `TrainingError` (with the step) on NaN/inf loss or gradients — a failure retrying cannot fix."""
    sink = sink or NullSink()
    preemption = preemption or PreemptionFlag()
    distributed.check_strategy(config.method, config.distributed)
    rank, world = _dist()
    device = distributed.training_device()
    seed_everything(config.seed)

    # --- set up -------------------------------------------------------------------------------
    tokenizer = load_tokenizer(base_model_dir)
    data = load_training_data(data_dir, tokenizer.pad_token_id)
    check_data_fits_method(config.method, data, data_dir)
    model = prepare_model(config, base_model_dir, packed=data.packed)
    # DDP wraps; FSDP shards the model in place, so it comes before the optimizer sees parameters.
    train_model: Any = distributed.wrap_model(model, config.distributed, world)
    sharded = distributed.is_sharded(model)
    batch_size = resolve_batch_size(config, math.ceil(data.rows / world))
    global_batch = batch_size * world  # batch_size is per process; rank r trains rows[r::world]
    pass_rows = forward_rows(config, device, world, batch_size)
    micro_per_epoch = math.ceil(data.rows / global_batch)
    total_steps = config.max_steps or math.ceil(
        config.n_epochs * micro_per_epoch / config.gradient_accumulation_steps
    )
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.learning_rate, weight_decay=config.weight_decay)
    scheduler = make_scheduler(optimizer, config, total_steps)
    engine: Any = None  # DeepSpeed ZeRO: the engine reduces, clips and steps optimizer + scheduler
    if config.distributed.startswith("deepspeed") and world > 1:
        stage = zero.zero_stage(config.distributed)
        engine = zero.make_engine(
            model,
            optimizer,
            scheduler,
            zero.deepspeed_config(
                stage=stage,
                micro_batch=batch_size,
                accumulation=config.gradient_accumulation_steps,
                world=world,
                max_grad_norm=config.max_grad_norm,
                bf16=config.dtype == "bfloat16",
            ),
        )
        train_model = engine
        partitioned: Any = zero.PartitionedOptimizerState(stage, world)

    state = ckpt.TrainerState(step=0, epoch=0, index=0, config_hash=config.hparams_hash())
    latest = ckpt.latest_checkpoint(checkpoint_dir)
    if latest is not None:
        if sharded:  # every rank reads the full tensors, then keeps its shards
            weights, optimizer_state = distributed.placeholders_for_checkpoint(model)
            state = ckpt.load_checkpoint(
                latest, model=weights, optimizer=optimizer_state, scheduler=scheduler
            )
            distributed.restore_sharded(model, optimizer, weights, optimizer_state)
        elif engine is not None:  # weights into the engine's module, then each rank's partition
            state = ckpt.load_checkpoint(latest, model=model, optimizer=partitioned, scheduler=scheduler)
            zero.load_partition(engine, latest, rank, world)
            engine.global_steps = state.step
        else:
            state = ckpt.load_checkpoint(latest, model=model, optimizer=optimizer, scheduler=scheduler)
        if state.config_hash != config.hparams_hash():
            raise TrainingError(
                f"{latest}: checkpoint belongs to another config ({state.config_hash[:12]}); use a new checkpoint dir"
            )
        state.preempted = False
    resumed_from = state.step

    def write_checkpoint(preempted: bool = False) -> Path | None:
        state.preempted = preempted
        weights: Any = model
        optimizer_state: Any = optimizer
        partitions = None
        if sharded:  # collective: every rank gathers full tensors, rank 0 writes them
            weights, optimizer_state = distributed.gather_for_checkpoint(model, optimizer)
        elif engine is not None:  # collective: every rank writes its optimizer partition
            partitions = zero.shard_dir(checkpoint_dir, state.step)
            zero.save_partition(engine, partitions, rank, world)
            optimizer_state = partitioned
        path = None
        if rank == 0:
            sink.status("checkpointing", state.step)
            path = ckpt.save_checkpoint(
                checkpoint_dir,
                model=weights,
                optimizer=optimizer_state,
                scheduler=scheduler,
                state=state,
                keep=config.keep_checkpoints,
                extra_dir=partitions,
            )
            if on_checkpoint is not None:
                on_checkpoint(path)
            sink.status("preempted" if preempted else "running", state.step)
        if world > 1:
            torch.distributed.barrier()
        return path

    # --- loop -----------------------------------------------------------------------------------
    stream = _positions(data, config, global_batch, (state.epoch, state.index))
    losses: list[float] = []
    started = time.perf_counter()
    tokens_total = 0
    sink.status("running", state.step)
    while state.step < total_steps:
        step_started = time.perf_counter()
        micro = [next(stream) for _ in range(config.gradient_accumulation_steps)]
        batches = [
            b for _, _, rows in micro for b in rank_batches(data, rows, rank, world, device, pass_rows)
        ]
        counts = [sum(b["loss_tokens"] for b in batches), sum(b["real_tokens"] for b in batches)]
        label_tokens, step_tokens = (int(n) for n in distributed.sum_over_ranks(counts, device))
        lr = scheduler.get_last_lr()[0]  # the rate this step trains with
        step_loss = 0.0
        for batch in batches:
            try:
                if config.method == "dpo":
                    loss_sum, _ = dpo_loss_sum(train_model, batch, config.dpo_beta)
                else:
                    loss_sum, _ = lm_loss_sum(train_model, batch)
                loss_sum = loss_sum * batch["weight"]
                # DDP/FSDP/ZeRO average gradients over ranks; scale so the result is the global token mean.
                scaled = loss_sum * world / max(1, label_tokens)
                if engine is None:
                    scaled.backward()
                else:
                    if not math.isfinite(float(loss_sum.detach())):  # before the engine can step on it
                        raise TrainingError(
                            f"step {state.step + 1}: loss is {float(loss_sum.detach())}; lower "
                            "learning_rate_multiplier, check the data for empty or extreme rows, or use float32."
                        )
                    engine.backward(scaled, scale_wrt_gas=False)
                    engine.step()  # steps optimizer and scheduler at the accumulation boundary only
            except torch.OutOfMemoryError as exc:  # retrying the same config would fail the same way
                raise TrainingError(
                    f"step {state.step + 1}: out of memory ({exc}); lower batch_size or max_seq_len, "
                    "raise gradient_accumulation_steps, or set gradient_checkpointing=true"
                ) from exc
            step_loss += float(loss_sum.detach())
        step_loss = distributed.sum_over_ranks([step_loss], device)[0]
        loss_value = step_loss / max(1, label_tokens)
        if config.method == "dpo" and state.step == 0:  # fresh run: the policy is still the reference
            check_first_step_loss(loss_value, data_dir)
        if engine is None:
            norm = torch.nn.utils.clip_grad_norm_(trainable, config.max_grad_norm)
            grad_norm = float(distributed.full_tensor(norm))
        else:  # the pre-clipping norm of the step the engine just took
            grad_norm = float(engine.get_global_grad_norm())
        if not math.isfinite(loss_value) or not math.isfinite(grad_norm):
            what = "loss" if not math.isfinite(loss_value) else "gradient norm"
            raise TrainingError(
                f"step {state.step + 1}: {what} is {loss_value if what == 'loss' else grad_norm}; "
                "lower learning_rate_multiplier, check the data for empty or extreme rows, or use float32."
            )
        if engine is None:
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
        last_epoch, last_index, last_rows = micro[-1]
        state.step += 1
        state.epoch, state.index = last_epoch, last_index + len(last_rows)
        if state.index >= data.rows:
            state.epoch, state.index = state.epoch + 1, 0
        tokens_total += step_tokens
        state.tokens_seen += step_tokens
        losses.append(loss_value)
        elapsed = time.perf_counter() - step_started
        metrics = {
            "loss": loss_value,
            "grad_norm": grad_norm,
            "learning_rate": lr,
            "tokens_per_second": step_tokens / max(elapsed, 1e-9),
            "epoch": state.epoch + state.index / data.rows,
        }
        metrics.update(gpu_metrics(device))
        if rank == 0:
            sink.log(state.step, metrics)
        if on_step is not None:
            on_step(state.step)
        if distributed.any_rank(preemption.requested, device) and state.step < total_steps:
            path = write_checkpoint(preempted=True)
            raise Preempted(state.step, str(path))
        if state.step % config.checkpoint_interval == 0 and state.step < total_steps:
            write_checkpoint()
            val = validation_loss(model, data, config.method)
            if val is not None and rank == 0:
                sink.log(state.step, {"validation_loss": val})

    # --- finish ---------------------------------------------------------------------------------
    write_checkpoint()
    val = validation_loss(model, data, config.method)
    if val is not None and rank == 0:
        sink.log(state.step, {"validation_loss": val})
    full_state = distributed.full_model_state(model)  # collective under FSDP, else None
    if rank == 0:
        save_output(model, tokenizer, config, output_dir, state_dict=full_state)
    duration = time.perf_counter() - started
    return TrainResult(
        output_dir=output_dir,
        steps=state.step,
        losses=losses,
        first_loss=losses[0] if losses else float("nan"),
        final_loss=losses[-1] if losses else float("nan"),
        tokens_per_second=tokens_total / max(duration, 1e-9),
        packing_efficiency=data.packing_efficiency,
        validation_loss=val,
        resumed_from_step=resumed_from,
        metrics={
            "world_size": float(world),
            "batch_size": float(batch_size),
            "total_steps": float(total_steps),
        },
    )


def local_rank() -> int:
    """LOCAL_RANK under torchrun, else 0."""
    return int(os.environ.get("LOCAL_RANK", "0"))
