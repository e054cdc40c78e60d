"""One client for the model endpoints evaluation talks to (the pairwise judge, the safety guard):
any OpenAI-compatible chat-completions server — vLLM, fineplat's own serving pool, a hosted API.
Failures become EvaluationError naming the URL and model, so a gate never passes on a judge that
did not answer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fineplat.errors import EvaluationError


@dataclass(frozen=True)
class ChatEndpoint:
    """An OpenAI-compatible chat-completions endpoint and the model to ask there."""

    base_url: str  # up to and including /v1, e.g. http://vllm-judge:8000/v1
    model: str  # the served model name (vLLM: --served-model-name)
    api_key: str = "EMPTY"  # vLLM and the embedded pool ignore it; hosted APIs need one
    timeout_s: float = 60.0
    max_retries: int = 2  # the client's own retries on connection errors, 429 and 5xx

    def client(self) -> Any:
        """An `openai.OpenAI` client for this endpoint."""
        import openai

        return openai.OpenAI(
            base_url=self.base_url, api_key=self.api_key, timeout=self.timeout_s, max_retries=self.max_retries
        )

    def complete(self, messages: list[dict[str, str]], *, max_tokens: int, client: Any = None) -> str:
        """The text of the first choice of a greedy (temperature 0) chat completion."""
        import openai

        client = client or self.client()
        try:
            response = client.chat.completions.create(
                model=self.model, messages=messages, temperature=0.0, max_tokens=max_tokens
            )
        except openai.OpenAIError as exc:
            raise EvaluationError(
                f"{self.base_url} (model {self.model!r}): chat completion failed ({type(exc).__name__}: {exc}); "
                "check that the endpoint is up and serves this model name."
            ) from exc
        if not response.choices:
            raise EvaluationError(f"{self.base_url} (model {self.model!r}): the completion had no choices.")
        return response.choices[0].message.content or ""
