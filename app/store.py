"""The job registry in Redis: every accepted job, readable until its results expire.

Keys (see :mod:`contracts.records`): one hash per job (the immutable record, the start time
and per-step attempts, the last two stamped by the worker) and one sorted set per owner,
scored by creation time, for listing newest first.
"""

import base64
import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from app.core.redis import AsyncRedis
from app.errors import JobNotFound
from contracts.metrics import (
    JOB_RUN,
    JOBS_FINISHED,
    JOBS_SUBMITTED,
    METRICS_KEY,
    counter_fields,
    histogram_fields,
)
from contracts.records import (
    CANCELED_AT_FIELD,
    CREATED_FIELD,
    DEADLINE_FIELD,
    ENDED_FIELD,
    FIRST_TOKEN_FIELD,
    KIND_FIELD,
    RECORD_FIELD,
    STARTED_AT_FIELD,
    STEPS_FIELD,
    JobRecord,
    job_key,
    owner_index_key,
    task_key,
)
from contracts.webhooks import WEBHOOK_EVENTS_FIELD, deliveries_key
from llm_tasks.job_schema import JobStatus, WebhookDelivery

CELERY_META_PREFIX = "celery-task-meta-"
ATTEMPTS_PREFIX = "attempts:"


@dataclass(frozen=True)
class StoredJob:
    record: JobRecord
    started_at: datetime | None
    canceled_at: datetime | None
    attempts: dict[str, int]
    metas: list[dict[str, Any] | None]
    first_token_at: datetime | None = None
    deliveries: tuple[WebhookDelivery, ...] = ()


#: Pages of history one filtered listing reads at most.
SCAN_PAGES = 10


def score_of(moment: datetime) -> int:
    """Microseconds since the epoch: exact in a Redis score (a double) for centuries."""
    return int(moment.timestamp() * 1_000_000)


def encode_cursor(score: int, job_id: str) -> str:
    return base64.urlsafe_b64encode(f"{score}:{job_id}".encode()).decode()


def decode_cursor(cursor: str) -> tuple[int, str]:
    try:
        score, job_id = base64.urlsafe_b64decode(cursor.encode()).decode().split(":", 1)
        return int(score), job_id
    except (ValueError, UnicodeDecodeError) as error:
        raise ValueError("not a cursor from this API") from error


class JobStore:
    def __init__(self, redis: AsyncRedis, results: AsyncRedis, ttl: int) -> None:
        self._redis = redis
        self._results = results
        self._ttl = ttl

    async def create(self, record: JobRecord) -> None:
        key, index = job_key(record.id), owner_index_key(record.owner)
        horizon = score_of(datetime.now(UTC)) - self._ttl * 1_000_000
        fields: dict[Any, Any] = {
            RECORD_FIELD: record.model_dump_json(),
            KIND_FIELD: record.kind.value,
            CREATED_FIELD: record.created_at.timestamp(),
            STEPS_FIELD: len(record.steps),
        }
        if record.deadline is not None:
            fields[DEADLINE_FIELD] = record.deadline.timestamp()
        if record.webhook_events:
            fields[WEBHOOK_EVENTS_FIELD] = ",".join(record.webhook_events)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping=fields)
            pipe.expire(key, self._ttl)
            for step in record.steps:
                pipe.set(task_key(step.task_id), record.id, ex=self._ttl)
            pipe.zadd(index, {record.id: score_of(record.created_at)})
            pipe.zremrangebyscore(index, "-inf", horizon)
            pipe.expire(index, self._ttl)
            for field, amount in counter_fields(JOBS_SUBMITTED, {"kind": record.kind}, 1).items():
                pipe.hincrbyfloat(METRICS_KEY, field, amount)
            await pipe.execute()

    async def discard(self, record: JobRecord) -> None:
        """Forget a job that was never handed to the broker."""
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.delete(job_key(record.id), *(task_key(step.task_id) for step in record.steps))
            pipe.zrem(owner_index_key(record.owner), record.id)
            await pipe.execute()

    async def cancel(self, record: JobRecord, started_at: datetime | None) -> bool:
        """Flag the job canceled; workers read the flag before each step and while generating.
        True when this call ended the job (nothing else had)."""
        now = datetime.now(UTC)
        key = job_key(record.id)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hsetnx(key, CANCELED_AT_FIELD, now.isoformat())
            pipe.hsetnx(key, ENDED_FIELD, JobStatus.CANCELED.value)
            _, ended_now = await pipe.execute()
        if ended_now:
            labels = {"kind": record.kind.value, "status": JobStatus.CANCELED.value}
            fields = dict(counter_fields(JOBS_FINISHED, labels, 1))
            if started_at is not None:
                fields |= histogram_fields(JOB_RUN, labels, (now - started_at).total_seconds())
            async with self._redis.pipeline(transaction=False) as pipe:
                for field, amount in fields.items():
                    pipe.hincrbyfloat(METRICS_KEY, field, amount)
                await pipe.execute()
        return bool(ended_now)

    async def get(self, job_id: str, owner: str) -> StoredJob:
        jobs = await self._load([job_id])
        job = jobs.get(job_id)
        if job is None or job.record.owner != owner:
            raise JobNotFound(job_id)
        return job

    async def find(self, job_id: str) -> StoredJob | None:
        """The job, whoever owns it (None once it expired)."""
        return (await self._load([job_id])).get(job_id)

    async def page(
        self, owner: str, cursor: str | None, batch: int
    ) -> tuple[list[StoredJob], str | None]:
        """Up to ``batch`` of the owner's jobs older than ``cursor``, newest first."""
        index = owner_index_key(owner)
        top: str | int = "+inf"
        after_id: str | None = None
        if cursor:
            top, after_id = decode_cursor(cursor)
        # Members sharing a score come in reverse lexical order: skip those already served.
        rows: list[tuple[bytes, float]] = await self._redis.zrevrangebyscore(  # type: ignore[assignment]
            index, top, "-inf", start=0, num=batch + 64, withscores=True
        )
        picked: list[tuple[str, int]] = []
        for member, score in rows:
            job_id = member.decode()
            if after_id is not None and int(score) == top and job_id >= after_id:
                continue
            picked.append((job_id, int(score)))
            if len(picked) == batch:
                break
        jobs = await self._load([job_id for job_id, _ in picked])
        found = [jobs[job_id] for job_id, _ in picked if job_id in jobs]
        next_cursor = encode_cursor(picked[-1][1], picked[-1][0]) if len(picked) == batch else None
        return found, next_cursor

    async def scan(
        self,
        owner: str,
        cursor: str | None,
        limit: int,
        keep: Callable[[StoredJob], bool],
        pages: int = SCAN_PAGES,
    ) -> tuple[list[StoredJob], str | None]:
        """Up to ``limit`` of the owner's jobs older than ``cursor`` that ``keep`` takes,
        newest first, and the cursor to go on from (None at the end). A filter that takes
        few jobs reads at most ``pages`` pages of history per call; the cursor then points
        where the scan stopped. A bad cursor is a :class:`ValueError`."""
        if cursor is not None:
            decode_cursor(cursor)
        kept: list[StoredJob] = []
        position = cursor
        for _ in range(pages):
            jobs, after_page = await self.page(owner, position, batch=limit)
            for job in jobs:
                position = encode_cursor(score_of(job.record.created_at), job.record.id)
                if keep(job):
                    kept.append(job)
                    if len(kept) == limit:
                        return kept, position
            if after_page is None:
                return kept, None
            position = after_page
        return kept, position

    async def _hashes(self, keys: list[str]) -> list[dict[bytes, bytes]]:
        """Every field of each hash, in one round trip."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.hgetall(key)
            found: list[dict[bytes, bytes]] = await pipe.execute()
        return found

    async def _load(self, job_ids: list[str]) -> dict[str, StoredJob]:
        if not job_ids:
            return {}
        async with self._redis.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.hgetall(job_key(job_id))
            hashes: list[dict[bytes, bytes]] = await pipe.execute()
        partial = [_stamps(fields) for fields in hashes if RECORD_FIELD.encode() in fields]
        task_ids = [step.task_id for record, *_ in partial for step in record.steps]
        raw_metas = (
            await self._results.mget([CELERY_META_PREFIX + t for t in task_ids]) if task_ids else []
        )
        metas = iter(json.loads(raw) if raw else None for raw in raw_metas)
        jobs = {
            record.id: StoredJob(
                record, started, canceled, attempts, [next(metas) for _ in record.steps], first
            )
            for record, started, canceled, attempts, first in partial
        }
        # The stamps were read before the steps' states: a step that started (and maybe
        # ended) in between has a state but no stamp yet. Read those jobs' stamps again,
        # which are written before any state of the step.
        stale = [job for job in jobs.values() if _unstamped(job)]
        if stale:
            fresh = await self._hashes([job_key(job.record.id) for job in stale])
            for job, fields in zip(stale, fresh, strict=True):
                if RECORD_FIELD.encode() in fields:
                    _, started, canceled, attempts, first = _stamps(fields)
                    jobs[job.record.id] = StoredJob(
                        job.record, started, canceled, attempts, job.metas, first
                    )
        with_webhooks = [job for job in jobs.values() if job.record.webhook]
        if with_webhooks:
            found = await self._hashes([deliveries_key(job.record.id) for job in with_webhooks])
            for job, fields in zip(with_webhooks, found, strict=True):
                jobs[job.record.id] = replace(job, deliveries=_deliveries(fields))
        return jobs


#: States a step has only once a worker stamped its start in the registry.
_STAMPED_STATES = {"STARTED", "PROGRESS", "RETRY", "SUCCESS", "FAILURE"}


def _unstamped(job: StoredJob) -> bool:
    return any(
        meta is not None
        and meta.get("status") in _STAMPED_STATES
        and step.task_id not in job.attempts
        for step, meta in zip(job.record.steps, job.metas, strict=True)
    )


def _stamps(
    fields: dict[bytes, bytes],
) -> tuple[JobRecord, datetime | None, datetime | None, dict[str, int], datetime | None]:
    """A job's record, start and cancel times, per-step attempts and first token time,
    from its hash."""
    record = JobRecord.model_validate_json(fields[RECORD_FIELD.encode()])
    attempts = {
        name.decode().removeprefix(ATTEMPTS_PREFIX): int(value)
        for name, value in fields.items()
        if name.startswith(ATTEMPTS_PREFIX.encode())
    }
    return (
        record,
        _moment(fields.get(STARTED_AT_FIELD.encode())),
        _moment(fields.get(CANCELED_AT_FIELD.encode())),
        attempts,
        _moment(fields.get(FIRST_TOKEN_FIELD.encode())),
    )


def _deliveries(fields: dict[bytes, bytes]) -> tuple[WebhookDelivery, ...]:
    """The deliveries of a job's webhook, in the order they were made; of the output
    deliveries only the latest (a long generation makes two a second)."""
    deliveries = [
        WebhookDelivery.model_validate_json(value)
        for name, value in fields.items()
        if value.startswith(b"{") and not name.endswith((b":task", b":body"))
    ]
    outputs = [d for d in deliveries if d.event == "output"]
    latest = max(outputs, key=lambda d: int(d.id.rsplit(":", 1)[1]), default=None)
    kept = [d for d in deliveries if d.event != "output" or d is latest]
    return tuple(sorted(kept, key=lambda d: d.created_at))


def _moment(value: bytes | None) -> datetime | None:
    return datetime.fromisoformat(value.decode()) if value else None
