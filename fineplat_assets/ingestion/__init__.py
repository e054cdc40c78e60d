"""Ingestion assets: raw → validated → deduplicated → decontaminated, per dataset upload."""
