"""Redis away: the API answers 503 at once (no hang), says it is not ready, ends open event
streams with an error event, and recovers by itself when Redis is back; an accepted job
survives the outage (Redis with an append-only file, as in production)."""

import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.conftest import wait_for_job
from tests.support.sse import Event, read_stream
from tools.stack import (
    Process,
    clean_env,
    free_port,
    http_ok,
    redis_answers,
    start_api,
    start_redis,
    start_worker,
    wait_until,
)

pytestmark = pytest.mark.e2e

#: The contract: a request that finds Redis away is answered within this many seconds.
ANSWER_BOUND = 2.0


@dataclass
class Outage:
    """A stack whose Redis the test can stop, hang and start again."""

    api_url: str
    redis: Process
    port: int
    data_dir: Path
    log_dir: Path

    def kill_redis(self) -> None:
        self.redis.stop(sig=signal.SIGKILL)

    def start_redis(self) -> None:
        self.redis, _ = start_redis(self.log_dir, self.port, data_dir=self.data_dir)


@pytest.fixture(scope="module")
def outage(log_dir: Path, tiny_models_dir: Path) -> Iterator[Outage]:
    port = free_port()
    data_dir = log_dir / f"redis-aof-{port}"
    data_dir.mkdir()
    redis_process, redis_url = start_redis(log_dir, port, data_dir=data_dir)
    env = clean_env(redis_url=redis_url, progress_interval="0.1", sse_heartbeat="0.5")
    worker = start_worker(
        env, log_dir, app="tests.support.fault_worker", name="outage-worker",
        extra=["--concurrency", "4"],
    )  # fmt: skip
    api_port = free_port()
    api = start_api(env, log_dir, host="127.0.0.1", port=api_port)
    state = Outage(f"http://127.0.0.1:{api_port}", redis_process, port, data_dir, log_dir)
    try:
        wait_until(lambda: http_ok(f"{state.api_url}/readyz"), 90, api, worker)
        yield state
    finally:
        api.stop()
        worker.stop()
        state.redis.stop()


def submit(client: httpx.Client, prompt: str, tokens: int = 16) -> httpx.Response:
    return client.post(
        "/v1/jobs",
        json={"kind": "generate", "input": {"prompt": prompt, "max_new_tokens": tokens}},
    )


def timed(call) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    response = call()
    return response, time.monotonic() - started


def test_redis_hung_then_dead_then_back(outage: Outage):
    with httpx.Client(base_url=outage.api_url, timeout=30) as client:
        before = submit(client, "Before the outage")
        assert before.status_code == 202
        before_id = before.json()["id"]
        wait_for_job(client, before_id)

        # Hung: the process stops answering but its port still accepts connections.
        os.kill(outage.redis.popen.pid, signal.SIGSTOP)
        try:
            response, elapsed = timed(lambda: submit(client, "While Redis hangs"))
            assert response.status_code == 503
            assert response.headers["content-type"] == "application/problem+json"
            assert "retry-after" in response.headers
            assert elapsed < ANSWER_BOUND
            read, elapsed = timed(lambda: client.get(f"/v1/jobs/{before_id}"))
            assert read.status_code == 503
            assert elapsed < ANSWER_BOUND
            assert client.get("/readyz").status_code == 503
        finally:
            os.kill(outage.redis.popen.pid, signal.SIGCONT)

        # Back from the hang: served again, with no restart.
        wait_until(lambda: client.get(f"/v1/jobs/{before_id}").status_code == 200, 10)

        # Dead: connections are refused.
        outage.kill_redis()
        response, elapsed = timed(lambda: submit(client, "While Redis is down"))
        assert response.status_code == 503
        assert elapsed < ANSWER_BOUND
        ready = client.get("/readyz")
        assert ready.status_code == 503
        assert "Redis" in ready.json()["detail"]

        # Back: the API recovers by itself; the job from before the outage is still there.
        outage.start_redis()
        wait_until(lambda: client.get("/healthz").status_code == 200, 5)
        wait_until(lambda: client.get(f"/v1/jobs/{before_id}").status_code == 200, 15)
        assert client.get(f"/v1/jobs/{before_id}").json()["status"] == "succeeded"
        after = None
        deadline = time.monotonic() + 30
        while after is None or after.status_code != 202:
            assert time.monotonic() < deadline, after.text if after else "no answer"
            after = submit(client, "After the outage")
            time.sleep(0.2)
        # The worker reconnected too: the new job runs to the end.
        assert wait_for_job(client, after.json()["id"], timeout=90)["status"] == "succeeded"
        wait_until(lambda: client.get("/readyz").status_code == 200, 30)


def test_an_open_event_stream_ends_with_an_error_event(outage: Outage):
    with httpx.Client(base_url=outage.api_url, timeout=30) as client:
        job = submit(client, "SLOW: a long story about the sea", tokens=80).json()
        events: list[Event] = []
        with client.stream("GET", f"/v1/jobs/{job['id']}/events") as stream:
            for event in read_stream(stream):
                if not isinstance(event, Event):
                    continue
                events.append(event)
                if [e.event for e in events].count("output") == 2:
                    outage.kill_redis()  # while text is streaming
        # The stream ended by itself (no hang), with an error event last.
        assert events[-1].event == "error", [e.event for e in events]
        problem = events[-1].data
        assert problem["status"] == 503
        assert "Last-Event-ID" in problem["detail"]
        assert events[-1].id  # the client can resume from it

        outage.start_redis()
        wait_until(lambda: redis_answers(f"redis://127.0.0.1:{outage.port}/0"), 10)
        # Streams work again once Redis is back, without restarting the API.
        wait_until(lambda: client.get(f"/v1/jobs/{job['id']}").status_code == 200, 15)
        with client.stream("GET", f"/v1/jobs/{job['id']}/events") as stream:
            first = next(iter(read_stream(stream)))
        assert isinstance(first, Event)
        assert first.event == "status"
        # The job that was running through the outage is not lost: it ends, with its text.
        final = wait_for_job(client, job["id"], timeout=120)
        assert final["status"] == "succeeded", final
        assert final["output"]["text"]
