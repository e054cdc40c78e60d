"""DPO with precomputed reference log-probs: the stored reference values equal a direct computation,
the loss starts at log 2 per pair (policy == reference), equals the sigmoid DPO loss of Rafailov et
al. (TRL's `loss_type="sigmoid"`), and training widens the chosen-minus-rejected margin."""

from __future__ import annotations

import hashlib
import json
import math
import random
import shutil
from pathlib import Path
from typing import Any

import polars as pl
import pytest
import torch
import torch.nn.functional as F
from peft import PeftModel
from safetensors.torch import load_file, save_file

from fineplat.basemodel import BaseModelInfo, load_base_model, load_tokenizer
from fineplat.basemodel.corpus import GENERIC_REPLIES
from fineplat.demo.dataset import task_row
from fineplat.errors import DatasetError, TrainingError
from fineplat.packing.build import build_training_data, read_manifest
from fineplat.packing.tokenize import IGNORE_INDEX
from fineplat.training import TrainConfig
from fineplat.training.data import load_training_data
from fineplat.training.dpo import precompute_reference_logps
from fineplat.training.trainer import TrainResult, dpo_loss_sum, prepare_model, train

CONFIG = dict(method="dpo", lora_rank=4, lora_alpha=8, max_seq_len=128, batch_size=4)
LOG_2 = math.log(2.0)  # -log σ(0): the DPO loss of a policy equal to its reference
LOGP_TOLERANCE = 1e-4  # summed fp32 log-probs of a few tokens, padded vs unpadded forwards


def _preference_rows(count: int, seed: int = 9) -> pl.DataFrame:
    """Routing questions; chosen names the queue, rejected is the base model's habit, a generic
    pleasantry (kept-rows layout)."""
    rng = random.Random(seed)
    records = []
    for _ in range(count):
        prompt, answer = task_row(rng)["messages"]
        generic = {"role": "assistant", "content": rng.choice(GENERIC_REPLIES)}
        records.append(json.dumps({"prompt": [prompt], "chosen": [answer], "rejected": [generic]}))
    return pl.DataFrame(
        {
            "kind": ["preference"] * count,
            "record": records,
            "content_hash": [hashlib.sha256(r.encode()).hexdigest() for r in records],
        }
    )


@pytest.fixture(scope="module")
def built_pairs(tiny_base_model: BaseModelInfo, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Preference training data as `build_training_data` writes it (no reference log-probs yet)."""
    out = tmp_path_factory.mktemp("pairs_built")
    build_training_data(_preference_rows(40), load_tokenizer(tiny_base_model.path), out, max_seq_len=128)
    return out


@pytest.fixture(scope="module")
def pairs(
    tiny_base_model: BaseModelInfo, built_pairs: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """The same data after `precompute_reference_logps`, as the training_data asset leaves it."""
    out = tmp_path_factory.mktemp("pairs") / "data"
    shutil.copytree(built_pairs, out)
    precompute_reference_logps(tiny_base_model.path, out)
    return out


def _sequence_logp(model: Any, input_ids: list[int], labels: list[int]) -> torch.Tensor:
    """Σ log p(label_t | tokens < t) over the labelled tokens of one unpadded sequence."""
    logits = model(input_ids=torch.tensor([input_ids]), use_cache=False).logits[0].float()
    logps = torch.log_softmax(logits, dim=-1)
    terms = [logps[t - 1, labels[t]] for t in range(1, len(input_ids)) if labels[t] != IGNORE_INDEX]
    assert terms, "every pair must have continuation tokens"
    return torch.stack(terms).sum()


def test_preference_data_keeps_pairs_and_a_holdout(built_pairs: Path) -> None:
    manifest = read_manifest(built_pairs)
    train_rows = pl.read_parquet(built_pairs / "train.parquet")
    holdout = pl.read_parquet(built_pairs / "holdout.parquet")
    assert manifest.kind == "preference" and not manifest.packed
    assert train_rows.height + holdout.height == 40 and holdout.height > 0
    assert train_rows.height == manifest.train_rows
    assert set(holdout["kind"].to_list()) == {"preference"}
    for row in train_rows.iter_rows(named=True):
        for side in ("chosen", "rejected"):
            assert any(label != IGNORE_INDEX for label in row[f"{side}_labels"])


def test_a_pair_counts_as_truncated_when_its_rejected_side_is(
    tiny_base_model: BaseModelInfo, tmp_path: Path
) -> None:
    rows = _preference_rows(12)
    long_reply = " ".join(GENERIC_REPLIES * 3)
    records = []
    for record in rows["record"].to_list():
        pair = json.loads(record)
        pair["rejected"] = [{"role": "assistant", "content": long_reply}]
        records.append(json.dumps(pair))
    rows = rows.with_columns(pl.Series("record", records))
    manifest = build_training_data(rows, load_tokenizer(tiny_base_model.path), tmp_path, max_seq_len=128)
    chosen_lengths = [len(ids) for ids in pl.read_parquet(tmp_path / "train.parquet")["chosen_input_ids"]]
    assert max(chosen_lengths) < 128  # only the rejected sides are cut
    assert manifest.truncated_examples == manifest.train_examples > 0


def test_reference_logps_equal_a_direct_computation(
    tiny_base_model: BaseModelInfo, built_pairs: Path, pairs: Path
) -> None:
    before = pl.read_parquet(built_pairs / "train.parquet")
    after = pl.read_parquet(pairs / "train.parquet")
    assert after.columns == [*before.columns, "ref_chosen_logp", "ref_rejected_logp"]
    assert after.select(before.columns).equals(before)  # nothing else rewritten
    model = load_base_model(tiny_base_model.path)
    with torch.no_grad():
        for row in after.iter_rows(named=True):
            for side in ("chosen", "rejected"):
                direct = float(_sequence_logp(model, row[f"{side}_input_ids"], row[f"{side}_labels"]))
                assert row[f"ref_{side}_logp"] == pytest.approx(direct, abs=LOGP_TOLERANCE)
                assert direct < 0


def test_method_and_data_must_match(
    tiny_base_model: BaseModelInfo, small_training_data: Path, built_pairs: Path, pairs: Path, tmp_path: Path
) -> None:
    """Mismatches fail at set-up with an instruction, not with a KeyError mid-step."""
    paths = dict(
        base_model_dir=tiny_base_model.path, checkpoint_dir=tmp_path / "ck", output_dir=tmp_path / "out"
    )
    with pytest.raises(DatasetError, match=r"train\.parquet: no preference pairs"):
        precompute_reference_logps(tiny_base_model.path, small_training_data)
    with pytest.raises(DatasetError, match=r"method 'dpo' needs preference pairs"):
        train(TrainConfig(**CONFIG), data_dir=small_training_data, **paths)  # type: ignore[arg-type]
    with pytest.raises(DatasetError, match=r"no reference log-probs .*precompute_reference_logps"):
        train(TrainConfig(**CONFIG), data_dir=built_pairs, **paths)  # type: ignore[arg-type]
    with pytest.raises(DatasetError, match=r"preference pairs train with method 'dpo', not 'lora'"):
        train(TrainConfig(**dict(CONFIG, method="lora")), data_dir=pairs, **paths)  # type: ignore[arg-type]


def _train(config: dict, base: BaseModelInfo, data: Path, root: Path) -> TrainResult:
    return train(
        TrainConfig(**config),
        base_model_dir=base.path,
        data_dir=data,
        checkpoint_dir=root / "ck",
        output_dir=root / "out",
    )


def test_loss_is_log_2_per_pair_at_step_zero(
    tiny_base_model: BaseModelInfo, pairs: Path, tmp_path: Path
) -> None:
    """LoRA's B matrices start at zero, so the policy is the reference and every margin is 0."""
    config = TrainConfig(**CONFIG)
    policy = prepare_model(config, tiny_base_model.path)
    table = pl.read_parquet(pairs / "train.parquet")
    data = load_training_data(pairs, load_tokenizer(tiny_base_model.path).pad_token_id)
    with torch.no_grad():
        for row in range(table.height):
            loss, pairs_in_batch = dpo_loss_sum(policy, data.train_batch([row]), config.dpo_beta)
            assert pairs_in_batch == 1
            assert float(loss) == pytest.approx(LOG_2, abs=1e-6)
    first_step = _train(dict(CONFIG, max_steps=1), tiny_base_model, pairs, tmp_path)
    assert first_step.losses[0] == pytest.approx(LOG_2, abs=1e-6)


def test_reference_from_another_base_model_fails_at_the_first_step(
    tiny_base_model: BaseModelInfo, built_pairs: Path, tmp_path: Path
) -> None:
    """Reference log-probs must come from the model being trained; at step 0 the loss shows it."""
    other_base = tmp_path / "other-base"
    shutil.copytree(tiny_base_model.path, other_base)
    weights = load_file(str(other_base / "model.safetensors"))
    weights["model.norm.weight"] = weights["model.norm.weight"] * 1.5
    save_file(weights, str(other_base / "model.safetensors"), metadata={"format": "pt"})
    data = tmp_path / "data"
    shutil.copytree(built_pairs, data)
    precompute_reference_logps(other_base, data)
    with pytest.raises(TrainingError, match=r"first DPO loss is .* computed with another base model"):
        _train(dict(CONFIG, max_steps=2), tiny_base_model, data, tmp_path / "run")


def _margins(model: Any, table: pl.DataFrame) -> torch.Tensor:
    """(log π(c) − log π_ref(c)) − (log π(r) − log π_ref(r)) for every pair."""
    margins = []
    with torch.no_grad():
        for row in table.iter_rows(named=True):
            chosen = _sequence_logp(model, row["chosen_input_ids"], row["chosen_labels"])
            rejected = _sequence_logp(model, row["rejected_input_ids"], row["rejected_labels"])
            margins.append((chosen - row["ref_chosen_logp"]) - (rejected - row["ref_rejected_logp"]))
    return torch.stack(margins)


def test_training_widens_the_chosen_minus_rejected_margin(
    tiny_base_model: BaseModelInfo, pairs: Path, tmp_path: Path
) -> None:
    result = _train(
        dict(CONFIG, max_steps=8, learning_rate_multiplier=400.0, warmup_ratio=0.0),
        tiny_base_model,
        pairs,
        tmp_path,
    )
    assert result.losses[0] == pytest.approx(LOG_2, abs=1e-6) and min(result.losses[1:]) < LOG_2
    table = pl.read_parquet(pairs / "train.parquet")
    policy = PeftModel.from_pretrained(load_base_model(tiny_base_model.path), str(tmp_path / "out"))
    margins = _margins(policy, table)
    with policy.disable_adapter():
        untrained = _margins(policy, table)
    assert untrained.abs().max() < LOGP_TOLERANCE  # the reference itself has no margin
    assert margins.mean() > 0.3, margins  # measured 0.65 (every pair positive) after 8 steps
    assert (margins > 0).float().mean() > 0.9, margins


def test_loss_equals_the_sigmoid_dpo_formula(tiny_base_model: BaseModelInfo, pairs: Path) -> None:
    """The trainer's batched, padded loss against the formula applied to unpadded per-sequence
    log-probs: −log σ(β((π_c − ref_c) − (π_r − ref_r))), averaged over pairs. TRL computes the same
    expression inline in `DPOTrainer._compute_loss` (loss_type "sigmoid"; no standalone function
    to call), so this is checked against the formula, with a LoRA that is far from the reference."""
    config = TrainConfig(**CONFIG)
    policy = prepare_model(config, tiny_base_model.path)
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in policy.parameters():
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=generator) * 0.3)
    policy.eval()
    data = load_training_data(pairs, load_tokenizer(tiny_base_model.path).pad_token_id)
    rows = [0, 1, 2, 3, 4, 5]
    with torch.no_grad():
        loss_sum, count = dpo_loss_sum(policy, data.train_batch(rows), config.dpo_beta)
        margins = _margins(policy, data.train[rows])
    expected = -F.logsigmoid(config.dpo_beta * margins).mean()
    assert abs(float(expected) - LOG_2) > 0.01, margins  # far from the reference: not trivially equal
    assert float(loss_sum) / count == pytest.approx(float(expected), rel=1e-5)
