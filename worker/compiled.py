"""The decode step compiled with ``torch.compile`` (``LLM_TASKS_COMPILE``), with the
weights frozen into the graph.

A decode step runs the model on one token per row: its time goes to reading the weights
and to the hundreds of small operations around them (norms, residuals, activations,
reshapes), which the compiler fuses. Freezing treats the weights as constants, which lets
Inductor lay them out ahead of time for oneDNN's matrix products on a CPU (the most of
the gain there); the model then holds its weights twice, packed and as they were. The
prompt's pass stays eager: it is one pass per request, of any length, and it reads the
weights once for many positions.

Dynamo reads freezing from Inductor's config (``torch._inductor.config.freezing``, the
setting PyTorch's docs give for CPU inference) when it traces the model, to make the
parameters constants, so ``torch.compile(options={"freezing": True})`` would not freeze
(pytorch/pytorch#139272): the step patches the config around its calls instead, which
leaves other compiled code as it was.

The step compiles for dynamic shapes (rows, positions, the cache's room), for a single
row and for several (size 1 is always a special case); :meth:`warm_up` compiles them at
load, so no job waits for a compilation. The cache grows outside the graph
(:meth:`~worker.kv_cache.GrowingCache.reserve`), which keeps the graph free of branches.
"""

import logging
import os
import shutil
import time
from typing import Any

import torch
import torch._inductor.config
from transformers import PreTrainedModel

from worker.kv_cache import INITIAL_ROOM, GrowingCache, attention_layers, cache_argument

logger = logging.getLogger(__name__)

#: Prompt length of the warm-up passes.
WARM_UP_PROMPT = 5


def why_eager(model: PreTrainedModel) -> str | None:
    """Why ``model``'s decode step cannot be compiled here, or None if it can: it runs on
    a CPU, in a cache of the decode loop's, and Inductor has a C++ compiler (``$CXX``,
    else ``g++``) to build its kernels with."""
    if model.device.type != "cpu":
        return f"compiling is for CPU workers, and it runs on {model.device}"
    if attention_layers(model.config) is None:
        return "its layers keep caches of their own"
    compiler = os.environ.get("CXX", "g++")
    if shutil.which(compiler) is None:
        return f"no C++ compiler ({compiler}) on this host"
    return None


class CompiledStep:
    """``model``'s decode step, compiled: next-token logits for one new token per row."""

    def __init__(self, model: PreTrainedModel) -> None:
        layers = attention_layers(model.config)
        assert layers is not None, f"{type(model).__name__} needs a cache of its own"
        self._model = model
        self._layers = layers
        self._cache_name = cache_argument(type(model))
        self._forward: Any = torch.compile(model.forward, dynamic=True)

    def __call__(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
        cache: GrowingCache,
    ) -> torch.Tensor:
        """The last position's logits (rows x vocabulary) of a pass over ``input_ids``."""
        cache.reserve(input_ids.shape[1])
        with torch._inductor.config.patch(freezing=True):
            output = self._forward(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                use_cache=True,
                **{self._cache_name: cache},
            )
        logits: torch.Tensor = output.logits[:, -1, :]
        return logits

    def warm_up(self, capacity: int) -> float:
        """Compiles the step for one row and for several (up to ``capacity``); returns the
        seconds it took.

        The first graph is made for the sizes it first sees; a second run with longer
        buffers (a prompt past the initial room) makes sure that Dynamo takes their
        length as dynamic. The third runs several rows, trims its cache as the decode
        loop does and grows it: rows joining and leaving take no other shapes.
        """
        started = time.perf_counter()
        self._decode(rows=1, rows_room=capacity, prompt=WARM_UP_PROMPT, steps=2)
        self._decode(rows=1, rows_room=capacity, prompt=INITIAL_ROOM + 1, steps=2)
        if capacity > 1:
            several = max(2, capacity - 1)
            self._decode(several, capacity, WARM_UP_PROMPT, steps=INITIAL_ROOM)
        seconds = time.perf_counter() - started
        logger.info("compiled the decode step of %s in %.1fs", type(self._model).__name__, seconds)
        return seconds

    @torch.inference_mode()
    def _decode(self, rows: int, rows_room: int, prompt: int, steps: int) -> None:
        """An eager pass over ``rows`` prompts of ``prompt`` tokens, then ``steps``
        compiled steps, in a cache with room for ``rows_room`` rows, which forgets the
        prompts' first position before the steps (as trimmed padding)."""
        device = self._model.device
        input_ids = torch.ones((rows, prompt), dtype=torch.long, device=device)
        mask = torch.ones_like(input_ids)
        positions = torch.arange(prompt, device=device).expand(rows, -1)
        cache = GrowingCache(self._layers, rows_room)
        self._model(
            input_ids=input_ids,
            attention_mask=mask,
            position_ids=positions,
            use_cache=True,
            **{self._cache_name: cache},
        )
        cache.trim_left(1)
        mask = mask[:, 1:]
        # Tokens and positions laid out as the decode loop's.
        tokens = torch.ones(rows, dtype=torch.long, device=device)
        positions = positions[:, -1:].contiguous()
        for _ in range(steps):
            mask = torch.cat([mask, mask.new_ones((rows, 1))], dim=-1)
            positions = positions + 1
            tokens = self(tokens[:, None], mask, positions, cache).argmax(dim=-1)
