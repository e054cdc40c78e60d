"""Base models: the tiny deterministic Llama that tests and the demo build offline, and the one
loader that also opens real Hugging Face models (local path or hub id from the local cache)."""

from fineplat.basemodel.build import TinyModelSpec, build_base_model
from fineplat.basemodel.load import (
    BaseModelInfo,
    base_model_sha,
    load_base_model,
    load_tokenizer,
    locate_base_model,
    resolve_base_model,
)

__all__ = [
    "BaseModelInfo",
    "TinyModelSpec",
    "base_model_sha",
    "build_base_model",
    "load_base_model",
    "load_tokenizer",
    "locate_base_model",
    "resolve_base_model",
]
