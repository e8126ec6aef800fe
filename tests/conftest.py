"""Fixtures for the whole suite: the tiny models, and a real stack for end-to-end tests.

The stack is a private ``redis-server`` on a free port, a real Celery worker process and
the API under uvicorn, driven over real sockets. Nothing is mocked.
"""

import base64
import contextlib
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tools.stack import (
    ROOT,
    Process,
    clean_env,
    free_port,
    http_ok,
    start_api,
    start_redis,
    start_webhooks_worker,
    start_worker,
    wait_until,
)

ARTIFACTS = ROOT / "test-artifacts"
#: A bound the tests set through the environment, to see settings enforced on both sides.
TEST_MAX_NEW_TOKENS = 96
#: Seconds between heartbeats of an idle event stream, short for the tests.
TEST_HEARTBEAT = 0.5
#: The stack's webhook signing secret (whsec_ + base64 of 32 bytes).
TEST_WEBHOOK_SECRET = "whsec_" + base64.b64encode(b"llm-tasks: the tests' secret key.").decode()
#: Seconds a test delivery is retried before it is given up.
TEST_WEBHOOK_WINDOW = 4


@pytest.fixture(scope="session")
def log_dir() -> Path:
    path = ARTIFACTS / "logs"
    shutil.rmtree(path, ignore_errors=True)  # this run's logs only
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="session")
def tiny_models_dir() -> Path:
    """The tiny models, built once per machine (a file lock guards concurrent builds)."""
    from tiny_models import ensure_tiny_models
    from worker.config import get_settings

    return ensure_tiny_models(get_settings().model_cache_dir)


@pytest.fixture(scope="session")
def redis_url(log_dir: Path) -> Iterator[str]:
    server, url = start_redis(log_dir)
    yield url
    server.stop()


@pytest.fixture(scope="session")
def stack_env(redis_url: str) -> dict[str, str]:
    return clean_env(
        redis_url=redis_url,
        max_new_tokens=str(TEST_MAX_NEW_TOKENS),
        max_retries="2",
        retry_backoff="0.5",
        retry_backoff_max="2",
        cancel_check_interval="0.1",
        progress_interval="0.1",
        sse_heartbeat=str(TEST_HEARTBEAT),
        log_format="json",
        # The tests' webhook receiver listens on 127.0.0.1; retries come fast and end soon.
        webhook_secret=TEST_WEBHOOK_SECRET,
        webhook_allow_private_networks="true",
        webhook_backoff="0.2",
        webhook_backoff_max="1",
        webhook_retry_window=str(TEST_WEBHOOK_WINDOW),
        webhook_timeout="3",
    )


@pytest.fixture(scope="session")
def worker(stack_env: dict[str, str], log_dir: Path, tiny_models_dir: Path) -> Iterator[Process]:
    process = start_worker(
        stack_env, log_dir, app="tests.support.fault_worker", extra=["--concurrency", "4"]
    )
    yield process
    process.stop()


@pytest.fixture(scope="session")
def webhooks_worker(stack_env: dict[str, str], log_dir: Path) -> Iterator[Process]:
    process = start_webhooks_worker(stack_env, log_dir)
    yield process
    process.stop()


@pytest.fixture(scope="session")
def api_url(stack_env: dict[str, str], log_dir: Path, worker: Process) -> Iterator[str]:
    port = free_port()
    process = start_api(stack_env, log_dir, host="127.0.0.1", port=port)
    url = f"http://127.0.0.1:{port}"
    wait_until(lambda: http_ok(f"{url}/readyz"), 60, process, worker)
    yield url
    process.stop()


@pytest.fixture
def client(api_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=api_url, timeout=10) as http:
        yield http


@contextlib.contextmanager
def another_api(env: dict[str, str], log_dir: Path) -> Iterator[str]:
    """One more API process with its own settings (``env``); yields its URL."""
    port = free_port()
    process = start_api(env, log_dir, host="127.0.0.1", port=port)
    try:
        wait_until(lambda: http_ok(f"http://127.0.0.1:{port}/healthz"), 30, process)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.stop()


def wait_for_job(client: httpx.Client, job_id: str, timeout: float = 120) -> dict:
    """Poll until the job is finished; returns the final job."""
    return wait_for(client, job_id, lambda job: job["status"] not in {"queued", "running"}, timeout)


def wait_for(client: httpx.Client, job_id: str, condition, timeout: float = 120) -> dict:
    """Poll the job until ``condition(job)`` holds; returns that job."""
    deadline = time.monotonic() + timeout
    while True:
        job = client.get(f"/v1/jobs/{job_id}").raise_for_status().json()
        if condition(job):
            return job
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job_id} never got there; last seen: {job}")
        time.sleep(0.05)
