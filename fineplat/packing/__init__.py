"""Tokenization with the base model's own chat template and packing into fixed-length windows
that never let one example attend to another."""

from fineplat.packing.pack import PackedRow, pack_examples, packing_efficiency, pad_batch
from fineplat.packing.tokenize import TokenizedExample, tokenize_record

__all__ = [
    "PackedRow",
    "TokenizedExample",
    "pack_examples",
    "packing_efficiency",
    "pad_batch",
    "tokenize_record",
]
