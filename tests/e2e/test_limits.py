"""Limits: a per-key rate limit, backpressure from deep queues, and a bound on body size.

These run an API on its own Redis with no worker, so that what is queued stays queued.
"""

import time
from collections.abc import Iterator
from contextlib import AbstractContextManager as ContextManager
from pathlib import Path

import httpx
import pytest
import redis

from tests.conftest import another_api
from tools.stack import clean_env, start_redis

pytestmark = pytest.mark.e2e

MAX_QUEUE_DEPTH = 3
MAX_BODY_BYTES = 4096


@pytest.fixture(scope="module")
def private_redis(log_dir: Path) -> Iterator[str]:
    server, redis_url = start_redis(log_dir)
    yield redis_url
    server.stop()


def api_with(log_dir: Path, redis_url: str, **settings: str) -> ContextManager[str]:
    env = clean_env(redis_url=redis_url, api_keys="alpha-key,beta-key", **settings)
    return another_api(env, log_dir)


@pytest.fixture(scope="module")
def limited_api(log_dir: Path, private_redis: str) -> Iterator[str]:
    with api_with(
        log_dir,
        private_redis,
        max_queue_depth=str(MAX_QUEUE_DEPTH),
        queue_depth_refresh="0.05",
        max_body_bytes=str(MAX_BODY_BYTES),
    ) as url:
        yield url


@pytest.fixture(scope="module")
def rate_limited_api(log_dir: Path, private_redis: str) -> Iterator[str]:
    # One request a second, after a burst of five.
    with api_with(log_dir, private_redis, rate_limit="60", rate_burst="5") as url:
        yield url


def as_key(url: str, key: str) -> httpx.Client:
    return httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=10)


def test_a_key_over_its_rate_gets_429_with_retry_after(rate_limited_api: str):
    url = rate_limited_api
    with as_key(url, "alpha-key") as alpha, as_key(url, "beta-key") as beta:
        responses = [alpha.get("/v1/jobs") for _ in range(8)]
        statuses = [response.status_code for response in responses]
        assert statuses[:5] == [200] * 5  # the burst
        assert 429 in statuses  # then paced (one a second; a slow run may slip one in)
        refused = responses[statuses.index(429)]
        assert refused.headers["content-type"] == "application/problem+json"
        wait = int(refused.headers["retry-after"])
        assert wait >= 1
        assert refused.json()["retry_after"] == wait
        # Another key has its own budget.
        assert beta.get("/v1/jobs").status_code == 200
        # Waiting as told lets the key in again.
        time.sleep(wait)
        assert alpha.get("/v1/jobs").status_code == 200
        # Health and metrics are not rate limited: monitoring keeps working.
        assert alpha.get("/healthz").status_code == 200


def test_a_full_queue_answers_503_and_nothing_accepted_is_lost(limited_api: str):
    with as_key(limited_api, "beta-key") as client:
        accepted = []
        for i in range(MAX_QUEUE_DEPTH):
            response = client.post(
                "/v1/jobs", json={"kind": "generate", "input": {"prompt": f"Job {i}"}}
            )
            assert response.status_code == 202
            accepted.append(response.json()["id"])
            time.sleep(0.1)  # past the depth reading's refresh
        refused = client.post("/v1/jobs", json={"kind": "generate", "input": {"prompt": "More"}})
        assert refused.status_code == 503
        assert refused.headers["content-type"] == "application/problem+json"
        assert int(refused.headers["retry-after"]) >= 1
        assert refused.json()["queue"] == "generate"
        # Another queue still takes work.
        other = client.post("/v1/jobs", json={"kind": "sentiment", "input": {"text": "Fine."}})
        assert other.status_code == 202
        # Every accepted job is still there, queued; the refused one left no trace.
        listed = [job["id"] for job in client.get("/v1/jobs").json()["items"]]
        assert set(accepted) <= set(listed)
        assert len(listed) == MAX_QUEUE_DEPTH + 1
        for job_id in accepted:
            assert client.get(f"/v1/jobs/{job_id}").json()["status"] == "queued"
        metrics = client.get("/metrics").text
        assert f'llm_tasks_queue_depth{{queue="generate"}} {MAX_QUEUE_DEPTH}.0' in metrics


def test_a_full_redis_refuses_with_503_not_500(limited_api: str, private_redis: str):
    """With noeviction, a Redis at its memory limit refuses writes: the API says so."""
    admin = redis.Redis.from_url(private_redis)
    admin.config_set("maxmemory-policy", "noeviction")
    admin.config_set("maxmemory", "1")
    try:
        with as_key(limited_api, "alpha-key") as client:
            response = client.post("/v1/jobs", json={"kind": "sentiment", "input": {"text": "x"}})
            assert response.status_code == 503
            assert response.headers["content-type"] == "application/problem+json"
            assert "retry-after" in response.headers
    finally:
        admin.config_set("maxmemory", "0")
        admin.close()


def test_a_body_over_the_bound_is_refused_before_parsing(limited_api: str):
    with as_key(limited_api, "alpha-key") as client:
        big = {"kind": "sentiment", "input": {"text": "x" * MAX_BODY_BYTES}}
        response = client.post("/v1/jobs", json=big)
        assert response.status_code == 413
        assert response.headers["content-type"] == "application/problem+json"
        assert str(MAX_BODY_BYTES) in response.json()["detail"]

        # No Content-Length (chunked): counted as it arrives, refused all the same.
        def chunks() -> Iterator[bytes]:
            yield b'{"kind": "sentiment", "input": {"text": "'
            for _ in range(10):
                yield b"y" * 1000
            yield b'"}}'

        chunked = client.post(
            "/v1/jobs", content=chunks(), headers={"content-type": "application/json"}
        )
        assert chunked.status_code == 413

        # Not valid JSON but over the bound: still 413, since nothing parsed it.
        junk = client.post(
            "/v1/jobs", content=b"{" * (MAX_BODY_BYTES + 1), headers={"content-type": "a/b"}
        )
        assert junk.status_code == 413

        small = client.post(
            "/v1/jobs", content=b'{"kind": "sentiment", "input": {"text": "small"}}',
            headers={"content-type": "application/json"},
        )  # fmt: skip
        assert small.status_code in {202, 503}  # accepted, unless its queue is full
