"""The job store on a real Redis: a step that starts and ends between the store's two
reads (the job's hash, then its steps' states) still reads with its start and attempts."""

import asyncio
import json
from datetime import UTC, datetime

import redis.asyncio as aioredis

from app.store import CELERY_META_PREFIX, JobStore
from contracts.records import STARTED_AT_FIELD, JobRecord, StepRecord, attempts_field, job_key


class WorkerBetweenReads:
    """The results client, with a worker's start stamp landing just before each read."""

    def __init__(self, results: aioredis.Redis, registry: aioredis.Redis, job_id: str) -> None:
        self._results, self._registry, self._job_id = results, registry, job_id

    async def mget(self, keys: list[str]) -> list[bytes | None]:
        key = job_key(self._job_id)
        await self._registry.hincrby(key, attempts_field("task-raced"), 1)
        await self._registry.hset(key, STARTED_AT_FIELD, datetime.now(UTC).isoformat())
        failure = {"status": "FAILURE", "result": {"exc_type": "X", "exc_message": ["y"]}}
        await self._results.set(CELERY_META_PREFIX + "task-raced", json.dumps(failure))
        return await self._results.mget(keys)


def test_a_step_that_ran_between_the_reads_has_its_stamps(redis_url: str):
    async def scenario() -> None:
        client = aioredis.Redis.from_url(redis_url)
        record = JobRecord(
            id="job-raced",
            kind="generate",
            owner="anonymous",
            input={"prompt": "Hi"},
            priority=5,
            created_at=datetime.now(UTC),
            steps=[StepRecord(name="generate", task_id="task-raced")],
        )
        try:
            racing = WorkerBetweenReads(client, client, record.id)
            store = JobStore(client, racing, ttl=600)  # type: ignore[arg-type]
            await store.create(record)
            job = await store.get(record.id, "anonymous")
            assert job.metas[0] is not None and job.metas[0]["status"] == "FAILURE"
            assert job.attempts == {"task-raced": 1}
            assert job.started_at is not None
        finally:
            await client.delete(job_key(record.id), CELERY_META_PREFIX + "task-raced")
            await client.aclose()

    asyncio.run(scenario())
