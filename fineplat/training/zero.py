"""DeepSpeed ZeRO stage 1 and 2 for the training loop, with checkpoints that keep every rank's
optimizer partition and never unpickle anything but plain data.

Why ZeRO: DDP keeps the whole AdamW state (two fp32 moments, plus fp32 master weights in mixed
precision) on every GPU; ZeRO-1 partitions the optimizer state across ranks and ZeRO-2 also the
gradients, so a full fine-tune that does not fit with DDP fits on the same GPUs. (ZeRO-3, which also
shards the weights, is not offered: fineplat uses FSDP for that, and it cannot shard QLoRA's 4-bit
base weights.)

Why custom checkpoints: each rank holds a different slice of the optimizer state, so one writer
(rank 0, as for DDP) would lose the others' slices and a resumed run would restart Adam's moments.
DeepSpeed's own `load_checkpoint` unpickles with `weights_only=False` (hard-coded), which the
checkpoint rules forbid. So every rank writes its partition into the checkpoint being assembled —
tensors as safetensors, the rest as a plain-data skeleton loaded with `torch.load(weights_only=True)`
— and rank 0 seals the checkpoint (manifest, rename) only after all have written. Resume reads each
rank's own file, so it needs the same number of processes (checked, with a clear error).

The engine runs the same loop as DDP: the loop scales each micro-batch loss to the global token
mean itself (`scale_wrt_gas=False`), DeepSpeed averages gradients over ranks, clips them
(`gradient_clipping`) and steps AdamW and the LR scheduler at the accumulation boundary.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from fineplat.errors import TrainingError

SHARD_DIR_PREFIX = ".zero-step-"  # where the ranks write before rank 0 seals the checkpoint
# Plain-data keys of a ZeRO-1/2 optimizer state dict that are not needed to resume: the loss scaler
# object (static 1.0 without fp16; rebuilt by the engine) and the fragment map that only DeepSpeed's
# "universal checkpoint" conversion reads (dataclasses, not plain data).
_DROPPED_KEYS = ("loss_scaler", "param_slice_mappings")


def import_deepspeed() -> Any:
    """Import DeepSpeed for this machine: the CPU accelerator (gloo) without a GPU. Skips building
    DeepSpeed's shared-memory all-reduce op on CPU (a g++ build of ~50 s used by inference only)."""
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import sys

    import deepspeed
    import deepspeed.comm.torch

    if not torch.cuda.is_available():
        sys.modules["deepspeed.comm.torch"].build_shm_op = lambda: None  # type: ignore[attr-defined]
    return deepspeed


def zero_stage(strategy: str) -> int:
    """1 or 2 from `deepspeed_zero1` / `deepspeed_zero2`."""
    return int(strategy.removeprefix("deepspeed_zero"))


def deepspeed_config(
    *, stage: int, micro_batch: int, accumulation: int, world: int, max_grad_norm: float, bf16: bool
) -> dict[str, Any]:
    """The engine configuration: the loop's own batch geometry, clipping and precision."""
    return {
        "train_micro_batch_size_per_gpu": micro_batch,
        "gradient_accumulation_steps": accumulation,
        "train_batch_size": micro_batch * accumulation * world,
        "gradient_clipping": max_grad_norm,
        "zero_optimization": {"stage": stage, "overlap_comm": False, "contiguous_gradients": True},
        "bf16": {"enabled": bf16},
        "steps_per_print": 2**31 - 1,  # the loop reports metrics itself
        "wall_clock_breakdown": False,
    }


def make_engine(model: torch.nn.Module, optimizer: Any, scheduler: Any, config: dict[str, Any]) -> Any:
    """A DeepSpeed engine over the loaded model, the loop's AdamW and LR schedule (which the engine
    steps at each accumulation boundary). Joins the process group torchrun's workers already
    formed."""
    deepspeed = import_deepspeed()
    deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo")
    engine, _, _, _ = deepspeed.initialize(
        model=model, optimizer=optimizer, lr_scheduler=scheduler, config=config
    )
    return engine


def shard_dir(checkpoint_root: Path, step: int) -> Path:
    """The directory the ranks write their partitions into for the checkpoint of `step`."""
    return checkpoint_root / f"{SHARD_DIR_PREFIX}{step:08d}"


def _split(value: Any, key: str, tensors: dict[str, torch.Tensor]) -> Any:
    """`value` with every tensor replaced by {"__tensor__": key} and stored (cloned: many are views
    into ZeRO's flat buffers) in `tensors`."""
    if isinstance(value, torch.Tensor):
        tensors[key] = value.detach().clone().contiguous()
        return {"__tensor__": key}
    if isinstance(value, dict):
        return {k: _split(v, f"{key}/{k}", tensors) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_split(v, f"{key}/{i}", tensors) for i, v in enumerate(value)]
    return value


def _join(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, dict):
        if set(value) == {"__tensor__"}:
            return tensors[value["__tensor__"]]
        return {k: _join(v, tensors) for k, v in value.items()}
    if isinstance(value, list):
        return [_join(v, tensors) for v in value]
    return value


def _names(rank: int) -> tuple[str, str]:
    return f"zero-rank{rank:03d}.safetensors", f"zero-rank{rank:03d}.pt"


def save_partition(engine: Any, directory: Path, rank: int, world: int) -> None:
    """Collective: every rank writes its optimizer partition into `directory` (same node)."""
    directory.mkdir(parents=True, exist_ok=True)
    state = dict(engine.optimizer.state_dict())
    for key in _DROPPED_KEYS:
        state.pop(key, None)
    state["zero_stage"] = int(state["zero_stage"])
    state["fineplat_world_size"] = world
    tensors: dict[str, torch.Tensor] = {}
    skeleton = _split(state, "state", tensors)
    weights_name, skeleton_name = _names(rank)
    save_file(tensors, str(directory / weights_name))
    torch.save(skeleton, directory / skeleton_name)
    torch.distributed.barrier()


def load_partition(engine: Any, checkpoint: Path, rank: int, world: int) -> None:
    """Restore this rank's optimizer partition from a sealed checkpoint (model weights first:
    `load_checkpoint` has copied them into the engine's module)."""
    from deepspeed.runtime.zero.config import ZeroStageEnum

    weights_name, skeleton_name = _names(rank)
    if not (checkpoint / skeleton_name).is_file():
        raise TrainingError(
            f"{checkpoint}: no DeepSpeed ZeRO partition for rank {rank}; it was written by fewer "
            f"processes than this run's {world}. Resume with the same GPU count."
        )
    skeleton = torch.load(checkpoint / skeleton_name, weights_only=True)
    state = _join(skeleton, load_file(str(checkpoint / weights_name)))
    written = int(state.pop("fineplat_world_size"))
    if written != world:
        raise TrainingError(
            f"{checkpoint}: DeepSpeed ZeRO partitions were written by {written} processes, this run "
            f"has {world}; resume with gpu_count={written} (ZeRO partitions the optimizer per rank)."
        )
    state["zero_stage"] = ZeroStageEnum(state["zero_stage"])
    per_rank: list[Any] = [None] * world
    per_rank[rank] = state  # ZeRO-1/2 read only their own rank's entry
    engine.optimizer.load_state_dict(per_rank, load_optimizer_states=True, load_from_fp32_weights=True)


class PartitionedOptimizerState:
    """What `checkpoint.save_checkpoint`/`load_checkpoint` see of a ZeRO optimizer: a marker in
    `optimizer.pt` (the moments live in the per-rank `zero-rank*.` files beside it)."""

    def __init__(self, stage: int, world: int) -> None:
        self.stage, self.world = stage, world

    def state_dict(self) -> dict[str, Any]:
        return {"deepspeed_zero_stage": self.stage, "world_size": self.world}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("deepspeed_zero_stage") != self.stage:
            raise TrainingError(
                f"checkpoint optimizer state is {state!r}, not DeepSpeed ZeRO-{self.stage} partitions; "
                "resume with the distributed strategy the run started with."
            )
