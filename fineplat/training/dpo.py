"""Direct Preference Optimization (Rafailov et al. 2023) with one model in memory.

DPO compares the policy's log-probabilities of the chosen and rejected continuations with those of
a frozen reference (the base model). The reference never changes, so its log-probabilities are
computed once, when the `training_data` artifact is built, and stored beside the tokens; training
then holds only the policy (base + LoRA), halving memory and forward passes. At step 0 the LoRA B
matrices are zero, the policy equals the reference and the loss is exactly log 2 per pair.

    loss = -log σ(β · ((log π(y_c|x) − log π_ref(y_c|x)) − (log π(y_r|x) − log π_ref(y_r|x))))
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import polars as pl
import torch

from fineplat.basemodel import load_base_model, load_tokenizer
from fineplat.errors import DatasetError, TrainingError
from fineplat.packing.pack import pad_batch
from fineplat.packing.tokenize import TokenizedExample
from fineplat.training import distributed
from fineplat.training.data import TrainingData

PAIR_COLUMNS = ("chosen_input_ids", "chosen_labels", "rejected_input_ids", "rejected_labels")
REFERENCE_COLUMNS = ("ref_chosen_logp", "ref_rejected_logp")
REFERENCE_BATCH_SIZE = 8  # sequences per reference forward: memory-bounded, results do not depend on it
# At a fresh run's first step the policy is the reference (LoRA B = 0), so the loss is log 2 up to the
# float noise of padded vs differently padded forwards (measured < 1e-6). A larger gap means the
# reference log-probs came from another base model: DPO would then silently optimize against it.
FIRST_STEP_LOSS = math.log(2.0)
FIRST_STEP_TOLERANCE = 1e-3


@torch.no_grad()
def sequence_logps(
    model: torch.nn.Module, input_ids: list[list[int]], labels: list[list[int]], pad_id: int
) -> list[float]:
    """Summed log-probabilities of the labelled (continuation) tokens of each sequence, fp32."""
    from fineplat.training.trainer import to_device, token_logprobs

    device = distributed.training_device()
    sums: list[float] = []
    for start in range(0, len(input_ids), REFERENCE_BATCH_SIZE):
        examples = [
            TokenizedExample(ids, lab)
            for ids, lab in zip(
                input_ids[start : start + REFERENCE_BATCH_SIZE],
                labels[start : start + REFERENCE_BATCH_SIZE],
                strict=True,
            )
        ]
        batch = to_device(dict(pad_batch(examples, pad_id)), device)
        logps = token_logprobs(
            model, batch["input_ids"], batch["labels"], attention_mask=batch["attention_mask"]
        )
        sums.extend(float(v) for v in logps.sum(-1))
    return sums


def precompute_reference_logps(base_model_dir: Path, data_dir: Path) -> pl.DataFrame:
    """Add `ref_chosen_logp` and `ref_rejected_logp` (the base model's summed continuation
    log-probs, fp32, no cache) to `data_dir/train.parquet`, rewritten atomically; return the table.

    Raises DatasetError when the directory holds no preference pairs."""
    path = Path(data_dir) / "train.parquet"
    table = pl.read_parquet(path)
    missing = [c for c in PAIR_COLUMNS if c not in table.columns]
    if missing:
        raise DatasetError(
            f"{path}: no preference pairs (missing columns {', '.join(missing)}); DPO needs a dataset "
            "of purpose 'dpo' with prompt/chosen/rejected rows, built with build_training_data."
        )
    pad_id = load_tokenizer(base_model_dir).pad_token_id
    model = load_base_model(base_model_dir, dtype="float32").to(distributed.training_device())
    model.eval()
    columns = {
        f"ref_{side}_logp": sequence_logps(
            model, table[f"{side}_input_ids"].to_list(), table[f"{side}_labels"].to_list(), pad_id
        )
        for side in ("chosen", "rejected")
    }
    table = table.with_columns(
        *(pl.Series(name, values, dtype=pl.Float64) for name, values in columns.items())
    )
    staging = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    table.write_parquet(staging)
    os.replace(staging, path)
    return table


def check_data_fits_method(method: str, data: TrainingData, data_dir: Path) -> None:
    """DPO needs preference pairs with reference log-probs; every other method needs token rows.
    Caught at set-up, so a mismatch fails with an instruction instead of a KeyError mid-step."""
    columns = set(data.train.columns)
    is_preference = set(PAIR_COLUMNS) <= columns
    if method == "dpo" and not is_preference:
        raise DatasetError(
            f"{data_dir}/train.parquet: method 'dpo' needs preference pairs (prompt/chosen/rejected rows, "
            "dataset purpose 'dpo'); this training data holds chat or text rows. Use method 'sft' or 'lora'."
        )
    if method == "dpo" and not set(REFERENCE_COLUMNS) <= columns:
        raise DatasetError(
            f"{data_dir}/train.parquet: no reference log-probs ({', '.join(REFERENCE_COLUMNS)}); run "
            "fineplat.training.dpo.precompute_reference_logps(base_model_dir, data_dir) after building it."
        )
    if method != "dpo" and is_preference:
        raise DatasetError(
            f"{data_dir}/train.parquet: preference pairs train with method 'dpo', not {method!r}."
        )


def check_first_step_loss(loss: float, data_dir: Path) -> None:
    """Fail a fresh DPO run whose first loss is not log 2: its reference log-probs were computed
    with a different base model (or tokenizer) than the one being trained."""
    if abs(loss - FIRST_STEP_LOSS) > FIRST_STEP_TOLERANCE:
        raise TrainingError(
            f"{data_dir}/train.parquet: the first DPO loss is {loss:.6f}, expected log 2 = {FIRST_STEP_LOSS:.6f} "
            "(policy == reference at step 0), so ref_chosen_logp/ref_rejected_logp were computed with another "
            "base model; rerun precompute_reference_logps(base_model_dir, data_dir) with this base model."
        )
