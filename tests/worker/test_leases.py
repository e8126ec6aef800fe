"""Step leases on a real Redis: one holder at a time, renewed while it lives, lapsing when
it dies; a step's job flags and a lost lease reach the step from memory."""

import time
from collections.abc import Iterator

import pytest
import redis

from contracts.records import CANCELED_AT_FIELD, ENDED_FIELD, job_key, lease_key
from tools.stack import wait_until
from worker.leases import CANCELED_BY_CLIENT, STEP_FAILED, LeaseHeld, StepWatch


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    with redis.Redis.from_url(redis_url) as connection:
        yield connection


def watch(client: redis.Redis, owner: str, lease: float = 0.3) -> StepWatch:
    return StepWatch(lambda: client, owner=owner, lease_seconds=lease, interval=0.05)


def test_one_holder_at_a_time_renewed_while_it_lives(client: redis.Redis):
    mine, theirs = watch(client, "worker-a"), watch(client, "worker-b")
    step = mine.acquire("task-held")
    for _ in range(4):  # four TTLs: the holder's thread keeps renewing
        with pytest.raises(LeaseHeld, match="worker-a"):
            theirs.acquire("task-held")
        time.sleep(0.3)
    mine.release(step)
    assert client.exists(lease_key("task-held")) == 0
    theirs.release(theirs.acquire("task-held"))


def test_a_dead_holder_s_lease_lapses(client: redis.Redis):
    # A holder that died: its lease is in Redis, and nobody renews it.
    client.set(lease_key("task-orphan"), "dead-worker 1234", px=300)
    rescuer = watch(client, "worker-b")
    with pytest.raises(LeaseHeld, match="dead-worker"):
        rescuer.acquire("task-orphan")
    wait_until(lambda: client.exists(lease_key("task-orphan")) == 0, 2)
    step = rescuer.acquire("task-orphan")
    assert client.get(lease_key("task-orphan")).decode() == step.token
    rescuer.release(step)


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [(CANCELED_AT_FIELD, "2026-01-01T00:00:00+00:00", CANCELED_BY_CLIENT),
     (ENDED_FIELD, "failed", STEP_FAILED)],
)  # fmt: skip
def test_the_job_s_flags_reach_the_step(client: redis.Redis, field: str, value: str, reason: str):
    steps = watch(client, "worker-a", lease=5)
    step = steps.acquire(f"task-flag-{field}")
    steps.watch_job(step, f"job-flag-{field}")
    client.hset(job_key(f"job-flag-{field}"), mapping={"kind": "generate"})
    time.sleep(0.2)
    assert step.stop_reason is None
    client.hset(job_key(f"job-flag-{field}"), field, value)
    wait_until(lambda: step.stop_reason is not None, 2)
    assert step.stop_reason == reason
    steps.release(step)


def test_a_lease_taken_by_another_is_lost_and_left_alone(client: redis.Redis):
    steps = watch(client, "worker-a", lease=5)
    step = steps.acquire("task-stolen")
    client.set(lease_key("task-stolen"), "worker-b 99", px=5000)
    wait_until(lambda: step.lost, 2)
    steps.release(step)
    assert client.get(lease_key("task-stolen")) == b"worker-b 99"
