"""Resume is exact: a run preempted at any step and resumed gives bit-identical losses at every
later step and a bit-identical final adapter compared with an uninterrupted run (CPU,
deterministic). A SIGKILL loses at most the steps since the last periodic checkpoint and never
leaves a torn checkpoint as the latest."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from fineplat.basemodel import BaseModelInfo
from fineplat.training import PREEMPTED_EXIT_CODE, TrainConfig
from fineplat.training.checkpoint import is_complete, latest_checkpoint, list_checkpoints
from fineplat.training.preemption import Preempted, PreemptionFlag
from fineplat.training.trainer import train

CONFIG = dict(
    method="lora",
    max_steps=10,
    batch_size=4,
    gradient_accumulation_steps=2,
    checkpoint_interval=4,
    learning_rate_multiplier=10.0,
    lora_rank=4,
    lora_alpha=8,
    max_seq_len=128,
    lora_dropout=0.1,
)


def _adapter_tensors(output: Path) -> dict[str, torch.Tensor]:
    return load_file(str(output / "adapter_model.safetensors"))


@pytest.fixture(scope="module")
def uninterrupted(
    tiny_base_model: BaseModelInfo, small_training_data: Path, tmp_path_factory: pytest.TempPathFactory
):  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("uninterrupted")
    result = train(
        TrainConfig(**CONFIG),
        base_model_dir=tiny_base_model.path,
        data_dir=small_training_data,
        checkpoint_dir=root / "ck",
        output_dir=root / "out",
    )
    return result, _adapter_tensors(root / "out")


@pytest.mark.parametrize("preempt_after", [1, 3, 4, 7])
def test_preempted_run_resumes_bit_exactly(
    uninterrupted,
    tiny_base_model: BaseModelInfo,
    small_training_data: Path,
    tmp_path: Path,
    preempt_after: int,
) -> None:  # type: ignore[no-untyped-def]
    """Preemption points cover the first step, mid-epoch, a step that is also a periodic checkpoint,
    and a later step; every step accumulates 2 micro-batches and LoRA dropout consumes RNG."""
    reference, reference_adapter = uninterrupted
    flag = PreemptionFlag()
    config = TrainConfig(**CONFIG)
    paths = dict(
        base_model_dir=tiny_base_model.path,
        data_dir=small_training_data,
        checkpoint_dir=tmp_path / "ck",
        output_dir=tmp_path / "out",
    )
    with pytest.raises(Preempted) as preempted:
        train(
            config,
            preemption=flag,
            on_step=lambda step: flag.set() if step == preempt_after else None,
            **paths,
        )  # type: ignore[arg-type]
    assert preempted.value.step == preempt_after
    state = json.loads((latest_checkpoint(tmp_path / "ck") / "state.json").read_text())  # type: ignore[operator]
    assert state["preempted"] is True and state["step"] == preempt_after
    resumed = train(config, **paths)  # type: ignore[arg-type]
    assert resumed.resumed_from_step == preempt_after
    assert resumed.losses == reference.losses[preempt_after:]
    adapter = _adapter_tensors(tmp_path / "out")
    assert adapter.keys() == reference_adapter.keys()
    for name, tensor in reference_adapter.items():
        assert torch.equal(adapter[name], tensor), name


def _trainer_process(
    tiny_base_model: BaseModelInfo, data: Path, root: Path, config: dict
) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fineplat.training",
            "--config",
            json.dumps(config),
            "--base-model",
            str(tiny_base_model.path),
            "--data",
            str(data),
            "--checkpoints",
            str(root / "ck"),
            "--output",
            str(root / "out"),
        ],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


def _wait_for_step(process: subprocess.Popen[str], step: int) -> list[dict]:
    lines = []
    assert process.stdout is not None
    for line in process.stdout:
        if line.startswith("{"):
            lines.append(json.loads(line))
            if lines[-1].get("step") == step and "loss" in lines[-1]:
                return lines
    raise AssertionError(f"trainer ended before step {step}: {lines[-3:]}")


def test_sigterm_to_a_real_process_checkpoints_and_exits_75(
    uninterrupted, tiny_base_model: BaseModelInfo, small_training_data: Path, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """A real SIGTERM, delivered whenever it lands (often mid gradient accumulation): the step is
    finished, an emergency checkpoint written, exit code 75; the resumed run is bit-exact."""
    reference, reference_adapter = uninterrupted
    process = _trainer_process(tiny_base_model, small_training_data, tmp_path, CONFIG)
    _wait_for_step(process, 2)
    process.send_signal(signal.SIGTERM)
    out, _ = process.communicate(timeout=300)
    assert process.returncode == PREEMPTED_EXIT_CODE
    preempted_at = json.loads([line for line in out.splitlines() if '"preempted"' in line][-1])["step"]
    assert 2 <= preempted_at < CONFIG["max_steps"]
    resumed = train(
        TrainConfig(**CONFIG),
        base_model_dir=tiny_base_model.path,
        data_dir=small_training_data,
        checkpoint_dir=tmp_path / "ck",
        output_dir=tmp_path / "out",
    )
    assert resumed.losses == reference.losses[preempted_at:]
    adapter = _adapter_tensors(tmp_path / "out")
    assert all(torch.equal(adapter[k], v) for k, v in reference_adapter.items())


def test_sigkill_loses_at_most_one_interval_and_never_tears_a_checkpoint(
    uninterrupted, tiny_base_model: BaseModelInfo, small_training_data: Path, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    reference, reference_adapter = uninterrupted
    process = _trainer_process(tiny_base_model, small_training_data, tmp_path, CONFIG)
    _wait_for_step(process, 6)
    time.sleep(0.05)
    process.kill()
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL
    complete = list_checkpoints(tmp_path / "ck")
    assert complete, "the periodic checkpoint at step 4 must exist"
    assert all(is_complete(c) for c in complete)
    latest = json.loads((complete[-1] / "state.json").read_text())["step"]
    assert 6 - latest <= CONFIG["checkpoint_interval"]
    resumed = train(
        TrainConfig(**CONFIG),
        base_model_dir=tiny_base_model.path,
        data_dir=small_training_data,
        checkpoint_dir=tmp_path / "ck",
        output_dir=tmp_path / "out",
    )
    assert resumed.resumed_from_step == latest
    assert resumed.losses == reference.losses[latest:]
    adapter = _adapter_tensors(tmp_path / "out")
    assert all(torch.equal(adapter[k], v) for k, v in reference_adapter.items())


def test_torn_checkpoint_is_never_the_latest(
    uninterrupted, tiny_base_model: BaseModelInfo, small_training_data: Path, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """A checkpoint whose files do not match its manifest (a torn write) is skipped."""
    flag = PreemptionFlag()
    paths = dict(
        base_model_dir=tiny_base_model.path,
        data_dir=small_training_data,
        checkpoint_dir=tmp_path / "ck",
        output_dir=tmp_path / "out",
    )
    with pytest.raises(Preempted):
        train(
            TrainConfig(**CONFIG), preemption=flag, on_step=lambda s: flag.set() if s == 5 else None, **paths
        )  # type: ignore[arg-type]
    newest = latest_checkpoint(tmp_path / "ck")
    assert newest is not None and newest.name.endswith("05")
    (newest / "optimizer.pt").write_bytes(b"torn")
    assert latest_checkpoint(tmp_path / "ck").name.endswith("04")  # type: ignore[union-attr]


def test_nan_loss_fails_with_the_step(
    tiny_base_model: BaseModelInfo, small_training_data: Path, tmp_path: Path
) -> None:
    import shutil

    from safetensors.torch import save_file

    from fineplat.errors import TrainingError

    broken = tmp_path / "broken-base"
    shutil.copytree(tiny_base_model.path, broken)
    weights = load_file(str(broken / "model.safetensors"))
    name = next(k for k in weights if k.endswith("norm.weight"))
    weights[name] = torch.full_like(weights[name], float("nan"))
    save_file(weights, str(broken / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(TrainingError, match=r"step 1: loss is nan"):
        train(
            TrainConfig(**CONFIG),
            base_model_dir=broken,
            data_dir=small_training_data,
            checkpoint_dir=tmp_path / "ck",
            output_dir=tmp_path / "out",
        )
