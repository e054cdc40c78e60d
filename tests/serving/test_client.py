"""The client against a stand-in that answers exactly as a vLLM server does (recorded request bodies,
vLLM's plain-text success messages, both of vLLM's error body shapes), so the client is known to work
against production vLLM and not only against the embedded server."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from fineplat.errors import ServingError
from fineplat.serving import AdapterAlreadyLoadedError, ModelNotFoundError, ServingPoolClient, free_port


@dataclass
class VllmStandIn:
    """A real HTTP server that records each request and replies with the scripted vLLM response."""

    url: str
    replies: dict[tuple[str, str], tuple[int, str, str]] = field(default_factory=dict)
    received: list[tuple[str, str, str | None, object]] = field(default_factory=list)

    def reply(
        self, method: str, path: str, status: int, body: object, content_type: str = "application/json"
    ) -> None:
        text = body if isinstance(body, str) else json.dumps(body)
        self.replies[(method, path)] = (status, content_type, text)


@pytest.fixture
def vllm() -> Iterator[VllmStandIn]:
    stand_in = VllmStandIn(url="")

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            raw = self.rfile.read(length) if length else b""
            stand_in.received.append(
                (self.command, self.path, self.headers.get("authorization"), json.loads(raw) if raw else None)
            )
            status, content_type, text = stand_in.replies.get(
                (self.command, self.path), (404, "application/json", '{"detail":"Not Found"}')
            )
            payload = text.encode()
            self.send_response(status)
            self.send_header("content-type", content_type)
            self.send_header("content-length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_POST = _answer

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    stand_in.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield stand_in
    server.shutdown()
    server.server_close()


def test_load_and_unload_send_vllms_request_bodies_and_accept_its_text_replies(vllm: VllmStandIn) -> None:
    vllm.reply(
        "POST",
        "/v1/load_lora_adapter",
        200,
        "Success: LoRA adapter 'job-7-v1' added successfully.",
        "text/plain",
    )
    vllm.reply(
        "POST",
        "/v1/unload_lora_adapter",
        200,
        "Success: LoRA adapter 'job-7-v1' removed successfully.",
        "text/plain",
    )

    with ServingPoolClient(vllm.url + "/v1/", api_key="secret") as client:
        client.load_adapter("job-7-v1", "/adapters/job-7-v1")
        client.unload_adapter("job-7-v1")

    assert vllm.received == [
        (
            "POST",
            "/v1/load_lora_adapter",
            "Bearer secret",
            {"lora_name": "job-7-v1", "lora_path": "/adapters/job-7-v1"},
        ),
        ("POST", "/v1/unload_lora_adapter", "Bearer secret", {"lora_name": "job-7-v1"}),
    ]


def test_a_duplicate_name_in_vllms_older_flat_error_shape_is_recognised(vllm: VllmStandIn) -> None:
    vllm.reply(
        "POST",
        "/v1/load_lora_adapter",
        400,
        {
            "object": "error",
            "message": "The lora adapter 'job-7-v1' has already been loaded.",
            "type": "InvalidUserInput",
            "param": None,
            "code": 400,
        },
    )

    with pytest.raises(AdapterAlreadyLoadedError) as raised:
        ServingPoolClient(vllm.url).load_adapter("job-7-v1", "/adapters/job-7-v1")

    assert str(raised.value) == (
        f"POST {vllm.url}/v1/load_lora_adapter -> HTTP 400: The lora adapter 'job-7-v1' has already been loaded."
    )


def test_a_pool_without_runtime_lora_updating_gets_a_hint_not_a_model_not_found(vllm: VllmStandIn) -> None:
    with pytest.raises(ServingError) as raised:
        ServingPoolClient(vllm.url).load_adapter("job-7-v1", "/adapters/job-7-v1")

    assert not isinstance(raised.value, ModelNotFoundError)
    assert str(raised.value) == (
        f"POST {vllm.url}/v1/load_lora_adapter -> HTTP 404: Not Found. The server has no /v1/load_lora_adapter "
        "endpoint; start vLLM with --enable-lora and VLLM_ALLOW_RUNTIME_LORA_UPDATING=True."
    )


def test_completions_send_openai_bodies_and_read_the_first_choice(vllm: VllmStandIn) -> None:
    vllm.reply(
        "POST",
        "/v1/completions",
        200,
        {"object": "text_completion", "choices": [{"index": 0, "text": " jumps"}]},
    )
    vllm.reply(
        "POST",
        "/v1/chat/completions",
        200,
        {
            "object": "chat.completion",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "A fox."}}],
        },
    )
    client = ServingPoolClient(vllm.url)

    completion = client.complete("job-7-v1", "The quick brown fox", max_tokens=4, stop=["\n"], seed=3)
    reply = client.chat("job-7-v1", [{"role": "user", "content": "What is a fox?"}])

    assert (completion, reply) == (" jumps", "A fox.")
    assert [body for _, _, _, body in vllm.received] == [
        {
            "model": "job-7-v1",
            "prompt": "The quick brown fox",
            "max_tokens": 4,
            "temperature": 0.0,
            "top_p": 1.0,
            "stop": ["\n"],
            "seed": 3,
        },
        {
            "model": "job-7-v1",
            "messages": [{"role": "user", "content": "What is a fox?"}],
            "temperature": 0.0,
            "top_p": 1.0,
        },
    ]


def test_list_models_reads_vllms_model_cards(vllm: VllmStandIn) -> None:
    vllm.reply(
        "GET",
        "/v1/models",
        200,
        {
            "object": "list",
            "data": [
                {"id": "meta-llama/Llama-3.1-8B-Instruct", "object": "model", "parent": None},
                {"id": "job-7-v1", "object": "model", "parent": "meta-llama/Llama-3.1-8B-Instruct"},
            ],
        },
    )

    assert ServingPoolClient(vllm.url).list_models() == ["meta-llama/Llama-3.1-8B-Instruct", "job-7-v1"]


def test_an_unknown_model_in_the_current_error_shape_is_model_not_found(vllm: VllmStandIn) -> None:
    message = "The model `job-9-v1` does not exist."
    vllm.reply(
        "POST",
        "/v1/completions",
        404,
        {"error": {"message": message, "type": "NotFoundError", "param": None, "code": 404}},
    )

    with pytest.raises(ModelNotFoundError, match=f"HTTP 404: {message}$"):
        ServingPoolClient(vllm.url).complete("job-9-v1", "Hi")


def test_an_unreachable_pool_is_a_serving_error_and_not_healthy() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    client = ServingPoolClient(url, timeout=2)

    assert client.health() is False
    with pytest.raises(ServingError, match=f"cannot reach the serving pool .*; is it running at {url}\\?$"):
        client.list_models()
    with pytest.raises(ServingError, match=f"^serving pool at {url} not ready after 0.3s"):
        client.wait_ready(timeout=0.3, poll_interval=0.1)
