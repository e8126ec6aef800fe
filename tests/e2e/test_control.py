"""Cancel, retries, expiry, and a restarted API, on the real stack."""

import json
import re
import time
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
import redis

from contracts.records import RECORD_FIELD, JobRecord, job_key
from llm_tasks import Client
from tests.conftest import wait_for, wait_for_job
from tools.stack import free_port, http_ok, start_api, wait_until

pytestmark = pytest.mark.e2e


def submit(client: httpx.Client, kind: str = "generate", **body) -> dict:
    response = client.post("/v1/jobs", json={"kind": kind, **body})
    assert response.status_code == 202, response.text
    return response.json()


def test_cancel_a_running_generation_stops_it_at_the_next_token(client: httpx.Client):
    job = submit(client, input={"prompt": "SLOW: a long tale", "max_new_tokens": 90})
    wait_for(client, job["id"], lambda j: j["status"] == "running")
    response = client.delete(f"/v1/jobs/{job['id']}")
    assert response.status_code == 200
    assert response.json()["status"] == "canceled"
    # The worker stops the generation and records where: far short of the 90 tokens.
    done = wait_for(client, job["id"], lambda j: "after" in j["error"]["message"], timeout=30)
    assert done["status"] == "canceled"
    assert done["output"] is None
    tokens_done = int(done["error"]["message"].split("after ")[1].split(" of ")[0])
    assert tokens_done < 90


def test_cancel_a_queued_job_revokes_it_before_it_runs(client: httpx.Client):
    job = submit(client, input={"prompt": "Later"}, delay_seconds=2)
    canceled = client.delete(f"/v1/jobs/{job['id']}").json()
    assert canceled["status"] == "canceled"
    assert canceled["steps"][0]["status"] == "canceled"
    time.sleep(3)  # past the delay: the worker receives it and must drop it
    after = client.get(f"/v1/jobs/{job['id']}").json()
    assert after["status"] == "canceled"
    assert after["started_at"] is None
    assert after["output"] is None


def test_cancel_a_workflow_cancels_its_children(client: httpx.Client):
    job = submit(client, "story", input={"topic": "SLOW: sea monsters", "max_new_tokens": 60})
    wait_for(client, job["id"], lambda j: j["steps"][0]["status"] == "running")
    assert client.delete(f"/v1/jobs/{job['id']}").status_code == 200
    done = wait_for(client, job["id"], lambda j: "after" in j["error"]["message"], timeout=30)
    assert [step["status"] for step in done["steps"]] == ["canceled"] * 3


def test_cancel_a_finished_job_is_409(client: httpx.Client):
    job = submit(client, input={"prompt": "Quick", "max_new_tokens": 2})
    wait_for_job(client, job["id"])
    response = client.delete(f"/v1/jobs/{job['id']}")
    assert response.status_code == 409
    assert response.headers["content-type"] == "application/problem+json"
    assert client.delete("/v1/jobs/no-such-job").status_code == 404


def test_a_transient_error_is_retried_then_succeeds(client: httpx.Client):
    job = submit(client, input={"prompt": "TRANSIENT:2: then fine", "max_new_tokens": 4})
    retrying = wait_for(client, job["id"], lambda j: j["attempts"] >= 2 or j["status"] != "queued")
    assert retrying["status"] in {"running", "succeeded"}  # never failed in between
    done = wait_for_job(client, job["id"])
    assert done["status"] == "succeeded"
    assert done["attempts"] == 3
    assert done["output"]["tokens"] == 4


def test_a_transient_error_that_persists_fails_after_the_retries(client: httpx.Client):
    job = submit(client, input={"prompt": "TRANSIENT:9: never fine", "max_new_tokens": 4})
    done = wait_for_job(client, job["id"])
    assert done["status"] == "failed"
    assert done["attempts"] == 3  # the first try and LLM_TASKS_MAX_RETRIES=2 retries
    assert done["error"]["type"] == "TransientError"


def test_cuda_out_of_memory_is_retried(client: httpx.Client):
    job = submit(client, input={"prompt": "OOM:1: then fine", "max_new_tokens": 4})
    done = wait_for_job(client, job["id"])
    assert done["status"] == "succeeded"
    assert done["attempts"] == 2


def test_a_permanent_error_is_not_retried(client: httpx.Client):
    job = submit(client, input={"prompt": "FAULT: broken for good"})
    done = wait_for_job(client, job["id"])
    assert done["status"] == "failed"
    assert done["attempts"] == 1


def test_a_job_not_started_before_it_expires_ends_expired(client: httpx.Client):
    # Its start is delayed past its expiry: no worker may run it.
    job = submit(client, input={"prompt": "Too late"}, delay_seconds=2, expires_in=1)
    expired = wait_for(client, job["id"], lambda j: j["status"] != "queued", timeout=10)
    assert expired["status"] == "expired"
    assert expired["error"]["type"] == "expired"
    time.sleep(2.5)  # past the delay: the worker receives the message and drops it
    after = client.get(f"/v1/jobs/{job['id']}").json()
    assert after["status"] == "expired"
    assert after["started_at"] is None


def test_a_restarted_api_reads_a_workflow_the_same(
    client: httpx.Client, stack_env: dict[str, str], log_dir: Path, worker
):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    first = start_api(stack_env, log_dir, host="127.0.0.1", port=port)
    try:
        wait_until(lambda: http_ok(f"{url}/healthz"), 30, first)
        with httpx.Client(base_url=url, timeout=10) as api:
            job = submit(api, "story", input={"topic": "SLOW: a lighthouse", "max_new_tokens": 6})
            before = wait_for(api, job["id"], lambda j: j["steps"][0]["status"] == "succeeded")
    finally:
        first.stop()
    second = start_api(stack_env, log_dir, host="127.0.0.1", port=port)
    try:
        wait_until(lambda: http_ok(f"{url}/healthz"), 30, second)
        with httpx.Client(base_url=url, timeout=10) as api:
            after = api.get(f"/v1/jobs/{job['id']}").json()
            assert after["id"] == before["id"]
            assert after["created_at"] == before["created_at"]
            assert after["steps"][0] == before["steps"][0]
            done = wait_for_job(api, job["id"])
    finally:
        second.stop()
    assert done["status"] == "succeeded"
    assert all(done["output"][part] for part in ("outline", "story", "dialogue"))


def test_a_job_not_finished_by_its_deadline_is_canceled_wherever_it_is(
    api_url: str, client: httpx.Client, redis_url: str
):
    # Running: a slow generation (about 9 s of tokens) with a 2 s deadline.
    with Client(api_url) as follower:
        running = follower.submit(
            "generate", {"prompt": "SLOW: a long night", "max_new_tokens": 90}, cancel_after=2
        )
        done = follower.wait(running.id, timeout=60)
    assert done.status == "canceled"
    assert done.error is not None and done.error.type == "deadline"
    assert done.finished_at == done.created_at + timedelta(seconds=2)
    # The worker stopped the generation there, at a token, short of its length.
    store = redis.Redis.from_url(redis_url)
    [step] = JobRecord.model_validate_json(store.hget(job_key(running.id), RECORD_FIELD)).steps
    meta_key = f"celery-task-meta-{step.task_id}"
    wait_until(lambda: b"deadline" in (store.get(meta_key) or b""), 30)
    stopped = json.loads(store.get(meta_key))["result"]["exc_message"]
    tokens = re.search(r"canceled after (\d+) of 90 tokens", " ".join(stopped))
    assert tokens is not None and int(tokens[1]) < 90, stopped

    # Queued: delayed past its deadline, it never starts.
    body = {"kind": "generate", "input": {"prompt": "Later"}, "delay_seconds": 3, "cancel_after": 1}
    queued = client.post("/v1/jobs", json=body).json()
    ended = wait_for_job(client, queued["id"], timeout=30)
    assert (ended["status"], ended["error"]["type"]) == ("canceled", "deadline")
    time.sleep(4)  # the delay has passed: a worker took it, and did not run it
    again = client.get(f"/v1/jobs/{queued['id']}").json()
    assert again["status"] == "canceled" and again["started_at"] is None
    assert again["attempts"] == 0
