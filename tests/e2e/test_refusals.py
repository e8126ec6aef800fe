"""A worker configured with a model that cannot serve its role refuses to start, says why
in one line, and /readyz says so too."""

from pathlib import Path

import httpx
import pytest
import redis

from contracts.names import WORKER_REFUSALS_KEY
from tools.stack import Process, start_worker

pytestmark = pytest.mark.e2e

EX_CONFIG = 78


def test_a_worker_given_a_seq2seq_generator_refuses_to_start(
    stack_env: dict[str, str],
    log_dir: Path,
    tiny_models_dir: Path,
    client: httpx.Client,
    worker: Process,
    redis_url: str,
):
    bart = str(tiny_models_dir / "summarizer")
    env = stack_env | {"LLM_TASKS_GENERATOR_MODEL": bart}
    refusing = start_worker(env, log_dir, name="refusing-worker")
    try:
        assert refusing.popen.wait(timeout=120) == EX_CONFIG
    finally:
        refusing.stop()
    said = [line for line in refusing.log.read_text().splitlines() if "refuses to start" in line]
    assert len(said) == 1, refusing.tail()
    assert f"LLM_TASKS_GENERATOR_MODEL={bart}: a bart model is a seq2seq" in said[0]
    assert "expected a causal language model" in said[0]
    assert "Traceback" not in refusing.log.read_text()

    try:
        ready = client.get("/readyz")
        assert ready.status_code == 200  # the suite's own worker still serves
        [(host, why)] = ready.json()["refused"].items()
        assert host.startswith("refusing-worker") and f"LLM_TASKS_GENERATOR_MODEL={bart}" in why
    finally:
        redis.Redis.from_url(redis_url).delete(WORKER_REFUSALS_KEY)
