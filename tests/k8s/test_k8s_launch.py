"""launch_kubernetes_training end to end: a Dagster asset launches the trainer through dagster-k8s's
PipesK8sClient against a fake Kubernetes API on 127.0.0.1 whose fake kubelet runs the container command
as a real process. What the cluster does to the pod decides the exit code the asset sees."""

import sys
import time
from typing import Any

from dagster import AssetExecutionContext, MaterializeResult, asset, materialize
from fake_kube_api import FakeCluster, container_status

from fineplat.training.constants import PREEMPTED_EXIT_CODE
from fineplat_resources.k8s import launch_kubernetes_training
from k8s_ops.job_spec import LABEL_DAGSTER_RUN_ID, LABEL_LAUNCH_ID, GpuJobSpec

# The "trainer": reports a checkpoint and a materialization over Pipes (stderr -> pod logs), then exits as told.
TRAINER = """
import sys, time
from dagster_pipes import open_dagster_pipes
with open_dagster_pipes() as pipes:
    pipes.log.info("step 3 loss 0.5")
    pipes.report_custom_message({"checkpoint": "s3://fineplat-prod/jobs/ft-launch/step-3"})
    pipes.report_asset_materialization(metadata={"final_loss": 0.5, "steps": 3})
time.sleep(60 if sys.argv[1] == "sleep" else 1)  # long enough to be seen running, as a real trainer is
sys.exit(int(sys.argv[1]))
"""
POLL_S = 0.2


def trainer_spec(mode: str) -> GpuJobSpec:
    return GpuJobSpec(
        job_id="ft-launch",
        image="fineplat/trainer:test",
        command=[sys.executable, "-c", TRAINER, mode],
        spot=True,
        on_demand_fallback=True,
        namespace="fineplat-training",
    )


def run_asset(kubeconfig: str, spec: GpuJobSpec) -> dict[str, Any]:
    """Materialize one asset that launches `spec`; return what the launcher gave back."""
    outcome: dict[str, Any] = {}

    @asset
    def checkpoints(context: AssetExecutionContext) -> MaterializeResult:
        started = time.monotonic()
        code, invocation = launch_kubernetes_training(
            context,
            spec=spec,
            extras={"job_id": spec.job_id},
            kube_config=kubeconfig,
            namespace=None,
            poll_interval_s=POLL_S,
        )
        outcome.update(
            code=code,
            reported=invocation.get_results(implicit_materializations=False),
            custom=list(invocation.get_custom_messages()),
            run_id=context.run_id,
            seconds=time.monotonic() - started,
        )
        return MaterializeResult(metadata={"exit_code": code})

    assert materialize([checkpoints]).success
    return outcome


def run_to_completion(cluster: FakeCluster, name: str) -> None:
    time.sleep(0.3)  # scheduling + image pull
    cluster.finish_container(name, cluster.start_container(name))


def test_success_returns_zero_and_the_trainers_pipes_reports(fake_cluster: tuple[FakeCluster, str]) -> None:
    cluster, kubeconfig = fake_cluster
    cluster.behaviour = run_to_completion

    outcome = run_asset(kubeconfig, trainer_spec("0"))

    assert outcome["code"] == 0
    [reported] = outcome["reported"]
    assert reported.metadata["final_loss"].value == 0.5
    assert reported.metadata["steps"].value == 3
    # What PipesK8sClient actually sent: our pod shape plus the Pipes bootstrap environment.
    [body] = cluster.created
    labels = body["metadata"]["labels"]
    assert labels[LABEL_DAGSTER_RUN_ID] == outcome["run_id"]
    assert len(labels[LABEL_LAUNCH_ID]) == 32
    assert labels["app.kubernetes.io/part-of"] == "fineplat"
    assert body["metadata"]["annotations"]["cluster-autoscaler.kubernetes.io/safe-to-evict"] == "false"
    assert body["spec"]["restartPolicy"] == "Never"
    assert body["spec"]["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"}
    env_names = [item["name"] for item in body["spec"]["containers"][0]["env"]]
    assert {"FINEPLAT_JOB_ID", "DAGSTER_PIPES_CONTEXT", "DAGSTER_PIPES_MESSAGES"} <= set(env_names)
    # The launcher removes its pod (PipesK8sClient was told not to, so the status could be read).
    assert cluster.deleted == [body["metadata"]["name"]]
    assert cluster.pods == {}


def test_trainer_exit_75_is_a_preemption(fake_cluster: tuple[FakeCluster, str]) -> None:
    cluster, kubeconfig = fake_cluster
    cluster.behaviour = run_to_completion

    outcome = run_asset(kubeconfig, trainer_spec(str(PREEMPTED_EXIT_CODE)))

    assert outcome["code"] == PREEMPTED_EXIT_CODE
    # What the trainer reported before it exited still reaches the asset (where to resume from).
    assert outcome["custom"] == [{"checkpoint": "s3://fineplat-prod/jobs/ft-launch/step-3"}]
    assert cluster.pods == {}


def test_trainer_crash_is_a_failure_with_its_exit_code(fake_cluster: tuple[FakeCluster, str]) -> None:
    cluster, kubeconfig = fake_cluster
    cluster.behaviour = run_to_completion

    outcome = run_asset(kubeconfig, trainer_spec("3"))

    assert outcome["code"] == 3


def test_pod_deleted_while_pending_is_a_preemption_not_a_hang(fake_cluster: tuple[FakeCluster, str]) -> None:
    """dagster#22453: PipesK8sClient alone keeps 'waiting for pod to launch' for 24 h here."""
    cluster, kubeconfig = fake_cluster

    def delete_while_pending(cluster: FakeCluster, name: str) -> None:
        cluster.set_status(
            name,
            {
                "phase": "Pending",
                "conditions": [
                    {
                        "type": "PodScheduled",
                        "status": "False",
                        "reason": "Unschedulable",
                        "message": "0/12 nodes are available: 12 Insufficient nvidia.com/gpu.",
                    }
                ],
            },
        )
        time.sleep(1.0)
        cluster.delete(name)

    cluster.behaviour = delete_while_pending

    outcome = run_asset(kubeconfig, trainer_spec("0"))

    assert (outcome["code"], outcome["custom"]) == (PREEMPTED_EXIT_CODE, [])
    assert outcome["seconds"] < 10


def test_eviction_while_running_is_a_preemption(fake_cluster: tuple[FakeCluster, str]) -> None:
    cluster, kubeconfig = fake_cluster

    def evict_while_running(cluster: FakeCluster, name: str) -> None:
        time.sleep(0.3)
        process = cluster.start_container(name)
        time.sleep(1.5)
        process.kill()
        process.wait()
        cluster.set_status(
            name,
            {
                "phase": "Failed",
                "reason": "Evicted",
                "message": "The node was low on resource: memory. Threshold quantity: 100Mi, available: 80Mi. ",
                "conditions": [
                    {
                        "type": "DisruptionTarget",
                        "status": "True",
                        "reason": "TerminationByKubelet",
                        "message": "The node was low on resource: memory.",
                    }
                ],
                "containerStatuses": [
                    container_status(
                        {
                            "terminated": {
                                "exitCode": 137,
                                "reason": "ContainerStatusUnknown",
                                "message": "The container could not be located when the pod was terminated",
                            }
                        }
                    )
                ],
            },
        )

    cluster.behaviour = evict_while_running

    outcome = run_asset(kubeconfig, trainer_spec("sleep"))

    assert outcome["code"] == PREEMPTED_EXIT_CODE
    assert outcome["custom"] == [{"checkpoint": "s3://fineplat-prod/jobs/ft-launch/step-3"}]
    assert cluster.pods == {}
