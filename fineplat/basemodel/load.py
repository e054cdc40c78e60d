"""Load a base model and its tokenizer from a local directory or a hub id in the local Hugging Face
cache (never downloaded at run time), and compute the base model SHA that lineage records."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fineplat.errors import BaseModelError
from fineplat.hashing import hash_files
from fineplat.settings import paths

TINY_MODEL_NAME = "fineplat-tiny"
# Files that define a model's behaviour: weights, architecture, generation defaults, tokenizer and
# chat template. Metadata fineplat writes beside them (fineplat_base.json) is excluded.
_IDENTITY_SUFFIXES = (".safetensors", ".bin", ".model", ".jinja")
_IDENTITY_NAMES = {
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
}


@dataclass(frozen=True)
class BaseModelInfo:
    """A resolved base model: its name as the user gave it, its local directory and its SHA."""

    name: str
    path: Path
    sha: str


def base_model_sha(model_dir: Path) -> str:
    """SHA-256 over the weight, config and tokenizer files of `model_dir` (sorted by name)."""
    model_dir = Path(model_dir)
    names = [
        p.relative_to(model_dir).as_posix()
        for p in model_dir.rglob("*")
        if p.is_file() and (p.name in _IDENTITY_NAMES or p.name.endswith(_IDENTITY_SUFFIXES))
    ]
    if not any(n.endswith((".safetensors", ".bin")) for n in names):
        raise BaseModelError(
            f"{model_dir}: no weight files (*.safetensors or *.bin); is this a model directory?"
        )
    return hash_files(model_dir, names)


def resolve_base_model(name_or_path: str, *, build_if_missing: bool = True) -> BaseModelInfo:
    """Find a base model and hash its files: `fineplat-tiny` (built on first use under
    FINEPLAT_HOME/models), an existing local directory, or a hub id already in the local Hugging
    Face cache. Hashing reads every weight file; a job hashes once, at submission, and its later
    stages use `locate_base_model` with the SHA the job spec recorded."""
    if name_or_path == TINY_MODEL_NAME and not (paths().models / TINY_MODEL_NAME / "config.json").exists():
        return _build_tiny_model(build_if_missing)  # the build hashes what it wrote
    path = locate_base_model(name_or_path, build_if_missing=build_if_missing)
    return BaseModelInfo(name_or_path, path, base_model_sha(path))


def locate_base_model(name_or_path: str, *, build_if_missing: bool = True) -> Path:
    """The local directory of a base model (see `resolve_base_model`), without hashing it."""
    if name_or_path == TINY_MODEL_NAME:
        target = paths().models / TINY_MODEL_NAME
        return target if (target / "config.json").exists() else _build_tiny_model(build_if_missing).path
    local = Path(name_or_path).expanduser()
    if local.is_dir():
        if not (local / "config.json").exists():
            raise BaseModelError(f"{local}: no config.json; expected a Hugging Face model directory.")
        return local.resolve()
    try:
        from huggingface_hub import snapshot_download

        # Read the cache location now, not at huggingface_hub's import time.
        cache_dir = os.environ.get("HF_HUB_CACHE") or (
            str(Path(os.environ["HF_HOME"]) / "hub") if os.environ.get("HF_HOME") else None
        )
        return Path(snapshot_download(repo_id=name_or_path, local_files_only=True, cache_dir=cache_dir))
    except Exception as exc:  # the hub client raises several types for "not cached"
        raise BaseModelError(
            f"base model {name_or_path!r}: not a local directory and not in the Hugging Face cache "
            f"({os.environ.get('HF_HOME', '~/.cache/huggingface')}). Download it on a machine with hub "
            f"access (`hf download {name_or_path}`) or pass a local path. ({type(exc).__name__})"
        ) from exc


def _build_tiny_model(build_if_missing: bool) -> BaseModelInfo:
    target = paths().models / TINY_MODEL_NAME
    if not build_if_missing:
        raise BaseModelError(f"{target}: tiny base model not built; run `fineplat base-model build`.")
    from fineplat.basemodel.build import build_base_model

    return build_base_model(target, show_progress=True)


def load_tokenizer(model_dir: Path) -> Any:
    """The model's own tokenizer; it must carry a chat template (fineplat tokenizes with it)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    if not tokenizer.chat_template:
        raise BaseModelError(
            f"{model_dir}: the tokenizer has no chat template; use an instruct/chat model or add "
            "a chat_template.jinja beside tokenizer_config.json."
        )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_base_model(model_dir: Path, *, dtype: str = "float32", attn_implementation: str = "sdpa") -> Any:
    """Load the causal LM in `dtype` with the given attention implementation (eval mode)."""
    import torch
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(model_dir), dtype=getattr(torch, dtype), attn_implementation=attn_implementation
        )
    except OSError as exc:
        raise BaseModelError(f"{model_dir}: cannot load model weights: {exc}") from exc
    model.eval()
    return model
