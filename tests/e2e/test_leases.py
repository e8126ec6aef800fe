"""Exactly once while running: two workers, a 10 s visibility timeout, and jobs longer than
it — a long job starts once, a delay longer than the timeout runs once, a duplicate
delivery of a running step waits for the holder, and a killed holder's step runs again
elsewhere and ends once."""

import itertools
import os
import re
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import httpx
import pytest
import redis

from contracts.celery_config import create_celery_app
from contracts.names import TaskName
from contracts.records import RECORD_FIELD, JobRecord, job_key
from contracts.settings import CommonSettings
from tests.conftest import wait_for, wait_for_job
from tests.support.sse import Event, read_stream, text_of
from tools.stack import (
    Process,
    clean_env,
    free_port,
    http_ok,
    start_api,
    start_redis,
    start_worker,
    wait_until,
)

pytestmark = pytest.mark.e2e

VISIBILITY_TIMEOUT = 10


@dataclass
class Stack:
    url: str
    redis_url: str
    workers: list[Process]

    def starts(self, task_id: str) -> int:
        """How many times any worker started the step (its log line per start)."""
        return sum(
            len(re.findall(rf"started \(task {task_id},", worker.log.read_text()))
            for worker in self.workers
        )

    def logs(self) -> str:
        return "".join(worker.log.read_text() for worker in self.workers)

    def task_id(self, job_id: str) -> str:
        raw = redis.Redis.from_url(self.redis_url).hget(job_key(job_id), RECORD_FIELD)
        [step] = JobRecord.model_validate_json(raw).steps
        return step.task_id


@pytest.fixture(scope="module")
def stack(log_dir: Path, tiny_models_dir: Path) -> Iterator[Stack]:
    server, redis_url = start_redis(log_dir)
    env = clean_env(
        redis_url=redis_url,
        visibility_timeout=str(VISIBILITY_TIMEOUT),
        progress_interval="0.1",
        cancel_check_interval="0.1",
    )
    workers = [
        start_worker(env, log_dir, app="tests.support.fault_worker", name=f"lease-worker-{n}")
        for n in (1, 2)
    ]
    port = free_port()
    api = start_api(env, log_dir, host="127.0.0.1", port=port)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: http_ok(f"{url}/readyz"), 60, api, *workers)
        yield Stack(url, redis_url, workers)
    finally:
        api.stop()
        for worker in workers:
            worker.stop()
        server.stop()


@pytest.fixture
def client(stack: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.url, timeout=10) as http:
        yield http


def follow(client: httpx.Client, job_id: str, into: list[Event]) -> threading.Thread:
    def read() -> None:
        with client.stream("GET", f"/v1/jobs/{job_id}/events", timeout=120) as response:
            into.extend(item for item in read_stream(response) if isinstance(item, Event))

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    return thread


def non_decreasing(values: list[int]) -> bool:
    return all(a <= b for a, b in itertools.pairwise(values))


def test_a_job_longer_than_the_visibility_timeout_starts_once(stack: Stack, client: httpx.Client):
    # 4 chunks of 80 tokens at 0.1 s a token while the prompt is in the model's window
    # (the last chunk's window has lost it, and runs fast): over two visibility timeouts.
    body = {"prompt": "SLOW: A long tale", "chunks": 4, "chunk_tokens": 80, "seed": 3}
    job = client.post("/v1/jobs", json={"kind": "long_text", "input": body}).json()
    streamed: list[Event] = []
    reader = follow(client, job["id"], streamed)
    seen: list[int] = []
    started = time.monotonic()
    while (now := client.get(f"/v1/jobs/{job['id']}").json())["status"] in {"queued", "running"}:
        seen.append(now["progress"]["current"])
        assert now["attempts"] <= 1, now
        time.sleep(0.2)
    elapsed = time.monotonic() - started
    reader.join(30)

    assert now["status"] == "succeeded", now
    assert elapsed > 2 * VISIBILITY_TIMEOUT
    assert now["attempts"] == 1
    assert stack.starts(stack.task_id(job["id"])) == 1
    # Seen advancing through the slow chunks (the last one may pass between two polls).
    assert non_decreasing(seen) and seen[-1] >= 2
    progress = [e.data["current"] for e in streamed if e.event == "progress"]
    assert non_decreasing(progress) and progress
    assert text_of(streamed) == now["output"]["text"]
    assert not any(e.data.get("reset") for e in streamed if e.event == "output")


def test_a_delay_longer_than_the_visibility_timeout_runs_once(stack: Stack, client: httpx.Client):
    delay = VISIBILITY_TIMEOUT + 2
    body = {"kind": "generate", "input": {"prompt": "Later", "max_new_tokens": 4}}
    response = client.post("/v1/jobs", json=body | {"delay_seconds": delay})
    assert response.status_code == 202, response.text  # was a 422 before leases
    job = response.json()
    done = wait_for_job(client, job["id"], timeout=90)
    assert done["status"] == "succeeded"
    assert done["attempts"] == 1
    assert stack.starts(stack.task_id(job["id"])) == 1
    waited = datetime.fromisoformat(done["started_at"]) - datetime.fromisoformat(job["created_at"])
    assert waited.total_seconds() >= delay - 1


def test_a_duplicate_delivery_of_a_running_step_waits_and_never_runs_it(
    stack: Stack, client: httpx.Client
):
    body = {"kind": "generate", "input": {"prompt": "SLOW: Twice?", "max_new_tokens": 60}}
    job = client.post("/v1/jobs", json=body).json()
    task_id = stack.task_id(job["id"])
    wait_for(client, job["id"], lambda j: j["progress"]["current"] > 0, timeout=60)
    # The same message again while the step runs, as a broker redelivers it.
    raw = redis.Redis.from_url(stack.redis_url).hget(job_key(job["id"]), RECORD_FIELD)
    producer = create_celery_app("test", CommonSettings(redis_url=stack.redis_url))
    producer.send_task(
        TaskName.GENERATE, kwargs=JobRecord.model_validate_json(raw).input, task_id=task_id
    )
    producer.close()

    done = wait_for_job(client, job["id"], timeout=90)
    # The copy waited for the holder, then found the step ended.
    wait_until(lambda: f"task {task_id} was delivered again but already ended" in stack.logs(), 30)
    assert f"task {task_id} was delivered while" in stack.logs()
    assert done["status"] == "succeeded"
    assert done["attempts"] == 1
    assert done["output"]["tokens"] == 60
    assert stack.starts(task_id) == 1


def test_a_killed_holder_s_step_runs_again_elsewhere_and_ends_once(
    stack: Stack, client: httpx.Client
):
    body = {"kind": "generate", "input": {"prompt": "SLOW: Survive", "max_new_tokens": 60}}
    job = client.post("/v1/jobs", json=body).json()
    task_id = stack.task_id(job["id"])
    wait_for(client, job["id"], lambda j: j["progress"]["current"] > 5, timeout=60)
    [holder] = [w for w in stack.workers if f"started (task {task_id}," in w.log.read_text()]
    [survivor] = [w for w in stack.workers if w is not holder]
    os.killpg(holder.popen.pid, signal.SIGKILL)  # no goodbye, no acknowledgement, no release
    holder.popen.wait()

    done = wait_for_job(client, job["id"], timeout=120)
    assert done["status"] == "succeeded"
    assert done["attempts"] == 2  # the killed run counts
    assert done["output"]["tokens"] == 60
    assert stack.starts(task_id) == 2
    assert survivor.log.read_text().count(f"succeeded (task {task_id})") == 1
    time.sleep(VISIBILITY_TIMEOUT / 2)  # nothing more happens to it
    assert client.get(f"/v1/jobs/{job['id']}").json()["finished_at"] == done["finished_at"]
    assert stack.starts(task_id) == 2
