"""The fine-tune job's typed configuration, and the two hashes derived from it.

- `TrainConfig.hparams_hash()`: the hyperparameters alone. Lineage records it per model
  (`hparams_hash`), and a checkpoint carries it so a resume under other hyperparameters is refused.
- `run_identity()`: hyperparameters + base model SHA + dataset version. It names a run: the job id
  is derived from it, and an identical second submission finds the first's result by it.

    fineplat jobs submit --name support-router --dataset <id> --config '{"method": "lora"}'
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final, Literal

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
# The task-holdout metrics a chat job (sft/lora/qlora) may be gated on; `fineplat.evaluation.metrics`
# defines each. DPO and CPT are gated on their own measures (preference accuracy, perplexity).
EvalMetric = Literal["exact_match", "token_f1", "accuracy", "bleu", "rouge_l"]
# `dtype` and `attn_implementation` left at AUTO take the training device's defaults, chosen by
# `fineplat.training.device_defaults.resolve_device_choice` and recorded in the run's result.
AUTO: Final = "auto"


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
    # auto: flash-attention's varlen kernel on CUDA in bf16 when flash-attn is installed, else sdpa
    attn_implementation: Literal["auto", "sdpa", "eager", "flash_attention_2"] = AUTO
    dtype: Literal["auto", "float32", "bfloat16"] = AUTO  # auto: bfloat16 on (bf16) CUDA, else float32
    dpo_beta: float = Field(0.1, gt=0)  # DPO temperature (Rafailov et al. 2023)
    distributed: Literal["ddp", "fsdp", "deepspeed_zero1", "deepspeed_zero2"] = "ddp"
    eval_metric: EvalMetric = "exact_match"  # the task-holdout metric the promotion gate compares

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

    def hparams_hash(self) -> str:
        """Hash of the hyperparameters alone; the same hyperparameters on another base model or
        dataset give the same value (see `run_identity` for what names a run)."""
        return hash_json(self.model_dump(mode="json"))

    def run_identity(self, base_model_sha: str, dataset_id: str) -> str:
        """This configuration's run on `base_model_sha` and `dataset_id` (see `run_identity`)."""
        return run_identity(self.method, self.model_dump(mode="json"), base_model_sha, dataset_id)


def run_identity(method: str, config: Mapping[str, Any], base_model_sha: str, dataset_id: str) -> str:
    """The identity of a training run: the same method, configuration, base model weights and
    dataset version give the same hash. The job id is derived from it, and the registry finds a
    succeeded identical run by it (`Registry.find_succeeded_job`) so a second submission reuses the
    first's result. It takes the configuration as a mapping because the registry records any job's
    configuration; the method is included because two methods with identical hyperparameters are
    still different runs."""
    return hash_json(
        {"method": method, "config": dict(config), "base_model_sha": base_model_sha, "dataset_id": dataset_id}
    )
