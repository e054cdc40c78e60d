"""The multi-LoRA engine in process: mixed-adapter batching, per-row stop conditions, sampling,
and adapter validation and hot-swapping."""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from fineplat.basemodel import BaseModelInfo, load_tokenizer
from fineplat.errors import ServingError
from fineplat.serving.engine import BatchRecord, GenerationRequest, MultiLoraEngine
from fineplat.serving.errors import AdapterAlreadyLoadedError, ModelNotFoundError

PROMPT = "The quick brown fox"


def greedy(model: str, prompt: str = PROMPT, max_tokens: int = 12, **kwargs: object) -> GenerationRequest:
    return GenerationRequest(model=model, prompt=prompt, max_tokens=max_tokens, **kwargs)  # type: ignore[arg-type]


def new_batches(engine: MultiLoraEngine, before: int) -> list[BatchRecord]:
    stats = engine.stats()
    return stats.recent_batches[len(stats.recent_batches) - (stats.batches - before) :]


def test_requests_for_two_adapters_and_the_base_run_in_one_generate_call_with_solo_outputs(
    reference_engine: MultiLoraEngine,
) -> None:
    base = reference_engine.model_id
    requests = [
        greedy("support-v1", "The quick brown fox"),
        greedy(base, "Hello there"),
        greedy("legal.v2", "Once upon a time, in a land far away"),
    ]
    before = reference_engine.stats().batches

    batched = reference_engine.generate(requests)
    batch_records = new_batches(reference_engine, before)
    solo = [reference_engine.generate([request])[0] for request in requests]
    solo_records = new_batches(reference_engine, before + 1)

    assert [(b.size, b.models, b.sampling) for b in batch_records] == [
        (3, ("support-v1", base, "legal.v2"), "greedy")
    ]
    assert [(b.size, b.models) for b in solo_records] == [(1, (r.model,)) for r in requests]
    assert batched == solo


def test_each_adapter_changes_the_output_of_the_base_model(reference_engine: MultiLoraEngine) -> None:
    texts = [
        result.text
        for result in reference_engine.generate(
            [greedy(m) for m in (reference_engine.model_id, "support-v1", "legal.v2")]
        )
    ]

    assert len(set(texts)) == 3


def test_prompt_and_completion_tokens_are_counted_per_request(
    reference_engine: MultiLoraEngine, tiny_base_model: BaseModelInfo
) -> None:
    tokenizer = load_tokenizer(tiny_base_model.path)
    short, long = "Hi", "A much longer prompt that needs left padding in the batch"

    results = reference_engine.generate([greedy("support-v1", short, 5), greedy("support-v1", long, 9)])

    assert [(r.prompt_tokens, r.completion_tokens, r.finish_reason) for r in results] == [
        (len(tokenizer(short)["input_ids"]), 5, "length"),
        (len(tokenizer(long)["input_ids"]), 9, "length"),
    ]


def test_chat_requests_use_the_base_models_chat_template_with_a_generation_prompt(
    reference_engine: MultiLoraEngine, tiny_base_model: BaseModelInfo
) -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is a fox?"}]
    tokenizer = load_tokenizer(tiny_base_model.path)
    rendered = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    (chat,) = reference_engine.generate([GenerationRequest("legal.v2", messages=messages, max_tokens=10)])
    (raw,) = reference_engine.generate([greedy("legal.v2", rendered, 10)])

    assert rendered.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")
    assert chat == raw


def test_a_stop_string_ends_generation_and_is_cut_from_the_text(reference_engine: MultiLoraEngine) -> None:
    (full,) = reference_engine.generate([greedy("support-v1", max_tokens=20)])
    stop = full.text[6:8]
    expected = full.text[: full.text.find(stop)]

    (stopped,) = reference_engine.generate([greedy("support-v1", max_tokens=20, stop=(stop,))])

    assert (stopped.text, stopped.finish_reason) == (expected, "stop")
    assert stopped.completion_tokens < 20


def test_generation_ends_on_an_end_token_from_the_models_generation_config(
    tiny_base_model: BaseModelInfo, tmp_path: Path, one_torch_thread: None
) -> None:
    """Declaring the token the base model greedily generates first an end token (as Llama 3 lists
    several in generation_config.eos_token_id) ends the turn right there: empty text, one token."""
    model_dir = tmp_path / "tiny-dot-eos"
    shutil.copytree(tiny_base_model.path, model_dir)
    tokenizer = load_tokenizer(model_dir)
    with MultiLoraEngine(model_dir, batch_window_ms=0) as plain:
        (before,) = plain.generate([greedy(plain.model_id, max_tokens=1)])
    first_token = tokenizer(before.text)["input_ids"][0]
    config_file = model_dir / "generation_config.json"
    config = json.loads(config_file.read_text())
    config["eos_token_id"] = [*config["eos_token_id"], first_token]
    config_file.write_text(json.dumps(config))

    with MultiLoraEngine(model_dir, batch_window_ms=0) as engine:
        (result,) = engine.generate([greedy(engine.model_id, max_tokens=3)])

    assert (result.text, result.completion_tokens, result.finish_reason) == ("", 1, "stop")


def test_seeded_sampling_repeats_and_runs_in_its_own_batch(reference_engine: MultiLoraEngine) -> None:
    def sample(seed: int) -> GenerationRequest:
        return greedy("support-v1", max_tokens=16, temperature=1.0, seed=seed)

    before = reference_engine.stats().batches
    first, again, other = reference_engine.generate([sample(7), sample(7), sample(8)])

    assert first == again
    assert first.text != other.text
    assert [(b.size, b.sampling) for b in new_batches(reference_engine, before)] == [(1, "seeded")] * 3


def test_a_request_longer_than_the_context_window_is_rejected(
    reference_engine: MultiLoraEngine, tiny_base_model: BaseModelInfo
) -> None:
    prompt_tokens = len(load_tokenizer(tiny_base_model.path)(PROMPT)["input_ids"])
    message = (
        f"This model's maximum context length is 1024 tokens. However, you requested {prompt_tokens + 1024} tokens "
        f"({prompt_tokens} in the messages, 1024 in the completion). Please reduce the length of the messages or completion."
    )

    with pytest.raises(ServingError) as raised:
        reference_engine.submit(greedy("support-v1", max_tokens=1024))

    assert str(raised.value) == message


def test_an_unknown_model_is_not_found(reference_engine: MultiLoraEngine) -> None:
    with pytest.raises(ModelNotFoundError, match=r"^The model `no-such-adapter` does not exist\.$"):
        reference_engine.submit(greedy("no-such-adapter"))


def test_loading_a_loaded_name_again_is_refused(
    reference_engine: MultiLoraEngine, lora_adapters: dict[str, Path]
) -> None:
    with pytest.raises(
        AdapterAlreadyLoadedError, match=r"^The lora adapter 'support-v1' has already been loaded\.$"
    ):
        reference_engine.load_adapter("support-v1", lora_adapters["legal.v2"])


def test_the_base_model_id_cannot_name_an_adapter(
    reference_engine: MultiLoraEngine, lora_adapters: dict[str, Path]
) -> None:
    with pytest.raises(ServingError, match="expected a non-empty name other than the base model id"):
        reference_engine.load_adapter(reference_engine.model_id, lora_adapters["legal.v2"])


def test_a_directory_without_an_adapter_is_not_found(
    reference_engine: MultiLoraEngine, tmp_path: Path
) -> None:
    with pytest.raises(
        ModelNotFoundError, match=f"Loading lora empty failed: No adapter found for {tmp_path}"
    ):
        reference_engine.load_adapter("empty", tmp_path)


def test_an_adapter_trained_on_another_base_model_is_rejected_before_loading(
    reference_engine: MultiLoraEngine, lora_adapters: dict[str, Path], tmp_path: Path
) -> None:
    foreign = tmp_path / "foreign"
    shutil.copytree(lora_adapters["support-v1"], foreign)
    tensors = load_file(foreign / "adapter_model.safetensors")
    key = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
    tensors[key] = torch.zeros(8, 64)  # hidden size 64, the tiny model has 128
    save_file(tensors, foreign / "adapter_model.safetensors")
    adapters_before = reference_engine.adapters()

    with pytest.raises(
        ServingError, match=rf"tensor {key} has shape \[8, 64\], base model .* expects \[8, 128\]"
    ):
        reference_engine.load_adapter("foreign", foreign)

    assert reference_engine.adapters() == adapters_before
    assert reference_engine.generate([greedy("support-v1", max_tokens=2)])[0].completion_tokens == 2


def test_a_dora_adapter_is_rejected(
    reference_engine: MultiLoraEngine, lora_adapters: dict[str, Path], tmp_path: Path
) -> None:
    dora = tmp_path / "dora"
    shutil.copytree(lora_adapters["support-v1"], dora)
    config = json.loads((dora / "adapter_config.json").read_text())
    (dora / "adapter_config.json").write_text(json.dumps({**config, "use_dora": True}))

    with pytest.raises(
        ServingError, match="use_dora is true; peft's mixed-adapter batches do not support DoRA"
    ):
        reference_engine.load_adapter("dora", dora)


def test_unloading_every_adapter_restores_the_plain_base_model(
    tiny_base_model: BaseModelInfo, lora_adapters: dict[str, Path], one_torch_thread: None
) -> None:
    with MultiLoraEngine(tiny_base_model.path, batch_window_ms=0) as engine:
        (before,) = engine.generate([greedy(engine.model_id)])
        for name, path in lora_adapters.items():
            engine.load_adapter(name, path)
        for name in lora_adapters:
            engine.unload_adapter(name)
        (after,) = engine.generate([greedy(engine.model_id)])

        assert engine.adapters() == []
        assert after == before
        with pytest.raises(ModelNotFoundError, match=r"^The lora adapter 'support-v1' cannot be found\.$"):
            engine.unload_adapter("support-v1")


def test_a_request_queued_for_an_adapter_that_is_then_unloaded_fails_as_not_found(
    tiny_base_model: BaseModelInfo, lora_adapters: dict[str, Path], one_torch_thread: None
) -> None:
    with MultiLoraEngine(tiny_base_model.path, batch_window_ms=2000) as engine:
        engine.load_adapter("support-v1", lora_adapters["support-v1"])
        future = engine.submit(greedy("support-v1"))  # waits in the 2 s batch window
        engine.unload_adapter("support-v1")

        with pytest.raises(ModelNotFoundError, match=r"^The model `support-v1` does not exist\.$"):
            future.result(timeout=30)


def test_adapters_load_and_unload_while_requests_are_served(
    reference_engine: MultiLoraEngine, lora_adapters: dict[str, Path]
) -> None:
    request = greedy("support-v1", max_tokens=6)
    (expected,) = reference_engine.generate([request])
    outputs, errors = [], []

    def serve() -> None:
        try:
            for _ in range(8):
                outputs.extend(reference_engine.generate([request]))
        except Exception as exc:  # collected and asserted below
            errors.append(exc)

    server = threading.Thread(target=serve)
    server.start()
    for cycle in range(4):
        reference_engine.load_adapter(f"swap-{cycle}", lora_adapters["legal.v2"])
        reference_engine.unload_adapter(f"swap-{cycle}")
    server.join(timeout=120)

    assert errors == []
    assert outputs == [expected] * 8
    assert [card.name for card in reference_engine.adapters()] == ["support-v1", "legal.v2"]


def test_streamed_pieces_arrive_before_the_result_and_add_up_to_its_text(
    reference_engine: MultiLoraEngine,
) -> None:
    pieces: list[str] = []
    request = greedy("legal.v2", max_tokens=16)
    (expected,) = reference_engine.generate([request])

    future = reference_engine.submit(request, on_text=pieces.append)
    result = future.result(timeout=60)

    assert result == expected
    assert "".join(pieces) == expected.text
    assert len(pieces) > 1
