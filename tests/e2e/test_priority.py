"""Priority 9 is most urgent, on Redis and on RabbitMQ, with the real worker."""

import os
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import httpx
import pytest
from kombu import Connection

from contracts.celery_config import create_celery_app
from contracts.settings import CommonSettings
from tests.conftest import wait_for_job
from tools.stack import (
    clean_env,
    free_port,
    http_ok,
    start_api,
    start_redis,
    start_worker,
    wait_until,
)

pytestmark = pytest.mark.e2e

RABBITMQ_URL = os.environ.get("TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672//")


def rabbitmq_answers() -> bool:
    try:
        with Connection(RABBITMQ_URL, connect_timeout=2) as connection:
            connection.ensure_connection(max_retries=1)
        return True
    except Exception:
        return False


@pytest.fixture(params=["redis", "rabbitmq"])
def idle_stack(
    request, log_dir: Path, tiny_models_dir: Path
) -> Iterator[tuple[str, dict[str, str]]]:
    """A private Redis and an API, with no worker yet: whatever is submitted waits."""
    redis_server, redis_url = start_redis(log_dir)
    env = clean_env(redis_url=redis_url)
    if request.param == "rabbitmq":
        if not rabbitmq_answers():
            redis_server.stop()
            pytest.skip(f"no RabbitMQ answers at {RABBITMQ_URL}")
        env["LLM_TASKS_BROKER_URL"] = RABBITMQ_URL
        purger = create_celery_app(
            "purge", CommonSettings(redis_url=redis_url, broker_url=RABBITMQ_URL)
        )
        purger.control.purge()  # leftovers of an earlier run would jump the queue
        purger.close()
    port = free_port()
    api = start_api(env, log_dir, host="127.0.0.1", port=port)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: http_ok(f"{url}/healthz"), 30, api)
        yield url, env
    finally:
        api.stop()
        redis_server.stop()


def test_the_urgent_job_starts_before_the_normal_ones(idle_stack, log_dir: Path):
    url, env = idle_stack
    with httpx.Client(base_url=url, timeout=10) as client:

        def submit(prompt: str, priority: int) -> str:
            body = {
                "kind": "generate",
                "input": {"prompt": prompt, "max_new_tokens": 2},
                "priority": priority,
            }
            response = client.post("/v1/jobs", json=body)
            assert response.status_code == 202, response.text
            return str(response.json()["id"])

        normal = [submit(f"Normal {i}", 5) for i in range(12)]
        urgent = submit("Urgent", 9)
        worker = start_worker(env, log_dir, name="priority-worker", extra=["--concurrency", "1"])
        try:
            jobs = {job_id: wait_for_job(client, job_id) for job_id in [*normal, urgent]}
        finally:
            worker.stop()
    assert all(job["status"] == "succeeded" for job in jobs.values())
    started = {job_id: datetime.fromisoformat(job["started_at"]) for job_id, job in jobs.items()}
    after_urgent = sum(started[job_id] > started[urgent] for job_id in normal)
    assert after_urgent >= 10, f"only {after_urgent} of 12 normal jobs started after the urgent one"
