"""Run one training attempt as a Kubernetes pod through Dagster Pipes (`dagster_k8s.PipesK8sClient`) and
report how it ended as an exit code the asset understands: 0 success, 75 (`PREEMPTED_EXIT_CODE`)
preempted, anything else failed.

Why a wrapper: PipesK8sClient waits forever when its pod disappears before it started (dagster#22453),
waits up to 5 hours on a pod evicted before it became ready, and reports every nonzero exit as the same
`DagsterK8sError`. So the client runs in a worker thread while this module polls the pod itself (found by
a per-attempt label) and classifies what it sees with a pure function, `classify_pod`. A spot reclaim,
an eviction, a deleted pod, a lost node or the trainer's own exit code 75 become a preemption, which
the asset turns into a Dagster retry resumed from the latest checkpoint; an out-of-memory kill, a bad
image or an ordinary crash is a failure that retrying will not fix.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import kubernetes
from dagster import AssetExecutionContext, OpExecutionContext
from dagster._core.pipes.client import PipesClientCompletedInvocation, PipesParams
from dagster._core.pipes.context import (
    PipesMessageHandler,
    PipesSession,
    build_external_execution_context_data,
)
from dagster._core.pipes.utils import PipesEnvContextInjector
from dagster_k8s import PipesK8sClient
from dagster_k8s.client import DagsterK8sError
from dagster_k8s.pipes import PipesK8sPodLogsMessageReader
from dagster_pipes import PipesContextData

from fineplat.training.constants import FAILED_EXIT_CODE, PREEMPTED_EXIT_CODE
from k8s_ops.job_spec import (
    LABEL_LAUNCH_ID,
    PREEMPTED_TERMINATION_MESSAGE,
    GpuJobSpec,
    build_pod_meta,
    build_pod_spec,
)

logger = logging.getLogger(__name__)

PodState = Literal["running", "succeeded", "preempted", "failed", "pending"]

POD_POLL_INTERVAL_S = 10.0  # same cadence as dagster-k8s's own pod polling (DEFAULT_WAIT_BETWEEN_ATTEMPTS)
POD_READ_TIMEOUT_S = 30.0  # one Kubernetes API read; a hung connection must not hang the watcher
# PipesK8sClient creates the pod before it starts waiting, so a pod that is not visible this long after the
# launch was created and deleted before the first poll (the dagster#22453 hang): a preemption.
POD_APPEARANCE_TIMEOUT_S = 120.0
LOG_DRAIN_GRACE_S = 30.0  # how long to let the client finish reading an exited container's logs
PIPES_WAIT_MARGIN_S = 3600  # PipesK8sClient's own wait outlives the pod's activeDeadlineSeconds by this

# Pod-level reasons set by Kubernetes when the *infrastructure* ended the pod: retrying on another node
# resumes the job. (kubelet eviction, graceful node shutdown -- "Terminated" since 1.22, "Shutdown"
# before -- node controller's NodeLost, device-plugin admission failure after a node restart.)
INFRASTRUCTURE_POD_REASONS = frozenset(
    {"Evicted", "Terminated", "Shutdown", "NodeShutdown", "NodeLost", "UnexpectedAdmissionError"}
)
# An eviction for exceeding the pod's *own* limits (ephemeral storage, emptyDir sizeLimit) recurs on retry.
# Kubelet messages: "Pod ephemeral local storage usage exceeds the total limit of containers 200Gi.",
# "Container trainer exceeded its local ephemeral storage limit ...", "Usage of EmptyDir volume "dshm"
# exceeds the limit "16Gi"."
OWN_LIMIT_EVICTION_MARKERS = (
    "exceeds the total limit",
    "exceeded its local ephemeral storage limit",
    "exceeds the limit",
)
# Container waiting reasons that do not resolve by waiting (dagster-k8s raises on the same set).
FATAL_WAITING_REASONS = frozenset(
    {
        "ErrImagePull",
        "ImagePullBackOff",
        "InvalidImageName",
        "CrashLoopBackOff",
        "RunContainerError",
        "CreateContainerError",
    }
)
OOM_KILLED = "OOMKilled"


@dataclass(frozen=True)
class PodOutcome:
    """What one look at a training pod says: its state, the trainer's exit code when it has one, and a
    sentence an operator can act on."""

    state: PodState
    exit_code: int | None
    reason: str


@functools.cache
def _serializer() -> kubernetes.client.ApiClient:
    return kubernetes.client.ApiClient()


def _as_dict(pod: Any) -> Mapping[str, Any]:
    if isinstance(pod, Mapping):
        return pod
    # A kubernetes.client.V1Pod: serialize to the API's camelCase JSON shape.
    return _serializer().sanitize_for_serialization(pod)


def pod_outcome(pod: Mapping[str, Any] | Any | None) -> PodOutcome:
    """Classify one snapshot of a pod (API JSON dict or `V1Pod`; None = the pod no longer exists).

    Order matters: the trainer's own preemption signal wins, then kills caused by the job's own limits
    (OOM, ephemeral storage, deadline), then infrastructure disruptions, then plain exit codes."""
    if pod is None:
        return PodOutcome(
            "preempted", None, "the pod no longer exists (deleted, or garbage-collected with its node)"
        )
    data = _as_dict(pod)
    name = (data.get("metadata") or {}).get("name", "<unnamed>")
    status = data.get("status") or {}
    phase = status.get("phase") or "Pending"
    pod_reason = status.get("reason") or ""
    pod_message = status.get("message") or ""
    statuses = list(status.get("containerStatuses") or [])
    terminated = [s["state"]["terminated"] for s in statuses if (s.get("state") or {}).get("terminated")]
    waiting = [s["state"]["waiting"] for s in statuses if (s.get("state") or {}).get("waiting")]
    disruption = next(
        (
            c
            for c in status.get("conditions") or []
            if c.get("type") == "DisruptionTarget" and c.get("status") == "True"
        ),
        None,
    )
    nonzero = [t for t in terminated if t.get("exitCode", 0) != 0]
    exit_code = nonzero[0].get("exitCode") if nonzero else (0 if terminated else None)
    all_terminated = bool(statuses) and len(terminated) == len(statuses)

    for t in terminated:
        if t.get("exitCode") == PREEMPTED_EXIT_CODE:
            return PodOutcome(
                "preempted",
                PREEMPTED_EXIT_CODE,
                f"pod {name}: trainer exited {PREEMPTED_EXIT_CODE} (preempted)",
            )
        if (t.get("message") or "").strip().startswith(PREEMPTED_TERMINATION_MESSAGE):
            return PodOutcome(
                "preempted",
                t.get("exitCode"),
                f"pod {name}: trainer reported preemption in its termination message",
            )
    for t in terminated:
        if t.get("reason") == OOM_KILLED:
            return PodOutcome(
                "failed",
                t.get("exitCode"),
                f"pod {name}: container OOMKilled; raise the memory limit or lower the batch size",
            )
    if pod_reason == "Evicted" and any(marker in pod_message for marker in OWN_LIMIT_EVICTION_MARKERS):
        return PodOutcome(
            "failed", exit_code, f"pod {name}: evicted for exceeding its own limits: {pod_message.strip()}"
        )
    if pod_reason == "DeadlineExceeded":
        return PodOutcome(
            "failed",
            exit_code,
            f"pod {name}: ran past activeDeadlineSeconds; raise it or checkpoint more often",
        )

    terminal = phase in ("Failed", "Unknown") or all_terminated
    if terminal and (disruption is not None or pod_reason in INFRASTRUCTURE_POD_REASONS):
        why = disruption.get("reason") if disruption is not None else pod_reason
        detail = (disruption or {}).get("message") or pod_message
        return PodOutcome(
            "preempted", exit_code, f"pod {name}: ended by the cluster ({why}): {detail}".rstrip(": ")
        )

    if phase == "Succeeded" or (all_terminated and not nonzero):
        return PodOutcome("succeeded", 0, f"pod {name}: trainer exited 0")
    if phase == "Failed" or all_terminated:
        detail = (nonzero[0].get("reason") or "") if nonzero else pod_reason
        return PodOutcome(
            "failed",
            exit_code,
            f"pod {name}: failed (exit code {exit_code}, {detail or 'no reason given'}) {pod_message}".strip(),
        )
    for w in waiting:
        if w.get("reason") in FATAL_WAITING_REASONS:
            return PodOutcome(
                "failed",
                None,
                f"pod {name}: cannot start: {w.get('reason')}: {w.get('message') or ''}".strip(),
            )
    if phase == "Running" or phase == "Unknown":
        # Unknown without NodeLost: the node stopped reporting; Kubernetes resolves it (taint-based
        # eviction after 300 s deletes the pod, which then reads as preempted).
        return PodOutcome("running", None, f"pod {name}: {phase.lower()}")
    return PodOutcome("pending", None, f"pod {name}: pending {pod_reason or ''}".strip())


def classify_pod(pod: Mapping[str, Any] | Any | None) -> PodState:
    """The state of a training pod in one word: "running", "succeeded", "preempted" (retry from the
    checkpoint), "failed" (do not retry) or "pending". Pure; see `pod_outcome` for the reasoning."""
    return pod_outcome(pod).state


PodReader = Callable[[], Mapping[str, Any] | None]


class PodWatcher:
    """Polls one attempt's pod through `read_pod` and decides when it has ended badly, independently of
    PipesK8sClient (which cannot see a pod that vanished). Reader errors count as "no news"."""

    def __init__(
        self,
        read_pod: PodReader,
        *,
        appearance_timeout_s: float = POD_APPEARANCE_TIMEOUT_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._read_pod = read_pod
        self._appearance_timeout_s = appearance_timeout_s
        self._clock = clock
        self._started = clock()
        self.seen = False  # the pod has been observed at least once
        self.last_state: PodState | None = None

    def observe(self) -> PodOutcome | None:
        """Read the pod once and classify it; None while there is no news (read error, not yet visible)."""
        try:
            pod = self._read_pod()
        except Exception as error:  # an API hiccup is not an outcome; the next poll decides
            logger.warning("reading the training pod failed: %s", error)
            return None
        if pod is None:
            if self.seen:
                if self.last_state == "succeeded":
                    return PodOutcome("succeeded", 0, "the pod succeeded and was then removed")
                return pod_outcome(None)
            if self._clock() - self._started > self._appearance_timeout_s:
                return PodOutcome(
                    "preempted",
                    None,
                    f"the pod was not visible {self._appearance_timeout_s:.0f} s after launch "
                    "(deleted before it was first observed)",
                )
            return None
        self.seen = True
        outcome = pod_outcome(pod)
        self.last_state = outcome.state
        return outcome

    def check(self) -> PodOutcome | None:
        """One poll: a terminal verdict ("preempted"/"failed"), or None while the attempt is in flight
        (or succeeded: then PipesK8sClient returns and carries the results)."""
        outcome = self.observe()
        return outcome if outcome is not None and outcome.state in ("preempted", "failed") else None

    def wait(self, done: threading.Event, poll_interval_s: float) -> PodOutcome | None:
        """Poll until a terminal verdict (returned) or until `done` is set (None: the launcher finished)."""
        while not done.wait(poll_interval_s):
            verdict = self.check()
            if verdict is not None:
                return verdict
        return None


def kubernetes_core_api(kube_config: str | None) -> kubernetes.client.CoreV1Api:
    """A CoreV1Api with its own configuration, loaded the way PipesK8sClient loads it (kubeconfig file if
    given, in-cluster service account when running in a pod, else the default kubeconfig) but without
    touching the process-wide default the client's worker thread is loading at the same time."""
    configuration = kubernetes.client.Configuration()
    if kube_config:
        kubernetes.config.load_kube_config(config_file=kube_config, client_configuration=configuration)
    elif os.getenv("KUBERNETES_SERVICE_HOST"):
        kubernetes.config.load_incluster_config(client_configuration=configuration)
    else:
        kubernetes.config.load_kube_config(client_configuration=configuration)
    return kubernetes.client.CoreV1Api(kubernetes.client.ApiClient(configuration))


def label_pod_reader(core_api: kubernetes.client.CoreV1Api, namespace: str, label_selector: str) -> PodReader:
    """A `PodReader` that finds the attempt's pod by label (PipesK8sClient picks the pod name itself)."""

    def read() -> Mapping[str, Any] | None:
        pods = core_api.list_namespaced_pod(
            namespace, label_selector=label_selector, _request_timeout=POD_READ_TIMEOUT_S
        ).items
        if not pods:
            return None
        return _as_dict(pods[0])

    return read


def _delete_attempt_pods(core_api: kubernetes.client.CoreV1Api, namespace: str, label_selector: str) -> None:
    """Best effort: free the GPU node. Deleting a running pod sends SIGTERM, so the trainer still writes
    its emergency checkpoint within terminationGracePeriodSeconds."""
    try:
        pods = core_api.list_namespaced_pod(
            namespace, label_selector=label_selector, _request_timeout=POD_READ_TIMEOUT_S
        ).items
        for pod in pods:
            try:
                core_api.delete_namespaced_pod(
                    pod.metadata.name, namespace, _request_timeout=POD_READ_TIMEOUT_S
                )
            except kubernetes.client.ApiException as error:
                if error.status != 404:
                    raise
    except Exception as error:
        logger.warning("could not delete training pod(s) %s in %s: %s", label_selector, namespace, error)


class _CapturingContextInjector(PipesEnvContextInjector):
    """PipesK8sClient's default injector, keeping the context data it injected."""

    context_data: PipesContextData | None = None

    @contextmanager
    def inject_context(self, context_data: PipesContextData) -> Iterator[PipesParams]:
        self.context_data = context_data
        with super().inject_context(context_data) as params:
            yield params


class _CapturingPodLogsReader(PipesK8sPodLogsMessageReader):
    """PipesK8sClient's default pod-log reader, keeping the session's message handler, so what the
    trainer reported before a preemption or crash is not lost when PipesK8sClient.run raises."""

    handler: PipesMessageHandler | None = None

    @contextmanager
    def read_messages(self, handler: PipesMessageHandler) -> Iterator[PipesParams]:
        self.handler = handler
        with super().read_messages(handler) as params:
            yield params


def _invocation(
    context: AssetExecutionContext | OpExecutionContext,
    injector: _CapturingContextInjector,
    reader: _CapturingPodLogsReader,
    extras: dict[str, Any],
) -> PipesClientCompletedInvocation:
    """The Pipes session as far as it got: every message the trainer reported, whatever the outcome."""
    session = PipesSession(
        context_data=injector.context_data or build_external_execution_context_data(context, extras),
        message_handler=reader.handler or PipesMessageHandler(context, reader),
        context_injector_params={},
        message_reader_params={},
        context=context,
    )
    return PipesClientCompletedInvocation(session)


def launch_kubernetes_training(
    context: AssetExecutionContext | OpExecutionContext,
    *,
    spec: GpuJobSpec,
    extras: dict[str, Any],
    kube_config: str | None,
    namespace: str | None = None,
    poll_interval_s: float = POD_POLL_INTERVAL_S,
    appearance_timeout_s: float = POD_APPEARANCE_TIMEOUT_S,
) -> tuple[int, PipesClientCompletedInvocation]:
    """Run `spec` as one pod through PipesK8sClient and return `(exit_code, invocation)`.

    exit_code is 0, `PREEMPTED_EXIT_CODE` (75: spot reclaim, eviction, deleted pod, lost node, or the
    trainer's own 75 -- retry from the checkpoint) or, for a failure, the trainer's nonzero exit code
    (`FAILED_EXIT_CODE` when there is none, e.g. a bad image). The invocation carries everything the
    trainer reported through Pipes (`get_results()`, `get_custom_messages()`) in every case, so an
    emergency checkpoint reported just before a preemption is not lost. Errors of the orchestration
    itself (API unreachable, pod not ready within dagster-k8s's 5 h wait) are raised.

    `kube_config` is a kubeconfig path (None: in-cluster service account, else ~/.kube/config);
    `namespace` overrides `spec.namespace`."""
    launch_id = uuid.uuid4().hex
    spec = dataclasses.replace(spec, launch_id=launch_id, dagster_run_id=context.run_id)
    namespace = namespace or spec.namespace
    selector = f"{LABEL_LAUNCH_ID}={launch_id}"
    core_api = kubernetes_core_api(kube_config)
    injector, reader = _CapturingContextInjector(), _CapturingPodLogsReader()
    client = PipesK8sClient(
        kubeconfig_file=kube_config,
        poll_interval=poll_interval_s,
        context_injector=injector,
        message_reader=reader,
    )

    done = threading.Event()
    box: dict[str, Any] = {}

    def run_pipes_client() -> None:
        try:
            client.run(
                context=context,
                extras=extras,
                namespace=namespace,
                base_pod_meta=build_pod_meta(spec),
                base_pod_spec=build_pod_spec(spec),
                pod_wait_timeout=float(spec.active_deadline_seconds + PIPES_WAIT_MARGIN_S),
                delete_pod_on_completion=False,  # the final pod status decides preempted vs failed
            )
        except BaseException as error:
            box["error"] = error
        finally:
            done.set()

    context.log.info(
        f"Launching training pod {selector} in namespace {namespace}: {spec.gpu_count}x {spec.gpu_type}, "
        f"capacity {spec.capacity}"
    )
    # Daemon: after a preemption the client may stay blocked on a pod that no longer exists (dagster#22453);
    # it must not keep the step process alive.
    worker = threading.Thread(target=run_pipes_client, name=f"pipes-k8s-{launch_id[:8]}", daemon=True)
    watcher = PodWatcher(
        label_pod_reader(core_api, namespace, selector), appearance_timeout_s=appearance_timeout_s
    )
    worker.start()
    try:
        verdict = watcher.wait(done, poll_interval_s)
        if verdict is not None and verdict.exit_code is not None:
            # The container has exited, so its log stream ends: let the client read the last Pipes
            # messages (the emergency-checkpoint report) before we answer.
            done.wait(LOG_DRAIN_GRACE_S)
        if verdict is None:
            error = box.get("error")
            if error is None:
                return 0, _invocation(context, injector, reader, extras)
            # The client raised: a nonzero exit, a vanished pod, or trouble of its own. The pod decides.
            verdict = watcher.observe()
            if verdict is None and isinstance(error, DagsterK8sError) and "unexpectedly killed" in str(error):
                verdict = pod_outcome(None)  # the client saw the pod, then it vanished before we looked
            if verdict is None or verdict.state not in ("preempted", "failed"):
                raise error
        if verdict.state == "preempted":
            context.log.warning(f"Training attempt preempted: {verdict.reason}")
            return PREEMPTED_EXIT_CODE, _invocation(context, injector, reader, extras)
        context.log.error(f"Training attempt failed: {verdict.reason}")
        return (verdict.exit_code or FAILED_EXIT_CODE), _invocation(context, injector, reader, extras)
    finally:
        _delete_attempt_pods(core_api, namespace, selector)
