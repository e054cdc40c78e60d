"""Fixtures for ingestion tests: file writers that keep exact bytes (so line numbers are known) and
the tiny base model's tokenizer (the project's own, built once per session)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from fineplat.basemodel import BaseModelInfo, load_tokenizer


def chat(user: str, assistant: str, system: str | None = None) -> dict[str, Any]:
    """An OpenAI-style chat row."""
    messages = [{"role": "system", "content": system}] if system else []
    messages += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
    return {"messages": messages}


@pytest.fixture
def write_lines(tmp_path: Path) -> Callable[..., Path]:
    """Write `lines` (dicts become JSON, str/bytes are written as they are) one per line."""

    def write(lines: list[Any], name: str = "data.jsonl") -> Path:
        path = tmp_path / name
        with open(path, "wb") as handle:
            for line in lines:
                if isinstance(line, bytes):
                    handle.write(line + b"\n")
                elif isinstance(line, str):
                    handle.write(line.encode("utf-8") + b"\n")
                else:
                    handle.write(json.dumps(line, ensure_ascii=False).encode("utf-8") + b"\n")
        return path

    return write


@pytest.fixture(scope="session")
def tokenizer(tiny_base_model: BaseModelInfo) -> Any:
    """The tiny base model's tokenizer (Llama-3-style chat template with generation tags)."""
    return load_tokenizer(tiny_base_model.path)
