"""Attention for the decode loop's steps on a CPU in bfloat16, registered with
transformers' attention interface.

A decode step asks for one query per row. PyTorch's SDPA runs it through its CPU flash
kernel, which in bfloat16 is slow at that shape: at 32 rows of 48 positions it took six
times as long as two batched matrix products and a softmax (in float32 it is as fast as
they are). :func:`decode_attention` takes that path for single-token queries in
bfloat16 or float16 on a CPU and hands everything else (prompts, float32, dropout,
soft-capping, attention sinks) to transformers' own SDPA function, with SDPA's masks.
"""

from typing import Any

import torch
from transformers import AttentionInterface, PreTrainedModel
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

#: The implementation's name in transformers' registries.
NAME = "llm_tasks_decode"

#: Keyword arguments that some models pass for features this path lacks.
_SDPA_ONLY = ("softcap", "s_aux", "sinks")


def decode_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """Attention of ``query`` (rows, heads, queries, head size) over ``key`` and ``value``
    (rows, key/value heads, positions, head size); returns (rows, queries, heads, head
    size), as transformers' functions do. ``attention_mask`` is SDPA's (True: attend)."""
    rows, heads, queries, size = query.shape
    kv_heads = key.shape[1]
    if (
        queries != 1
        or query.dtype not in (torch.bfloat16, torch.float16)
        or query.device.type != "cpu"
        or dropout
        or any(kwargs.get(name) is not None for name in _SDPA_ONLY)
        or (attention_mask is not None and attention_mask.dtype != torch.bool)
    ):
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout, scaling, **kwargs
        )
    scale = scaling if scaling is not None else size**-0.5
    # The query heads that share a key/value head side by side (no repeated keys), and
    # the keys as the first operand: the product over the cache's strided views costs
    # a fifth less that way. Scores are (rows, key/value heads, positions, their heads).
    grouped = query.reshape(rows, kv_heads, heads // kv_heads, size)
    scores = torch.matmul(key, grouped.transpose(-1, -2)).mul_(scale)
    if attention_mask is not None:
        hidden = ~attention_mask.transpose(-1, -2)
        scores.masked_fill_(hidden, torch.finfo(scores.dtype).min)
    weights = torch.softmax(scores, dim=-2, dtype=torch.float32).to(value.dtype)
    return torch.matmul(weights.transpose(-1, -2), value).reshape(rows, 1, heads, size), None


AttentionInterface.register(NAME, decode_attention)
AttentionMaskInterface.register(NAME, sdpa_mask)


def use_decode_attention(model: PreTrainedModel) -> None:
    """Switches a model that runs SDPA and takes a registered attention function (most
    of transformers' language models) to :func:`decode_attention`; others keep theirs
    (Gemma 2's soft-capping, say, runs in its eager attention). transformers names a
    model's attention in its config's ``_attn_implementation`` (its documented way to
    read it)."""
    if model.config._attn_implementation == "sdpa" and model.is_backend_compatible():
        model.set_attn_implementation(NAME)
