"""The jobs that change what the serving pool serves: `deploy_adapter_job` loads one registered
adapter under its unique serving name and promotes it (requested by
`fineplat_assets.serving.sensors.promote_adapters_sensor`); `rollback_adapter_job` restores the
previous production version of an adapter name."""

from dagster import Config, OpExecutionContext, job, op

from fineplat.serving.deploy import deploy_model, rollback
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
