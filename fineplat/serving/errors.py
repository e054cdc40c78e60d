"""The serving pool's two failure classes that callers act on differently from a plain `ServingError`:
a name that does not exist (HTTP 404: retrying will not help, load it first) and a name that is already
loaded (HTTP 400 in vLLM: the promotion sensor treats it as "already deployed", never as a reload,
because vLLM serves a stale cache when a name is reloaded)."""

from __future__ import annotations

from fineplat.errors import ServingError


class ModelNotFoundError(ServingError):
    """The named model, adapter or adapter directory does not exist (HTTP 404, vLLM's NotFoundError).
    `param` names the request field that held the name ("model" for completions), as vLLM reports it."""

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class AdapterAlreadyLoadedError(ServingError):
    """An adapter with this name is already loaded; adapter names are unique per version (HTTP 400)."""
