"""The embedded serving pool's HTTP face: the subset of vLLM's OpenAI-compatible server that fineplat
drives (adapter load/unload, model list, completions, chat completions, health), with vLLM's request
and response shapes and error format, so the promotion sensor and the evaluation code run unchanged
against this CPU server in tests and against a vLLM pool in production.

    python -m fineplat.serving --base-model fineplat-tiny --port 8000
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from http import HTTPStatus
from typing import Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from fineplat.errors import ServingError
from fineplat.serving.engine import EngineStats, GenerationRequest, GenerationResult, MultiLoraEngine
from fineplat.serving.errors import AdapterAlreadyLoadedError, ModelNotFoundError
from fineplat.serving.protocol import (
    ChatCompletionMessageParam,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatCompletionResponseChoice,
    ChatCompletionResponseStreamChoice,
    ChatCompletionStreamResponse,
    ChatMessage,
    CompletionRequest,
    CompletionResponse,
    CompletionResponseChoice,
    CompletionStreamResponse,
    DeltaMessage,
    ErrorInfo,
    ErrorResponse,
    FinishReason,
    LoadLoRAAdapterRequest,
    ModelCard,
    ModelList,
    SamplingRequest,
    UnloadLoRAAdapterRequest,
    UsageInfo,
)

logger = logging.getLogger(__name__)

# OpenAI's defaults when a request omits them (vLLM falls back to these too).
DEFAULT_TEMPERATURE = 1.0
DEFAULT_TOP_P = 1.0


# ----------------------------------------------------------------------------- errors


def _error_body(status: int, message: str, err_type: str, param: str | None = None) -> ErrorResponse:
    return ErrorResponse(error=ErrorInfo(message=message, type=err_type, param=param, code=status))


def _error(status: int, message: str, err_type: str, param: str | None = None) -> JSONResponse:
    """An error answered in vLLM's (and OpenAI's) shape, `ErrorResponse`."""
    return JSONResponse(
        status_code=status, content=_error_body(status, message, err_type, param).model_dump()
    )


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


def _usage(results: list[GenerationResult]) -> UsageInfo:
    return UsageInfo.of(
        sum(result.prompt_tokens for result in results), sum(result.completion_tokens for result in results)
    )


def _reject_unsupported(body: SamplingRequest) -> None:
    problems = body.unsupported()
    if problems:
        raise _InvalidField(*problems[0])


def _message_text(message: ChatCompletionMessageParam) -> str:
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


def _generation_request(
    body: SamplingRequest,
    max_tokens: int | None,
    *,
    prompt: str | None = None,
    messages: list[dict[str, str]] | None = None,
) -> GenerationRequest:
    """The engine request for one prompt or conversation, with OpenAI's defaults for what was omitted."""
    return GenerationRequest(
        model=body.model,
        prompt=prompt,
        messages=messages,
        max_tokens=max_tokens,
        temperature=DEFAULT_TEMPERATURE if body.temperature is None else body.temperature,
        top_p=DEFAULT_TOP_P if body.top_p is None else body.top_p,
        seed=body.seed,
        stop=body.stop_strings(),
    )


async def _run(engine: MultiLoraEngine, requests: list[GenerationRequest]) -> list[GenerationResult]:
    """Queue every request before awaiting any, so a multi-prompt call is batched with others."""
    futures = [engine.submit(request) for request in requests]
    return [await asyncio.wrap_future(future) for future in futures]


StreamChunk = CompletionStreamResponse | ChatCompletionStreamResponse


def _sse(payload: StreamChunk | ErrorResponse | str) -> str:
    data = payload if isinstance(payload, str) else payload.model_dump_json()
    return f"data: {data}\n\n"


_END_OF_STREAM = object()


def _stream(
    engine: MultiLoraEngine,
    request: GenerationRequest,
    body: SamplingRequest,
    chunk: Callable[[str, FinishReason | None], StreamChunk],
) -> StreamingResponse:
    """Server-sent events as vLLM and OpenAI send them: one chunk per text delta, a last chunk with
    the finish reason, a usage chunk if `stream_options.include_usage`, then `data: [DONE]`.

    `chunk(text, finish_reason)` builds the endpoint's chunk. Validation errors raise before the
    response starts (plain 400); an engine failure after it started is sent in-band, as vLLM does.
    """
    loop = asyncio.get_running_loop()
    pieces: asyncio.Queue[object] = asyncio.Queue()

    def on_text(text: str) -> None:  # called on the engine's batcher thread
        loop.call_soon_threadsafe(pieces.put_nowait, text)

    future = engine.submit(request, on_text=on_text)
    future.add_done_callback(lambda _: loop.call_soon_threadsafe(pieces.put_nowait, _END_OF_STREAM))

    async def events() -> AsyncIterator[str]:
        while (piece := await pieces.get()) is not _END_OF_STREAM:
            yield _sse(chunk(str(piece), None))
        try:
            result = future.result()
        except Exception as exc:
            status = 404 if isinstance(exc, ModelNotFoundError) else 500
            yield _sse(_error_body(status, str(exc), _status_type(status)))
        else:
            yield _sse(chunk("", result.finish_reason))
            if body.include_usage():
                yield _sse(chunk("", None).model_copy(update={"choices": [], "usage": _usage([result])}))
        yield _sse("[DONE]")

    return StreamingResponse(events(), media_type="text/event-stream")


def create_app(engine: MultiLoraEngine) -> FastAPI:
    """A FastAPI app serving `engine` with vLLM's endpoints. The caller owns and closes the engine.
    Bodies in and out are the models of `fineplat.serving.protocol`; the routes only translate."""
    app = FastAPI(
        title="fineplat serving pool",
        description="vLLM-compatible multi-LoRA serving (embedded, CPU).",
        responses={status: {"model": ErrorResponse} for status in (400, 404, 500)},
    )
    _install_error_handlers(app)

    @app.get("/health")
    def health() -> Response:
        """200 with an empty body once the model is loaded, as vLLM."""
        return Response(status_code=200)

    @app.get("/v1/models")
    def list_models() -> ModelList:
        """The base model card, then one card per adapter (`parent` = base id, `root` = lora path)."""
        base = ModelCard(
            id=engine.model_id,
            created=engine.created,
            root=str(engine.base_model_dir),
            max_model_len=engine.max_model_len,
        )
        adapters = [
            ModelCard(
                id=adapter.name,
                created=adapter.created,
                root=adapter.path,
                parent=adapter.parent,
                max_model_len=engine.max_model_len,
            )
            for adapter in engine.adapters()
        ]
        return ModelList(data=[base, *adapters])

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

    @app.post("/v1/completions", response_model=CompletionResponse)
    async def completions(body: CompletionRequest) -> CompletionResponse | StreamingResponse:
        """OpenAI text completion; a list of prompts yields one choice per prompt, in order."""
        _reject_unsupported(body)
        prompts = body.prompts()
        if not prompts:
            raise _InvalidField("prompt", "prompt: expected a string or a non-empty list of strings.")
        requests = [_generation_request(body, body.max_tokens, prompt=prompt) for prompt in prompts]
        completion_id, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
        if body.stream:

            def text_chunk(text: str, finish_reason: FinishReason | None) -> CompletionStreamResponse:
                choice = CompletionResponseChoice(index=0, text=text, finish_reason=finish_reason)
                return CompletionStreamResponse(
                    id=completion_id, created=created, model=body.model, choices=[choice]
                )

            return _stream(engine, requests[0], body, text_chunk)
        results = await _run(engine, requests)
        return CompletionResponse(
            id=completion_id,
            created=created,
            model=body.model,
            choices=[
                CompletionResponseChoice(index=index, text=result.text, finish_reason=result.finish_reason)
                for index, result in enumerate(results)
            ],
            usage=_usage(results),
        )

    @app.post("/v1/chat/completions", response_model=ChatCompletionResponse)
    async def chat_completions(body: ChatCompletionRequest) -> ChatCompletionResponse | StreamingResponse:
        """OpenAI chat completion, rendered with the base model's own chat template."""
        _reject_unsupported(body)
        messages = [{"role": message.role, "content": _message_text(message)} for message in body.messages]
        request = _generation_request(body, body.max_completion_tokens or body.max_tokens, messages=messages)
        completion_id, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        if body.stream:
            first = True

            def chat_chunk(text: str, finish_reason: FinishReason | None) -> ChatCompletionStreamResponse:
                nonlocal first
                # The first chunk carries the role; a later chunk without new text has an empty delta.
                delta = (
                    DeltaMessage(role="assistant", content=text)
                    if first
                    else DeltaMessage(content=text or None)
                )
                first = False
                choice = ChatCompletionResponseStreamChoice(index=0, delta=delta, finish_reason=finish_reason)
                return ChatCompletionStreamResponse(
                    id=completion_id, created=created, model=body.model, choices=[choice]
                )

            return _stream(engine, request, body, chat_chunk)
        (result,) = await _run(engine, [request])
        return ChatCompletionResponse(
            id=completion_id,
            created=created,
            model=body.model,
            choices=[
                ChatCompletionResponseChoice(
                    index=0, message=ChatMessage(content=result.text), finish_reason=result.finish_reason
                )
            ],
            usage=_usage([result]),
        )

    @app.get("/stats")
    def stats() -> EngineStats:
        """Batching counters (fineplat only; vLLM's /metrics is Prometheus text, hence another path)."""
        return engine.stats()

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
