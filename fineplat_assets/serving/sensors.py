"""The promotion path into the serving pool: `promote_adapters_sensor` watches the registry for
adapters that passed their gates and requests one `deploy_adapter_job` run per adapter (run key =
model id, so each deploys once), and a reload for production adapters a restarted pool lost."""

from dagster import RunRequest, SensorEvaluationContext, SkipReason, sensor

from fineplat.errors import ServingError
from fineplat.serving.deploy import deployable_models
from fineplat_assets.serving.jobs import deploy_adapter_job
from fineplat_resources.registry import RegistryResource
from fineplat_resources.serving import ServingPoolResource


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
