"""A small synchronous client for a serving pool that speaks vLLM's API: the embedded fineplat server
in tests and the demo, a vLLM deployment in production. It uses only endpoints vLLM has, so the
promotion sensor and the evaluation code never depend on which one is behind `base_url`.

vLLM only exposes `/v1/load_lora_adapter` and `/v1/unload_lora_adapter` when started with
`--enable-lora` and the environment variable `VLLM_ALLOW_RUNTIME_LORA_UPDATING=True`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

from fineplat.errors import ServingError
from fineplat.serving.errors import AdapterAlreadyLoadedError, ModelNotFoundError

# vLLM's load endpoint answers 400 with this phrase for a duplicate name (serving_models.py).
_DUPLICATE_PHRASE = "has already been loaded"
_LORA_ENDPOINTS = ("/v1/load_lora_adapter", "/v1/unload_lora_adapter")


class ServingPoolClient:
    """Adapter management and completions against `base_url` (the server root, e.g.
    `http://127.0.0.1:8000`; a trailing `/v1` as used by OpenAI clients is accepted too).

    Every failure raises ServingError (ModelNotFoundError for HTTP 404, AdapterAlreadyLoadedError for
    a duplicate adapter name) whose message names the request, the HTTP status and the server's message.
    """

    def __init__(self, base_url: str, timeout: float = 60, *, api_key: str | None = None) -> None:
        self.base_url = base_url.rstrip("/").removesuffix("/v1")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout, headers=headers)

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def __enter__(self) -> ServingPoolClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ readiness

    def health(self) -> bool:
        """True when the server answers `GET /health` with 200 (vLLM: model loaded, engine alive)."""
        try:
            return self._http.get("/health").status_code == 200
        except httpx.HTTPError:
            return False

    def wait_ready(self, timeout: float = 60.0, poll_interval: float = 0.25) -> None:
        """Block until `health()` is true; a server still loading its model is not an error until `timeout`."""
        deadline = time.monotonic() + timeout
        while not self.health():
            if time.monotonic() >= deadline:
                raise ServingError(
                    f"serving pool at {self.base_url} not ready after {timeout:g}s (GET /health); "
                    "check that it is running and that its base model loads."
                )
            time.sleep(poll_interval)

    # ------------------------------------------------------------------ adapters

    def load_adapter(self, name: str, path: str | Path) -> None:
        """Load the LoRA adapter at `path` (a directory the server can read) under `name`. Names are
        unique: reloading a name raises AdapterAlreadyLoadedError; publish new versions under new names."""
        self._request("POST", "/v1/load_lora_adapter", {"lora_name": name, "lora_path": str(path)})

    def unload_adapter(self, name: str) -> None:
        """Unload adapter `name`; ModelNotFoundError if it is not loaded."""
        self._request("POST", "/v1/unload_lora_adapter", {"lora_name": name})

    def model_cards(self) -> list[dict[str, Any]]:
        """The OpenAI model cards of `/v1/models` (adapters carry `parent` = base model id)."""
        return list(self._request("GET", "/v1/models").json()["data"])

    def list_models(self) -> list[str]:
        """Served model ids: the base model first, then every loaded adapter name (vLLM's order)."""
        return [card["id"] for card in self.model_cards()]

    # ------------------------------------------------------------------ generation

    def complete(
        self,
        model: str,
        prompt: str,
        *,
        max_tokens: int = 16,
        temperature: float = 0.0,
        top_p: float = 1.0,
        stop: Sequence[str] | None = None,
        seed: int | None = None,
    ) -> str:
        """The text `model` (base id or adapter name) continues `prompt` with; greedy by default."""
        body = _sampling(model, max_tokens, temperature, top_p, stop, seed) | {"prompt": prompt}
        return str(self._request("POST", "/v1/completions", body).json()["choices"][0]["text"])

    def chat(
        self,
        model: str,
        messages: Sequence[dict[str, Any]],
        *,
        max_tokens: int | None = None,
        temperature: float = 0.0,
        top_p: float = 1.0,
        stop: Sequence[str] | None = None,
        seed: int | None = None,
    ) -> str:
        """The assistant reply of `model` to `messages` (rendered with the server's chat template)."""
        body = _sampling(model, max_tokens, temperature, top_p, stop, seed) | {"messages": list(messages)}
        content = self._request("POST", "/v1/chat/completions", body).json()["choices"][0]["message"][
            "content"
        ]
        return str(content or "")

    # ------------------------------------------------------------------ transport

    def _request(self, method: str, path: str, body: dict[str, Any] | None = None) -> httpx.Response:
        where = f"{method} {self.base_url}{path}"
        try:
            response = self._http.request(method, path, json=body)
        except httpx.HTTPError as exc:
            raise ServingError(
                f"{where}: cannot reach the serving pool ({type(exc).__name__}: {exc}); is it running at {self.base_url}?"
            ) from exc
        if response.is_success:
            return response
        message = _error_message(response)
        text = f"{where} -> HTTP {response.status_code}: {message}"
        if response.status_code == 404 and path in _LORA_ENDPOINTS and message == "Not Found":
            raise ServingError(
                f"{text}. The server has no {path} endpoint; start vLLM with --enable-lora and "
                "VLLM_ALLOW_RUNTIME_LORA_UPDATING=True."
            )
        if response.status_code == 404:
            raise ModelNotFoundError(text)
        if response.status_code == 400 and _DUPLICATE_PHRASE in message:
            raise AdapterAlreadyLoadedError(text)
        raise ServingError(text)


def _sampling(
    model: str,
    max_tokens: int | None,
    temperature: float,
    top_p: float,
    stop: Sequence[str] | None,
    seed: int | None,
) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, "temperature": temperature, "top_p": top_p}
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    if stop:
        body["stop"] = list(stop)
    if seed is not None:
        body["seed"] = seed
    return body


def _error_message(response: httpx.Response) -> str:
    """The server's message from vLLM's current shape {"error": {...}}, its older flat shape
    {"object": "error", "message": ...}, FastAPI's {"detail": ...}, or the raw text."""
    try:
        payload = response.json()
    except ValueError:
        return response.text.strip() or response.reason_phrase
    if isinstance(payload, dict):
        error = payload.get("error")
        if isinstance(error, dict) and "message" in error:
            return str(error["message"])
        if "message" in payload:
            return str(payload["message"])
        if "detail" in payload:
            return str(payload["detail"])
    return response.text.strip()
