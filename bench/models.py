"""Model folders and device figures the benchmarks share; imports neither Celery nor
HTTP clients, so that the GPU run (``bench/gpu.py``) needs little beside torch."""

import time
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import torch


def gpt2_124m_shaped() -> Path:
    """GPT-2 124M's shape (12 layers, 768 wide, 12 heads, 50257 tokens) with random
    weights and the tiny tokenizer, saved once as a model folder: for speed only."""
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    from tiny_models import ensure_tiny_models
    from worker.config import WorkerSettings

    cache = WorkerSettings().model_cache_dir
    path = cache / "gpt2-124m-shaped"
    if not (path / "config.json").exists():
        tokenizer = AutoTokenizer.from_pretrained(ensure_tiny_models(cache) / "generator")
        torch.manual_seed(0)
        config = GPT2Config(
            vocab_size=50257,
            n_positions=1024,
            n_embd=768,
            n_layer=12,
            n_head=12,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        GPT2LMHeadModel(config).save_pretrained(path)
        tokenizer.save_pretrained(path)
    return path


def copy_bandwidth(device: torch.device, megabytes: int = 256, rounds: int = 20) -> float:
    """Bytes a second a large copy moves on ``device``, counting what it reads and what it
    writes: a decode step reads every weight once, so B rows cannot go faster than
    B x this / the weights' bytes tokens a second."""
    source = torch.empty(megabytes * 2**20, dtype=torch.uint8, device=device)
    target = torch.empty_like(source)
    target.copy_(source)
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(rounds):
        target.copy_(source)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return 2 * source.numel() * rounds / (time.perf_counter() - started)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def batched_rate(
    loaded: Any, prompts: list[list[int]], new: int, temperature: float = 0.0, top_p: float = 1.0
) -> float:
    """Tokens a second of our batched decode loop, every prompt a row (seeded by its index)."""
    from worker.decode_loop import Decoded, DecodeRow, decode_batch
    from worker.device_loop import Pending

    batch: list[Pending[DecodeRow, Decoded]] = [
        Pending(DecodeRow(ids, new, temperature, top_p, seed=i), Future())
        for i, ids in enumerate(prompts)
    ]
    _synchronize(loaded.device)
    started = time.perf_counter()
    decode_batch(loaded, batch, capacity=len(batch))
    _synchronize(loaded.device)
    seconds = time.perf_counter() - started
    return sum(len(pending.future.result().tokens) for pending in batch) / seconds


def naive_rate(
    loaded: Any, prompts: list[list[int]], new: int, sampling: dict[str, float] | None = None
) -> float:
    """Tokens a second of transformers' own ``generate``, one request at a time (greedy, or
    sampled with ``sampling``'s temperature and top-p, seeded by the request's index)."""
    generated, started = 0, time.perf_counter()
    for i, ids in enumerate(prompts):
        torch.manual_seed(i)
        input_ids = torch.tensor([ids], device=loaded.device)
        with torch.inference_mode():
            output = loaded.transformers_model.generate(
                input_ids=input_ids,
                attention_mask=torch.ones_like(input_ids),
                max_new_tokens=new,
                do_sample=sampling is not None,
                pad_token_id=loaded.tokenizer.pad_token_id,
                **(sampling or {}),
            )
        generated += output.shape[1] - len(ids)
    _synchronize(loaded.device)
    return generated / (time.perf_counter() - started)
