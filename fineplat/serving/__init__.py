"""Serving: the embedded multi-LoRA pool that speaks vLLM's API (`engine`, `server`, `cli`, with
every request and response body typed in `protocol`), the client that drives it or a real vLLM pool
(`client`), and a helper that runs it as a subprocess (`embedded`). Only light modules are
re-exported here, so importing the client never loads torch."""

from fineplat.serving.client import ServingPoolClient
from fineplat.serving.embedded import EmbeddedServingPool, free_port
from fineplat.serving.errors import AdapterAlreadyLoadedError, ModelNotFoundError

__all__ = [
    "AdapterAlreadyLoadedError",
    "EmbeddedServingPool",
    "ModelNotFoundError",
    "ServingPoolClient",
    "free_port",
]
