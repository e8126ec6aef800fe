"""Submitting as clients of job APIs expect: Idempotency-Key (a retried submit is the
same job) and Prefer: wait (the finished job in the answer, when it is quick)."""

import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

pytestmark = pytest.mark.e2e

BODY = {"kind": "sentiment", "input": {"text": "What a lovely morning."}}


def test_the_same_key_and_body_is_the_same_job(client: httpx.Client):
    key = str(uuid.uuid4())
    first = client.post("/v1/jobs", json=BODY, headers={"Idempotency-Key": key})
    assert first.status_code == 202, first.text
    assert first.json()["idempotency_key"] == key
    again = client.post("/v1/jobs", json=BODY, headers={"Idempotency-Key": f'"{key}"'})
    assert again.status_code == 202
    assert again.json()["id"] == first.json()["id"]
    assert again.headers["Idempotent-Replayed"] == "true"

    other = client.post("/v1/jobs", json={**BODY, "priority": 9}, headers={"Idempotency-Key": key})
    assert other.status_code == 422
    assert other.headers["content-type"] == "application/problem+json"
    assert other.json()["errors"][0]["loc"] == ["header", "Idempotency-Key"]
    # Another key is another job.
    fresh = client.post("/v1/jobs", json=BODY, headers={"Idempotency-Key": str(uuid.uuid4())})
    assert fresh.json()["id"] != first.json()["id"]
    assert client.post("/v1/jobs", json=BODY, headers={"Idempotency-Key": ""}).status_code == 422


def test_twenty_concurrent_submits_with_one_key_make_one_job(api_url: str, client: httpx.Client):
    key = str(uuid.uuid4())

    def submit(_: int) -> httpx.Response:
        with httpx.Client(base_url=api_url, timeout=10) as own:
            return own.post("/v1/jobs", json=BODY, headers={"Idempotency-Key": key})

    with ThreadPoolExecutor(20) as pool:
        answers = list(pool.map(submit, range(20)))
    assert {answer.status_code for answer in answers} <= {202, 409}
    accepted = {answer.json()["id"] for answer in answers if answer.status_code == 202}
    assert len(accepted) == 1
    for answer in answers:
        if answer.status_code == 409:
            assert answer.headers["Retry-After"]
    listed = client.get("/v1/jobs", params={"limit": 100}).json()["items"]
    assert [job["id"] for job in listed if job["idempotency_key"] == key] == list(accepted)


def test_prefer_wait_answers_with_the_finished_job_when_it_is_quick(client: httpx.Client):
    quick = client.post("/v1/jobs", json=BODY, headers={"Prefer": "wait=20"})
    assert quick.status_code == 200, quick.text
    assert quick.headers["Preference-Applied"] == "wait=20"
    assert quick.json()["status"] == "succeeded"
    assert quick.json()["output"]["label"] in {"POSITIVE", "NEGATIVE"}

    slow = {"kind": "generate", "input": {"prompt": "SLOW: on and on", "max_new_tokens": 60}}
    started = time.monotonic()
    waited = client.post("/v1/jobs", json=slow, headers={"Prefer": "respond-async, wait=1"})
    elapsed = time.monotonic() - started
    assert waited.status_code == 202
    assert waited.headers["Preference-Applied"] == "wait=1"
    assert waited.json()["status"] in {"queued", "running"}
    assert 0.9 <= elapsed < 5, elapsed  # it waited its second, and no more
    client.delete(f"/v1/jobs/{waited.json()['id']}")
