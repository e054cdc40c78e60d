"""Evaluation and gating: measure the base model and the adapter on the same inputs, and decide
whether the adapter may be promoted."""
