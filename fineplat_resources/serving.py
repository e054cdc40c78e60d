"""The serving pool as a Dagster resource: the promotion sensor and the eval assets reach whichever
pool `base_url` names through one client, so swapping the embedded server for vLLM is configuration."""

from __future__ import annotations

import dagster as dg
from pydantic import Field

from fineplat.serving.client import ServingPoolClient


class ServingPoolResource(dg.ConfigurableResource):
    """A serving pool that speaks vLLM's API (`/v1/load_lora_adapter`, `/v1/unload_lora_adapter`,
    `/v1/models`, OpenAI completions with `model` = adapter name).

    Locally `base_url` points at the embedded CPU server (`fineplat serve`, default port 8000); in
    production at a vLLM deployment started with `--enable-lora` and
    `VLLM_ALLOW_RUNTIME_LORA_UPDATING=True`, whose API key comes from the environment
    (`api_key=dg.EnvVar("VLLM_API_KEY")`). Adapter paths must be readable by the server.
    """

    base_url: str = Field(
        default="http://127.0.0.1:8000",
        description="Server root of the pool, e.g. http://127.0.0.1:8000 (embedded) or http://vllm.serving:8000.",
    )
    timeout_seconds: float = Field(default=60.0, description="Per-request HTTP timeout; generation counts.")
    api_key: str | None = Field(
        default=None, description="Bearer token if the pool requires one (vLLM --api-key)."
    )

    def get_client(self) -> ServingPoolClient:
        """A new client for the pool (use it as a context manager so its connections close)."""
        return ServingPoolClient(self.base_url, timeout=self.timeout_seconds, api_key=self.api_key)
