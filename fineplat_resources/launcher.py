"""Compute launcher: runs the training/eval entry points outside the Dagster process through
Dagster Pipes — a local subprocess by default, a Kubernetes Job on a GPU node in production — and
tells a preemption (retry and resume) apart from a failure (stop)."""

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

TRAIN_ENTRY_MODULE = "k8s_ops.train_entry"


@dataclass
class LaunchResult:
    """How the external process ended and what it reported through Pipes."""

    exit_code: int
    preempted: bool
    invocation: PipesClientCompletedInvocation

    @property
    def custom_messages(self) -> list[Any]:
        return list(self.invocation.get_custom_messages())


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

    def launch_training(
        self, context: AssetExecutionContext, *, extras: dict[str, Any], env: dict[str, str] | None = None
    ) -> LaunchResult:
        """Run the training entry point to completion; a preemption comes back as `preempted=True`."""
        env = dict(env or {})
        if self.chaos_preempt_at_step and context.retry_number == 0:
            env["FINEPLAT_CHAOS_PREEMPT_AT_STEP"] = str(self.chaos_preempt_at_step)
        if self.mode == "kubernetes":
            return self._launch_kubernetes(context, extras=extras, env=env)
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
        self, context: AssetExecutionContext, *, extras: dict[str, Any], env: dict[str, str]
    ) -> LaunchResult:
        from fineplat_resources.k8s import launch_kubernetes_training
        from k8s_ops.job_spec import GpuJobSpec

        spec = GpuJobSpec(
            job_id=str(extras["job_id"]),
            image=self.image,
            env=env,
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
