"""Per-example attention for packed windows on sdpa ("fineplat_packed_sdpa").

Why: with packed windows transformers' sdpa path builds a dense block-diagonal [B, 1, T, T] mask
from the restarting `position_ids` and computes all T x T scores of every window, although the
examples need only the blocks on the diagonal (a third of them for Alpaca-like lengths in 512-token
windows). Flash attention's varlen kernel skips the rest on GPUs; sdpa has no varlen kernel, and one
sdpa call per example costs more in call overhead than it saves. So this implementation gathers the
batch's examples into a few length buckets (each padded to its longest member by repeating the last
token; members are within `BUCKET_RATIO` of it), runs one causal sdpa per bucket and scatters the
outputs back. Same math as the masked sdpa call (the packing parity test holds it to 1e-5), no mask
is built at all, and the padding positions a right-padded bucket adds are never attended to by a
real token (causal), so their gradients are zero.

It is registered with transformers' `AttentionInterface` and `AttentionMaskInterface` under
`PACKED_SDPA`; the trainer switches a model to it for packed training data (`use_packed_sdpa`).
Anything it does not handle (a padding mask, a KV cache, sliding windows) goes to plain sdpa.
"""

from __future__ import annotations

import weakref
from typing import Any

import torch
import torch.nn.functional as F
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
from transformers.modeling_utils import AttentionInterface

from fineplat.errors import ConfigError

PACKED_SDPA = "fineplat_packed_sdpa"
# A new bucket starts below 70% of the current bucket's longest example: at most ~1/0.7 extra
# (wasted) query/key positions per example, and ~log(T)/log(1/0.7) sdpa calls per layer.
BUCKET_RATIO = 0.7
# Relative cost of a causal sdpa call per score against a masked one (CPU flash kernel, 4 x 512 x
# 32-dim heads, forward + backward: 30.5 vs 38.1 ms, 1 thread), and the extra cost per bucket
# score of gathering and scattering queries, keys and values.
CAUSAL_COST = 0.8
GATHER_COST = 0.1


class _Plan:
    """How one batch's examples map to buckets: per bucket the flat token index of every
    (member, step) slot and which slots are real tokens; `inverse` undoes the bucket order.

    `per_example`: whether the buckets cost fewer attention scores (sum of members x longest^2)
    than masked attention over the windows as laid out (rows x length^2). Short examples (Alpaca's
    median is an eighth of a 512 window) make buckets several times cheaper; windows holding one
    or two long examples make them dearer (every bucket member is padded to the longest), and then
    one masked sdpa call per layer over the windows wins."""

    def __init__(self, positions: torch.Tensor) -> None:
        rows, row_length = positions.shape
        flat = positions.reshape(-1)
        total = flat.numel()
        starts = (flat == 0).nonzero().flatten().tolist()
        if not starts or starts[0] != 0:
            starts = [0, *starts]
        ends = [*starts[1:], total]
        examples = sorted(
            ((end - start, start) for start, end in zip(starts, ends, strict=True)), reverse=True
        )
        buckets: list[list[tuple[int, int]]] = []
        for length, start in examples:
            if not buckets or length < BUCKET_RATIO * buckets[-1][0][0]:
                buckets.append([])
            buckets[-1].append((length, start))
        bucket_cost = (CAUSAL_COST + GATHER_COST) * sum(len(bucket) * bucket[0][0] ** 2 for bucket in buckets)
        self.per_example = bucket_cost < rows * row_length**2
        self.positions = positions
        self._mask: torch.Tensor | None = None
        self.buckets: list[tuple[torch.Tensor, torch.Tensor]] = []
        if not self.per_example:
            return
        order: list[torch.Tensor] = []
        device = positions.device
        for bucket in buckets:
            steps = torch.arange(bucket[0][0], device=device)
            first = torch.tensor([s for _, s in bucket], device=device)[:, None]
            lengths = torch.tensor([n for n, _ in bucket], device=device)[:, None]
            gather = first + torch.minimum(steps[None, :], lengths - 1)  # right-pad: repeat the last token
            valid = steps[None, :] < lengths
            self.buckets.append((gather, valid))
            order.append(gather[valid])
        self.inverse = torch.argsort(torch.cat(order))

    def window_mask(self) -> torch.Tensor:
        """[B, 1, T, T] boolean mask: causal within each example of each window (built once)."""
        if self._mask is None:
            example = (self.positions == 0).cumsum(-1)  # example number of each token in its row
            length = self.positions.size(-1)
            causal = torch.ones(length, length, dtype=torch.bool, device=self.positions.device).tril()
            self._mask = ((example[:, :, None] == example[:, None, :]) & causal)[:, None]
        return self._mask


def prefers_per_example(positions: torch.Tensor) -> bool:
    """Whether a packed batch laid out as `positions` ([windows, length]) is cheaper as buckets of
    examples than as masked windows (the trainer then runs it as one flat row)."""
    return _Plan(positions).per_example


_cache: dict[str, Any] = {"ref": None, "version": None, "plan": None}


def _plan_for(positions: torch.Tensor, batch: int) -> _Plan:
    """The plan of this forward's position ids, computed once and reused by every layer (they all
    receive the same `position_ids` tensor)."""
    ref = _cache["ref"]
    if ref is not None and ref() is positions and _cache["version"] == (positions._version, batch):
        return _cache["plan"]
    plan = _Plan(positions.expand(batch, -1))
    _cache.update(ref=weakref.ref(positions), version=(positions._version, batch), plan=plan)
    return plan


def packed_sdpa_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers attention function: causal attention within each example of packed windows."""
    positions = kwargs.get("position_ids")
    batch, heads, length, dim = query.shape
    if attention_mask is not None or positions is None or key.shape[2] != length or length == 1:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    window = kwargs.get("sliding_window")
    if window is not None and window < length:
        raise ConfigError(
            f"attention: {PACKED_SDPA} has no sliding window ({window} < {length} tokens); "
            "set attn_implementation='sdpa' or 'eager' in the fine-tune config."
        )
    groups = getattr(module, "num_key_value_groups", 1)
    key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    plan = _plan_for(positions, batch)
    if not plan.per_example:  # long examples: one masked call over the windows is cheaper
        output = F.scaled_dot_product_attention(
            query,
            key,
            value,
            attn_mask=plan.window_mask(),
            dropout_p=dropout if module.training else 0.0,
            scale=scaling,
        )
        return output.transpose(1, 2).contiguous(), None
    # [B, H, T, D] -> [B*T, H, D]: one row per token of the whole batch, in window order.
    q, k, v = (t.transpose(1, 2).reshape(batch * length, heads, dim) for t in (query, key, value))
    pieces = []
    for gather, valid in plan.buckets:
        attended = F.scaled_dot_product_attention(
            q[gather].transpose(1, 2),
            k[gather].transpose(1, 2),
            v[gather].transpose(1, 2),
            dropout_p=dropout if module.training else 0.0,
            scale=scaling,
            is_causal=True,
        )
        pieces.append(attended.transpose(1, 2)[valid])
    output = torch.cat(pieces)[plan.inverse]
    return output.reshape(batch, length, heads, dim), None


def packed_sdpa_mask(**kwargs: Any) -> torch.Tensor | None:
    """No mask for packed windows without padding or cache (the attention derives the examples from
    `position_ids`); otherwise sdpa's own mask, which `packed_sdpa_attention` passes to sdpa."""
    no_cache = kwargs.get("q_offset", 0) == 0 and kwargs.get("kv_length") == kwargs.get("q_length")
    if kwargs.get("attention_mask") is None and no_cache:
        return None
    return sdpa_mask(**kwargs)


AttentionInterface.register(PACKED_SDPA, packed_sdpa_attention)
AttentionMaskInterface.register(PACKED_SDPA, packed_sdpa_mask)


def transformers_model(model: Any) -> Any:
    """The transformers model inside DDP, DeepSpeed and peft wrappers."""
    model = getattr(model, "module", model)
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def use_packed_sdpa(model: Any, max_seq_len: int) -> bool:
    """Switch a loaded model (or peft wrapper) from sdpa to `PACKED_SDPA` for training on packed
    windows; True when switched. Models with sliding-window attention shorter than the window or
    attention soft-capping keep sdpa (this function implements neither)."""
    base = transformers_model(model)
    config = base.config
    if getattr(config, "_attn_implementation", None) != "sdpa":
        return False
    window = getattr(config, "sliding_window", None)
    if (window is not None and window < max_seq_len) or getattr(config, "attn_logit_softcapping", None):
        return False
    base.set_attn_implementation(PACKED_SDPA)
    return True


def restore_sdpa(model: Any) -> None:
    """Undo `use_packed_sdpa` (before saving a full model, so its config names plain sdpa)."""
    base = transformers_model(model)
    if getattr(base.config, "_attn_implementation", None) == PACKED_SDPA:
        base.set_attn_implementation("sdpa")
