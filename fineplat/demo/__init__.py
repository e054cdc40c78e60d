"""The demo\x27s shipped sample data and its generator (no Dagster here; the runner is fineplat_assets.demo)."""
