"""The Kubernetes shape of one training attempt: a typed `GpuJobSpec` and pure builders for the pod spec
(what `dagster_k8s.PipesK8sClient` launches) and the equivalent batch/v1 Job (what an operator can
`kubectl create -f` to reproduce an attempt by hand).

Why the shape is what it is:

- **Dagster owns retries.** `backoffLimit: 0` and `restartPolicy: Never`: a preempted attempt ends, the
  asset turns exit code 75 into `RetryRequested`, and the retry resumes from the latest checkpoint.
  When Kubernetes replaces a pod by itself, dagster-k8s leaves the step stuck (dagster#33755).
- **Spot first, on demand when allowed.** Spot nodes are tainted, so only pods that tolerate the taint
  land there. With `on_demand_fallback` the spot label is a *preferred* node affinity (the scheduler
  and the cluster autoscaler's priority expander pick spot when there is capacity, on-demand otherwise);
  without it, spot is *required*. On-demand attempts are kept off spot nodes with a required affinity.
- **Time to checkpoint.** `terminationGracePeriodSeconds` gives the trainer's SIGTERM handler time to write
  an emergency checkpoint; torchrun is told to wait as long before it SIGKILLs its workers.
- **Nothing evicts a training pod on purpose.** The cluster-autoscaler / Karpenter annotations stop
  scale-down from draining a node under a running attempt.

No Dagster imports: this module is used on both sides (the launcher and tooling on GPU nodes).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal

from fineplat.errors import ConfigError

GpuType = Literal["A100", "H100"]
Cloud = Literal["eks", "gke", "aks"]

# `nvidia.com/gpu.product` is set on every GPU node by NVIDIA GPU Feature Discovery (part of the GPU
# operator); the values are the product names nvidia-smi reports with spaces replaced by dashes.
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"
GPU_PRODUCTS: dict[str, str] = {
    "A100": "NVIDIA-A100-SXM4-80GB",  # p4de.24xlarge / a2-ultragpu / ND A100 v4 (80 GB)
    "H100": "NVIDIA-H100-80GB-HBM3",  # p5.48xlarge / a3-highgpu / ND H100 v5
}
GPU_RESOURCE = "nvidia.com/gpu"  # extended resource advertised by the NVIDIA device plugin
MAX_GPUS_PER_NODE = 8  # every A100/H100 node type above has 8 GPUs; one attempt is one pod on one node

# Dagster run tag the production instance limits per GPU type (dagster.prod.yaml,
# concurrency.runs.tag_concurrency_limits); the asset layer tags GPU runs with it.
GPU_RUN_TAG = "fineplat/gpu"


@dataclass(frozen=True)
class SpotConvention:
    """How one cloud marks spot GPU nodes: the label the scheduler matches and the taint that keeps
    non-preemptible pods off them."""

    label_key: str
    label_value: str
    taint_key: str
    taint_value: str
    notice_seconds: int  # how long before reclaim the node is told (the emergency-checkpoint budget)


# Which spot label/taint is used where:
# - eks: managed node groups label spot nodes `eks.amazonaws.com/capacityType=SPOT`; EKS adds no taint,
#   so fineplat's cluster convention is to taint spot GPU node groups `node.kubernetes.io/lifecycle=spot:
#   NoSchedule`. AWS gives a 2-minute interruption notice (EC2 Spot instance interruption notices).
# - gke: GKE labels spot nodes `cloud.google.com/gke-spot=true` and (Autopilot, or node pools created with
#   the taint) taints them with the same key. Spot VMs get 30 s notice (GCE "Spot VMs: preemption process").
# - aks: AKS labels and taints spot node pools `kubernetes.azure.com/scalesetpriority=spot` itself.
#   Scheduled Events give at least 30 s notice before eviction.
SPOT_CONVENTIONS: dict[str, SpotConvention] = {
    "eks": SpotConvention(
        "eks.amazonaws.com/capacityType", "SPOT", "node.kubernetes.io/lifecycle", "spot", 120
    ),
    "gke": SpotConvention("cloud.google.com/gke-spot", "true", "cloud.google.com/gke-spot", "true", 30),
    "aks": SpotConvention(
        "kubernetes.azure.com/scalesetpriority", "spot", "kubernetes.azure.com/scalesetpriority", "spot", 30
    ),
}

# SIGTERM -> emergency checkpoint -> exit 75 must fit in here. 120 s matches AWS's 2-minute notice (the
# node termination handler drains within seconds of it). On GKE/AKS the node is gone after ~30 s whatever
# this says, so there the trainer's periodic checkpoints are the safety net and the emergency one is a bonus.
TERMINATION_GRACE_PERIOD_S = 120
# torchrun's agent SIGKILLs its workers 30 s after it is signalled (TORCH_ELASTIC_SHUTDOWN_TIMEOUT default);
# give the workers the pod's grace period minus a margin for torchrun's own exit.
TORCHRUN_SHUTDOWN_TIMEOUT_S = TERMINATION_GRACE_PERIOD_S - 10
TTL_SECONDS_AFTER_FINISHED = 3600  # finished Jobs stay an hour for `kubectl logs`, then Kubernetes GCs them
DEFAULT_ACTIVE_DEADLINE_S = 24 * 3600  # one attempt; a longer fine-tune continues in the next attempt

# torchrun turns any worker's nonzero exit into its own exit code 1 (ChildFailedError), so exit code 75 does
# not survive multi-GPU runs. The trainer therefore also writes this marker to the container's
# termination-message file; Kubernetes copies it into containerStatuses[].state.terminated.message.
TERMINATION_MESSAGE_PATH = "/dev/termination-log"
PREEMPTED_TERMINATION_MESSAGE = "fineplat: preempted"

TRAINER_CONTAINER = "trainer"
TRAIN_ENTRY_MODULE = "k8s_ops.train_entry"
SHM_VOLUME = "dshm"

# Labels and annotations on every training pod.
LABEL_JOB_ID = "fineplat.io/job-id"
LABEL_LAUNCH_ID = "fineplat.io/launch-id"  # one per attempt: how the launcher finds its pod
LABEL_GPU_TYPE = "fineplat.io/gpu-type"
LABEL_CAPACITY = "fineplat.io/capacity"  # spot | spot-or-on-demand | on-demand
LABEL_DAGSTER_RUN_ID = "dagster/run-id"  # the same key dagster-k8s puts on run-worker pods
SAFE_TO_EVICT_ANNOTATION = "cluster-autoscaler.kubernetes.io/safe-to-evict"
KARPENTER_DO_NOT_DISRUPT_ANNOTATION = "karpenter.sh/do-not-disrupt"

# Object-store settings reach the trainer as environment variables; credentials only via Secret refs.
ENV_OBJECT_STORE_BUCKET = "FINEPLAT_OBJECT_STORE_BUCKET"
ENV_OBJECT_STORE_PREFIX = "FINEPLAT_OBJECT_STORE_PREFIX"
ENV_OBJECT_STORE_ENDPOINT = "AWS_ENDPOINT_URL_S3"  # read by boto3 >= 1.28 for S3 only (MinIO, R2, ...)
ENV_AWS_REGION = "AWS_REGION"
ENV_AWS_ACCESS_KEY_ID = "AWS_ACCESS_KEY_ID"
ENV_AWS_SECRET_ACCESS_KEY = "AWS_SECRET_ACCESS_KEY"
ENV_JOB_ID = "FINEPLAT_JOB_ID"
ENV_NODE_NAME = "FINEPLAT_NODE_NAME"

# Kubernetes syntax rules (apimachinery validation), checked here so a bad value fails before a GPU waits.
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$")
_ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")
_QUANTITY = re.compile(r"^(\d+(\.\d+)?|\.\d+)(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$")
MAX_JOB_ID_LENGTH = 40  # "fineplat-train-" + job id + "-a" + attempt must fit the 63-char Job name limit


@dataclass(frozen=True)
class SecretKeyRef:
    """One key of a Kubernetes Secret, exposed to the trainer as an environment variable."""

    secret: str  # Secret name in the job's namespace
    key: str  # key inside the Secret


@dataclass(frozen=True)
class ObjectStoreEnv:
    """Where the trainer reads shards and writes checkpoints; credentials come from a Secret, or from the
    service account (IRSA / Workload Identity) when `credentials_secret` is None."""

    bucket: str  # S3 bucket name
    prefix: str = ""  # key prefix inside the bucket, e.g. "fineplat/prod"
    endpoint_url: str | None = None  # S3-compatible endpoint (MinIO, R2); None = AWS S3
    region: str | None = None  # AWS region of the bucket
    credentials_secret: str | None = None  # Secret holding AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY


@dataclass(frozen=True)
class GpuJobSpec:
    """One training attempt on one GPU node. Build a pod with `build_pod_spec`, a Job with
    `build_job_manifest`; invalid values raise `ConfigError` naming the field."""

    job_id: str  # fineplat fine-tune job id: lowercase DNS label, at most 40 characters
    image: str  # training image, pinned by digest or immutable tag
    command: list[str] | None = None  # None: `training_command(gpu_count)` (torchrun when gpu_count > 1)
    env: dict[str, str] = field(default_factory=dict)  # plain environment variables for the trainer
    secret_env: dict[str, SecretKeyRef] = field(default_factory=dict)  # env vars read from Secrets
    gpu_type: GpuType = "A100"  # selects the node pool via nvidia.com/gpu.product
    gpu_count: int = 1  # GPUs on the one node (1..8); > 1 runs torchrun with one process per GPU
    spot: bool = False  # run on (tolerate) spot nodes
    on_demand_fallback: bool = False  # with spot: prefer spot, accept on-demand when none is free
    cloud: Cloud = "eks"  # which spot label/taint convention the cluster uses (SPOT_CONVENTIONS)
    cpu: str = "10"  # CPU request = limit (Guaranteed QoS: evicted last under node pressure)
    memory: str = "120Gi"  # memory request = limit; includes the memory-backed /dev/shm
    ephemeral_storage: str = "200Gi"  # local disk for the image layer, HF cache and checkpoint staging
    shm_size: str = "16Gi"  # /dev/shm for DataLoader workers and NCCL (the container default is 64 MiB)
    object_store: ObjectStoreEnv | None = None  # None: the trainer gets object-store settings elsewhere
    service_account: str = "fineplat-trainer"  # Kubernetes service account (IRSA / Workload Identity)
    namespace: str = "fineplat-training"
    active_deadline_seconds: int = DEFAULT_ACTIVE_DEADLINE_S  # hard wall-clock limit of one attempt
    image_pull_policy: Literal["IfNotPresent", "Always", "Never"] = "IfNotPresent"
    dagster_run_id: str | None = None  # labels the pod with the Dagster run that launched it
    launch_id: str | None = None  # unique per attempt; the launcher sets it to find its pod
    attempt: int = 0  # Dagster retry number; part of the Job name so a retry never collides

    def __post_init__(self) -> None:
        _check(
            _DNS_LABEL.match(self.job_id) is not None and len(self.job_id) <= MAX_JOB_ID_LENGTH,
            "job_id",
            self.job_id,
            f"a lowercase DNS label (a-z, 0-9, '-') of at most {MAX_JOB_ID_LENGTH} characters",
        )
        _check(bool(self.image.strip()), "image", self.image, "a container image reference")
        _check(self.gpu_type in GPU_PRODUCTS, "gpu_type", self.gpu_type, f"one of {sorted(GPU_PRODUCTS)}")
        _check(
            isinstance(self.gpu_count, int) and 1 <= self.gpu_count <= MAX_GPUS_PER_NODE,
            "gpu_count",
            self.gpu_count,
            f"an integer from 1 to {MAX_GPUS_PER_NODE} (one attempt runs on one node)",
        )
        _check(
            self.spot or not self.on_demand_fallback,
            "on_demand_fallback",
            self.on_demand_fallback,
            "False when spot is False (fallback means 'spot first, then on demand'); set spot=True",
        )
        _check(self.cloud in SPOT_CONVENTIONS, "cloud", self.cloud, f"one of {sorted(SPOT_CONVENTIONS)}")
        for name in ("cpu", "memory", "ephemeral_storage", "shm_size"):
            value = getattr(self, name)
            _check(
                _QUANTITY.match(value) is not None,
                name,
                value,
                "a Kubernetes quantity such as '8', '500m', '64Gi'",
            )
        _check(self.command is None or len(self.command) > 0, "command", self.command, "None or non-empty")
        _check(
            _DNS_LABEL.match(self.namespace) is not None and len(self.namespace) <= 63,
            "namespace",
            self.namespace,
            "a lowercase DNS label",
        )
        _check(
            _DNS_LABEL.match(self.service_account) is not None,
            "service_account",
            self.service_account,
            "a lowercase DNS label",
        )
        _check(
            isinstance(self.active_deadline_seconds, int) and self.active_deadline_seconds > 0,
            "active_deadline_seconds",
            self.active_deadline_seconds,
            "a positive number of seconds",
        )
        _check(self.attempt >= 0, "attempt", self.attempt, "a non-negative retry number")
        for label_field in ("dagster_run_id", "launch_id"):
            value = getattr(self, label_field)
            _check(
                value is None or (_LABEL_VALUE.match(value) is not None and len(value) <= 63),
                label_field,
                value,
                "a Kubernetes label value (alphanumerics, '-', '_', '.'; at most 63 characters)",
            )
        reserved = set(_object_store_env_names(self.object_store)) | {ENV_JOB_ID, ENV_NODE_NAME}
        for name in [*self.env, *self.secret_env]:
            _check(
                _ENV_NAME.match(name) is not None, f"env[{name!r}]", name, "a valid environment variable name"
            )
            _check(
                name not in reserved,
                f"env[{name!r}]",
                name,
                "a name fineplat does not set itself (object-store settings belong in object_store)",
            )
        for name in self.env:
            _check(
                name not in self.secret_env, f"env[{name!r}]", name, "set in env or secret_env, not in both"
            )

    @property
    def capacity(self) -> str:
        """The capacity class this attempt may use, as recorded in the pod label."""
        if not self.spot:
            return "on-demand"
        return "spot-or-on-demand" if self.on_demand_fallback else "spot"


def _check(ok: bool, field_name: str, value: object, expected: str) -> None:
    if not ok:
        raise ConfigError(
            f"GpuJobSpec field '{field_name}' is {value!r}; expected {expected}. "
            "Fix the compute launcher's Kubernetes settings."
        )


def training_command(gpu_count: int, module: str = TRAIN_ENTRY_MODULE) -> list[str]:
    """The container command for an attempt: plain `python -m` for one GPU, single-node torchrun with one
    worker per GPU otherwise (torchrun's shutdown timeout stretched to the pod's grace period so every
    rank can finish its emergency checkpoint)."""
    if gpu_count <= 1:
        return ["python", "-m", module]
    return [
        "torchrun",
        "--standalone",
        "--nnodes=1",
        f"--nproc_per_node={gpu_count}",
        f"--shutdown_timeout={TORCHRUN_SHUTDOWN_TIMEOUT_S}",
        "-m",
        module,
    ]


def _object_store_env_names(store: ObjectStoreEnv | None) -> list[str]:
    if store is None:
        return []
    return [ENV_OBJECT_STORE_BUCKET, ENV_OBJECT_STORE_PREFIX, ENV_OBJECT_STORE_ENDPOINT, ENV_AWS_REGION] + (
        [ENV_AWS_ACCESS_KEY_ID, ENV_AWS_SECRET_ACCESS_KEY] if store.credentials_secret else []
    )


def _container_env(spec: GpuJobSpec) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = [
        {"name": ENV_JOB_ID, "value": spec.job_id},
        {"name": ENV_NODE_NAME, "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
    ]
    store = spec.object_store
    if store is not None:
        env.append({"name": ENV_OBJECT_STORE_BUCKET, "value": store.bucket})
        env.append({"name": ENV_OBJECT_STORE_PREFIX, "value": store.prefix})
        if store.endpoint_url:
            env.append({"name": ENV_OBJECT_STORE_ENDPOINT, "value": store.endpoint_url})
        if store.region:
            env.append({"name": ENV_AWS_REGION, "value": store.region})
        if store.credentials_secret:
            for key in (ENV_AWS_ACCESS_KEY_ID, ENV_AWS_SECRET_ACCESS_KEY):
                env.append(
                    {
                        "name": key,
                        "valueFrom": {"secretKeyRef": {"name": store.credentials_secret, "key": key}},
                    }
                )
    env.extend({"name": name, "value": value} for name, value in sorted(spec.env.items()))
    env.extend(
        {"name": name, "valueFrom": {"secretKeyRef": {"name": ref.secret, "key": ref.key}}}
        for name, ref in sorted(spec.secret_env.items())
    )
    return env


def _scheduling(spec: GpuJobSpec) -> dict[str, Any]:
    """nodeSelector, tolerations and affinity: the GPU product is a hard requirement; spot is a hard
    requirement, a preference (with fallback) or excluded (on demand)."""
    convention = SPOT_CONVENTIONS[spec.cloud]
    tolerations: list[dict[str, Any]] = [
        # GPU nodes are tainted so CPU pods stay off them (GKE does this automatically).
        {"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"},
    ]
    affinity: dict[str, Any]
    spot_term: dict[str, Any] = {
        "key": convention.label_key,
        "operator": "In",
        "values": [convention.label_value],
    }
    if not spec.spot:
        affinity = {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [{"matchExpressions": [{**spot_term, "operator": "NotIn"}]}]
                }
            }
        }
    else:
        tolerations.append(
            {
                "key": convention.taint_key,
                "operator": "Equal",
                "value": convention.taint_value,
                "effect": "NoSchedule",
            }
        )
        if spec.on_demand_fallback:
            affinity = {
                "nodeAffinity": {
                    "preferredDuringSchedulingIgnoredDuringExecution": [
                        {"weight": 100, "preference": {"matchExpressions": [spot_term]}}
                    ]
                }
            }
        else:
            affinity = {
                "nodeAffinity": {
                    "requiredDuringSchedulingIgnoredDuringExecution": {
                        "nodeSelectorTerms": [{"matchExpressions": [spot_term]}]
                    }
                }
            }
    return {
        "nodeSelector": {GPU_PRODUCT_LABEL: GPU_PRODUCTS[spec.gpu_type]},
        "tolerations": tolerations,
        "affinity": affinity,
    }


def build_pod_labels(spec: GpuJobSpec) -> dict[str, str]:
    """Labels that let an operator (and the launcher) find every pod of a job, attempt and run."""
    labels = {
        "app.kubernetes.io/name": "fineplat-trainer",
        "app.kubernetes.io/part-of": "fineplat",
        LABEL_JOB_ID: spec.job_id,
        LABEL_GPU_TYPE: spec.gpu_type,
        LABEL_CAPACITY: spec.capacity,
    }
    if spec.dagster_run_id:
        labels[LABEL_DAGSTER_RUN_ID] = spec.dagster_run_id
    if spec.launch_id:
        labels[LABEL_LAUNCH_ID] = spec.launch_id
    return labels


def build_pod_meta(spec: GpuJobSpec) -> dict[str, Any]:
    """Pod metadata (labels, annotations) without a name: PipesK8sClient takes it as `base_pod_meta` and
    names the pod itself; the Job uses it as its pod template's metadata."""
    return {
        "labels": build_pod_labels(spec),
        "annotations": {
            SAFE_TO_EVICT_ANNOTATION: "false",
            KARPENTER_DO_NOT_DISRUPT_ANNOTATION: "true",
        },
    }


def build_pod_spec(spec: GpuJobSpec) -> dict[str, Any]:
    """The pod spec of one attempt (camelCase, as the Kubernetes API writes it); PipesK8sClient takes it as
    `base_pod_spec` and adds the Dagster Pipes environment variables to the first container."""
    command = spec.command if spec.command is not None else training_command(spec.gpu_count)
    gpus = str(spec.gpu_count)
    resources = {
        "cpu": spec.cpu,
        "memory": spec.memory,
        "ephemeral-storage": spec.ephemeral_storage,
        GPU_RESOURCE: gpus,
    }
    container: dict[str, Any] = {
        "name": TRAINER_CONTAINER,
        "image": spec.image,
        "imagePullPolicy": spec.image_pull_policy,
        "command": list(command),
        "env": _container_env(spec),
        # Requests = limits: Guaranteed QoS, and extended resources (GPUs) must have requests == limits.
        "resources": {"requests": dict(resources), "limits": dict(resources)},
        "volumeMounts": [{"name": SHM_VOLUME, "mountPath": "/dev/shm"}],
        "terminationMessagePath": TERMINATION_MESSAGE_PATH,
        "terminationMessagePolicy": "File",
    }
    return {
        "restartPolicy": "Never",
        "serviceAccountName": spec.service_account,
        "terminationGracePeriodSeconds": TERMINATION_GRACE_PERIOD_S,
        "activeDeadlineSeconds": spec.active_deadline_seconds,
        **_scheduling(spec),
        "containers": [container],
        "volumes": [{"name": SHM_VOLUME, "emptyDir": {"medium": "Memory", "sizeLimit": spec.shm_size}}],
    }


def job_name(spec: GpuJobSpec) -> str:
    """The Job's name: job id and attempt, so a Dagster retry never collides with a finished Job."""
    return f"fineplat-train-{spec.job_id}-a{spec.attempt}"


def build_job_manifest(spec: GpuJobSpec) -> dict[str, Any]:
    """A batch/v1 Job running one attempt. `backoffLimit: 0` because Dagster owns retries: a pod that
    Kubernetes replaced by itself leaves the Dagster step stuck (dagster#33755), and a retry must go
    through the asset so it resumes from the latest checkpoint."""
    pod_meta = build_pod_meta(spec)
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": job_name(spec),
            "namespace": spec.namespace,
            "labels": dict(pod_meta["labels"]),
        },
        "spec": {
            "backoffLimit": 0,
            "completions": 1,
            "parallelism": 1,
            "ttlSecondsAfterFinished": TTL_SECONDS_AFTER_FINISHED,
            "template": {"metadata": pod_meta, "spec": build_pod_spec(spec)},
        },
    }
