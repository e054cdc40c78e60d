"""The tiny base model is built deterministically: same spec, same files, same base model SHA,
and it loads through the same code as a real Hugging Face model directory."""

from __future__ import annotations

from pathlib import Path

import pytest

from fineplat.basemodel import (
    BaseModelInfo,
    TinyModelSpec,
    base_model_sha,
    build_base_model,
    load_base_model,
    load_tokenizer,
    resolve_base_model,
)
from fineplat.errors import BaseModelError

SPEC = TinyModelSpec(pretrain_steps=5, corpus_documents=600)


def test_two_builds_give_the_same_sha(tmp_path: Path) -> None:
    first = build_base_model(tmp_path / "a", SPEC)
    second = build_base_model(tmp_path / "b", SPEC)
    assert first.sha == second.sha
    assert len(first.sha) == 64


def test_a_different_seed_gives_a_different_sha(tmp_path: Path) -> None:
    first = build_base_model(tmp_path / "a", SPEC)
    other = build_base_model(tmp_path / "b", TinyModelSpec(pretrain_steps=5, corpus_documents=600, seed=1))
    assert first.sha != other.sha


def test_sha_covers_weights(tiny_base_model: BaseModelInfo, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(tiny_base_model.path, copy)
    assert base_model_sha(copy) == tiny_base_model.sha
    weights = copy / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    assert base_model_sha(copy) != tiny_base_model.sha


def test_local_directory_resolves_like_a_hub_model(tiny_base_model: BaseModelInfo) -> None:
    info = resolve_base_model(str(tiny_base_model.path))
    assert info.sha == tiny_base_model.sha
    tokenizer = load_tokenizer(info.path)
    model = load_base_model(info.path)
    assert model.config.model_type == "llama"
    assert "{% generation %}" in tokenizer.chat_template or "generation" in tokenizer.chat_template


def test_unknown_hub_id_names_what_to_do(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(BaseModelError, match="not in the Hugging Face cache"):
        resolve_base_model("meta-llama/Llama-3.2-1B-Instruct")


def test_real_hub_cache_layout_loads(
    tiny_base_model: BaseModelInfo, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A model placed in the Hugging Face cache layout (as `hf download` leaves it) resolves by id."""
    import shutil

    hub = tmp_path / "hf" / "hub"
    snapshot = hub / "models--acme--tiny-llama" / "snapshots" / "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(tiny_base_model.path, snapshot)
    (hub / "models--acme--tiny-llama" / "refs").mkdir(parents=True)
    (hub / "models--acme--tiny-llama" / "refs" / "main").write_text(
        "0123456789abcdef0123456789abcdef01234567"
    )
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    info = resolve_base_model("acme/tiny-llama")
    assert info.sha == tiny_base_model.sha
