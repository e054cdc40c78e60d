"""Multi-process training: one process per device under `torchrun`, the same `train()` loop in each.

    torchrun --nproc_per_node=2 -m fineplat.training.distributed --config '{"method": "lora"}' \
        --base-model DIR --data DIR --checkpoints DIR --output DIR

Semantics the loop relies on (see `fineplat.training.trainer`):
- `batch_size` is per process: every micro-batch is `batch_size * world` rows of the global shuffled
  order and rank r trains `rows[r::world]`, so N processes of batch B see exactly the global batches
  of one process of batch N*B, and losses are normalized by the all-reduced global token count.
- Only rank 0 writes checkpoints and the output; every rank reads the checkpoint on resume.
- A SIGTERM that reaches any rank stops all ranks after the same step (the flag is all-reduced).

Strategies (`TrainConfig.distributed`): `ddp` replicates the model and averages gradients (every
method); `fsdp` shards parameters, gradients and optimizer state with FSDP2 `fully_shard` (full
fine-tunes: `sft`, `cpt`; checkpoints are gathered to full tensors, so the format is the same as
DDP's); `deepspeed_zero1` / `deepspeed_zero2` partition the optimizer state (and gradients) with
DeepSpeed (every method; each rank writes its own optimizer partition into the checkpoint, see
`fineplat.training.zero`). ZeRO-3 is not offered: FSDP covers weight sharding.
"""

from __future__ import annotations

if __name__ == "__main__":  # run by torchrun: the SIGTERM handler goes in before torch loads
    import fineplat.training.__main__  # noqa: F401

import os
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist

from fineplat.errors import ConfigError

# Methods whose trainable weights are the full model: the ones FSDP sharding pays off for.
FULL_FINE_TUNE_METHODS = frozenset({"sft", "cpt"})


def local_rank() -> int:
    """LOCAL_RANK under torchrun, else 0: the device index of this process on its node."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def training_device() -> torch.device:
    """This process's GPU under torchrun (cuda:LOCAL_RANK), or the CPU where there is none."""
    if torch.cuda.is_available():
        return torch.device("cuda", local_rank())
    return torch.device("cpu")


def init_distributed() -> tuple[int, int]:
    """Join the process group torchrun describes (RANK, WORLD_SIZE, MASTER_ADDR in the environment)
    and return (rank, world). Idempotent, and (0, 1) without torchrun, so `train()` calls it on
    every entry point: a worker started by torchrun never trains alone by mistake.

    NCCL on GPUs, gloo on CPUs (the tests run two CPU processes over gloo)."""
    if not dist.is_available():
        return 0, 1
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, 1
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank())
        dist.init_process_group("nccl", device_id=training_device())
    else:
        dist.init_process_group("gloo")
    return dist.get_rank(), dist.get_world_size()


def shutdown() -> None:
    """Leave the process group (all ranks), so torchrun sees clean exits instead of a hang."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def check_strategy(method: str, strategy: str) -> None:
    """Refuse distributed setups that cannot work, before any model is loaded.

    - `fsdp` shards full fine-tunes; LoRA adapters are a few MB and train with `ddp` (and 4-bit
      bitsandbytes weights cannot be sharded by FSDP without a matching quant storage type).
    - DeepSpeed ZeRO-1/2 need the `deepspeed` extra in the trainer image. ZeRO-3 is not a choice
      (the config's Literal): it would shard QLoRA's 4-bit base weights, which bitsandbytes cannot
      gather, and FSDP already shards full fine-tunes."""
    if strategy == "ddp":
        return
    if strategy == "fsdp":
        if method not in FULL_FINE_TUNE_METHODS:
            raise ConfigError(
                f"distributed: 'fsdp' shards full fine-tunes (method sft or cpt); method {method!r} trains "
                "a small LoRA adapter, use distributed='ddp'."
            )
        return
    if strategy in ("deepspeed_zero1", "deepspeed_zero2"):
        try:
            import deepspeed  # noqa: F401
        except ImportError as exc:
            raise ConfigError(
                f"distributed: {strategy!r} needs DeepSpeed, which is not installed in the trainer image "
                "(pip install 'fineplat[deepspeed]'); or use distributed='ddp' or 'fsdp'."
            ) from exc
        return
    raise ConfigError(
        f"distributed: unknown strategy {strategy!r}; expected ddp, fsdp, deepspeed_zero1 or deepspeed_zero2."
    )


def is_sharded(model: torch.nn.Module) -> bool:
    """Whether FSDP2 has sharded this model (its parameters are DTensors)."""
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def wrap_model(model: torch.nn.Module, strategy: str, world: int) -> torch.nn.Module:
    """The module the loop runs forward/backward on. One process: the model itself. DDP: a wrapper
    that all-reduces (averages) gradients in backward. FSDP: the model sharded in place, one unit
    per decoder layer plus the root (embeddings, norm, head) — create the optimizer afterwards,
    since sharding replaces the parameters."""
    if world <= 1 or strategy.startswith("deepspeed"):  # a ZeRO engine wraps it later (zero.py)
        return model
    if strategy == "fsdp":
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh(training_device().type, (world,))
        for layer in _decoder_layers(model):
            fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)
        return model
    device_ids = [local_rank()] if torch.cuda.is_available() else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids)


def _decoder_layers(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """The repeated transformer blocks (Llama, Mistral, Qwen, … all expose `model.layers`)."""
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if layers is None:
        raise ConfigError(
            f"distributed='fsdp': {type(model).__name__} has no model.layers to shard; use distributed='ddp'."
        )
    yield from layers


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank when it is true on any: ranks that see a SIGTERM one step apart still
    stop after the same step (otherwise one would checkpoint while another waits in all-reduce)."""
    if not (dist.is_available() and dist.is_initialized()):
        return flag
    value = torch.tensor([int(flag)], dtype=torch.long, device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def barrier() -> None:
    """Wait for every rank (no-op in a single process)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def sum_over_ranks(values: list[float], device: torch.device) -> list[float]:
    """Element-wise sum of `values` across ranks (float64: token counts stay exact)."""
    if not (dist.is_available() and dist.is_initialized()):
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def full_tensor(value: Any) -> torch.Tensor:
    """A plain tensor from a DTensor (FSDP's gradient norm) or a tensor."""
    return value.full_tensor() if hasattr(value, "full_tensor") else value


class _FullParameters:
    """What `fineplat.training.checkpoint` reads from a model (`named_parameters`), holding full,
    unsharded tensors, so FSDP checkpoints have exactly the single-process layout."""

    def __init__(self, tensors: dict[str, torch.Tensor]) -> None:
        self.tensors = tensors

    def named_parameters(self) -> Iterator[tuple[str, torch.Tensor]]:
        for name, tensor in self.tensors.items():
            yield name, tensor.requires_grad_(True)


class _FullOptimizerState:
    """What `fineplat.training.checkpoint` reads and writes on an optimizer: a full state dict."""

    def __init__(self, state: dict[str, Any] | None = None) -> None:
        self.state = state or {}

    def state_dict(self) -> dict[str, Any]:
        return self.state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.state = state


def _trainable_names(model: torch.nn.Module) -> list[str]:
    return [name for name, p in model.named_parameters() if p.requires_grad]


def gather_for_checkpoint(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> tuple[Any, Any]:
    """Collective (call on every rank): the full trainable weights and optimizer state of a sharded
    model, as stand-ins that `checkpoint.save_checkpoint` writes on rank 0 (other ranks get empty
    ones). The optimizer state is keyed by parameter name (torch.distributed.checkpoint's format)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    weights, optimizer_state = get_state_dict(model, optimizer, options=options)
    names = set(_trainable_names(model))
    tensors = {n: t for n, t in weights.items() if n in names and isinstance(t, torch.Tensor)}
    return _FullParameters(tensors), _FullOptimizerState(optimizer_state)


def placeholders_for_checkpoint(model: torch.nn.Module) -> tuple[Any, Any]:
    """Full-size empty stand-ins that `checkpoint.load_checkpoint` fills from disk on every rank;
    `restore_sharded` then scatters them into the sharded model and optimizer."""
    tensors = {
        name: torch.empty(tuple(p.shape), dtype=p.dtype)
        for name, p in model.named_parameters()
        if p.requires_grad
    }
    return _FullParameters(tensors), _FullOptimizerState()


def restore_sharded(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, weights: Any, optimizer_state: Any
) -> None:
    """Collective: load the full tensors read by `load_checkpoint` into the sharded model/optimizer."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

    with torch.no_grad():
        full = {name: tensor.detach() for name, tensor in weights.tensors.items()}
    set_state_dict(
        model,
        optimizer,
        model_state_dict=full,
        optim_state_dict=optimizer_state.state,
        options=StateDictOptions(full_state_dict=True, strict=False),
    )


def full_model_state(model: torch.nn.Module) -> dict[str, Any] | None:
    """Collective for a sharded model: its full state dict on rank 0 (empty elsewhere) for
    `save_pretrained`; None for an unsharded one (it saves itself)."""
    if not is_sharded(model):
        return None
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    # Tied weights (the Llama head shares the embedding) appear twice in a state dict; keep the names
    # `named_parameters` keeps, so the saved files are the single-process ones.
    kept = {name for name, _ in model.named_parameters()} | {name for name, _ in model.named_buffers()}
    return {name: tensor for name, tensor in full.items() if name in kept}


def main() -> int:
    """`fineplat.training`'s command line under torchrun: same arguments, exit codes and output
    (rank 0 prints the step metrics); joins the process group first and leaves it at the end."""
    from fineplat.training.__main__ import main as train_main  # installs the SIGTERM handler first

    init_distributed()
    try:
        return train_main()
    finally:
        shutdown()


if __name__ == "__main__":
    raise SystemExit(main())
