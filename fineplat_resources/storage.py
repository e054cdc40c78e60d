"""Object store resource: a local directory under FINEPLAT_HOME by default; S3 through dagster-aws
(any S3-compatible endpoint via `endpoint_url`) when `s3_bucket` is set."""

from __future__ import annotations

from dagster import ConfigurableResource
from pydantic import Field

from fineplat.settings import paths
from fineplat.storage import LocalObjectStore, ObjectStore, S3ObjectStore


class ObjectStoreResource(ConfigurableResource):
    """Where artifacts land: datasets, training data, checkpoints, adapters, reports."""

    root: str = Field(default="", description="Local directory; empty means FINEPLAT_HOME/objects.")
    s3_bucket: str = Field(default="", description="Set to store in S3 instead of a local directory.")
    s3_prefix: str = Field(default="fineplat", description="Key prefix inside the bucket.")
    endpoint_url: str = Field(default="", description="S3-compatible endpoint (MinIO, R2); empty for AWS.")
    region_name: str = Field(default="", description="AWS region; empty for the environment's default.")

    def get_store(self) -> ObjectStore:
        if self.s3_bucket:
            from dagster_aws.s3 import S3Resource

            client = S3Resource(
                endpoint_url=self.endpoint_url or None, region_name=self.region_name or None
            ).get_client()
            return S3ObjectStore(self.s3_bucket, self.s3_prefix, client, paths().home / "s3-cache")
        return LocalObjectStore(self.root_path)

    def trainer_env(self) -> dict[str, str]:
        """Environment for a trainer process that reaches the store itself (`k8s_ops.train_entry`):
        empty for the local store (the trainer gets paths on this disk); bucket, prefix, endpoint
        and region for S3 — never credentials (the process's own environment, IRSA or a Secret)."""
        if not self.s3_bucket:
            return {}
        from k8s_ops.job_spec import (
            ENV_AWS_REGION,
            ENV_OBJECT_STORE_BUCKET,
            ENV_OBJECT_STORE_ENDPOINT,
            ENV_OBJECT_STORE_PREFIX,
        )

        env = {ENV_OBJECT_STORE_BUCKET: self.s3_bucket, ENV_OBJECT_STORE_PREFIX: self.s3_prefix}
        if self.endpoint_url:
            env[ENV_OBJECT_STORE_ENDPOINT] = self.endpoint_url
        if self.region_name:
            env[ENV_AWS_REGION] = self.region_name
        return env

    @property
    def root_path(self):  # type: ignore[no-untyped-def]
        from pathlib import Path

        return Path(self.root) if self.root else paths().objects
