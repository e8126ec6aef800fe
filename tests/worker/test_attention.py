"""The decode steps' attention on a CPU in bfloat16 (``worker/attention.py``): the same
result as SDPA, within bfloat16's precision, on the key/value cache's own views."""

import pytest
import torch
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from worker.attention import decode_attention

ROWS, POSITIONS, ROOM, SIZE = 5, 11, 16, 8


def attention_module(heads: int, kv_heads: int) -> torch.nn.Module:
    module = torch.nn.Module()
    module.is_causal = True
    module.num_key_value_groups = heads // kv_heads
    return module


def step(heads: int, kv_heads: int, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    """One decode step's query, and keys and values as the decode loop's cache hands
    them over: the filled part of buffers with room for more positions; rows are
    left-padded by different amounts (False in the mask)."""
    generator = torch.Generator().manual_seed(heads * 10 + kv_heads)
    query = torch.randn(ROWS, heads, 1, SIZE, generator=generator).to(dtype)
    keys = torch.randn(ROWS, kv_heads, ROOM, SIZE, generator=generator).to(dtype)
    values = torch.randn(ROWS, kv_heads, ROOM, SIZE, generator=generator).to(dtype)
    mask = torch.ones(ROWS, 1, 1, POSITIONS, dtype=torch.bool)
    for row in range(ROWS):
        mask[row, ..., : 2 * row] = False
    return query, keys[:, :, :POSITIONS], values[:, :, :POSITIONS], mask


@pytest.mark.parametrize(("heads", "kv_heads"), [(4, 4), (4, 2), (6, 1)])
def test_a_bfloat16_step_agrees_with_sdpa_in_float32(heads: int, kv_heads: int):
    query, keys, values, mask = step(heads, kv_heads, torch.bfloat16)
    module = attention_module(heads, kv_heads)
    ours, _ = decode_attention(module, query, keys, values, mask, scaling=0.3)
    exact, _ = sdpa_attention_forward(
        module, query.float(), keys.float(), values.float(), mask, scaling=0.3
    )
    assert ours.dtype is torch.bfloat16 and ours.shape == exact.shape == (ROWS, 1, heads, SIZE)
    # bfloat16 keeps 8 bits of mantissa: outputs of size ~1 within a few of its steps.
    assert (ours.float() - exact).abs().max().item() < 0.03
    # Padding is hidden: changing what a row's padded positions hold changes nothing.
    keys[-1, ..., :2, :] = 100.0
    again, _ = decode_attention(module, query, keys, values, mask, scaling=0.3)
    assert torch.equal(again[-1], ours[-1])


def test_float32_and_prompts_are_sdpa_s():
    query, keys, values, mask = step(4, 2, torch.float32)
    module = attention_module(4, 2)
    ours, _ = decode_attention(module, query, keys, values, mask)
    theirs, _ = sdpa_attention_forward(module, query, keys, values, mask)
    assert torch.equal(ours, theirs)
    prompt = torch.randn(ROWS, 4, 3, SIZE).bfloat16()
    prompt_keys, prompt_values = keys[:, :, :3].bfloat16(), values[:, :, :3].bfloat16()
    ours, _ = decode_attention(module, prompt, prompt_keys, prompt_values, None)
    theirs, _ = sdpa_attention_forward(module, prompt, prompt_keys, prompt_values, None)
    assert torch.equal(ours, theirs)
