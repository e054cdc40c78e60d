"""The strategy object's step on one process: it returns the gradient norm before clipping, clips,
updates weights and schedule and clears the gradients; a non-finite norm updates nothing (the loop
then fails the run). One process trains plainly whatever the configured distribution. (DDP, FSDP
and ZeRO across processes: test_distributed.py; checkpoints and resume: test_resume.py.)"""

from __future__ import annotations

import math

import pytest
import torch

from fineplat.training import TrainConfig
from fineplat.training.device_defaults import DeviceChoice
from fineplat.training.strategy import DataParallel, make_strategy
from fineplat.training.trainer import optimizer_and_schedule

CONFIG = TrainConfig(method="sft", max_grad_norm=0.5, warmup_ratio=0.0, scheduler="linear")
TOTAL_STEPS = 10


def _strategy(config: TrainConfig = CONFIG) -> tuple[torch.nn.Linear, DataParallel]:
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    strategy = make_strategy(
        config,
        model,
        lambda parameters: optimizer_and_schedule(parameters, config, TOTAL_STEPS),
        rank=0,
        world=1,
        micro_batch=1,
        choice=DeviceChoice("float32", "sdpa"),
    )
    assert isinstance(strategy, DataParallel)
    return model, strategy


@pytest.mark.parametrize("distributed", ["ddp", "fsdp", "deepspeed_zero1", "deepspeed_zero2"])
def test_one_process_trains_plainly_whatever_the_configured_strategy(distributed: str) -> None:
    model, strategy = _strategy(CONFIG.model_copy(update={"distributed": distributed}))
    assert strategy.module is model and strategy.model is model
    assert strategy.full_state_dict() is None


def test_step_clips_updates_and_returns_the_norm_before_clipping() -> None:
    model, strategy = _strategy()
    before = [p.detach().clone() for p in model.parameters()]
    strategy.backward(model(torch.full((2, 4), 3.0)).sum())
    expected = math.sqrt(sum(float(p.grad.pow(2).sum()) for p in model.parameters()))  # type: ignore[union-attr]
    assert expected > CONFIG.max_grad_norm  # so clipping happens
    learning_rate = strategy.learning_rate
    assert strategy.step() == pytest.approx(expected)
    assert all(p.grad is None for p in model.parameters())
    assert all(not torch.equal(p, b) for p, b in zip(model.parameters(), before, strict=True))
    assert strategy.learning_rate == pytest.approx(learning_rate * (1 - 1 / TOTAL_STEPS))


def test_non_finite_gradients_update_nothing() -> None:
    model, strategy = _strategy()
    before = [p.detach().clone() for p in model.parameters()]
    learning_rate = strategy.learning_rate
    strategy.backward(model(torch.full((1, 4), float("nan"))).sum())
    assert math.isnan(strategy.step())
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before, strict=True))
    assert all(p.grad is None for p in model.parameters())
    assert strategy.learning_rate == learning_rate
    assert not strategy.optimizer.state  # Adam's moments never saw the NaN
