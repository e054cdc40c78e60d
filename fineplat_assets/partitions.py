"""Dynamic partitions: dataset uploads by content-derived key, fine-tune jobs by job id. The link
between a job and the dataset version it used is recorded in metadata and in the registry."""

from dagster import DynamicPartitionsDefinition

dataset_partitions = DynamicPartitionsDefinition(name="dataset_uploads")
job_partitions = DynamicPartitionsDefinition(name="finetune_jobs")
