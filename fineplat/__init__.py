"""fineplat core library: plain Python (no Dagster imports) for ingestion, packing, training,
evaluation, the registry and serving, so every piece runs and tests without an orchestrator."""

__version__ = "0.1.0"
