"""The training loop, readable top to bottom: set up, loop, step, log, checkpoint.

One loop serves every method: `lora`, `qlora` and `dpo` train a peft LoRA adapter, `sft` and `cpt`
train all weights. The data order is a pure function of (seed, epoch), so the data position
(epoch, index) plus weights, optimizer, scheduler and RNG states resume a run bit-exactly. How the
step runs across processes (one, DDP, FSDP, DeepSpeed ZeRO) is one strategy object
(`fineplat.training.strategy`); the dtype and attention are the config's, or the training device's
defaults (`fineplat.training.device_defaults`).

    python -m k8s_ops.train_entry   # under Dagster Pipes; or torchrun --nproc_per_node=N -m k8s_ops.train_entry
"""

from __future__ import annotations

import inspect
import math
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
from fineplat.training import distributed
from fineplat.training.attention import (
    PACKED_SDPA,
    prefers_per_example,
    restore_sdpa,
    transformers_model,
    use_packed_sdpa,
)
from fineplat.training.config import TrainConfig
from fineplat.training.data import TrainingData, load_training_data
from fineplat.training.device_defaults import resolve_device_choice, weights_dtype
from fineplat.training.dpo import check_data_fits_method, check_first_step_loss
from fineplat.training.gpu_metrics import gpu_metrics
from fineplat.training.preemption import Preempted, PreemptionFlag
from fineplat.training.strategy import make_strategy

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
    dtype: str = "float32"  # the compute dtype the run trained in (the config's, or the device default)
    attn_implementation: str = "sdpa"  # the attention the model trained with (e.g. fineplat_packed_sdpa)


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
    """Load the base model onto this process's device, in the config's dtype and attention or the
    device's defaults (`resolve_device_choice`; full fine-tunes keep float32 weights, see
    `weights_dtype`), and make the right parameters trainable.
    `packed`: the training data is packed windows, so sdpa becomes per-example sdpa
    (`fineplat.training.attention`, same math without the dense block-diagonal mask)."""
    if config.method == "qlora":
        from fineplat.training.quantized import load_qlora_model

        model = load_qlora_model(config, base_model_dir)
        if packed:
            use_packed_sdpa(model, config.max_seq_len)
        return model
    device = distributed.training_device()
    choice = resolve_device_choice(config, device)
    model = load_base_model(
        base_model_dir, dtype=weights_dtype(config, choice), attn_implementation=choice.attn_implementation
    ).to(device)
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
# Those of them that are flash-attention's varlen kernels. They keep examples apart only within a
# single row (transformers' `_is_packed_sequence` requires batch size 1; a batch of windows would
# attend across the examples of each window), so packed windows always run flattened, and they
# take the example boundaries as cumulative lengths (`example_boundaries`), computed once per
# forward instead of from the position ids in every layer.
_FLASH_VARLEN_ATTENTION = frozenset({"flash_attention_2", "flash_attention_3"})


def _flat_packed_forward(model: Any, batch: dict[str, torch.Tensor]) -> bool:
    """Whether `lm_loss_sum` runs this batch as one row: packed windows (position ids, no mask) under
    a varlen attention. Per-example sdpa runs windows of long examples as they are (masked attention
    over the windows is cheaper there); flash attention always runs flat."""
    if "position_ids" not in batch or "attention_mask" in batch:
        return False
    implementation = getattr(transformers_model(model).config, "_attn_implementation", None)
    if implementation not in _VARLEN_ATTENTION:
        return False
    return implementation != PACKED_SDPA or prefers_per_example(batch["position_ids"])


def example_boundaries(position_ids: torch.Tensor) -> dict[str, Any]:
    """flash-attention's varlen arguments (transformers' `FlashAttentionKwargs`) for packed windows
    flattened into one row: the cumulative lengths of the examples, each starting where the position
    ids restart at 0 (as every window does), and the longest example."""
    starts = position_ids.reshape(-1) == 0
    starts[0] = True
    total = torch.tensor([starts.numel()], device=starts.device)
    cumulative = torch.cat([starts.nonzero().flatten(), total]).to(torch.int32)
    longest = int((cumulative[1:] - cumulative[:-1]).max())
    return {
        "cu_seq_lens_q": cumulative,
        "cu_seq_lens_k": cumulative,
        "max_length_q": longest,
        "max_length_k": longest,
    }


def lm_loss_sum(model: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """Summed next-token cross-entropy over label tokens, and their count. Packed batches carry
    `position_ids` and no attention mask; `use_cache=False` keeps examples apart.

    Packed windows under a varlen attention run as one row with logits at label positions only
    (prompt tokens need no vocabulary projection or softmax: for assistant-only loss masks that is
    roughly half the LM head and cross-entropy work; heads without `logits_to_keep` compute all
    logits and keep those); the windows never attend to each other, since every window starts a
    new example."""
    targets = batch["labels"][:, 1:]
    if _flat_packed_forward(model, batch):
        ids = batch["input_ids"]
        rows, cols = (targets != IGNORE_INDEX).nonzero(as_tuple=True)
        keep = rows * ids.size(1) + cols  # flat index of each position whose next token is a label
        inner = transformers_model(model)
        forward: dict[str, Any] = {"position_ids": batch["position_ids"].reshape(1, -1)}
        if inner.config._attn_implementation in _FLASH_VARLEN_ATTENTION:
            forward.update(example_boundaries(batch["position_ids"]))
        selects = "logits_to_keep" in inspect.signature(inner.forward).parameters  # Llama, Qwen, … do
        if selects:
            forward["logits_to_keep"] = keep
        logits = model(input_ids=ids.reshape(1, -1), use_cache=False, **forward).logits[0]
        if not selects:
            logits = logits[keep]
        loss = F.cross_entropy(logits.float(), targets[rows, cols], reduction="sum")
        return loss, int(keep.numel())
    window_forward = {k: batch[k] for k in ("position_ids", "attention_mask") if k in batch}
    logits = model(input_ids=batch["input_ids"], use_cache=False, **window_forward).logits[:, :-1].float()
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


def optimizer_and_schedule(
    parameters: list[torch.nn.Parameter], config: TrainConfig, total_steps: int
) -> tuple[torch.optim.Optimizer, Any]:
    """AdamW over the trainable parameters and its LR schedule (built by the strategy, see
    `fineplat.training.strategy.OptimizerFactory`)."""
    optimizer = torch.optim.AdamW(parameters, lr=config.learning_rate, weight_decay=config.weight_decay)
    return optimizer, make_scheduler(optimizer, config, total_steps)


def _check_finite(what: str, value: float, step: int) -> None:
    """Fail the run on a NaN/inf loss or gradient norm: retrying the same config cannot fix it."""
    if not math.isfinite(value):
        raise TrainingError(
            f"step {step + 1}: {what} is {value}; lower learning_rate_multiplier, check the data for "
            "empty or extreme rows, or use float32."
        )


class FineTune:
    """One training attempt, laid out as a torchtune recipe: `__init__` sets up (process group,
    data, model, strategy, resume), `train` is the loop, `save_checkpoint` writes the full state.
    Everything that differs between one process, DDP, FSDP and ZeRO is in `self.strategy`."""

    def __init__(
        self,
        config: TrainConfig,
        *,
        base_model_dir: Path,
        data_dir: Path,
        checkpoint_dir: Path,
        sink: MetricsSink,
        on_checkpoint: Callable[[Path], None] | None,
    ) -> None:
        distributed.check_strategy(config.method, config.distributed)
        self.rank, self.world = _dist()
        self.device = distributed.training_device()
        seed_everything(config.seed)
        self.config, self.data_dir, self.checkpoint_dir = config, data_dir, checkpoint_dir
        self.sink, self.on_checkpoint = sink, on_checkpoint
        self.choice = resolve_device_choice(config, self.device)

        self.tokenizer = load_tokenizer(base_model_dir)
        self.data = load_training_data(data_dir, self.tokenizer.pad_token_id)
        check_data_fits_method(config.method, self.data, data_dir)
        model = prepare_model(config, base_model_dir, packed=self.data.packed)
        self.attention = str(transformers_model(model).config._attn_implementation)  # as trained

        self.batch_size = resolve_batch_size(config, math.ceil(self.data.rows / self.world))
        self.global_batch = self.batch_size * self.world  # per process; rank r trains rows[r::world]
        self.pass_rows = forward_rows(config, self.device, self.world, self.batch_size)
        micro_per_epoch = math.ceil(self.data.rows / self.global_batch)
        self.total_steps = config.max_steps or math.ceil(
            config.n_epochs * micro_per_epoch / config.gradient_accumulation_steps
        )
        self.strategy = make_strategy(
            config,
            model,
            lambda parameters: optimizer_and_schedule(parameters, config, self.total_steps),
            rank=self.rank,
            world=self.world,
            micro_batch=self.batch_size,
            choice=self.choice,
        )
        self.state = self._resume()
        self.resumed_from = self.state.step

    def _resume(self) -> ckpt.TrainerState:
        """The state to start from: the latest complete checkpoint's (loaded into the strategy),
        or step 0."""
        config_hash = self.config.hparams_hash()
        latest = ckpt.latest_checkpoint(self.checkpoint_dir)
        if latest is None:
            return ckpt.TrainerState(step=0, epoch=0, index=0, config_hash=config_hash)
        state = self.strategy.load(latest)
        if state.config_hash != config_hash:
            raise TrainingError(
                f"{latest}: checkpoint belongs to another config ({state.config_hash[:12]}); use a new checkpoint dir"
            )
        state.preempted = False
        return state

    def _loss_step(self, batch: dict[str, Any]) -> torch.Tensor:
        """This rank's summed loss of one batch under the run's method, weighted (0 for the filler
        row of a rank left without rows)."""
        with self.strategy.autocast():
            if self.config.method == "dpo":
                loss, _ = dpo_loss_sum(self.strategy.module, batch, self.config.dpo_beta)
            else:
                loss, _ = lm_loss_sum(self.strategy.module, batch)
        return loss * batch["weight"]

    def _forward_backward(self, micro: list[tuple[int, int, list[int]]]) -> tuple[float, int]:
        """Forward and backward of one optimizer step's micro-batches; returns the step's loss (mean
        per label token over all ranks) and its real-token count (all ranks)."""
        batches = [
            batch
            for _, _, rows in micro
            for batch in rank_batches(self.data, rows, self.rank, self.world, self.device, self.pass_rows)
        ]
        counts = [sum(b["loss_tokens"] for b in batches), sum(b["real_tokens"] for b in batches)]
        label_tokens, step_tokens = (int(n) for n in distributed.sum_over_ranks(counts, self.device))
        loss_sum = 0.0
        for batch in batches:
            try:
                loss = self._loss_step(batch)
                # DDP/FSDP/ZeRO average gradients over ranks; scale so the result is the global token mean.
                self.strategy.backward(loss * self.world / max(1, label_tokens))
            except torch.OutOfMemoryError as exc:  # retrying the same config would fail the same way
                raise TrainingError(
                    f"step {self.state.step + 1}: out of memory ({exc}); lower batch_size or max_seq_len, "
                    "raise gradient_accumulation_steps, or set gradient_checkpointing=true"
                ) from exc
            loss_sum += float(loss.detach())
        return distributed.sum_over_ranks([loss_sum], self.device)[0] / max(1, label_tokens), step_tokens

    def _advance(self, last: tuple[int, int, list[int]], tokens: int) -> None:
        """Count a finished step; the data position moves past its last micro-batch `last`."""
        epoch, index, rows = last
        state = self.state
        state.step += 1
        state.epoch, state.index = epoch, index + len(rows)
        if state.index >= self.data.rows:
            state.epoch, state.index = state.epoch + 1, 0
        state.tokens_seen += tokens

    def save_checkpoint(self, *, preempted: bool = False) -> Path | None:
        """Collective: the strategy writes the checkpoint (rank 0 seals it), rank 0 reports and
        mirrors it (`on_checkpoint`), and no rank moves on before that is done (under torchrun a
        rank that exits first stops the others). Returns the path on rank 0, else None."""
        self.state.preempted = preempted
        if self.rank == 0:
            self.sink.status("checkpointing", self.state.step)
        path = self.strategy.save(self.checkpoint_dir, self.state, self.config.keep_checkpoints)
        if path is not None:
            if self.on_checkpoint is not None:
                self.on_checkpoint(path)
            self.sink.status("preempted" if preempted else "running", self.state.step)
        distributed.barrier()
        return path

    def validate(self) -> float | None:
        """Holdout loss (None without a holdout, or for DPO), logged by rank 0."""
        with self.strategy.autocast():
            loss = validation_loss(self.strategy.model, self.data, self.config.method)
        if loss is not None and self.rank == 0:
            self.sink.log(self.state.step, {"validation_loss": loss})
        return loss

    def train(
        self, output_dir: Path, preemption: PreemptionFlag, on_step: Callable[[int], None] | None
    ) -> TrainResult:
        """The loop: step until `total_steps`, checkpoint and validate every `checkpoint_interval`
        steps, stop with an emergency checkpoint when any rank is asked to; then write the output."""
        config, state, strategy = self.config, self.state, self.strategy
        stream = _positions(self.data, config, self.global_batch, (state.epoch, state.index))
        losses: list[float] = []
        started, tokens_total = time.perf_counter(), 0
        self.sink.status("running", state.step)
        while state.step < self.total_steps:
            step_started = time.perf_counter()
            micro = [next(stream) for _ in range(config.gradient_accumulation_steps)]
            learning_rate = strategy.learning_rate  # the rate this step trains with
            loss, tokens = self._forward_backward(micro)
            if config.method == "dpo" and state.step == 0:  # fresh run: the policy is still the reference
                check_first_step_loss(loss, self.data_dir)
            _check_finite("loss", loss, state.step)
            grad_norm = strategy.step()
            _check_finite("gradient norm", grad_norm, state.step)
            self._advance(micro[-1], tokens)
            losses.append(loss)
            tokens_total += tokens
            metrics = {
                "loss": loss,
                "grad_norm": grad_norm,
                "learning_rate": learning_rate,
                "tokens_per_second": tokens / max(time.perf_counter() - step_started, 1e-9),
                "epoch": state.epoch + state.index / self.data.rows,
                **gpu_metrics(self.device),
            }
            if self.rank == 0:
                self.sink.log(state.step, metrics)
            if on_step is not None:
                on_step(state.step)
            if distributed.any_rank(preemption.requested, self.device) and state.step < self.total_steps:
                raise Preempted(state.step, str(self.save_checkpoint(preempted=True)))
            if state.step % config.checkpoint_interval == 0 and state.step < self.total_steps:
                self.save_checkpoint()
                self.validate()

        self.save_checkpoint()
        validation = self.validate()
        full_state = strategy.full_state_dict()  # collective under FSDP, else None
        if self.rank == 0:
            save_output(strategy.model, self.tokenizer, config, output_dir, state_dict=full_state)
        return TrainResult(
            output_dir=output_dir,
            steps=state.step,
            losses=losses,
            first_loss=losses[0] if losses else float("nan"),
            final_loss=losses[-1] if losses else float("nan"),
            tokens_per_second=tokens_total / max(time.perf_counter() - started, 1e-9),
            packing_efficiency=self.data.packing_efficiency,
            validation_loss=validation,
            resumed_from_step=self.resumed_from,
            metrics={
                "world_size": float(self.world),
                "batch_size": float(self.batch_size),
                "total_steps": float(self.total_steps),
            },
            dtype=self.choice.dtype,
            attn_implementation=self.attention,
        )


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
    run = FineTune(
        config,
        base_model_dir=base_model_dir,
        data_dir=data_dir,
        checkpoint_dir=checkpoint_dir,
        sink=sink or NullSink(),
        on_checkpoint=on_checkpoint,
    )
    return run.train(output_dir, preemption or PreemptionFlag(), on_step)
