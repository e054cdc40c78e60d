"""Build the tiny Llama-architecture base model and its byte-level BPE tokenizer, offline and
deterministically: same spec, same files, same base model SHA. It is briefly pre-trained on a
generated corpus (`fineplat.basemodel.corpus`) so that fine-tuning has language to build on.

    fineplat base-model build --out .fineplat/models/fineplat-tiny
"""

from __future__ import annotations

import json
import math
import random
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from rich.progress import Progress
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from fineplat.basemodel.corpus import corpus_documents, tokenizer_training_text
from fineplat.basemodel.load import BaseModelInfo, base_model_sha

BOS, EOS, EOT, PAD = "<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>", "<|pad|>"
HEADER_START, HEADER_END = "<|start_header_id|>", "<|end_header_id|>"
SPECIAL_TOKENS = [BOS, EOS, HEADER_START, HEADER_END, EOT, PAD]
CHAT_TEMPLATE = (Path(__file__).parent / "chat_template.jinja").read_text()


@dataclass(frozen=True)
class TinyModelSpec:
    """Shape and pre-training budget of the tiny base model (~1M parameters by default)."""

    vocab_size: int = 1024  # byte-level BPE vocabulary, special tokens included
    hidden_size: int = 128
    intermediate_size: int = 384
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    num_key_value_heads: int = 2  # grouped-query attention, as Llama 3
    max_position_embeddings: int = 1024
    pretrain_steps: int = 400  # fixed step count (never wall time) keeps builds deterministic
    pretrain_batch_size: int = 16
    pretrain_seq_len: int = 128
    learning_rate: float = 3e-3
    corpus_documents: int = 12000
    seed: int = 0


def _train_tokenizer(spec: TinyModelSpec) -> PreTrainedTokenizerFast:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=spec.vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(tokenizer_training_text(spec.seed, spec.corpus_documents), trainer=trainer)
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=BOS,
        eos_token=EOT,
        pad_token=PAD,
        model_max_length=spec.max_position_embeddings,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def _token_stream(tokenizer: Any, spec: TinyModelSpec) -> torch.Tensor:
    ids: list[int] = []
    for document in corpus_documents(spec.seed + 1, spec.corpus_documents):
        if isinstance(document, str):
            ids.extend(
                [
                    tokenizer.bos_token_id,
                    *tokenizer.encode(document, add_special_tokens=False),
                    tokenizer.convert_tokens_to_ids(EOS),
                ]
            )
        else:
            ids.extend(tokenizer.apply_chat_template(document, tokenize=True, return_dict=True)["input_ids"])
    return torch.tensor(ids, dtype=torch.long)


def _pretrain(
    model: LlamaForCausalLM, stream: torch.Tensor, spec: TinyModelSpec, show_progress: bool
) -> float:
    generator = torch.Generator().manual_seed(spec.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=spec.learning_rate, weight_decay=0.0)
    warmup = max(1, spec.pretrain_steps // 20)

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.1 + 0.9 * 0.5 * (
            1 + math.cos(math.pi * (step - warmup) / max(1, spec.pretrain_steps - warmup))
        )

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    windows = (len(stream) - 1) // spec.pretrain_seq_len
    model.train()
    loss_value = float("nan")
    with Progress(disable=not show_progress, transient=True) as progress:
        task = progress.add_task("pre-training tiny base model", total=spec.pretrain_steps)
        for _ in range(spec.pretrain_steps):
            starts = (
                torch.randint(0, windows, (spec.pretrain_batch_size,), generator=generator)
                * spec.pretrain_seq_len
            )
            batch = torch.stack([stream[s : s + spec.pretrain_seq_len] for s in starts.tolist()])
            loss = model(input_ids=batch, labels=batch, use_cache=False).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            loss_value = loss.item()
            progress.update(
                task, advance=1, description=f"pre-training tiny base model (loss {loss_value:.3f})"
            )
    model.eval()
    return loss_value


def build_base_model(
    out_dir: Path, spec: TinyModelSpec | None = None, *, show_progress: bool = False
) -> BaseModelInfo:
    """Build the tiny base model into `out_dir` (replaced if present) and return its identity.

    Deterministic: the corpus, tokenizer and weights derive from `spec.seed` alone, training uses a
    fixed step count, and files are written with stable contents, so the SHA repeats.
    """
    spec = spec or TinyModelSpec()
    out_dir = Path(out_dir)
    staging = out_dir.with_name(out_dir.name + ".building")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)

    random.seed(spec.seed)
    torch.manual_seed(spec.seed)
    tokenizer = _train_tokenizer(spec)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_hidden_layers,
        num_attention_heads=spec.num_attention_heads,
        num_key_value_heads=spec.num_key_value_heads,
        max_position_embeddings=spec.max_position_embeddings,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    final_loss = float("nan")
    if spec.pretrain_steps > 0:
        final_loss = _pretrain(model, _token_stream(tokenizer, spec), spec, show_progress)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=[tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids(EOS)],
        pad_token_id=tokenizer.pad_token_id,
        do_sample=False,
    )
    model.save_pretrained(staging, safe_serialization=True)
    tokenizer.save_pretrained(staging)
    sha = base_model_sha(staging)
    (staging / "fineplat_base.json").write_text(
        json.dumps(
            {"sha": sha, "spec": asdict(spec), "pretrain_final_loss": final_loss}, indent=2, sort_keys=True
        )
    )
    shutil.rmtree(out_dir, ignore_errors=True)
    staging.rename(out_dir)
    return BaseModelInfo(name=out_dir.name, path=out_dir, sha=sha)
