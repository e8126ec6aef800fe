"""Faults on the real stack: a message delivered twice, pickle, a killed inference process.
(A worker killed mid-job: tests/e2e/test_leases.py.)"""

import os
import signal
import time
from pathlib import Path

import httpx
import pytest
import redis

from contracts.celery_config import create_celery_app
from contracts.names import TaskName
from contracts.records import RECORD_FIELD, JobRecord, job_key
from contracts.settings import CommonSettings
from tests.conftest import wait_for, wait_for_job
from tools.stack import (
    Process,
    wait_until,
)

pytestmark = pytest.mark.e2e


def record_of(redis_url: str, job_id: str) -> JobRecord:
    raw = redis.Redis.from_url(redis_url).hget(job_key(job_id), RECORD_FIELD)
    return JobRecord.model_validate_json(raw)


def queue_drained(redis_url: str) -> bool:
    client = redis.Redis.from_url(redis_url)
    return all(client.llen(name) == 0 for name in client.scan_iter("generate*"))


def test_a_redelivered_task_whose_job_succeeded_does_not_run_again(
    client: httpx.Client, redis_url: str
):
    job = client.post(
        "/v1/jobs", json={"kind": "generate", "input": {"prompt": "Once", "max_new_tokens": 4}}
    ).json()
    done = wait_for_job(client, job["id"])
    [step] = record_of(redis_url, job["id"]).steps
    producer = create_celery_app("test", CommonSettings(redis_url=redis_url))
    # The same message again, as the broker would redeliver it.
    producer.send_task(
        TaskName.GENERATE, kwargs=record_of(redis_url, job["id"]).input, task_id=step.task_id
    )
    producer.close()
    wait_until(lambda: queue_drained(redis_url), 30)
    time.sleep(1)
    after = client.get(f"/v1/jobs/{job['id']}").json()
    assert after["attempts"] == done["attempts"] == 1
    assert after["output"] == done["output"]
    assert after["finished_at"] == done["finished_at"]


def test_a_pickled_message_is_refused_and_logged(
    client: httpx.Client, redis_url: str, worker: Process
):
    producer = create_celery_app("test", CommonSettings(redis_url=redis_url))
    result = producer.send_task(
        TaskName.GENERATE, kwargs={"prompt": "pickled", "max_new_tokens": 2}, serializer="pickle"
    )
    producer.close()
    wait_until(
        lambda: (
            "Refusing to deserialize untrusted content of type pickle" in worker.log.read_text()
        ),
        30,
    )
    time.sleep(1)
    assert redis.Redis.from_url(redis_url).get(f"celery-task-meta-{result.id}") is None  # never ran


def inference_process_of(worker: Process) -> int:
    """The worker's inference process (a child of one of its threads; multiprocessing's
    resource tracker is another)."""
    children = {
        int(pid)
        for threads in Path(f"/proc/{worker.popen.pid}/task").iterdir()
        for pid in (threads / "children").read_text().split()
    }
    [inference] = [
        pid for pid in children if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()
    ]
    return inference


def test_a_killed_inference_process_is_replaced_and_its_job_retried(
    client: httpx.Client, worker: Process
):
    """The models' process dies mid-generation (say, the kernel's OOM killer): the step
    fails as transient, a new inference process starts, and the retry succeeds."""
    job = client.post(
        "/v1/jobs",
        json={"kind": "generate", "input": {"prompt": "SLOW: the mill", "max_new_tokens": 12}},
    ).json()
    # A few of its tokens are out: it is mid-generation.
    wait_for(
        client, job["id"], lambda j: ((j["steps"][0]["progress"] or {}).get("current", 0)) >= 2
    )
    killed = inference_process_of(worker)
    os.kill(killed, signal.SIGKILL)
    done = wait_for_job(client, job["id"])
    assert done["status"] == "succeeded", done
    assert done["attempts"] == 2
    assert done["output"]["tokens"] == 12 or done["output"]["finish_reason"] == "stop"
    assert inference_process_of(worker) != killed
    assert worker.alive()
