"""Promotion into the serving pool: load an adapter under its unique serving name, move it to
production, unload the version it replaced (hot swap); and rollback, which restores the previous
production version the same way. The registry is the source of truth; the pool follows it."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote, urlparse

from fineplat.errors import RegistryError
from fineplat.registry import ModelArtifact, Registry
from fineplat.serving.client import ServingPoolClient


@dataclass
class DeployResult:
    """What a deploy or rollback changed."""

    model_id: str
    serving_name: str
    loaded: bool  # False when the pool already had it (a retried deploy)
    replaced: list[str]  # serving names unloaded


def adapter_path(uri: str) -> str:
    """The path the pool loads from: a local path for file:// URIs, the URI itself otherwise."""
    parsed = urlparse(uri)
    return unquote(parsed.path) if parsed.scheme == "file" else uri


def was_in_production(registry: Registry, model_id: str) -> bool:
    """Whether the model has ever been in production (then staging means it was rolled back)."""
    return any(change.to_stage == "production" for change in registry.stage_history(model_id))


def deployable_models(registry: Registry) -> list[ModelArtifact]:
    """Models waiting for their first deployment: in staging, gates passed, never in production."""
    return [
        m
        for m in registry.list_models(stage="staging")
        if m.gates_passed and m.kind == "lora" and not was_in_production(registry, m.id)
    ]


def _swap_in(
    registry: Registry, client: ServingPoolClient, model: ModelArtifact, actor: str, reason: str
) -> DeployResult:
    if not model.serving_name:
        raise RegistryError(f"model {model.id} has no serving_name; re-register it")
    served = set(client.list_models())
    loaded = model.serving_name not in served
    if loaded:
        client.load_adapter(model.serving_name, adapter_path(model.uri))
    previous = [m for m in registry.list_models(stage="production", name=model.name) if m.id != model.id]
    registry.transition(model.id, "production", actor=actor, reason=reason)
    replaced = []
    for old in previous:
        if old.serving_name and old.serving_name in served:
            client.unload_adapter(old.serving_name)
            replaced.append(old.serving_name)
    return DeployResult(model.id, model.serving_name, loaded, replaced)


def deploy_model(
    registry: Registry, client: ServingPoolClient, model_id: str, *, actor: str = "fineplat-sensor"
) -> DeployResult:
    """Load `model_id` into the pool and make it the production version of its name."""
    model = registry.get_model(model_id)
    if model.stage == "production":
        served = set(client.list_models())
        if model.serving_name and model.serving_name not in served:
            client.load_adapter(model.serving_name, adapter_path(model.uri))
            return DeployResult(model.id, model.serving_name, True, [])
        return DeployResult(model.id, model.serving_name or "", False, [])
    return _swap_in(registry, client, model, actor, "deployed to the serving pool")


def rollback(
    registry: Registry, client: ServingPoolClient, name: str, *, actor: str = "fineplat-cli"
) -> DeployResult:
    """Put back the most recent earlier production version of `name` and unload the current one."""
    candidates = sorted(
        (m for m in registry.list_models(stage="staging", name=name) if was_in_production(registry, m.id)),
        key=lambda m: (m.updated_at, m.version),
        reverse=True,
    )
    if not candidates:
        raise RegistryError(
            f"{name}: no earlier production version to roll back to (see `fineplat registry list`)"
        )
    return _swap_in(registry, client, candidates[0], actor, "rollback")
