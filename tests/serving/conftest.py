"""Fixtures for the serving tests: deterministic LoRA adapters saved with peft's save_pretrained on
the tiny base model, an in-process engine as the reference for exact outputs, and a real serving
pool subprocess on a free port (cleaned of test adapters after every test)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model

from fineplat.basemodel import BaseModelInfo, load_base_model
from fineplat.serving import EmbeddedServingPool, ServingPoolClient
from fineplat.serving.engine import MultiLoraEngine

# Standard deviation of the random LoRA A/B weights: the briefly pre-trained tiny model greedily
# repeats "." for any prompt; at 0.3 both test adapters turn that into varied word tokens (at 0.1
# most prompts still give dots; LoRA on q/v alone gives byte fragments, hence these targets).
LORA_WEIGHT_STD = 0.3
LORA_RANK = 8
# Two adapters on different modules (peft mixes them per row); one name has a dot, which peft's
# nn.ModuleDict keys would reject if the engine used names as given.
ADAPTER_SPECS = {
    "support-v1": (["o_proj", "up_proj", "down_proj"], 1),
    "legal.v2": (["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"], 2),
}
# The batching pool closes a batch as soon as 3 requests wait and otherwise waits up to 30 s, so three
# concurrent requests always meet in one batch however slow the machine is.
BATCH_OF_THREE = 3
LONG_WINDOW_MS = 30_000
# Decoding on one CPU thread: the tiny model decodes ~10x faster than on a contended thread pool.
TEST_TORCH_THREADS = 1


def make_lora_adapter(base_dir: Path, out_dir: Path, target_modules: list[str], seed: int) -> Path:
    """A LoRA adapter whose A and B weights are deterministic random values (B nonzero, so it changes
    the model), saved with save_pretrained: adapter_config.json + adapter_model.safetensors."""
    model = load_base_model(base_dir)
    config = LoraConfig(
        r=LORA_RANK,
        lora_alpha=LORA_RANK,
        target_modules=target_modules,
        lora_dropout=0.0,
        task_type="CAUSAL_LM",
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        peft_model = get_peft_model(model, config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in sorted(peft_model.named_parameters()):
            if "lora_A" in name or "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * LORA_WEIGHT_STD)
    peft_model.save_pretrained(str(out_dir))
    return out_dir


@pytest.fixture(scope="session")
def lora_adapters(
    tiny_base_model: BaseModelInfo, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    """Adapter name -> directory for the two test adapters."""
    root = tmp_path_factory.mktemp("adapters")
    return {
        name: make_lora_adapter(tiny_base_model.path, root / name.replace(".", "_"), modules, seed)
        for name, (modules, seed) in ADAPTER_SPECS.items()
    }


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """Run in-process decoding on one thread for this module; restore the thread count after."""
    previous = torch.get_num_threads()
    torch.set_num_threads(TEST_TORCH_THREADS)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def reference_engine(
    tiny_base_model: BaseModelInfo, lora_adapters: dict[str, Path], one_torch_thread: None
) -> Iterator[MultiLoraEngine]:
    """An in-process engine with both test adapters loaded, served under the same base id as the
    pool (the base model path), used as the exact reference for greedy outputs."""
    with MultiLoraEngine(
        tiny_base_model.path, served_model_name=str(tiny_base_model.path), batch_window_ms=0
    ) as engine:
        for name, path in lora_adapters.items():
            engine.load_adapter(name, path)
        yield engine


@pytest.fixture(scope="session")
def serving_pool(tiny_base_model: BaseModelInfo) -> Iterator[EmbeddedServingPool]:
    """`python -m fineplat.serving` on a free port with the tiny base model (served id = its path)."""
    with EmbeddedServingPool(str(tiny_base_model.path), torch_threads=TEST_TORCH_THREADS) as pool:
        yield pool


@pytest.fixture(scope="module")
def batching_pool(
    tiny_base_model: BaseModelInfo, lora_adapters: dict[str, Path]
) -> Iterator[EmbeddedServingPool]:
    """A second pool, started with both test adapters, that batches exactly three requests."""
    with EmbeddedServingPool(
        str(tiny_base_model.path),
        adapters={name: str(path) for name, path in lora_adapters.items()},
        max_batch_size=BATCH_OF_THREE,
        batch_window_ms=LONG_WINDOW_MS,
        torch_threads=TEST_TORCH_THREADS,
    ) as pool:
        yield pool


@pytest.fixture
def pool_client(serving_pool: EmbeddedServingPool) -> Iterator[ServingPoolClient]:
    """A client for the shared pool; adapters a test leaves loaded are unloaded after it."""
    with serving_pool.client() as client:
        yield client
        for name in client.list_models()[1:]:
            client.unload_adapter(name)
