"""Serving: the promotion sensor and the deploy job that drive the multi-LoRA pool."""
