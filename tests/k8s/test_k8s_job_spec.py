"""The Kubernetes shape of a training attempt: exact expectations on the fields that decide scheduling,
retries and preemption, and validation of whole manifests against the Kubernetes 1.37 OpenAPI schema
(kubernetes-validate --strict, offline)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes
import kubernetes_validate
import pytest
import yaml
from dagster_k8s.pipes import build_pod_body

from fineplat.errors import ConfigError
from k8s_ops.job_spec import (
    Cloud,
    GpuJobSpec,
    ObjectStoreEnv,
    SecretKeyRef,
    build_job_manifest,
    build_pod_meta,
    build_pod_spec,
    training_command,
)

VALIDATOR = Path(sys.executable).parent / "kubernetes-validate"
K8S_VERSION = "1.37.0"
IMAGE = "registry.example.com/fineplat/trainer@sha256:5b0c1f3e"


def a100_spot_with_fallback() -> GpuJobSpec:
    return GpuJobSpec(
        job_id="ft-7f3a9c",
        image=IMAGE,
        gpu_type="A100",
        spot=True,
        on_demand_fallback=True,
        dagster_run_id="0d3a1c2e-5b7f-41c2-9d1e-0a4b5c6d7e8f",
        object_store=ObjectStoreEnv(
            bucket="fineplat-prod",
            prefix="jobs/ft-7f3a9c",
            endpoint_url="https://minio.internal:9000",
            region="eu-west-1",
            credentials_secret="fineplat-s3",
        ),
        env={"MLFLOW_TRACKING_URI": "http://mlflow.fineplat:5000"},
        secret_env={"MLFLOW_TRACKING_TOKEN": SecretKeyRef("fineplat-mlflow", "token")},
    )


def h100_on_demand() -> GpuJobSpec:
    return GpuJobSpec(job_id="ft-h100", image=IMAGE, gpu_type="H100", spot=False, cpu="16", memory="200Gi")


def a100_multi_gpu() -> GpuJobSpec:
    return GpuJobSpec(job_id="ft-multi", image=IMAGE, gpu_type="A100", gpu_count=8, spot=True, attempt=3)


def pod_of(job: dict[str, Any]) -> dict[str, Any]:
    return job["spec"]["template"]["spec"]


def test_the_job_leaves_retries_to_dagster() -> None:
    job = build_job_manifest(a100_spot_with_fallback())

    assert job["apiVersion"] == "batch/v1" and job["kind"] == "Job"
    assert job["spec"]["backoffLimit"] == 0
    assert job["spec"]["completions"] == 1 and job["spec"]["parallelism"] == 1
    assert job["spec"]["ttlSecondsAfterFinished"] == 3600
    assert pod_of(job)["restartPolicy"] == "Never"
    assert pod_of(job)["terminationGracePeriodSeconds"] == 120
    assert pod_of(job)["activeDeadlineSeconds"] == 86400


def test_a100_spot_with_fallback_tolerates_spot_and_prefers_it() -> None:
    pod = pod_of(build_job_manifest(a100_spot_with_fallback()))

    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"}
    assert pod["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
        {"key": "node.kubernetes.io/lifecycle", "operator": "Equal", "value": "spot", "effect": "NoSchedule"},
    ]
    assert pod["affinity"] == {
        "nodeAffinity": {
            "preferredDuringSchedulingIgnoredDuringExecution": [
                {
                    "weight": 100,
                    "preference": {
                        "matchExpressions": [
                            {"key": "eks.amazonaws.com/capacityType", "operator": "In", "values": ["SPOT"]}
                        ]
                    },
                }
            ]
        }
    }


def test_spot_without_fallback_requires_a_spot_node() -> None:
    pod = build_pod_spec(GpuJobSpec(job_id="ft-1", image=IMAGE, spot=True))

    assert pod["affinity"] == {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    {
                        "matchExpressions": [
                            {"key": "eks.amazonaws.com/capacityType", "operator": "In", "values": ["SPOT"]}
                        ]
                    }
                ]
            }
        }
    }


def test_h100_on_demand_stays_off_spot_nodes() -> None:
    pod = pod_of(build_job_manifest(h100_on_demand()))

    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert pod["affinity"] == {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    {
                        "matchExpressions": [
                            {"key": "eks.amazonaws.com/capacityType", "operator": "NotIn", "values": ["SPOT"]}
                        ]
                    }
                ]
            }
        }
    }
    assert pod["containers"][0]["resources"] == {
        "requests": {"cpu": "16", "memory": "200Gi", "ephemeral-storage": "200Gi", "nvidia.com/gpu": "1"},
        "limits": {"cpu": "16", "memory": "200Gi", "ephemeral-storage": "200Gi", "nvidia.com/gpu": "1"},
    }


@pytest.mark.parametrize(
    ("cloud", "toleration", "spot_label"),
    [
        ("gke", ("cloud.google.com/gke-spot", "true"), ("cloud.google.com/gke-spot", "true")),
        (
            "aks",
            ("kubernetes.azure.com/scalesetpriority", "spot"),
            ("kubernetes.azure.com/scalesetpriority", "spot"),
        ),
    ],
)
def test_other_clouds_use_their_own_spot_label_and_taint(
    cloud: Cloud, toleration: tuple[str, str], spot_label: tuple[str, str]
) -> None:
    pod = build_pod_spec(
        GpuJobSpec(job_id="ft-1", image=IMAGE, spot=True, on_demand_fallback=True, cloud=cloud)
    )

    assert pod["tolerations"][1] == {
        "key": toleration[0],
        "operator": "Equal",
        "value": toleration[1],
        "effect": "NoSchedule",
    }
    [preference] = pod["affinity"]["nodeAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert preference["preference"]["matchExpressions"] == [
        {"key": spot_label[0], "operator": "In", "values": [spot_label[1]]}
    ]


def test_pod_metadata_blocks_autoscaler_eviction_and_labels_the_attempt() -> None:
    job = build_job_manifest(a100_spot_with_fallback())

    assert job["metadata"]["name"] == "fineplat-train-ft-7f3a9c-a0"
    assert job["metadata"]["namespace"] == "fineplat-training"
    assert job["spec"]["template"]["metadata"] == {
        "labels": {
            "app.kubernetes.io/name": "fineplat-trainer",
            "app.kubernetes.io/part-of": "fineplat",
            "fineplat.io/job-id": "ft-7f3a9c",
            "fineplat.io/gpu-type": "A100",
            "fineplat.io/capacity": "spot-or-on-demand",
            "dagster/run-id": "0d3a1c2e-5b7f-41c2-9d1e-0a4b5c6d7e8f",
        },
        "annotations": {
            "cluster-autoscaler.kubernetes.io/safe-to-evict": "false",
            "karpenter.sh/do-not-disrupt": "true",
        },
    }


def test_container_gets_gpus_shm_and_object_store_settings_with_secret_refs() -> None:
    [container] = build_pod_spec(a100_spot_with_fallback())["containers"]

    assert container["name"] == "trainer"
    assert container["command"] == ["python", "-m", "k8s_ops.train_entry"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert container["resources"]["requests"] == container["resources"]["limits"]
    assert container["volumeMounts"] == [{"name": "dshm", "mountPath": "/dev/shm"}]
    assert container["terminationMessagePath"] == "/dev/termination-log"
    assert container["env"] == [
        {"name": "FINEPLAT_JOB_ID", "value": "ft-7f3a9c"},
        {"name": "FINEPLAT_NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
        {"name": "FINEPLAT_OBJECT_STORE_BUCKET", "value": "fineplat-prod"},
        {"name": "FINEPLAT_OBJECT_STORE_PREFIX", "value": "jobs/ft-7f3a9c"},
        {"name": "AWS_ENDPOINT_URL_S3", "value": "https://minio.internal:9000"},
        {"name": "AWS_REGION", "value": "eu-west-1"},
        {
            "name": "AWS_ACCESS_KEY_ID",
            "valueFrom": {"secretKeyRef": {"name": "fineplat-s3", "key": "AWS_ACCESS_KEY_ID"}},
        },
        {
            "name": "AWS_SECRET_ACCESS_KEY",
            "valueFrom": {"secretKeyRef": {"name": "fineplat-s3", "key": "AWS_SECRET_ACCESS_KEY"}},
        },
        {"name": "MLFLOW_TRACKING_URI", "value": "http://mlflow.fineplat:5000"},
        {
            "name": "MLFLOW_TRACKING_TOKEN",
            "valueFrom": {"secretKeyRef": {"name": "fineplat-mlflow", "key": "token"}},
        },
    ]
    assert build_pod_spec(a100_spot_with_fallback())["volumes"] == [
        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "16Gi"}}
    ]


def test_multi_gpu_runs_torchrun_with_one_worker_per_gpu() -> None:
    job = build_job_manifest(a100_multi_gpu())
    [container] = pod_of(job)["containers"]

    assert container["command"] == [
        "torchrun",
        "--standalone",
        "--nnodes=1",
        "--nproc_per_node=8",
        "--shutdown_timeout=110",
        "-m",
        "k8s_ops.train_entry",
    ]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "8"
    assert job["metadata"]["name"] == "fineplat-train-ft-multi-a3"


def test_torchrun_command_parses_with_the_installed_torchrun() -> None:
    from torch.distributed.run import parse_args

    args = parse_args(training_command(4)[1:])

    assert (args.standalone, args.nnodes, args.nproc_per_node) == (True, "1", "4")
    assert (args.shutdown_timeout, args.module, args.training_script) == (110, True, "k8s_ops.train_entry")


def test_an_explicit_command_is_used_as_given() -> None:
    spec = GpuJobSpec(job_id="ft-1", image=IMAGE, gpu_count=2, command=["python", "-m", "k8s_ops.eval_entry"])

    assert build_pod_spec(spec)["containers"][0]["command"] == ["python", "-m", "k8s_ops.eval_entry"]


def test_longest_job_id_and_attempt_fit_the_job_name_limit() -> None:
    spec = GpuJobSpec(job_id="f" * 40, image=IMAGE, attempt=9999)

    assert len(build_job_manifest(spec)["metadata"]["name"]) <= 63


@pytest.mark.parametrize(
    ("changes", "field_name"),
    [
        ({"job_id": "FT_1"}, "job_id"),
        ({"job_id": "f" * 41}, "job_id"),
        ({"gpu_count": 9}, "gpu_count"),
        ({"gpu_count": 0}, "gpu_count"),
        ({"on_demand_fallback": True}, "on_demand_fallback"),
        ({"memory": "64GB"}, "memory"),
        ({"shm_size": "lots"}, "shm_size"),
        ({"env": {"FINEPLAT_JOB_ID": "x"}}, "env['FINEPLAT_JOB_ID']"),
        ({"env": {"1BAD NAME": "x"}}, "env['1BAD NAME']"),
        ({"dagster_run_id": "run id with spaces"}, "dagster_run_id"),
        ({"active_deadline_seconds": 0}, "active_deadline_seconds"),
    ],
)
def test_invalid_settings_raise_config_error_naming_the_field(
    changes: dict[str, Any], field_name: str
) -> None:
    with pytest.raises(ConfigError) as raised:
        GpuJobSpec(**{"job_id": "ft-1", "image": IMAGE, **changes})

    assert str(raised.value).startswith(f"GpuJobSpec field '{field_name}' is ")
    assert "expected" in str(raised.value)


def test_object_store_env_cannot_be_overridden_by_plain_env() -> None:
    with pytest.raises(ConfigError, match=r"field 'env\['AWS_ACCESS_KEY_ID'\]'"):
        GpuJobSpec(
            job_id="ft-1",
            image=IMAGE,
            object_store=ObjectStoreEnv(bucket="b", credentials_secret="s3"),
            env={"AWS_ACCESS_KEY_ID": "AKIA..."},
        )


def test_generated_jobs_validate_against_the_kubernetes_schema(tmp_path: Path) -> None:
    files = []
    for name, spec in [
        ("a100-spot-fallback", a100_spot_with_fallback()),
        ("h100-on-demand", h100_on_demand()),
        ("a100-torchrun", a100_multi_gpu()),
    ]:
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(build_job_manifest(spec), sort_keys=False))
        files.append(path)

    result = subprocess.run(
        [str(VALIDATOR), "--strict", "-k", K8S_VERSION, *map(str, files)],
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert result.returncode == 0, result.stdout + result.stderr
    for path in files:
        assert f"INFO {path} passed for resource job/" in result.stdout


def test_the_validator_rejects_a_misspelled_field(tmp_path: Path) -> None:
    """Control: strict validation does catch a wrong key, so the test above can fail."""
    job = build_job_manifest(h100_on_demand())
    job["spec"]["backofLimit"] = job["spec"].pop("backoffLimit")
    path = tmp_path / "typo.yaml"
    path.write_text(yaml.safe_dump(job))

    result = subprocess.run(
        [str(VALIDATOR), "--strict", "-k", K8S_VERSION, str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert result.returncode != 0
    assert "backofLimit" in result.stdout + result.stderr


def test_pipes_k8s_client_accepts_the_pod_spec_and_the_pod_it_builds_is_valid() -> None:
    """dagster-k8s converts base_pod_meta/base_pod_spec to a V1Pod (and appends the Pipes env vars);
    the pod it would create validates strictly and keeps our fields."""
    spec = a100_spot_with_fallback()
    v1pod = build_pod_body(
        pod_name="dagster-0d3a1c2e-5b7f-41c2-checkpoints-4817263950",
        image=None,
        command=None,
        env_vars={
            "DAGSTER_PIPES_CONTEXT": "eJyrVgrJLMlJVbJSSEvMKU4FAB3+BHw=",
            "DAGSTER_PIPES_MESSAGES": "e30=",
        },
        base_pod_meta=build_pod_meta(spec),
        base_pod_spec=build_pod_spec(spec),
    )
    pod = kubernetes.client.ApiClient().sanitize_for_serialization(v1pod)
    pod = {"apiVersion": "v1", "kind": "Pod", **pod}

    assert kubernetes_validate.validate(pod, K8S_VERSION, strict=True) == "1.37"
    assert pod["spec"]["affinity"] == build_pod_spec(spec)["affinity"]
    assert pod["spec"]["volumes"] == build_pod_spec(spec)["volumes"]
    assert pod["metadata"]["annotations"]["cluster-autoscaler.kubernetes.io/safe-to-evict"] == "false"
    assert pod["metadata"]["labels"]["app.kubernetes.io/part-of"] == "fineplat"
    env = pod["spec"]["containers"][0]["env"]
    assert (
        env[: len(build_pod_spec(spec)["containers"][0]["env"])]
        == build_pod_spec(spec)["containers"][0]["env"]
    )
    assert [item["name"] for item in env[-2:]] == ["DAGSTER_PIPES_CONTEXT", "DAGSTER_PIPES_MESSAGES"]


def test_launcher_turns_the_trainer_environment_into_secret_refs_and_object_store_settings() -> None:
    """What the adapter asset hands the launcher (registry URL, S3 settings) reaches the pod as a
    Secret reference and the Job spec's object-store block: no password in the pod spec."""
    from fineplat_resources.launcher import REGISTRY_URL_ENV, ComputeLauncher
    from fineplat_resources.storage import ObjectStoreResource
    from k8s_ops.job_spec import GpuJobSpec, build_pod_spec

    store_env = ObjectStoreResource(
        s3_bucket="fineplat-prod",
        s3_prefix="prod",
        endpoint_url="https://minio.internal",
        region_name="eu-west-1",
    ).trainer_env()
    env = {
        REGISTRY_URL_ENV: "postgresql+psycopg2://fineplat:s3cret@db/registry",
        "HF_HOME": "/cache",
        **store_env,
    }
    launcher = ComputeLauncher(mode="kubernetes", object_store_credentials_secret="fineplat-s3")
    plain, secret_env, object_store = launcher._pod_env(env)
    spec = GpuJobSpec(
        job_id="ft-env",
        image="fineplat/trainer:1",
        env=plain,
        secret_env=secret_env,
        object_store=object_store,
    )
    container_env = {item["name"]: item for item in build_pod_spec(spec)["containers"][0]["env"]}
    assert "s3cret" not in str(build_pod_spec(spec))
    assert container_env[REGISTRY_URL_ENV]["valueFrom"] == {
        "secretKeyRef": {"name": "fineplat-registry", "key": "url"}
    }
    assert container_env["FINEPLAT_OBJECT_STORE_BUCKET"]["value"] == "fineplat-prod"
    assert container_env["FINEPLAT_OBJECT_STORE_PREFIX"]["value"] == "prod"
    assert container_env["AWS_ENDPOINT_URL_S3"]["value"] == "https://minio.internal"
    assert container_env["AWS_REGION"]["value"] == "eu-west-1"
    assert container_env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "fineplat-s3"
    assert container_env["HF_HOME"]["value"] == "/cache"
    # Development clusters may opt out of the Secret; then the URL is a plain variable.
    plain, secret_env, _ = ComputeLauncher(mode="kubernetes", registry_url_secret="")._pod_env(env)
    assert plain[REGISTRY_URL_ENV].endswith("@db/registry") and secret_env == {}
