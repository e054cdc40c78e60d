"""The serving pool's wire contract: every request and response body of the vLLM / OpenAI endpoints
that fineplat serves, as typed pydantic models (the split vLLM makes in its
`entrypoints/openai/protocol.py`). The routes in `fineplat.serving.server` only translate between
these models and the engine, so the wire format is read in one place and a field the OpenAI client
expects cannot go missing from one route. Plain pydantic, no torch: a client may import it.

Requests ignore fields they do not know, as vLLM does; options the embedded pool does not implement
are listed by `unsupported()` so the server rejects them by name instead of silently ignoring them.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

# OpenAI's documented default for /v1/completions max_tokens (vLLM uses the same); chat defaults to
# the rest of the context window, as vLLM does.
COMPLETIONS_DEFAULT_MAX_TOKENS = 16
# `owned_by` of every model card this pool serves.
OWNED_BY = "fineplat"

# "stop": the end-of-turn token or a stop string ended generation; "length": max_tokens was reached.
FinishReason = Literal["stop", "length"]


def _is_none(value: object) -> bool:
    return value is None


# ----------------------------------------------------------------------------- errors


class ErrorInfo(BaseModel):
    """What went wrong: `param` names the request field at fault, `code` repeats the HTTP status."""

    message: str
    type: str  # e.g. "BadRequestError", "NotFoundError", "InvalidUserInput"
    param: str | None = None
    code: int


class ErrorResponse(BaseModel):
    """vLLM's (and OpenAI's) error body: {"error": {"message", "type", "param", "code"}}."""

    error: ErrorInfo


# ----------------------------------------------------------------------------- request bodies


class _Request(BaseModel):
    # vLLM accepts (and ignores with a log line) fields it does not know; so do we.
    model_config = ConfigDict(extra="ignore")


class LoadLoRAAdapterRequest(_Request):
    """vLLM's `POST /v1/load_lora_adapter` body."""

    lora_name: str
    lora_path: str
    load_inplace: bool = False  # newer vLLM: replace weights under a loaded name; refused here


class UnloadLoRAAdapterRequest(_Request):
    """vLLM's `POST /v1/unload_lora_adapter` body (`lora_int_id` is accepted and unused, as in vLLM)."""

    lora_name: str
    lora_int_id: int | None = None


class StreamOptions(_Request):
    """OpenAI's `stream_options`: `include_usage` adds a final chunk with the token counts."""

    include_usage: bool = False


class SamplingRequest(_Request):
    """The fields completions and chat completions share: model, sampling, stop strings, streaming."""

    model: str
    temperature: float | None = Field(default=None, ge=0)
    top_p: float | None = Field(default=None, gt=0, le=1)
    n: int = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[str, float] | None = None
    user: str | None = None

    def stop_strings(self) -> tuple[str, ...]:
        """`stop` as a tuple, whether it was sent as one string, a list or not at all."""
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)

    def include_usage(self) -> bool:
        """Whether a stream ends with a usage chunk."""
        return self.stream_options is not None and self.stream_options.include_usage

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


class CompletionRequest(SamplingRequest):
    """OpenAI `POST /v1/completions` body (text prompts; one choice per prompt)."""

    prompt: str | list[str]
    max_tokens: int | None = Field(default=COMPLETIONS_DEFAULT_MAX_TOKENS, ge=1)
    echo: bool = False
    logprobs: int | None = None
    best_of: int | None = None
    suffix: str | None = None

    def prompts(self) -> list[str]:
        """The prompts in order: one for a string, each element for a list."""
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)

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


class ChatCompletionMessageParam(_Request):
    """One chat message of a request; `content` may be a string or OpenAI content parts of type "text"."""

    role: str
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None


class ChatCompletionRequest(SamplingRequest):
    """OpenAI `POST /v1/chat/completions` body (`max_completion_tokens` wins over `max_tokens`)."""

    messages: list[ChatCompletionMessageParam] = Field(min_length=1)
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


# ----------------------------------------------------------------------------- response bodies


class ModelCard(BaseModel):
    """One served model in `/v1/models`: the base (`parent` None) or an adapter (`parent` = base id,
    `root` = the adapter path as loaded), as vLLM lists them."""

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = OWNED_BY
    root: str
    parent: str | None = None
    max_model_len: int
    permission: list[dict[str, Any]] = Field(default_factory=list)


class ModelList(BaseModel):
    """`GET /v1/models`: the base model first, then every loaded adapter."""

    object: Literal["list"] = "list"
    data: list[ModelCard]


class UsageInfo(BaseModel):
    """Token counts of a response (completion tokens include the end-of-turn token, as vLLM counts)."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int

    @classmethod
    def of(cls, prompt_tokens: int, completion_tokens: int) -> UsageInfo:
        """Usage with the total filled in."""
        return cls(
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            total_tokens=prompt_tokens + completion_tokens,
        )


class CompletionResponseChoice(BaseModel):
    """One prompt's completion (in a stream: one text delta; `finish_reason` set on the last)."""

    index: int
    text: str
    logprobs: None = None
    finish_reason: FinishReason | None = None


class CompletionResponse(BaseModel):
    """`POST /v1/completions` without streaming: one choice per prompt, in prompt order."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionResponseChoice]
    usage: UsageInfo


class CompletionStreamResponse(BaseModel):
    """One server-sent chunk of a streamed completion; the optional last one has no choices and
    carries `usage` (absent from the others, as vLLM sends them)."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionResponseChoice]
    usage: UsageInfo | None = Field(default=None, exclude_if=_is_none)


class ChatMessage(BaseModel):
    """The assistant's reply in a chat completion."""

    role: Literal["assistant"] = "assistant"
    content: str | None = None


class ChatCompletionResponseChoice(BaseModel):
    """The one choice of a chat completion."""

    index: int
    message: ChatMessage
    logprobs: None = None
    finish_reason: FinishReason | None = None


class ChatCompletionResponse(BaseModel):
    """`POST /v1/chat/completions` without streaming."""

    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatCompletionResponseChoice]
    usage: UsageInfo


class DeltaMessage(BaseModel):
    """What a chat chunk adds: the role on the first chunk, then content; fields not sent are absent
    (an empty `{}` on the last chunk), as OpenAI and vLLM send them."""

    role: Literal["assistant"] | None = Field(default=None, exclude_if=_is_none)
    content: str | None = Field(default=None, exclude_if=_is_none)


class ChatCompletionResponseStreamChoice(BaseModel):
    """The one choice of a chat chunk; `finish_reason` is set on the last content chunk."""

    index: int
    delta: DeltaMessage
    logprobs: None = None
    finish_reason: FinishReason | None = None


class ChatCompletionStreamResponse(BaseModel):
    """One server-sent chunk of a streamed chat completion (the optional usage chunk as for text)."""

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatCompletionResponseStreamChoice]
    usage: UsageInfo | None = Field(default=None, exclude_if=_is_none)
