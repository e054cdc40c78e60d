"""The fine-tune job's typed configuration. Its canonical hash, with the base model SHA and the
dataset version, identifies a run: an identical second submission reuses the first's result.

    fineplat jobs submit --name support-router --dataset ds-… --config '{"method": "lora", "n_epochs": 3}'
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from fineplat.hashing import hash_json

Method = Literal["sft", "lora", "qlora", "dpo", "cpt"]
# All seven linear projections of a Llama block (QLoRA paper: adapting all of them matters).
ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# Per-method default learning rates (common practice for 1B-70B models: LoRA/QLoRA 2e-4 as in the
# QLoRA paper, full SFT/CPT 2e-5, DPO 5e-6 as in Zephyr/TRL's examples); the user scales them with
# `learning_rate_multiplier` as in OpenAI's fine-tuning API.
DEFAULT_LEARNING_RATE: dict[str, float] = {"lora": 2e-4, "qlora": 2e-4, "sft": 2e-5, "cpt": 2e-5, "dpo": 5e-6}
ADAPTER_METHODS = frozenset({"lora", "qlora", "dpo"})


class TrainConfig(BaseModel):
    """Hyperparameters of one fine-tune (field names follow the seed's job API)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    method: Method = "lora"
    n_epochs: int = Field(3, ge=1, le=100)  # passes over the training split
    learning_rate_multiplier: float = Field(1.0, gt=0, le=1000)  # times DEFAULT_LEARNING_RATE[method]
    batch_size: int | Literal["auto"] = "auto"  # packed windows per optimizer step (per process)
    gradient_accumulation_steps: int = Field(1, ge=1)  # micro-batches summed into one step
    lora_rank: int = Field(16, ge=1)
    lora_alpha: int = Field(32, ge=1)
    lora_dropout: float = Field(0.0, ge=0, lt=1)
    lora_target_modules: tuple[str, ...] = tuple(sorted(ALL_LINEAR))  # canonical order: hashes agree
    warmup_ratio: float = Field(0.03, ge=0, lt=1)  # share of steps with linear warm-up
    scheduler: Literal["cosine", "linear", "constant"] = "cosine"
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float = Field(1.0, gt=0)  # gradient clipping
    max_seq_len: int = Field(512, ge=16)  # window length for packing and the truncation limit
    packing: bool = True  # pack examples into windows (leak-free); off pads each example
    seed: int = 0
    max_steps: int | None = Field(None, ge=1)  # stop early (smoke tests, benchmarks)
    checkpoint_interval: int = Field(500, ge=1)  # steps between periodic checkpoints
    keep_checkpoints: int = Field(3, ge=1)  # last K kept
    gradient_checkpointing: bool = False  # trade compute for memory; off where memory allows
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] = "sdpa"
    dtype: Literal["float32", "bfloat16"] = "float32"
    dpo_beta: float = Field(0.1, gt=0)  # DPO temperature (Rafailov et al. 2023)
    distributed: Literal["ddp", "fsdp", "deepspeed_zero1", "deepspeed_zero2"] = "ddp"

    @field_validator("lora_target_modules", mode="before")
    @classmethod
    def _sorted_modules(cls, value: object) -> tuple[str, ...]:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list | tuple) or not value:
            raise ValueError(
                "lora_target_modules: expected a non-empty list of module names, e.g. q_proj,v_proj"
            )
        return tuple(sorted(str(v) for v in value))

    @property
    def learning_rate(self) -> float:
        return DEFAULT_LEARNING_RATE[self.method] * self.learning_rate_multiplier

    @property
    def uses_adapter(self) -> bool:
        return self.method in ADAPTER_METHODS

    def config_hash(self) -> str:
        """Hash of the hyperparameters alone (the `hparams_hash` of lineage)."""
        return hash_json(self.model_dump(mode="json"))

    def run_key(self, base_model_sha: str, dataset_id: str) -> str:
        """Hash of hyperparameters + base model SHA + dataset version: the run's identity."""
        return hash_json({"config": self.model_dump(mode="json"), "base": base_model_sha, "data": dataset_id})
