"""Distributed training is the same training: two `torchrun` workers (gloo, CPU) with batch B each
give the per-step losses and final weights of one process with batch 2B; only rank 0 writes
checkpoints; a SIGTERM to torchrun stops both ranks after the same step with one emergency
checkpoint, and a new torchrun resumes from it on both ranks. For DDP (LoRA) and FSDP (full SFT).

The data has 4k+1 windows, so the last micro-batch of each epoch holds one row and rank 1 gets
none (it joins the gradient all-reduce with weight 0)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from fineplat.basemodel import BaseModelInfo, load_tokenizer
from fineplat.errors import ConfigError
from fineplat.packing.build import build_training_data
from fineplat.training import TrainConfig
from fineplat.training.distributed import check_strategy
from fineplat.training.trainer import TrainResult

TORCHRUN = Path(sys.executable).with_name("torchrun")
WORLD = 2
LOSS_TOLERANCE = 1e-5  # relative; only the order of float32 sums differs between the layouts
WEIGHT_TOLERANCE = dict(rtol=1e-4, atol=1e-5)  # after 6 Adam steps (measured max |Δ| ≈ 2e-6)
TORCHRUN_EXIT_ON_WORKER_FAILURE = 1  # torchrun reports any worker's nonzero exit (here 75) as 1
COMMON = dict(
    max_steps=6,
    gradient_accumulation_steps=2,
    checkpoint_interval=2,
    max_seq_len=128,
    warmup_ratio=0.0,
    lora_dropout=0.0,  # ranks draw different dropout masks than one process would
)
LORA = dict(COMMON, method="lora", lora_rank=4, lora_alpha=8, learning_rate_multiplier=10.0)
FULL = dict(COMMON, method="sft", learning_rate_multiplier=50.0)

# Runs `fineplat.training.distributed.main` (the real entry point), recording which rank calls
# `save_checkpoint` for which step.
PROBE = """
import os, sys
from fineplat.training import checkpoint
from fineplat.training.distributed import main

real_save = checkpoint.save_checkpoint

def recording_save(root, **kwargs):
    with open(os.environ["FINEPLAT_TEST_CHECKPOINT_LOG"], "a") as log:
        log.write(f"{os.environ['RANK']} {kwargs['state'].step}\\n")
    return real_save(root, **kwargs)

checkpoint.save_checkpoint = recording_save
sys.exit(main())
"""


@pytest.fixture(scope="module")
def odd_data(
    tiny_base_model: BaseModelInfo, tmp_path_factory: pytest.TempPathFactory, make_task_rows
) -> Path:  # type: ignore[no-untyped-def]
    """21 windows: 5 full global micro-batches of 4 and one of a single row per epoch."""
    out = tmp_path_factory.mktemp("odd_data")
    manifest = build_training_data(
        make_task_rows(26, seed=11), load_tokenizer(tiny_base_model.path), out, max_seq_len=128
    )
    assert manifest.train_rows % (WORLD * 2) == 1
    return out


@dataclass
class DistributedRun:
    """A 2-worker run preempted by SIGTERM to torchrun, then resumed by a second torchrun."""

    root: Path
    preempted_exit: int
    preempted_lines: list[dict]
    preempted_state: dict
    resumed_exit: int
    resumed_lines: list[dict]
    checkpoint_writes: list[tuple[int, int]] = field(default_factory=list)  # (rank, step)

    def losses(self) -> list[float]:
        """Rank 0's per-step losses over both attempts."""
        return [line["loss"] for line in self.preempted_lines + self.resumed_lines if "loss" in line]

    @property
    def preempted_step(self) -> int:
        return self.preempted_state["step"]


def _json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def _distributed_run(config: dict, base: BaseModelInfo, data: Path, root: Path) -> DistributedRun:
    root.mkdir(parents=True)
    probe = root / "probe.py"
    probe.write_text(PROBE)
    writes = root / "checkpoint-writes.log"
    command = [
        str(TORCHRUN),
        "--standalone",
        f"--nproc_per_node={WORLD}",
        str(probe),
        "--config",
        json.dumps(config),
        "--base-model",
        str(base.path),
        "--data",
        str(data),
        "--checkpoints",
        str(root / "ck"),
        "--output",
        str(root / "out"),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "FINEPLAT_TEST_CHECKPOINT_LOG": str(writes)}
    with open(root / "preempted.stderr", "w") as stderr:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stderr, text=True, env=env)
        assert process.stdout is not None
        seen: list[str] = []
        for line in process.stdout:
            seen.append(line)
            if line.startswith('{"step": 2, "loss"'):
                process.send_signal(signal.SIGTERM)  # what Kubernetes sends the pod's main process
                break
        rest, _ = process.communicate(timeout=300)
    preempted_lines = _json_lines("".join(seen) + rest)
    marker = [line for line in preempted_lines if line.get("preempted")]
    assert marker, f"no preemption: {preempted_lines[-3:]}; see {root / 'preempted.stderr'}"
    state = json.loads((root / "ck" / f"step-{marker[0]['step']:08d}" / "state.json").read_text())
    with open(root / "resumed.stderr", "w") as stderr:
        resumed = subprocess.run(
            command, stdout=subprocess.PIPE, stderr=stderr, text=True, env=env, timeout=300
        )
    assert resumed.returncode == 0, f"see {root / 'resumed.stderr'}"
    return DistributedRun(
        root=root,
        preempted_exit=process.returncode,
        preempted_lines=preempted_lines,
        preempted_state=state,
        resumed_exit=resumed.returncode,
        resumed_lines=_json_lines(resumed.stdout),
        checkpoint_writes=[
            (int(rank), int(step))
            for rank, step in (line.split() for line in writes.read_text().splitlines())
        ],
    )


@pytest.fixture(scope="module")
def ddp(
    tiny_base_model: BaseModelInfo, odd_data: Path, tmp_path_factory: pytest.TempPathFactory, train_in
) -> tuple[DistributedRun, TrainResult]:  # type: ignore[no-untyped-def]
    """LoRA: 2 DDP workers with batch_size 2, and one process with batch_size 4."""
    root = tmp_path_factory.mktemp("ddp")
    run = _distributed_run(dict(LORA, batch_size=2), tiny_base_model, odd_data, root / "distributed")
    single = train_in(dict(LORA, batch_size=4), tiny_base_model, odd_data, root / "single")
    return run, single


@pytest.fixture(scope="module")
def fsdp(
    tiny_base_model: BaseModelInfo, odd_data: Path, tmp_path_factory: pytest.TempPathFactory, train_in
) -> tuple[DistributedRun, TrainResult]:  # type: ignore[no-untyped-def]
    """Full SFT: 2 FSDP workers with batch_size 2, and one process with batch_size 4."""
    root = tmp_path_factory.mktemp("fsdp")
    run = _distributed_run(
        dict(FULL, batch_size=2, distributed="fsdp"), tiny_base_model, odd_data, root / "distributed"
    )
    single = train_in(dict(FULL, batch_size=4), tiny_base_model, odd_data, root / "single")
    return run, single


def _assert_same_tensors(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert actual.keys() == expected.keys()
    for name, tensor in expected.items():
        torch.testing.assert_close(actual[name], tensor, **WEIGHT_TOLERANCE, msg=name)


def test_ddp_losses_equal_single_process_with_the_same_global_batch(
    ddp: tuple[DistributedRun, TrainResult],
) -> None:
    run, single = ddp
    assert len(single.losses) == COMMON["max_steps"]
    assert run.losses() == pytest.approx(single.losses, rel=LOSS_TOLERANCE)


def test_ddp_adapter_equals_the_single_process_adapter(ddp: tuple[DistributedRun, TrainResult]) -> None:
    run, single = ddp
    _assert_same_tensors(
        load_file(str(run.root / "out" / "adapter_model.safetensors")),
        load_file(str(single.output_dir / "adapter_model.safetensors")),
    )


def test_only_rank_0_writes_checkpoints(ddp: tuple[DistributedRun, TrainResult]) -> None:
    run, _ = ddp
    ranks = {rank for rank, _ in run.checkpoint_writes}
    steps = [step for _, step in run.checkpoint_writes]
    assert ranks == {0}
    assert run.preempted_step in steps and steps[-1] == COMMON["max_steps"]
    assert len(steps) == len(set(steps))  # each step written once (by one process)


def test_sigterm_to_torchrun_stops_every_rank_after_one_step_and_both_resume(
    ddp: tuple[DistributedRun, TrainResult],
) -> None:
    run, _ = ddp
    step = run.preempted_step
    assert 2 <= step < COMMON["max_steps"]
    assert run.preempted_state["preempted"] is True
    assert run.preempted_exit == TORCHRUN_EXIT_ON_WORKER_FAILURE
    stopped = [line["step"] for line in run.preempted_lines if line.get("preempted")]
    assert stopped == [step] * WORLD  # every rank, after the same step
    started = [line["step"] for line in run.resumed_lines if line.get("status") == "running"][:WORLD]
    assert started == [step] * WORLD  # both ranks continue from the emergency checkpoint
    resumed_steps = [line["step"] for line in run.resumed_lines if "loss" in line]
    assert resumed_steps == list(range(step + 1, COMMON["max_steps"] + 1))


def test_fsdp_full_fine_tune_equals_single_process_training(fsdp: tuple[DistributedRun, TrainResult]) -> None:
    """Sharded weights, gathered checkpoints (resumed after a SIGTERM) and the gathered final model
    reproduce one process's training."""
    run, single = fsdp
    assert run.losses() == pytest.approx(single.losses, rel=LOSS_TOLERANCE)
    assert {rank for rank, _ in run.checkpoint_writes} == {0}
    assert run.preempted_state["preempted"] is True
    _assert_same_tensors(
        load_file(str(run.root / "out" / "model.safetensors")),
        load_file(str(single.output_dir / "model.safetensors")),
    )
    assert (run.root / "out" / "tokenizer.json").is_file()


def test_fsdp_checkpoints_hold_full_tensors_in_the_single_process_layout(
    fsdp: tuple[DistributedRun, TrainResult],
) -> None:
    run, single = fsdp
    step = f"step-{COMMON['max_steps']:08d}"
    sharded = load_file(str(run.root / "ck" / step / "weights.safetensors"))
    whole = load_file(str(single.output_dir.parent / "ck" / step / "weights.safetensors"))
    assert {k: v.shape for k, v in sharded.items()} == {k: v.shape for k, v in whole.items()}


def test_strategies_that_cannot_work_are_config_errors() -> None:
    with pytest.raises(ConfigError, match=r"'fsdp' shards full fine-tunes .* use distributed='ddp'"):
        check_strategy("lora", "fsdp")
    with pytest.raises(ConfigError, match=r"unknown strategy 'deepspeed_zero3'"):
        check_strategy("qlora", "deepspeed_zero3")
    with pytest.raises(ValueError, match="deepspeed_zero2"):  # the config offers ZeRO 1 and 2 only
        TrainConfig(method="sft", distributed="deepspeed_zero3")  # type: ignore[arg-type]
    check_strategy("lora", "ddp")
    check_strategy("cpt", "fsdp")
    check_strategy("sft", "deepspeed_zero2")
    check_strategy("lora", "deepspeed_zero1")


@pytest.fixture(scope="module", params=["zero1-lora", "zero2-sft"])
def zero(
    request: pytest.FixtureRequest,
    tiny_base_model: BaseModelInfo,
    odd_data: Path,
    tmp_path_factory: pytest.TempPathFactory,
    train_in,
) -> tuple[DistributedRun, TrainResult]:  # type: ignore[no-untyped-def]
    """DeepSpeed ZeRO over gloo: stage 1 with LoRA and stage 2 with full SFT, 2 workers with
    batch_size 2 (preempted by SIGTERM and resumed), and one plain process with batch_size 4."""
    pytest.importorskip("deepspeed")
    stage, method = request.param.split("-")
    base = LORA if method == "lora" else FULL
    root = tmp_path_factory.mktemp(request.param)
    run = _distributed_run(
        dict(base, batch_size=2, distributed=f"deepspeed_{stage}"),
        tiny_base_model,
        odd_data,
        root / "distributed",
    )
    single = train_in(dict(base, batch_size=4), tiny_base_model, odd_data, root / "single")
    return run, single


def test_deepspeed_zero_trains_like_one_process_across_a_preemption(
    zero: tuple[DistributedRun, TrainResult],
) -> None:
    """Losses at every step (before and after the SIGTERM and resume) and the final weights match
    one process: a resume that lost the other rank's optimizer partition would not."""
    run, single = zero
    assert run.preempted_state["preempted"] is True
    assert 2 <= run.preempted_step < COMMON["max_steps"]
    assert run.losses() == pytest.approx(single.losses, rel=LOSS_TOLERANCE)
    name = (
        "adapter_model.safetensors"
        if (single.output_dir / "adapter_model.safetensors").is_file()
        else "model.safetensors"
    )
    _assert_same_tensors(load_file(str(run.root / "out" / name)), load_file(str(single.output_dir / name)))


def test_deepspeed_zero_checkpoints_hold_every_ranks_partition_as_plain_data(
    zero: tuple[DistributedRun, TrainResult],
) -> None:
    run, _ = zero
    assert {rank for rank, _ in run.checkpoint_writes} == {0}  # rank 0 seals; every rank wrote its part
    checkpoint = run.root / "ck" / f"step-{run.preempted_step:08d}"
    manifest = json.loads((checkpoint / "manifest.json").read_text())
    partitions = sorted(name for name in manifest["files"] if name.startswith("zero-rank"))
    assert partitions == [f"zero-rank{r:03d}.{ext}" for r in range(WORLD) for ext in ("pt", "safetensors")]
    sizes = []
    for rank in range(WORLD):
        skeleton = torch.load(checkpoint / f"zero-rank{rank:03d}.pt", weights_only=True)  # plain data only
        assert skeleton["fineplat_world_size"] == WORLD
        moments = load_file(str(checkpoint / f"zero-rank{rank:03d}.safetensors"))
        sizes.append(sum(t.numel() for k, t in moments.items() if k.endswith("exp_avg")))
    trainable = sum(t.numel() for t in load_file(str(checkpoint / "weights.safetensors")).values())
    assert sum(sizes) >= trainable and max(sizes) < trainable  # partitioned, not replicated
    assert not list((run.root / "ck").glob(".zero-step-*"))  # no unsealed partitions left behind
