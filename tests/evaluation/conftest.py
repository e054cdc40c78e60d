"""A real OpenAI-compatible chat-completions server on 127.0.0.1 whose answer is a function of the
request, standing in for a judge or guard model; and the tiny base model loaded once per module."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from fineplat.basemodel import BaseModelInfo, load_base_model, load_tokenizer

Answer = Callable[[list[dict[str, str]]], str]


@dataclass
class ChatServer:
    """The server's /v1 URL, the model name it serves, and every request body it received."""

    base_url: str
    model: str
    requests: list[dict[str, Any]] = field(default_factory=list)


def _handler(answer: Answer, server: ChatServer) -> type[BaseHTTPRequestHandler]:
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            if self.path != "/v1/chat/completions" or body.get("model") != server.model:
                self.send_response(404)
                self.end_headers()
                return
            with lock:
                server.requests.append(body)
            payload = json.dumps(
                {
                    "id": "chatcmpl-test",
                    "object": "chat.completion",
                    "created": 0,
                    "model": server.model,
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": answer(body["messages"])},
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
                }
            ).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

    return Handler


@pytest.fixture
def chat_server() -> Iterator[Callable[[Answer], ChatServer]]:
    """Start servers answering with `answer(messages)`; all are shut down after the test."""
    started: list[ThreadingHTTPServer] = []

    def start(answer: Answer) -> ChatServer:
        record = ChatServer(base_url="", model="judge-model")
        httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(answer, record))
        record.base_url = f"http://127.0.0.1:{httpd.server_address[1]}/v1"
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        started.append(httpd)
        return record

    yield start
    for httpd in started:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture(scope="module")
def tiny_model(tiny_base_model: BaseModelInfo) -> tuple[Any, Any]:
    """The tiny base model and its tokenizer, loaded once per test module."""
    return load_base_model(tiny_base_model.path), load_tokenizer(tiny_base_model.path)
