"""The embedded serving pool's HTTP face: the subset of vLLM's OpenAI-compatible server that fineplat
drives (adapter load/unload, model list, completions, chat completions, health), with vLLM's request
and response shapes and error format, so the promotion sensor and the evaluation code run unchanged
against this CPU server in tests and against a vLLM pool in production.

    python -m fineplat.serving --base-model fineplat-tiny --port 8000
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict
from http import HTTPStatus
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from fineplat.errors import ServingError
from fineplat.serving.engine import GenerationRequest, GenerationResult, MultiLoraEngine
from fineplat.serving.errors import AdapterAlreadyLoadedError, ModelNotFoundError

logger = logging.getLogger(__name__)

# OpenAI's documented default for /v1/completions max_tokens (vLLM uses the same); chat defaults to
# the rest of the context window, as vLLM does.
COMPLETIONS_DEFAULT_MAX_TOKENS = 16
# OpenAI's defaults when a request omits them (vLLM falls back to these too).
DEFAULT_TEMPERATURE = 1.0
DEFAULT_TOP_P = 1.0
OWNED_BY = "fineplat"


# ----------------------------------------------------------------------------- request bodies


class _Body(BaseModel):
    # vLLM accepts (and ignores with a log line) fields it does not know; so do we.
    model_config = ConfigDict(extra="ignore")


class LoadLoRAAdapterRequest(_Body):
    """vLLM's `POST /v1/load_lora_adapter` body."""

    lora_name: str
    lora_path: str
    load_inplace: bool = False  # newer vLLM: replace weights under a loaded name; refused here


class UnloadLoRAAdapterRequest(_Body):
    """vLLM's `POST /v1/unload_lora_adapter` body (`lora_int_id` is accepted and unused, as in vLLM)."""

    lora_name: str
    lora_int_id: int | None = None


class _SamplingBody(_Body):
    model: str
    temperature: float | None = Field(default=None, ge=0)
    top_p: float | None = Field(default=None, gt=0, le=1)
    n: int = 1
    stream: bool = False
    stream_options: dict[str, Any] | None = None  # {"include_usage": true} adds a final usage chunk
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[str, float] | None = None
    user: str | None = None

    def stop_strings(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)

    def unsupported(self) -> list[tuple[str, str]]:
        """(field, reason) for options this pool does not implement: rejected, never silently ignored."""
        problems = []
        if self.n != 1:
            problems.append(
                ("n", f"n={self.n}: the embedded serving pool returns one choice per prompt; send n=1.")
            )
        if self.presence_penalty or self.frequency_penalty:
            problems.append(
                ("presence_penalty", "presence_penalty/frequency_penalty are not supported; send 0.")
            )
        if self.logit_bias:
            problems.append(("logit_bias", "logit_bias is not supported by the embedded serving pool."))
        return problems


class CompletionRequest(_SamplingBody):
    """OpenAI `POST /v1/completions` body (text prompts; one choice per prompt)."""

    prompt: str | list[str]
    max_tokens: int | None = Field(default=COMPLETIONS_DEFAULT_MAX_TOKENS, ge=1)
    echo: bool = False
    logprobs: int | None = None
    best_of: int | None = None
    suffix: str | None = None

    def unsupported(self) -> list[tuple[str, str]]:
        problems = super().unsupported()
        if self.echo:
            problems.append(("echo", "echo=true is not supported by the embedded serving pool."))
        if self.logprobs is not None:
            problems.append(("logprobs", "logprobs are not supported by the embedded serving pool."))
        if self.best_of not in (None, 1):
            problems.append(("best_of", "best_of > 1 is not supported by the embedded serving pool."))
        if self.suffix:
            problems.append(("suffix", "suffix is not supported by the embedded serving pool."))
        if self.stream and not isinstance(self.prompt, str):
            problems.append(
                ("prompt", "stream=true takes a single prompt string; send one request per prompt.")
            )
        return problems


class ChatMessage(_Body):
    """One chat message; `content` may be a string or OpenAI content parts of type "text"."""

    role: str
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None


class ChatCompletionRequest(_SamplingBody):
    """OpenAI `POST /v1/chat/completions` body (`max_completion_tokens` wins over `max_tokens`)."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool = False
    tools: list[dict[str, Any]] | None = None
    response_format: dict[str, Any] | None = None

    def unsupported(self) -> list[tuple[str, str]]:
        problems = super().unsupported()
        if self.logprobs:
            problems.append(("logprobs", "logprobs are not supported by the embedded serving pool."))
        if self.tools:
            problems.append(("tools", "tool calling is not supported by the embedded serving pool."))
        if self.response_format and self.response_format.get("type", "text") != "text":
            problems.append(("response_format", "only response_format {'type': 'text'} is supported."))
        return problems


# ----------------------------------------------------------------------------- errors


def _error(status: int, message: str, err_type: str, param: str | None = None) -> JSONResponse:
    """vLLM's (and OpenAI's) error body: {"error": {"message", "type", "param", "code"}}."""
    body = {"error": {"message": message, "type": err_type, "param": param, "code": status}}
    return JSONResponse(status_code=status, content=body)


def _status_type(status: int) -> str:
    return {
        400: "BadRequestError",
        404: "NotFoundError",
        405: "MethodNotAllowed",
        500: "InternalServerError",
    }.get(status, HTTPStatus(status).phrase.replace(" ", ""))


class _InvalidField(ServingError):
    """A request field this pool rejects; carries the field name for the error's `param`."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ModelNotFoundError)
    async def not_found(_: Request, exc: ModelNotFoundError) -> JSONResponse:
        return _error(404, str(exc), "NotFoundError", exc.param)

    @app.exception_handler(AdapterAlreadyLoadedError)
    async def duplicate(_: Request, exc: AdapterAlreadyLoadedError) -> JSONResponse:
        return _error(400, str(exc), "InvalidUserInput", "lora_name")

    @app.exception_handler(ServingError)
    async def bad_request(_: Request, exc: ServingError) -> JSONResponse:
        return _error(400, str(exc), "BadRequestError", getattr(exc, "param", None))

    @app.exception_handler(RequestValidationError)
    async def invalid_body(_: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI answers 422 with its own shape; vLLM answers 400 in the OpenAI error shape.
        problems, params = [], []
        for error in exc.errors():
            location = [str(part) for part in error.get("loc", ()) if part != "body"]
            params.append(".".join(location) or "body")
            problems.append(f"{params[-1]}: {error.get('msg', 'invalid')}")
        return _error(
            400,
            "; ".join(problems) or "invalid request body",
            "BadRequestError",
            params[0] if params else None,
        )

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail), _status_type(exc.status_code))

    @app.exception_handler(Exception)
    async def internal(_: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error")
        return _error(500, f"internal error: {type(exc).__name__}: {exc}", "InternalServerError")


# ----------------------------------------------------------------------------- app


def _usage(results: list[GenerationResult]) -> dict[str, int]:
    prompt = sum(result.prompt_tokens for result in results)
    completion = sum(result.completion_tokens for result in results)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _reject_unsupported(body: _SamplingBody) -> None:
    problems = body.unsupported()
    if problems:
        raise _InvalidField(*problems[0])


def _message_text(message: ChatMessage) -> str:
    if message.content is None or isinstance(message.content, str):
        return message.content or ""
    parts = []
    for part in message.content:
        if part.get("type") != "text":
            raise _InvalidField(
                "messages", f"content part of type {part.get('type')!r}: only 'text' parts are supported."
            )
        parts.append(str(part.get("text", "")))
    return "".join(parts)


async def _run(engine: MultiLoraEngine, requests: list[GenerationRequest]) -> list[GenerationResult]:
    """Queue every request before awaiting any, so a multi-prompt call is batched with others."""
    futures = [engine.submit(request) for request in requests]
    return [await asyncio.wrap_future(future) for future in futures]


def _sse(payload: dict[str, Any] | str) -> str:
    data = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)
    return f"data: {data}\n\n"


_END_OF_STREAM = object()


def _stream(
    engine: MultiLoraEngine,
    request: GenerationRequest,
    body: _SamplingBody,
    chunk: Callable[[dict[str, Any]], dict[str, Any]],
) -> StreamingResponse:
    """Server-sent events as vLLM and OpenAI send them: one chunk per text delta, a last chunk with
    the finish reason, a usage chunk if `stream_options.include_usage`, then `data: [DONE]`.

    `chunk(choice_fields)` wraps the per-choice fields ({"text"} or {"delta"} plus "finish_reason")
    in the endpoint's chunk object. Validation errors raise before the response starts (plain 400).
    """
    loop = asyncio.get_running_loop()
    pieces: asyncio.Queue[object] = asyncio.Queue()

    def on_text(text: str) -> None:  # called on the engine's batcher thread
        loop.call_soon_threadsafe(pieces.put_nowait, text)

    future = engine.submit(request, on_text=on_text)
    future.add_done_callback(lambda _: loop.call_soon_threadsafe(pieces.put_nowait, _END_OF_STREAM))
    include_usage = bool((body.stream_options or {}).get("include_usage"))

    async def events() -> AsyncIterator[str]:
        while (piece := await pieces.get()) is not _END_OF_STREAM:
            yield _sse(chunk({"text": piece, "finish_reason": None}))
        try:
            result = future.result()
        except Exception as exc:  # the stream has started: report in-band, as vLLM does
            status = 404 if isinstance(exc, ModelNotFoundError) else 500
            yield _sse(
                {"error": {"message": str(exc), "type": _status_type(status), "param": None, "code": status}}
            )
        else:
            yield _sse(chunk({"text": "", "finish_reason": result.finish_reason}))
            if include_usage:
                yield _sse(
                    {**chunk({"text": "", "finish_reason": None}), "choices": [], "usage": _usage([result])}
                )
        yield _sse("[DONE]")

    return StreamingResponse(events(), media_type="text/event-stream")


def create_app(engine: MultiLoraEngine) -> FastAPI:
    """A FastAPI app serving `engine` with vLLM's endpoints. The caller owns and closes the engine."""
    app = FastAPI(
        title="fineplat serving pool", description="vLLM-compatible multi-LoRA serving (embedded, CPU)."
    )
    _install_error_handlers(app)

    @app.get("/health")
    def health() -> Response:
        """200 with an empty body once the model is loaded, as vLLM."""
        return Response(status_code=200)

    @app.get("/v1/models")
    def list_models() -> dict[str, Any]:
        """The base model card, then one card per adapter (`parent` = base id, `root` = lora path)."""
        cards = [
            {
                "id": engine.model_id,
                "object": "model",
                "created": engine.created,
                "owned_by": OWNED_BY,
                "root": str(engine.base_model_dir),
                "parent": None,
                "max_model_len": engine.max_model_len,
                "permission": [],
            }
        ]
        for adapter in engine.adapters():
            cards.append(
                {
                    "id": adapter.name,
                    "object": "model",
                    "created": adapter.created,
                    "owned_by": OWNED_BY,
                    "root": adapter.path,
                    "parent": adapter.parent,
                    "max_model_len": engine.max_model_len,
                    "permission": [],
                }
            )
        return {"object": "list", "data": cards}

    @app.post("/v1/load_lora_adapter")
    def load_lora_adapter(body: LoadLoRAAdapterRequest) -> PlainTextResponse:
        """Load an adapter under a new name (a plain-text success message, as vLLM)."""
        if not body.lora_name or not body.lora_path:
            raise _InvalidField("lora_name", "Both 'lora_name' and 'lora_path' must be provided.")
        if body.load_inplace:
            raise _InvalidField(
                "load_inplace",
                "load_inplace is not supported: adapter names are unique per version; load the new version "
                "under a new name and unload the old one.",
            )
        engine.load_adapter(body.lora_name, body.lora_path)
        return PlainTextResponse(f"Success: LoRA adapter '{body.lora_name}' added successfully.")

    @app.post("/v1/unload_lora_adapter")
    def unload_lora_adapter(body: UnloadLoRAAdapterRequest) -> PlainTextResponse:
        """Unload an adapter by name (a plain-text success message, as vLLM)."""
        engine.unload_adapter(body.lora_name)
        return PlainTextResponse(f"Success: LoRA adapter '{body.lora_name}' removed successfully.")

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest) -> Any:
        """OpenAI text completion; a list of prompts yields one choice per prompt, in order."""
        _reject_unsupported(body)
        prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        if not prompts:
            raise _InvalidField("prompt", "prompt: expected a string or a non-empty list of strings.")
        requests = [
            GenerationRequest(
                model=body.model,
                prompt=prompt,
                max_tokens=body.max_tokens,
                temperature=DEFAULT_TEMPERATURE if body.temperature is None else body.temperature,
                top_p=DEFAULT_TOP_P if body.top_p is None else body.top_p,
                seed=body.seed,
                stop=body.stop_strings(),
            )
            for prompt in prompts
        ]
        completion_id, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
        if body.stream:

            def text_chunk(choice: dict[str, Any]) -> dict[str, Any]:
                return {
                    "id": completion_id,
                    "object": "text_completion",
                    "created": created,
                    "model": body.model,
                    "choices": [{"index": 0, "logprobs": None, **choice}],
                }

            return _stream(engine, requests[0], body, text_chunk)
        results = await _run(engine, requests)
        return {
            "id": completion_id,
            "object": "text_completion",
            "created": created,
            "model": body.model,
            "choices": [
                {"index": index, "text": result.text, "logprobs": None, "finish_reason": result.finish_reason}
                for index, result in enumerate(results)
            ],
            "usage": _usage(results),
        }

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest) -> Any:
        """OpenAI chat completion, rendered with the base model's own chat template."""
        _reject_unsupported(body)
        messages = [{"role": message.role, "content": _message_text(message)} for message in body.messages]
        request = GenerationRequest(
            model=body.model,
            messages=messages,
            max_tokens=body.max_completion_tokens or body.max_tokens,
            temperature=DEFAULT_TEMPERATURE if body.temperature is None else body.temperature,
            top_p=DEFAULT_TOP_P if body.top_p is None else body.top_p,
            seed=body.seed,
            stop=body.stop_strings(),
        )
        completion_id, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        if body.stream:
            first = True

            def chat_chunk(choice: dict[str, Any]) -> dict[str, Any]:
                nonlocal first
                delta: dict[str, Any] = {"content": choice["text"]} if choice["text"] or first else {}
                if first:
                    delta = {"role": "assistant", **delta}
                    first = False
                return {
                    "id": completion_id,
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": body.model,
                    "choices": [
                        {
                            "index": 0,
                            "delta": delta,
                            "logprobs": None,
                            "finish_reason": choice["finish_reason"],
                        }
                    ],
                }

            return _stream(engine, request, body, chat_chunk)
        (result,) = await _run(engine, [request])
        return {
            "id": completion_id,
            "object": "chat.completion",
            "created": created,
            "model": body.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": result.text},
                    "logprobs": None,
                    "finish_reason": result.finish_reason,
                }
            ],
            "usage": _usage([result]),
        }

    @app.get("/stats")
    def stats() -> dict[str, Any]:
        """Batching counters (fineplat only; vLLM's /metrics is Prometheus text, hence another path)."""
        return asdict(engine.stats())

    return app


def run_server(
    base_model: str,
    host: str = "127.0.0.1",
    port: int = 8000,
    adapters: dict[str, str] | None = None,
    *,
    dtype: str = "float32",
    device: str = "cpu",
    max_batch_size: int = 16,
    batch_window_ms: float = 5,
    torch_threads: int | None = None,
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info",
) -> None:
    """Resolve `base_model` (fineplat-tiny, a local directory or a cached hub id), load the initial
    adapters, and serve until interrupted. The served model id is the name as given, as in vLLM.

    `torch_threads` caps CPU intra-op threads: a tiny model decodes several times faster on 1 thread
    than on a contended many-thread pool (measured 5 ms vs 50 ms per token on a shared 2-core box)."""
    import torch
    import uvicorn

    from fineplat.basemodel import resolve_base_model

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if torch_threads:
        torch.set_num_threads(torch_threads)
    info = resolve_base_model(base_model)
    with MultiLoraEngine(
        info.path,
        served_model_name=info.name,
        dtype=dtype,
        device=device,
        max_batch_size=max_batch_size,
        batch_window_ms=batch_window_ms,
    ) as engine:
        for name, path in (adapters or {}).items():
            engine.load_adapter(name, path)
        uvicorn.run(create_app(engine), host=host, port=port, log_level=log_level)
