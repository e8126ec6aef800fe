"""Flower, run as the README and the compose file run it, sees the service's queues and
their lengths (every priority level) through the project's Redis transport."""

import sys
from pathlib import Path

import httpx
import pytest

from contracts.celery_config import broker_priority, create_celery_app
from contracts.names import TaskName
from contracts.settings import CommonSettings
from tools.stack import clean_env, free_port, http_ok, spawn, start_redis, wait_until

pytestmark = pytest.mark.e2e


def test_flower_sees_the_queues_and_their_lengths(log_dir: Path):
    server, redis_url = start_redis(log_dir)
    flower = None
    try:
        # Messages waiting at several priorities, and no worker to take them.
        producer = create_celery_app("test", CommonSettings(redis_url=redis_url))
        for priority in (0, 5, 9, 9):
            producer.send_task(
                TaskName.GENERATE,
                kwargs={"prompt": "waiting"},
                priority=broker_priority(priority, redis_url),
            )
        producer.send_task(TaskName.SUMMARIZE, kwargs={"text": "waiting"})
        producer.close()

        port = free_port()
        env = clean_env(redis_url=redis_url) | {"FLOWER_UNAUTHENTICATED_API": "true"}
        argv = [
            sys.executable, "-m", "celery", "-A", "contracts.celery_app", "flower",
            f"--port={port}", "--address=127.0.0.1",
        ]  # fmt: skip
        flower = spawn("flower", argv, env, log_dir)
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: http_ok(f"{url}/healthcheck"), 60, flower)

        lengths = httpx.get(f"{url}/api/queues/length", timeout=10)
        assert lengths.status_code == 200, lengths.text
        queues = {queue["name"]: queue["messages"] for queue in lengths.json()["active_queues"]}
        assert queues["generate"] == 4
        assert queues["summarize"] == 1
        assert queues["classify"] == 0
        broker = httpx.get(f"{url}/broker", timeout=10)
        assert broker.status_code == 200
        assert "redis://" in broker.text
    finally:
        if flower is not None:
            flower.stop()
        server.stop()
