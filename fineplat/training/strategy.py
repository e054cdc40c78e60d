"""How one training step and one checkpoint run on one process or many: the distribution strategy
is one object, so the training loop (`fineplat.training.trainer`) has no per-strategy branches.

The loop asks a `Strategy` to run `backward` on each micro-batch's loss, to `step` (clip, update,
return the gradient norm) and to `save`/`load` checkpoints; only the strategy knows whether DDP
averages gradients, FSDP shards parameters or DeepSpeed ZeRO partitions the optimizer state:

- `DataParallel`: one process, or DDP replicas under torchrun (every method).
- `FullySharded`: FSDP2 `fully_shard` per decoder layer (full fine-tunes, `distributed="fsdp"`).
- `DeepSpeedZero`: ZeRO stage 1 or 2 (`distributed="deepspeed_zero1"` / `"deepspeed_zero2"`).

Every strategy writes the same checkpoint (`fineplat.training.checkpoint`): full trainable tensors,
optimizer, scheduler, RNG and trainer state, written by rank 0 (ZeRO adds each rank's optimizer
partition), so a checkpoint's layout does not depend on how many processes wrote it.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from fineplat.training import checkpoint as ckpt
from fineplat.training import distributed, zero
from fineplat.training.config import TrainConfig
from fineplat.training.device_defaults import DeviceChoice, mixed_precision

# Builds the optimizer and LR scheduler over the trainable parameters. The strategy decides when
# (after FSDP sharding replaced the parameters) and what wraps them (a ZeRO engine); the recipe
# decides which optimizer and schedule.
OptimizerFactory = Callable[[list[torch.nn.Parameter]], tuple[torch.optim.Optimizer, Any]]


class Strategy:
    """The common part: the optimizer and LR schedule over the trainable parameters, bf16 autocast
    for mixed precision, clipping, and checkpoints written by rank 0 from the model and optimizer as
    they are (subclasses change what is written and how it is read back).

    `model` is the model as loaded (peft or transformers): validation and the saved output use it.
    `module` is what the loop runs forward on (the model, a DDP wrapper or a ZeRO engine)."""

    def __init__(
        self,
        model: torch.nn.Module,
        config: TrainConfig,
        build_optimizer: OptimizerFactory,
        *,
        rank: int,
        world: int,
        choice: DeviceChoice,
    ) -> None:
        self.model = model
        self.rank, self.world = rank, world
        self.max_grad_norm = config.max_grad_norm
        self.mixed_precision = mixed_precision(config, choice)
        self.module: Any = self._wrap(model)  # before the optimizer: FSDP replaces the parameters
        self.trainable = [p for p in model.parameters() if p.requires_grad]
        self.optimizer, self.scheduler = build_optimizer(self.trainable)

    def _wrap(self, model: torch.nn.Module) -> Any:
        return model

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """The context forward passes run in: bf16 autocast over float32 weights for a full
        fine-tune in bf16 (`device_defaults.mixed_precision`), else the weights' own dtype."""
        if not self.mixed_precision:
            return contextlib.nullcontext()
        return torch.autocast(distributed.training_device().type, dtype=torch.bfloat16)

    @property
    def learning_rate(self) -> float:
        """The rate the next optimizer step uses."""
        return float(self.scheduler.get_last_lr()[0])

    def backward(self, loss: torch.Tensor) -> None:
        """Accumulate the gradients of one micro-batch's loss (already scaled to the step's mean)."""
        loss.backward()

    def step(self) -> float:
        """End the optimizer step: clip the accumulated gradients to `max_grad_norm`, update the
        weights and the LR schedule, clear the gradients; return the norm before clipping. A
        non-finite norm updates nothing (the loop then fails the run)."""
        norm = torch.nn.utils.clip_grad_norm_(self.trainable, self.max_grad_norm)
        grad_norm = float(distributed.full_tensor(norm))
        if math.isfinite(grad_norm):
            self.optimizer.step()
            self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return grad_norm

    def _checkpoint_views(self, root: Path, step: int) -> tuple[Any, Any, Path | None]:
        """Collective: what `checkpoint.save_checkpoint` writes as weights and optimizer, and a
        directory of files other ranks wrote for this checkpoint (or None)."""
        return self.model, self.optimizer, None

    def save(self, root: Path, state: ckpt.TrainerState, keep: int) -> Path | None:
        """Collective (every rank calls it): write the checkpoint of `state` under `root`, keeping
        the newest `keep`. Returns its path on rank 0, None on the other ranks."""
        weights, optimizer_state, extra_dir = self._checkpoint_views(root, state.step)
        if self.rank != 0:
            return None
        return ckpt.save_checkpoint(
            root,
            model=weights,
            optimizer=optimizer_state,
            scheduler=self.scheduler,
            state=state,
            keep=keep,
            extra_dir=extra_dir,
        )

    def load(self, checkpoint: Path) -> ckpt.TrainerState:
        """Restore weights, optimizer, schedule and RNG from `checkpoint` (every rank reads it)."""
        return ckpt.load_checkpoint(
            checkpoint, model=self.model, optimizer=self.optimizer, scheduler=self.scheduler
        )

    def full_state_dict(self) -> dict[str, Any] | None:
        """Collective: the full weights for `save_pretrained` when the model is sharded, else None
        (the model saves itself)."""
        return None


class DataParallel(Strategy):
    """One process; or one replica per process under torchrun, wrapped in DDP, which averages the
    gradients over ranks during backward."""

    def _wrap(self, model: torch.nn.Module) -> Any:
        return distributed.wrap_model(model, "ddp", self.world)


class FullySharded(Strategy):
    """FSDP2: parameters, gradients and optimizer state sharded over ranks. Checkpoints gather full
    tensors (the single-process layout); resume reads them on every rank and re-shards."""

    def _wrap(self, model: torch.nn.Module) -> Any:
        return distributed.wrap_model(model, "fsdp", self.world)

    def _checkpoint_views(self, root: Path, step: int) -> tuple[Any, Any, Path | None]:
        weights, optimizer_state = distributed.gather_for_checkpoint(self.model, self.optimizer)
        return weights, optimizer_state, None

    def load(self, checkpoint: Path) -> ckpt.TrainerState:
        weights, optimizer_state = distributed.placeholders_for_checkpoint(self.model)
        state = ckpt.load_checkpoint(
            checkpoint, model=weights, optimizer=optimizer_state, scheduler=self.scheduler
        )
        distributed.restore_sharded(self.model, self.optimizer, weights, optimizer_state)
        return state

    def full_state_dict(self) -> dict[str, Any] | None:
        return distributed.full_model_state(self.model)


class DeepSpeedZero(Strategy):
    """DeepSpeed ZeRO-1/2: the engine averages gradients over ranks, clips them and steps AdamW and
    the schedule, with the optimizer state (ZeRO-2: and gradients) partitioned over ranks. In bf16
    the engine casts the model to bf16 and keeps float32 master weights in its optimizer.
    Checkpoints hold every rank's partition (`fineplat.training.zero`)."""

    def __init__(
        self,
        model: torch.nn.Module,
        config: TrainConfig,
        build_optimizer: OptimizerFactory,
        *,
        rank: int,
        world: int,
        choice: DeviceChoice,
        micro_batch: int,
    ) -> None:
        super().__init__(model, config, build_optimizer, rank=rank, world=world, choice=choice)
        self.mixed_precision = False  # the engine casts the model to bf16 itself (below)
        self.stage = zero.zero_stage(config.distributed)
        self.engine = zero.make_engine(
            model,
            self.optimizer,
            self.scheduler,
            zero.deepspeed_config(
                stage=self.stage,
                micro_batch=micro_batch,
                accumulation=config.gradient_accumulation_steps,
                world=world,
                max_grad_norm=config.max_grad_norm,
                bf16=choice.dtype == "bfloat16",
            ),
        )
        self.module = self.engine
        self.partitioned: Any = zero.PartitionedOptimizerState(self.stage, world)  # a stand-in optimizer

    def backward(self, loss: torch.Tensor) -> None:
        """The engine's backward (the loop has scaled the loss: no division by the accumulation
        steps). Between accumulation boundaries the engine's `step` only counts the micro-batch;
        the boundary step is left to `step`, after the loop has checked the step's loss."""
        self.engine.backward(loss, scale_wrt_gas=False)
        if not self.engine.is_gradient_accumulation_boundary():
            self.engine.step()

    def step(self) -> float:
        if not self.engine.is_gradient_accumulation_boundary():
            raise RuntimeError(
                "DeepSpeed ZeRO: the optimizer step came before the last micro-batch of the accumulation "
                "(every step must run gradient_accumulation_steps backward passes on every rank)"
            )
        self.engine.step()  # reduces, clips, steps AdamW and the schedule, clears the gradients
        return float(self.engine.get_global_grad_norm())

    def _checkpoint_views(self, root: Path, step: int) -> tuple[Any, Any, Path | None]:
        partitions = zero.shard_dir(root, step)
        zero.save_partition(self.engine, partitions, self.rank, self.world)  # collective
        return self.model, self.partitioned, partitions

    def load(self, checkpoint: Path) -> ckpt.TrainerState:
        """Weights into the engine's module, then this rank's optimizer partition."""
        state = ckpt.load_checkpoint(
            checkpoint, model=self.model, optimizer=self.partitioned, scheduler=self.scheduler
        )
        zero.load_partition(self.engine, checkpoint, self.rank, self.world)
        self.engine.global_steps = state.step
        return state


def make_strategy(
    config: TrainConfig,
    model: torch.nn.Module,
    build_optimizer: OptimizerFactory,
    *,
    rank: int,
    world: int,
    micro_batch: int,
    choice: DeviceChoice,
) -> Strategy:
    """The strategy `config.distributed` names for `world` processes. One process always trains
    plainly (`DataParallel` without a wrapper): FSDP and ZeRO only pay off across ranks.
    `micro_batch`: rows per process per micro-batch; `choice`: the run's dtype and attention."""
    if world > 1 and config.distributed == "fsdp":
        return FullySharded(model, config, build_optimizer, rank=rank, world=world, choice=choice)
    if world > 1 and config.distributed.startswith("deepspeed"):
        return DeepSpeedZero(
            model, config, build_optimizer, rank=rank, world=world, choice=choice, micro_batch=micro_batch
        )
    return DataParallel(model, config, build_optimizer, rank=rank, world=world, choice=choice)
