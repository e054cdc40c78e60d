"""Compute launcher: runs the training entry point outside the Dagster process through Dagster
Pipes — a local subprocess by default, a Kubernetes Job on a GPU node in production — and tells a
preemption (retry and resume) apart from a failure (stop). The request travels as the Pipes extras
and the trainer's replies as Pipes custom messages, both typed by fineplat.training.protocol."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from typing import Any, Literal

from dagster import AssetExecutionContext, ConfigurableResource, open_pipes_session
from dagster._core.pipes.client import PipesClientCompletedInvocation
from dagster._core.pipes.utils import PipesTempFileContextInjector, PipesTempFileMessageReader
from pydantic import Field

from fineplat.training.constants import PREEMPTED_EXIT_CODE
from fineplat.training.protocol import LaunchRequest, TrainerMessage, parse_trainer_messages

TRAIN_ENTRY_MODULE = "k8s_ops.train_entry"
REGISTRY_URL_ENV = "FINEPLAT_REGISTRY_URL"  # how the trainer finds the registry (the URL may hold a password)


@dataclass
class LaunchResult:
    """How the external process ended and what it reported through Pipes."""

    exit_code: int
    preempted: bool
    invocation: PipesClientCompletedInvocation

    @property
    def reports(self) -> list[TrainerMessage]:
        """The trainer's messages, typed; ProtocolError if a trainer of another release sent them."""
        return parse_trainer_messages(self.invocation.get_custom_messages())


class ComputeLauncher(ConfigurableResource):
    """Where training runs. `subprocess` (default) runs `python -m k8s_ops.train_entry` on this
    machine; `kubernetes` submits a Job through dagster-k8s's PipesK8sClient (see k8s_ops/)."""

    mode: Literal["subprocess", "kubernetes"] = Field(
        default="subprocess", description="subprocess or kubernetes."
    )
    python: str = Field(default="", description="Interpreter for subprocess mode; empty means this one.")
    chaos_preempt_at_step: int = Field(
        default=0,
        description="Spot-interruption drill: SIGTERM the trainer after this step on the first attempt (0 = off).",
    )
    image: str = Field(
        default="ghcr.io/fineplat/trainer:latest", description="Trainer image (kubernetes mode)."
    )
    namespace: str = Field(default="fineplat", description="Kubernetes namespace for training Jobs.")
    gpu_type: Literal["A100", "H100"] = Field(default="A100", description="GPU node pool to target.")
    gpu_count: int = Field(default=1, description="GPUs per Job (torchrun processes).")
    spot: bool = Field(default=True, description="Prefer spot nodes (with on-demand fallback).")
    kubeconfig_file: str = Field(default="", description="Kubeconfig path; empty means in-cluster config.")
    registry_url_secret: str = Field(
        default="fineplat-registry",
        description="Kubernetes Secret whose key `url` holds the registry database URL (it carries a "
        "password); empty passes the URL as a plain environment variable (development clusters only).",
    )
    object_store_credentials_secret: str = Field(
        default="",
        description="Secret with AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY for the object store; empty "
        "uses the pod's service account (IRSA / Workload Identity).",
    )

    def launch_training(
        self, context: AssetExecutionContext, *, request: LaunchRequest, env: dict[str, str] | None = None
    ) -> LaunchResult:
        """Run the training entry point to completion; a preemption comes back as `preempted=True`."""
        env = dict(env or {})
        if self.chaos_preempt_at_step and context.retry_number == 0:
            env["FINEPLAT_CHAOS_PREEMPT_AT_STEP"] = str(self.chaos_preempt_at_step)
        extras = request.model_dump(mode="json")
        if self.mode == "kubernetes":
            return self._launch_kubernetes(context, job_id=request.job_id, extras=extras, env=env)
        return self._launch_subprocess(context, extras=extras, env=env)

    def _launch_subprocess(
        self, context: AssetExecutionContext, *, extras: dict[str, Any], env: dict[str, str]
    ) -> LaunchResult:
        command = [self.python or sys.executable, "-m", TRAIN_ENTRY_MODULE]
        with open_pipes_session(
            context=context,
            context_injector=PipesTempFileContextInjector(),
            message_reader=PipesTempFileMessageReader(),
            extras=extras,
        ) as session:
            process = subprocess.Popen(command, env={**os.environ, **env, **session.get_bootstrap_env_vars()})
            try:
                exit_code = process.wait()
            except BaseException:
                # Dagster run cancelled or interrupted: give the trainer its SIGTERM checkpoint.
                process.send_signal(signal.SIGTERM)
                process.wait(timeout=120)
                raise
        return LaunchResult(
            exit_code, exit_code == PREEMPTED_EXIT_CODE, PipesClientCompletedInvocation(session)
        )

    def _launch_kubernetes(
        self, context: AssetExecutionContext, *, job_id: str, extras: dict[str, Any], env: dict[str, str]
    ) -> LaunchResult:
        from fineplat_resources.k8s import launch_kubernetes_training
        from k8s_ops.job_spec import GpuJobSpec

        plain, secret_env, object_store = self._pod_env(env)
        spec = GpuJobSpec(
            job_id=job_id,
            image=self.image,
            env=plain,
            secret_env=secret_env,
            object_store=object_store,
            gpu_type=self.gpu_type,
            gpu_count=self.gpu_count,  # > 1 runs the entry point under torchrun
            spot=self.spot,
            on_demand_fallback=self.spot,  # spot preferred, on-demand when spot is short
            namespace=self.namespace,
            dagster_run_id=context.run_id,
            attempt=context.retry_number,
        )
        exit_code, invocation = launch_kubernetes_training(
            context,
            spec=spec,
            extras=extras,
            kube_config=self.kubeconfig_file or None,
            namespace=self.namespace,
        )
        return LaunchResult(exit_code, exit_code == PREEMPTED_EXIT_CODE, invocation)

    def _pod_env(self, env: dict[str, str]) -> tuple[dict[str, str], dict[str, Any], Any]:
        """Split the trainer environment for a pod: object-store settings become the Job spec's
        `object_store` (credentials from a Secret or the service account), the registry URL a
        Secret reference, the rest plain variables."""
        from k8s_ops.job_spec import (
            ENV_AWS_REGION,
            ENV_OBJECT_STORE_BUCKET,
            ENV_OBJECT_STORE_ENDPOINT,
            ENV_OBJECT_STORE_PREFIX,
            ObjectStoreEnv,
            SecretKeyRef,
        )

        plain = dict(env)
        object_store = None
        bucket = plain.pop(ENV_OBJECT_STORE_BUCKET, None)
        prefix = plain.pop(ENV_OBJECT_STORE_PREFIX, "")
        endpoint = plain.pop(ENV_OBJECT_STORE_ENDPOINT, None)
        region = plain.pop(ENV_AWS_REGION, None)
        if bucket:
            object_store = ObjectStoreEnv(
                bucket=bucket,
                prefix=prefix,
                endpoint_url=endpoint,
                region=region,
                credentials_secret=self.object_store_credentials_secret or None,
            )
        secret_env: dict[str, Any] = {}
        if self.registry_url_secret and REGISTRY_URL_ENV in plain:
            plain.pop(REGISTRY_URL_ENV)
            secret_env[REGISTRY_URL_ENV] = SecretKeyRef(self.registry_url_secret, "url")
        return plain, secret_env, object_store
