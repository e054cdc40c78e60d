"""What runs on GPU nodes: the training entry point (`k8s_ops.train_entry`, a Dagster Pipes process
that `torchrun` can start) and the Kubernetes pod/Job shape of one attempt (`k8s_ops.job_spec`).

Kept free of Dagster imports, so the GPU image needs only the core library and `dagster-pipes`."""
