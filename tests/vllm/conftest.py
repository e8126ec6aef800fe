"""The stack's worker runs its generator in vLLM (``LLM_TASKS_ENGINE=vllm``); rows whose
text says ``SLOW:`` take 0.1 s a step there too."""

from collections.abc import Iterator
from pathlib import Path

import pytest

from tools.stack import Process, start_worker


@pytest.fixture(scope="session")
def worker(stack_env: dict[str, str], log_dir: Path, tiny_models_dir: Path) -> Iterator[Process]:
    env = stack_env | {"LLM_TASKS_ENGINE": "vllm", "LLM_TASKS_BATCH_MAX_SIZE": "4"}
    process = start_worker(
        env,
        log_dir,
        app="tests.support.fault_worker",  # SLOW: rows, as in the other end-to-end tests
        name="vllm-worker",
        extra=["--concurrency", "8"],
    )
    yield process
    process.stop()
