"""The serving pool over real HTTP in a real subprocess: the official OpenAI client against base and
adapters, vLLM's adapter endpoints, and vLLM's error shapes and status codes."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from fineplat.serving import EmbeddedServingPool, ModelNotFoundError, ServingPoolClient
from fineplat.serving.engine import GenerationRequest, MultiLoraEngine

PROMPT = "The quick brown fox"
MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "What is a fox?"}]


@pytest.fixture
def openai_client(serving_pool: EmbeddedServingPool) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{serving_pool.url}/v1", api_key="unused", max_retries=0)


def error_body(status: int, message: str, err_type: str, param: str | None = None) -> dict[str, object]:
    return {"error": {"message": message, "type": err_type, "param": param, "code": status}}


def test_openai_client_lists_the_base_model_and_each_adapter_with_its_parent(
    openai_client: openai.OpenAI,
    pool_client: ServingPoolClient,
    serving_pool: EmbeddedServingPool,
    lora_adapters: dict[str, Path],
) -> None:
    pool_client.load_adapter("support-v1", lora_adapters["support-v1"])

    cards = [card.model_dump() for card in openai_client.models.list().data]

    base = serving_pool.base_model
    assert [
        (c["id"], c["object"], c["owned_by"], c["parent"], c["root"], c["max_model_len"]) for c in cards
    ] == [
        (base, "model", "fineplat", None, base, 1024),
        ("support-v1", "model", "fineplat", base, str(lora_adapters["support-v1"]), 1024),
    ]


def test_openai_completions_match_the_engine_for_base_and_adapter(
    openai_client: openai.OpenAI,
    pool_client: ServingPoolClient,
    reference_engine: MultiLoraEngine,
    lora_adapters: dict[str, Path],
) -> None:
    pool_client.load_adapter("support-v1", lora_adapters["support-v1"])
    models = [reference_engine.model_id, "support-v1"]
    expected = reference_engine.generate([GenerationRequest(m, prompt=PROMPT, max_tokens=10) for m in models])

    responses = [
        openai_client.completions.create(model=m, prompt=PROMPT, max_tokens=10, temperature=0) for m in models
    ]

    got = [
        (
            r.object,
            r.model,
            r.choices[0].text,
            r.choices[0].finish_reason,
            r.usage.prompt_tokens,
            r.usage.completion_tokens,
        )
        for r in responses
        if r.usage is not None
    ]
    assert got == [
        ("text_completion", e.model, e.text, e.finish_reason, e.prompt_tokens, e.completion_tokens)
        for e in expected
    ]
    assert got[0][2] != got[1][2]


def test_openai_chat_completions_match_the_engine_for_base_and_adapter(
    openai_client: openai.OpenAI,
    pool_client: ServingPoolClient,
    reference_engine: MultiLoraEngine,
    lora_adapters: dict[str, Path],
) -> None:
    pool_client.load_adapter("legal.v2", lora_adapters["legal.v2"])
    models = [reference_engine.model_id, "legal.v2"]
    expected = reference_engine.generate(
        [GenerationRequest(m, messages=MESSAGES, max_tokens=12) for m in models]
    )

    responses = [
        openai_client.chat.completions.create(model=m, messages=MESSAGES, max_tokens=12, temperature=0)
        for m in models
    ]

    got = [
        (
            r.object,
            r.choices[0].message.role,
            r.choices[0].message.content,
            r.choices[0].finish_reason,
            r.usage.total_tokens,
        )
        for r in responses
        if r.usage is not None
    ]
    assert got == [
        ("chat.completion", "assistant", e.text, e.finish_reason, e.prompt_tokens + e.completion_tokens)
        for e in expected
    ]
    assert got[0][2] != got[1][2]


def test_an_unknown_model_is_a_404_for_the_openai_client(openai_client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as raised:
        openai_client.completions.create(model="no-such-adapter", prompt=PROMPT, max_tokens=2)

    assert raised.value.status_code == 404
    assert raised.value.response.json() == error_body(
        404, "The model `no-such-adapter` does not exist.", "NotFoundError", "model"
    )


def test_loading_answers_vllms_plain_text_success_message(
    serving_pool: EmbeddedServingPool, pool_client: ServingPoolClient, lora_adapters: dict[str, Path]
) -> None:
    response = httpx.post(
        f"{serving_pool.url}/v1/load_lora_adapter",
        json={"lora_name": "support-v1", "lora_path": str(lora_adapters["support-v1"])},
    )

    assert (response.status_code, response.headers["content-type"], response.text) == (
        200,
        "text/plain; charset=utf-8",
        "Success: LoRA adapter 'support-v1' added successfully.",
    )
    assert pool_client.list_models()[1:] == ["support-v1"]


def test_loading_a_name_twice_is_a_400_and_keeps_the_first_adapter(
    serving_pool: EmbeddedServingPool, pool_client: ServingPoolClient, lora_adapters: dict[str, Path]
) -> None:
    pool_client.load_adapter("support-v1", lora_adapters["support-v1"])
    before = pool_client.complete("support-v1", PROMPT, max_tokens=6)

    response = httpx.post(
        f"{serving_pool.url}/v1/load_lora_adapter",
        json={"lora_name": "support-v1", "lora_path": str(lora_adapters["legal.v2"])},
    )

    assert response.status_code == 400
    assert response.json() == error_body(
        400, "The lora adapter 'support-v1' has already been loaded.", "InvalidUserInput", "lora_name"
    )
    assert pool_client.complete("support-v1", PROMPT, max_tokens=6) == before


def test_loading_in_place_is_refused_because_names_are_unique_per_version(
    serving_pool: EmbeddedServingPool, lora_adapters: dict[str, Path]
) -> None:
    body = {"lora_name": "support-v1", "lora_path": str(lora_adapters["support-v1"]), "load_inplace": True}

    response = httpx.post(f"{serving_pool.url}/v1/load_lora_adapter", json=body)

    assert response.status_code == 400
    assert response.json() == error_body(
        400,
        "load_inplace is not supported: adapter names are unique per version; load the new version under a new "
        "name and unload the old one.",
        "BadRequestError",
        "load_inplace",
    )


def test_unloading_an_unknown_adapter_is_a_404(serving_pool: EmbeddedServingPool) -> None:
    response = httpx.post(f"{serving_pool.url}/v1/unload_lora_adapter", json={"lora_name": "never-loaded"})

    assert response.status_code == 404
    assert response.json() == error_body(
        404, "The lora adapter 'never-loaded' cannot be found.", "NotFoundError"
    )


def test_loading_a_path_without_an_adapter_is_a_404(
    serving_pool: EmbeddedServingPool, tmp_path: Path
) -> None:
    response = httpx.post(
        f"{serving_pool.url}/v1/load_lora_adapter",
        json={"lora_name": "ghost", "lora_path": str(tmp_path / "missing")},
    )

    assert response.status_code == 404
    assert response.json()["error"]["type"] == "NotFoundError"
    assert response.json()["error"]["message"].startswith(
        f"Loading lora ghost failed: No adapter found for {tmp_path}/missing"
    )


def test_an_unloaded_adapter_is_no_longer_listed_or_served(
    pool_client: ServingPoolClient, lora_adapters: dict[str, Path]
) -> None:
    pool_client.load_adapter("support-v1", lora_adapters["support-v1"])
    pool_client.complete("support-v1", PROMPT, max_tokens=2)

    pool_client.unload_adapter("support-v1")

    assert pool_client.list_models()[1:] == []
    with pytest.raises(ModelNotFoundError, match=r"HTTP 404: The model `support-v1` does not exist\.$"):
        pool_client.complete("support-v1", PROMPT, max_tokens=2)


def test_a_body_failing_validation_is_a_400_in_the_openai_error_shape_not_fastapis_422(
    serving_pool: EmbeddedServingPool,
) -> None:
    response = httpx.post(f"{serving_pool.url}/v1/load_lora_adapter", json={"lora_name": "x"})

    assert response.status_code == 400
    assert response.json() == error_body(400, "lora_path: Field required", "BadRequestError", "lora_path")


def test_malformed_json_is_a_400(serving_pool: EmbeddedServingPool) -> None:
    response = httpx.post(
        f"{serving_pool.url}/v1/completions",
        content=b"{not json",
        headers={"content-type": "application/json"},
    )

    assert response.status_code == 400
    assert response.json()["error"]["type"] == "BadRequestError"


@pytest.mark.parametrize(
    ("extra", "param", "message"),
    [
        ({"n": 2}, "n", "n=2: the embedded serving pool returns one choice per prompt; send n=1."),
        (
            {"stream": True, "prompt": ["a", "b"]},
            "prompt",
            "stream=true takes a single prompt string; send one request per prompt.",
        ),
        ({"logprobs": 1}, "logprobs", "logprobs are not supported by the embedded serving pool."),
    ],
)
def test_unsupported_options_are_rejected_with_a_400_naming_the_field(
    serving_pool: EmbeddedServingPool, extra: dict[str, object], param: str, message: str
) -> None:
    body = {"model": serving_pool.base_model, "prompt": PROMPT} | extra

    response = httpx.post(f"{serving_pool.url}/v1/completions", json=body)

    assert response.status_code == 400
    assert response.json() == error_body(400, message, "BadRequestError", param)


def test_streamed_completion_deltas_add_up_to_the_unstreamed_text(
    openai_client: openai.OpenAI,
    pool_client: ServingPoolClient,
    reference_engine: MultiLoraEngine,
    lora_adapters: dict[str, Path],
) -> None:
    pool_client.load_adapter("support-v1", lora_adapters["support-v1"])
    (expected,) = reference_engine.generate([GenerationRequest("support-v1", prompt=PROMPT, max_tokens=12)])

    chunks = list(
        openai_client.completions.create(
            model="support-v1",
            prompt=PROMPT,
            max_tokens=12,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )

    assert "".join(c.choices[0].text for c in chunks if c.choices) == expected.text
    assert len([c for c in chunks if c.choices and c.choices[0].text]) > 1
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == expected.finish_reason
    usage = chunks[-1].usage
    assert usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens) == (
        expected.prompt_tokens,
        expected.completion_tokens,
    )


def test_streamed_chat_deltas_add_up_to_the_unstreamed_reply_and_stop_strings_hold(
    openai_client: openai.OpenAI,
    pool_client: ServingPoolClient,
    reference_engine: MultiLoraEngine,
    lora_adapters: dict[str, Path],
) -> None:
    pool_client.load_adapter("support-v1", lora_adapters["support-v1"])
    (full,) = reference_engine.generate([GenerationRequest("support-v1", messages=MESSAGES, max_tokens=20)])
    stop = full.text[8:10]
    (expected,) = reference_engine.generate(
        [GenerationRequest("support-v1", messages=MESSAGES, max_tokens=20, stop=(stop,))]
    )

    chunks = list(
        openai_client.chat.completions.create(
            model="support-v1",
            messages=MESSAGES,
            max_tokens=20,
            temperature=0,
            stop=[stop],
            stream=True,
        )
    )

    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == expected.text
    assert (chunks[-1].choices[0].finish_reason, expected.finish_reason) == ("stop", "stop")
    assert {c.object for c in chunks} == {"chat.completion.chunk"}


def test_a_list_of_prompts_yields_one_choice_per_prompt_in_order(
    serving_pool: EmbeddedServingPool, reference_engine: MultiLoraEngine
) -> None:
    prompts = ["Hello there", PROMPT]
    expected = reference_engine.generate(
        [GenerationRequest(reference_engine.model_id, prompt=p, max_tokens=4) for p in prompts]
    )

    response = httpx.post(
        f"{serving_pool.url}/v1/completions",
        json={"model": serving_pool.base_model, "prompt": prompts, "max_tokens": 4, "temperature": 0},
    )

    body = response.json()
    assert [(c["index"], c["text"]) for c in body["choices"]] == [
        (0, expected[0].text),
        (1, expected[1].text),
    ]
    assert body["usage"]["prompt_tokens"] == sum(e.prompt_tokens for e in expected)


def test_unknown_routes_answer_in_the_error_shape(serving_pool: EmbeddedServingPool) -> None:
    response = httpx.get(f"{serving_pool.url}/v1/nothing-here")

    assert (response.status_code, response.json()) == (404, error_body(404, "Not Found", "NotFoundError"))


def test_health_is_200_with_an_empty_body_like_vllm(serving_pool: EmbeddedServingPool) -> None:
    response = httpx.get(f"{serving_pool.url}/health")

    assert (response.status_code, response.content) == (200, b"")


def test_streamed_chat_chunks_on_the_wire_carry_the_role_first_an_empty_last_delta_and_usage_last(
    serving_pool: EmbeddedServingPool,
) -> None:
    body = {
        "model": serving_pool.base_model,
        "messages": MESSAGES,
        "max_tokens": 4,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }

    with httpx.stream("POST", f"{serving_pool.url}/v1/chat/completions", json=body) as response:
        lines = [line for line in response.iter_lines() if line]

    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]
    first, finish, usage = chunks[0], chunks[-2], chunks[-1]
    assert set(first) == {"id", "object", "created", "model", "choices"}
    assert first["choices"][0]["delta"]["role"] == "assistant"
    assert all(set(c["choices"][0]["delta"]) == {"content"} for c in chunks[1:-2])
    assert (finish["choices"][0]["delta"], finish["choices"][0]["finish_reason"]) == ({}, "length")
    assert (usage["choices"], usage["usage"]["completion_tokens"]) == ([], 4)
    assert {c["id"] for c in chunks} == {first["id"]}
