"""classify_pod on pod status JSON as the Kubernetes API returns it for each way a training pod ends, and
the PodWatcher's decisions over a sequence of snapshots (injected reader, injected clock)."""

from __future__ import annotations

import json
import threading
from types import SimpleNamespace
from typing import Any

import kubernetes
import pytest

from fineplat.training.constants import PREEMPTED_EXIT_CODE
from fineplat_resources.k8s import PodOutcome, PodWatcher, classify_pod, pod_outcome
from k8s_ops.job_spec import PREEMPTED_TERMINATION_MESSAGE

NAME = "dagster-0d3a1c2e-5b7f-41c2-checkpoints-4817263950"


def pod(
    phase: str,
    *,
    state: dict[str, Any] | None = None,
    reason: str | None = None,
    message: str | None = None,
    conditions: list[dict[str, Any]] | None = None,
    deletion: bool = False,
) -> dict[str, Any]:
    """A pod as `kubectl get pod -o json` shows it (only the fields the classifier may read vary)."""
    metadata: dict[str, Any] = {
        "name": NAME,
        "namespace": "fineplat-training",
        "uid": "6f1c7a52-0d5e-4c55-9a59-3c0f0f3c9a11",
        "labels": {"fineplat.io/job-id": "ft-1", "fineplat.io/launch-id": "4c2b0b0c8f1e4d1d9d0d6f0f6a3b2c1d"},
        "creationTimestamp": "2026-03-02T10:00:00Z",
    }
    if deletion:
        metadata["deletionTimestamp"] = "2026-03-02T11:00:00Z"
        metadata["deletionGracePeriodSeconds"] = 120
    status: dict[str, Any] = {
        "phase": phase,
        "hostIP": "10.0.12.34",
        "podIP": "10.0.40.7",
        "qosClass": "Guaranteed",
        "startTime": "2026-03-02T10:00:05Z",
        "conditions": [
            {"type": "PodScheduled", "status": "True", "lastTransitionTime": "2026-03-02T10:00:01Z"},
            *(conditions or []),
        ],
    }
    if reason:
        status["reason"] = reason
    if message:
        status["message"] = message
    if state is not None:
        status["containerStatuses"] = [
            {
                "name": "trainer",
                "image": "registry.example.com/fineplat/trainer@sha256:0f1e2d",
                "imageID": "registry.example.com/fineplat/trainer@sha256:0f1e2d",
                "containerID": "containerd://a1b2c3",
                "ready": "running" in state,
                "restartCount": 0,
                "started": "running" in state,
                "state": state,
            }
        ]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": metadata,
        "spec": {
            "nodeName": "ip-10-0-12-34",
            "restartPolicy": "Never",
            "containers": [
                {"name": "trainer", "image": "registry.example.com/fineplat/trainer@sha256:0f1e2d"}
            ],
        },
        "status": status,
    }


def terminated(exit_code: int, reason: str = "Error", message: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "exitCode": exit_code,
        "reason": reason,
        "startedAt": "2026-03-02T10:00:06Z",
        "finishedAt": "2026-03-02T10:42:00Z",
        "containerID": "containerd://a1b2c3",
    }
    if message:
        body["message"] = message
    return {"terminated": body}


RUNNING = {"running": {"startedAt": "2026-03-02T10:00:06Z"}}


def disruption(reason: str, message: str) -> dict[str, Any]:
    return {
        "type": "DisruptionTarget",
        "status": "True",
        "reason": reason,
        "message": message,
        "lastTransitionTime": "2026-03-02T10:41:50Z",
    }


CASES: dict[str, tuple[dict[str, Any] | None, str, int | None]] = {
    "running": (pod("Running", state=RUNNING), "running", None),
    "succeeded": (pod("Succeeded", state=terminated(0, "Completed")), "succeeded", 0),
    "trainer exit 75": (
        pod("Failed", state=terminated(PREEMPTED_EXIT_CODE)),
        "preempted",
        PREEMPTED_EXIT_CODE,
    ),
    "torchrun exit 1 with the preemption termination message": (
        pod("Failed", state=terminated(1, message=PREEMPTED_TERMINATION_MESSAGE + " after step 120\n")),
        "preempted",
        1,
    ),
    "plain crash exit 1": (pod("Failed", state=terminated(1)), "failed", 1),
    "OOMKilled": (pod("Failed", state=terminated(137, "OOMKilled")), "failed", 137),
    "OOMKilled on a node being drained": (
        pod(
            "Failed",
            state=terminated(137, "OOMKilled"),
            conditions=[disruption("EvictionByEvictionAPI", "Eviction API: evicting")],
        ),
        "failed",
        137,
    ),
    "evicted for node memory pressure": (
        pod(
            "Failed",
            state=terminated(
                137,
                "ContainerStatusUnknown",
                "The container could not be located when the pod was terminated",
            ),
            reason="Evicted",
            message="The node was low on resource: memory. Threshold quantity: 100Mi, available: 51200Ki. ",
            conditions=[disruption("TerminationByKubelet", "The node was low on resource: memory.")],
        ),
        "preempted",
        137,
    ),
    "evicted before the container started": (
        pod(
            "Failed",
            state={"waiting": {"reason": "ContainerCreating"}},
            reason="Evicted",
            message="The node was low on resource: ephemeral-storage. ",
        ),
        "preempted",
        None,
    ),
    "evicted for exceeding its own ephemeral-storage limit": (
        pod(
            "Failed",
            state=terminated(137, "Error"),
            reason="Evicted",
            message="Pod ephemeral local storage usage exceeds the total limit of containers 200Gi. ",
            conditions=[disruption("TerminationByKubelet", "Pod ephemeral local storage usage exceeds")],
        ),
        "failed",
        137,
    ),
    "evicted for overfilling /dev/shm": (
        pod(
            "Failed",
            state=terminated(137, "Error"),
            reason="Evicted",
            message='Usage of EmptyDir volume "dshm" exceeds the limit "16Gi". ',
        ),
        "failed",
        137,
    ),
    "spot reclaim: graceful node shutdown, SIGTERM exit 143": (
        pod(
            "Failed",
            state=terminated(143),
            reason="Terminated",
            message="Pod was terminated in response to imminent node shutdown.",
            conditions=[
                disruption(
                    "TerminationByKubelet", "Pod was terminated in response to imminent node shutdown."
                )
            ],
        ),
        "preempted",
        143,
    ),
    "drained by the node termination handler (eviction API), killed after grace": (
        pod(
            "Failed",
            state=terminated(137),
            conditions=[disruption("EvictionByEvictionAPI", "Eviction API: evicting")],
            deletion=True,
        ),
        "preempted",
        137,
    ),
    "preempted by the scheduler for a higher-priority pod": (
        pod(
            "Failed",
            state=terminated(143),
            conditions=[
                disruption(
                    "PreemptionByScheduler",
                    "fineplat-training: preempting to accommodate a higher priority pod",
                )
            ],
            deletion=True,
        ),
        "preempted",
        143,
    ),
    "still checkpointing after a disruption notice": (
        pod(
            "Running",
            state=RUNNING,
            conditions=[disruption("EvictionByEvictionAPI", "Eviction API: evicting")],
            deletion=True,
        ),
        "running",
        None,
    ),
    "node lost": (
        pod(
            "Unknown",
            state=RUNNING,
            reason="NodeLost",
            message="Node ip-10-0-12-34 which was running pod " + NAME + " is unresponsive",
        ),
        "preempted",
        None,
    ),
    "node not reporting yet (no NodeLost)": (pod("Unknown", state=RUNNING), "running", None),
    "garbage-collected with its deleted node": (
        pod(
            "Failed",
            state=RUNNING,
            conditions=[disruption("DeletionByPodGC", "PodGC: node no longer exists")],
        ),
        "preempted",
        None,
    ),
    "GPU device plugin admission failure": (
        pod(
            "Failed",
            reason="UnexpectedAdmissionError",
            message="Allocate failed due to requested number of devices unavailable for nvidia.com/gpu. Requested: 8, Available: 0, which is unexpected",
        ),
        "preempted",
        None,
    ),
    "deleted (404)": (None, "preempted", None),
    "unschedulable, waiting for a GPU node": (
        pod(
            "Pending",
            conditions=[
                {
                    "type": "PodScheduled",
                    "status": "False",
                    "reason": "Unschedulable",
                    "message": "0/12 nodes are available: 12 Insufficient nvidia.com/gpu.",
                }
            ],
        ),
        "pending",
        None,
    ),
    "pulling the image": (
        pod("Pending", state={"waiting": {"reason": "ContainerCreating"}}),
        "pending",
        None,
    ),
    "image cannot be pulled": (
        pod(
            "Pending",
            state={
                "waiting": {
                    "reason": "ImagePullBackOff",
                    "message": 'Back-off pulling image "registry.example.com/fineplat/trainer:typo"',
                }
            },
        ),
        "failed",
        None,
    ),
    "missing Secret (may still be created)": (
        pod(
            "Pending",
            state={
                "waiting": {
                    "reason": "CreateContainerConfigError",
                    "message": 'secret "fineplat-s3" not found',
                }
            },
        ),
        "pending",
        None,
    ),
    "ran past activeDeadlineSeconds": (
        pod(
            "Failed",
            state=terminated(137),
            reason="DeadlineExceeded",
            message="Pod was active on the node longer than the specified deadline",
        ),
        "failed",
        137,
    ),
    "container exited 0, phase not updated yet": (
        pod("Running", state=terminated(0, "Completed")),
        "succeeded",
        0,
    ),
    "container exited 2, phase not updated yet": (pod("Running", state=terminated(2)), "failed", 2),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_classify_pod(case: str) -> None:
    snapshot, expected_state, expected_exit = CASES[case]

    outcome = pod_outcome(snapshot)

    assert (outcome.state, outcome.exit_code) == (expected_state, expected_exit)
    assert classify_pod(snapshot) == expected_state


def test_v1pod_objects_classify_like_their_json() -> None:
    api = kubernetes.client.ApiClient()
    for case in ("trainer exit 75", "OOMKilled", "evicted for node memory pressure", "running"):
        snapshot, expected_state, _ = CASES[case]
        # The client's own JSON -> V1Pod path (deserialize reads `.data` of an HTTP response).
        v1pod = api.deserialize(SimpleNamespace(data=json.dumps(snapshot)), "V1Pod")
        assert isinstance(v1pod, kubernetes.client.V1Pod)
        assert classify_pod(v1pod) == expected_state, case


def test_outcome_reasons_name_the_pod_and_the_cause() -> None:
    assert pod_outcome(CASES["OOMKilled"][0]).reason == (
        f"pod {NAME}: container OOMKilled; raise the memory limit or lower the batch size"
    )
    assert pod_outcome(CASES["spot reclaim: graceful node shutdown, SIGTERM exit 143"][0]).reason == (
        f"pod {NAME}: ended by the cluster (TerminationByKubelet): "
        "Pod was terminated in response to imminent node shutdown."
    )


class Snapshots:
    """An injected pod reader: returns the given snapshots in order (exceptions are raised)."""

    def __init__(self, *snapshots: dict[str, Any] | Exception | None) -> None:
        self.snapshots = list(snapshots)

    def __call__(self) -> dict[str, Any] | None:
        item = self.snapshots.pop(0)
        if isinstance(item, Exception):
            raise item
        return item


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


PENDING = CASES["unschedulable, waiting for a GPU node"][0]
RUNNING_POD = CASES["running"][0]


def test_watcher_reports_a_pod_that_vanished_after_it_was_seen_as_preempted() -> None:
    watcher = PodWatcher(Snapshots(PENDING, RUNNING_POD, None))

    verdicts = [watcher.check() for _ in range(3)]

    assert verdicts[:2] == [None, None]
    assert verdicts[2] == PodOutcome(
        "preempted", None, "the pod no longer exists (deleted, or garbage-collected with its node)"
    )


def test_watcher_waits_for_a_pod_that_has_not_appeared_yet_then_calls_it_preempted() -> None:
    clock = Clock()
    watcher = PodWatcher(Snapshots(None, None), appearance_timeout_s=120, clock=clock)

    clock.now += 119
    first = watcher.check()
    clock.now += 2
    second = watcher.check()

    assert first is None
    assert second is not None and second.state == "preempted"


def test_watcher_treats_api_errors_as_no_news() -> None:
    error = kubernetes.client.ApiException(status=503, reason="Service Unavailable")
    watcher = PodWatcher(Snapshots(RUNNING_POD, error, CASES["trainer exit 75"][0]))

    verdicts = [watcher.check() for _ in range(3)]

    assert verdicts[0] is None and verdicts[1] is None
    assert verdicts[2] is not None and (verdicts[2].state, verdicts[2].exit_code) == ("preempted", 75)


def test_watcher_leaves_a_succeeded_pod_that_was_cleaned_up_to_the_pipes_client() -> None:
    watcher = PodWatcher(Snapshots(RUNNING_POD, CASES["succeeded"][0], None))

    assert [watcher.check() for _ in range(3)] == [None, None, None]


def test_watcher_returns_a_failure_at_once() -> None:
    watcher = PodWatcher(Snapshots(RUNNING_POD, CASES["OOMKilled"][0]))

    verdict = watcher.wait(threading.Event(), poll_interval_s=0.001)

    assert verdict is not None and (verdict.state, verdict.exit_code) == ("failed", 137)


def test_watcher_stops_when_the_pipes_client_is_done() -> None:
    done = threading.Event()
    done.set()
    watcher = PodWatcher(Snapshots())  # would raise IndexError if it read the pod

    assert watcher.wait(done, poll_interval_s=0.001) is None
