"""The promotion path into the serving pool: `promote_adapters_sensor` watches the registry for
adapters that passed their gates and requests one `deploy_adapter_job` run per adapter (run key =
model id, so each deploys once); `rollback_adapter_job` restores the previous production version."""

from dagster import (
    Config,
    OpExecutionContext,
    RunRequest,
    SensorEvaluationContext,
    SkipReason,
    job,
    op,
    sensor,
)

from fineplat.errors import ServingError
from fineplat.serving.deploy import deploy_model, deployable_models, rollback
from fineplat_resources.registry import RegistryResource
from fineplat_resources.serving import ServingPoolResource


class DeployConfig(Config):
    """Which registered model to deploy."""

    model_id: str


class RollbackConfig(Config):
    """Which adapter name to roll back to its previous production version."""

    name: str


@op
def deploy_adapter(
    context: OpExecutionContext,
    config: DeployConfig,
    registry: RegistryResource,
    serving: ServingPoolResource,
) -> str:
    """Load the adapter into the pool under its unique serving name and promote it to production."""
    with serving.get_client() as client:
        result = deploy_model(registry.get_registry(), client, config.model_id)
    context.log.info(
        f"deployed {result.model_id} as {result.serving_name}; replaced {result.replaced or 'nothing'}"
    )
    context.add_output_metadata(
        {"serving_name": result.serving_name, "replaced": ", ".join(result.replaced) or "none"}
    )
    return result.serving_name


@op
def rollback_adapter(
    context: OpExecutionContext,
    config: RollbackConfig,
    registry: RegistryResource,
    serving: ServingPoolResource,
) -> str:
    """Swap the previous production version of `name` back into the pool."""
    with serving.get_client() as client:
        result = rollback(registry.get_registry(), client, config.name, actor="dagster")
    context.log.info(f"rolled back {config.name} to {result.serving_name}; unloaded {result.replaced}")
    return result.serving_name


@job(tags={"fineplat/kind": "deploy"})
def deploy_adapter_job() -> None:
    """Deploy one registered adapter to the serving pool."""
    deploy_adapter()


@job(tags={"fineplat/kind": "deploy"})
def rollback_adapter_job() -> None:
    """Roll one adapter name back to its previous production version."""
    rollback_adapter()


@sensor(job=deploy_adapter_job, minimum_interval_seconds=30)
def promote_adapters_sensor(
    context: SensorEvaluationContext, registry: RegistryResource, serving: ServingPoolResource
):  # type: ignore[no-untyped-def]
    """Request a deploy run for every adapter in staging that passed its gates and was never
    served, and a reload for every production adapter the pool does not serve (a restarted pool
    comes back to what the registry says is in production)."""
    reg = registry.get_registry()
    requests = [
        RunRequest(
            run_key=model.id,
            run_config={"ops": {"deploy_adapter": {"config": {"model_id": model.id}}}},
            tags={"fineplat/model_id": model.id, "fineplat/adapter": model.name},
        )
        for model in deployable_models(reg)
    ]
    try:
        with serving.get_client() as client:
            served = set(client.list_models())
    except (ServingError, OSError) as exc:
        context.log.warning(f"serving pool unreachable ({exc}); only new deployments are requested")
        served = None
    if served is not None:
        for model in reg.list_models(stage="production"):
            if model.kind == "lora" and model.serving_name and model.serving_name not in served:
                requests.append(
                    RunRequest(
                        run_key=None,  # a reload is idempotent (deploy_model loads only what is missing)
                        run_config={"ops": {"deploy_adapter": {"config": {"model_id": model.id}}}},
                        tags={
                            "fineplat/model_id": model.id,
                            "fineplat/adapter": model.name,
                            "fineplat/reason": "reload",
                        },
                    )
                )
    if not requests:
        yield SkipReason("the serving pool matches the registry")
        return
    yield from requests
