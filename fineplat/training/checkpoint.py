"""Checkpoints with the full training state, written atomically so that a kill at any instant
leaves either the previous complete checkpoint or the new one as the latest, never a torn one.

Layout: `<root>/step-00000050/` with `weights.safetensors` (trainable parameters), `optimizer.pt`,
`scheduler.pt`, `rng.pt` (loaded with `torch.load(weights_only=True)`: no arbitrary unpickling),
`state.json` (step, data position, config hash, preempted flag) and `manifest.json` — written last,
listing every file's SHA-256. A directory without a valid manifest is not a checkpoint."""

from __future__ import annotations

import json
import os
import random
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from fineplat.hashing import hash_file

MANIFEST = "manifest.json"
_PREFIX = "step-"


@dataclass
class TrainerState:
    """Where training stands: enough, with weights/optimizer/scheduler/RNG, to continue exactly."""

    step: int  # optimizer steps completed
    epoch: int  # epoch of the next micro-batch
    index: int  # position of the next micro-batch in that epoch's shuffled order
    config_hash: str
    preempted: bool = False
    tokens_seen: int = 0


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync(path: Path) -> None:
    with open(path, "rb+") as handle:
        os.fsync(handle.fileno())


def capture_rng() -> dict[str, Any]:
    """Python, numpy, torch (and CUDA when present) generator states as tensors and lists."""
    version, internal, gauss = random.getstate()
    np_state: tuple[Any, ...] = tuple(np.random.get_state())  # type: ignore[arg-type]
    state: dict[str, Any] = {
        "python": [version, list(internal), gauss],
        "numpy": [
            str(np_state[0]),
            torch.from_numpy(np.asarray(np_state[1]).astype(np.int64)),
            *map(float, np_state[2:]),
        ],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Put back what `capture_rng` took."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), int(pos), int(has_gauss), float(cached)))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The parameters training changes (LoRA weights for adapters, everything for full fine-tunes)."""
    return {name: p.detach().contiguous().clone() for name, p in model.named_parameters() if p.requires_grad}


def save_checkpoint(
    root: Path,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    state: TrainerState,
    keep: int,
    extra_dir: Path | None = None,
) -> Path:
    """Write one checkpoint atomically (temp dir, fsync, rename, manifest last) and prune old ones.
    `extra_dir`: files other processes wrote for this checkpoint (DeepSpeed ZeRO partitions), moved
    in and listed in the manifest like the rest."""
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{_PREFIX}{state.step:08d}"
    staging = root / f".{final.name}.tmp-{os.getpid()}-{time.monotonic_ns()}"
    staging.mkdir()
    if extra_dir is not None:
        for path in sorted(extra_dir.iterdir()):
            path.rename(staging / path.name)
        extra_dir.rmdir()
    save_file(trainable_state(model), str(staging / "weights.safetensors"))
    torch.save(optimizer.state_dict(), staging / "optimizer.pt")
    torch.save(scheduler.state_dict(), staging / "scheduler.pt")
    torch.save(capture_rng(), staging / "rng.pt")
    (staging / "state.json").write_text(json.dumps(asdict(state), indent=2, sort_keys=True))
    files = sorted(p.name for p in staging.iterdir())
    for name in files:
        _fsync(staging / name)
    manifest = {"step": state.step, "files": {name: hash_file(staging / name) for name in files}}
    (staging / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
    _fsync(staging / MANIFEST)
    _fsync_dir(staging)
    if final.exists():  # an identical step re-written after a resume
        shutil.rmtree(final)
    staging.rename(final)
    _fsync_dir(root)
    prune_checkpoints(root, keep)
    return final


def is_complete(checkpoint: Path) -> bool:
    """A checkpoint counts only if its manifest exists and every listed file matches its hash."""
    manifest_path = checkpoint / MANIFEST
    if not manifest_path.is_file():
        return False
    try:
        manifest = json.loads(manifest_path.read_text())
        return all(
            (checkpoint / name).is_file() and hash_file(checkpoint / name) == digest
            for name, digest in manifest["files"].items()
        )
    except (ValueError, KeyError, OSError):
        return False


def list_checkpoints(root: Path, *, verify: bool = True) -> list[Path]:
    """Complete checkpoints under `root`, oldest first. `verify` re-hashes every file against the
    manifest (resume does); without it a manifest's presence is enough (pruning, which runs at
    every save and must not read gigabytes back)."""
    if not root.is_dir():
        return []
    candidates = sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith(_PREFIX))
    if not verify:
        return [p for p in candidates if (p / MANIFEST).is_file()]
    return [p for p in candidates if is_complete(p)]


def latest_checkpoint(root: Path) -> Path | None:
    """The newest complete checkpoint, or None."""
    complete = list_checkpoints(root)
    return complete[-1] if complete else None


def prune_checkpoints(root: Path, keep: int) -> None:
    """Keep the newest `keep` complete checkpoints; remove older ones and stale temp dirs."""
    for stale in root.glob(f".{_PREFIX}*.tmp-*"):
        if stale.is_dir() and f"tmp-{os.getpid()}-" not in stale.name:
            shutil.rmtree(stale, ignore_errors=True)
    for stale in root.glob(".zero-step-*"):  # partitions of a checkpoint a kill left unsealed
        shutil.rmtree(stale, ignore_errors=True)
    for old in list_checkpoints(root, verify=False)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(
    checkpoint: Path, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any
) -> TrainerState:
    """Restore weights, optimizer, scheduler and RNG from `checkpoint`; return its trainer state."""
    weights = load_file(str(checkpoint / "weights.safetensors"))
    params = dict(model.named_parameters())
    missing = sorted(set(n for n, p in params.items() if p.requires_grad) - set(weights))
    if missing:
        raise RuntimeError(
            f"{checkpoint}: checkpoint lacks trainable parameters {missing[:3]}…; wrong method or config?"
        )
    with torch.no_grad():
        for name, tensor in weights.items():
            params[name].copy_(tensor)
    optimizer.load_state_dict(torch.load(checkpoint / "optimizer.pt", weights_only=True))
    scheduler.load_state_dict(torch.load(checkpoint / "scheduler.pt", weights_only=True))
    restore_rng(torch.load(checkpoint / "rng.pt", weights_only=True))
    return TrainerState(**json.loads((checkpoint / "state.json").read_text()))
