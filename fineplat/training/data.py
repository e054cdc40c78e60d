"""The trainer's view of a training_data directory: rows as tensors, batched by row ids, so the
loop stays free of file formats and the data position is just row indices."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import polars as pl
import torch

from fineplat.packing.build import read_manifest
from fineplat.packing.pack import pad_batch
from fineplat.packing.tokenize import IGNORE_INDEX, TokenizedExample


@dataclass
class TrainingData:
    """Train rows (packed windows or single examples) and the holdout examples."""

    train: pl.DataFrame
    holdout: pl.DataFrame
    pad_token_id: int
    packed: bool
    packing_efficiency: float

    @property
    def rows(self) -> int:
        return self.train.height

    @property
    def holdout_rows(self) -> int:
        return self.holdout.height

    def train_batch(self, row_ids: list[int]) -> dict:
        """Tensors for these rows: packed windows carry position_ids and no attention mask."""
        part = self.train[row_ids]
        if "chosen_input_ids" in part.columns:
            return self._preference_batch(part)
        if self.packed:
            ids = torch.tensor(part["input_ids"].to_list(), dtype=torch.long)
            labels = torch.tensor(part["labels"].to_list(), dtype=torch.long)
            positions = torch.tensor(part["position_ids"].to_list(), dtype=torch.long)
            owners = torch.tensor(part["example_ids"].to_list(), dtype=torch.long)
            return {
                "input_ids": ids,
                "labels": labels,
                "position_ids": positions,
                "loss_tokens": int((labels[:, 1:] != IGNORE_INDEX).sum()),
                "real_tokens": int((owners >= 0).sum()),
            }
        examples = [
            TokenizedExample(ids, lab)
            for ids, lab in zip(part["input_ids"].to_list(), part["labels"].to_list(), strict=True)
        ]
        batch: dict = dict(pad_batch(examples, self.pad_token_id))
        batch["loss_tokens"] = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
        batch["real_tokens"] = int(batch["attention_mask"].sum())
        return batch

    def _preference_batch(self, part: pl.DataFrame) -> dict:
        batch: dict = {}
        for side in ("chosen", "rejected"):
            examples = [
                TokenizedExample(ids, lab)
                for ids, lab in zip(
                    part[f"{side}_input_ids"].to_list(), part[f"{side}_labels"].to_list(), strict=True
                )
            ]
            padded = pad_batch(examples, self.pad_token_id)
            batch[f"{side}_input_ids"] = padded["input_ids"]
            batch[f"{side}_labels"] = padded["labels"]
            batch[f"{side}_attention_mask"] = padded["attention_mask"]
            batch[f"ref_{side}_logp"] = torch.tensor(part[f"ref_{side}_logp"].to_list(), dtype=torch.float32)
        batch["loss_tokens"] = part.height
        batch["real_tokens"] = int(
            batch["chosen_attention_mask"].sum() + batch["rejected_attention_mask"].sum()
        )
        return batch

    def holdout_batch(self, row_ids: list[int]) -> dict:
        """An unpacked, padded batch of holdout examples."""
        part = self.holdout[row_ids]
        examples = [
            TokenizedExample(ids, lab)
            for ids, lab in zip(part["input_ids"].to_list(), part["labels"].to_list(), strict=True)
        ]
        return dict(pad_batch(examples, self.pad_token_id))


def load_training_data(data_dir: Path, pad_token_id: int) -> TrainingData:
    """Open a directory written by `fineplat.packing.build.build_training_data`."""
    manifest = read_manifest(data_dir)
    return TrainingData(
        train=pl.read_parquet(data_dir / "train.parquet"),
        holdout=pl.read_parquet(data_dir / "holdout.parquet"),
        pad_token_id=pad_token_id,
        packed=manifest.packed,
        packing_efficiency=manifest.packing_efficiency,
    )
