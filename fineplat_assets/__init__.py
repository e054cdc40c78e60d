"""fineplat's Dagster graph: assets, checks, sensors, jobs and partitions, assembled in
`fineplat_assets.definitions`. Thin by design: orchestration and metadata only; the logic lives in
the `fineplat` core library."""
