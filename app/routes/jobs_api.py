"""/v1/jobs: submit a job, read it, list yours."""

import asyncio
import logging
from collections.abc import AsyncIterable, AsyncIterator
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Request, Response
from fastapi.sse import EventSourceResponse, ServerSentEvent
from starlette.concurrency import run_in_threadpool

from app import dispatch
from app.admission import AdmittedJob, QueueRoomDep
from app.core.config import ApiSettings
from app.deps import OwnerDep, ServicesDep, SettingsDep, StoreDep, enforce_rate_limit
from app.errors import InputRejected, JobFinished
from app.events import EventHub, Inbox, job_events, step_channels
from app.idempotency import Idempotency, fingerprint, parse_key
from app.status import show
from app.store import JobStore, StoredJob
from contracts.records import JobRecord
from llm_tasks.job_schema import JobPage, JobPublic, JobStatus
from llm_tasks.kinds import JobKind

PROBLEM: dict[str, Any] = {"content": {"application/problem+json": {}}}

logger = logging.getLogger(__name__)

router = APIRouter(
    prefix="/v1/jobs",
    tags=["jobs"],
    dependencies=[Depends(enforce_rate_limit)],
    responses={
        401: PROBLEM | {"description": "Missing or invalid API key"},
        429: PROBLEM | {"description": "Rate limit exceeded; see `Retry-After`"},
    },
)


def _public(request: Request, job: StoredJob) -> JobPublic:
    return show(job, str(request.url_for("read_job", job_id=job.record.id)), datetime.now(UTC))


async def idempotency_key(
    header: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            description="Makes a retried submit safe: the same key and body (per API key) "
            "answer with the job first created; another body is a 422, a request while the "
            "first is still being accepted a 409.",
            examples=["3f6c9e2a-0d7b-4b53-9d0e-8e2c1a7b5f10"],
        ),
    ] = None,
) -> str | None:
    return parse_key(header) if header is not None else None


async def wait_preference(
    settings: SettingsDep,
    prefer: Annotated[
        str | None,
        Header(
            description="`wait=N`: answer with the finished job (200, `Preference-Applied`) "
            "if it ends within N seconds (at most LLM_TASKS_MAX_WAIT_SECONDS), else the "
            "usual 202.",
            examples=["wait=20"],
        ),
    ] = None,
) -> int | None:
    """``wait=N`` among the ``Prefer`` header's preferences (RFC 7240), capped."""
    for preference in (prefer or "").split(","):
        name, _, value = preference.strip().partition("=")
        if name.strip().lower() == "wait":
            try:
                seconds = int(value.strip().strip('"'))
            except ValueError:
                return None  # not understood: ignored, as RFC 7240 says
            return max(0, min(seconds, settings.max_wait_seconds))
    return None


@router.post(
    "",
    status_code=202,
    responses={
        200: {
            "model": JobPublic,
            "description": "With `Prefer: wait=N`: the job, which ended within N seconds",
        },
        409: PROBLEM
        | {"description": "A request with this Idempotency-Key is still being accepted"},
        413: PROBLEM | {"description": "Request body too large"},
        422: PROBLEM | {"description": "Invalid input; `errors` names each offending field"},
        503: PROBLEM
        | {"description": "Broker or job store unreachable, or queue full; see `Retry-After`"},
    },
)
async def create_job(
    job: AdmittedJob,
    room: QueueRoomDep,
    request: Request,
    response: Response,
    owner: OwnerDep,
    settings: SettingsDep,
    store: StoreDep,
    services: ServicesDep,
    key: Annotated[str | None, Depends(idempotency_key)],
    wait: Annotated[int | None, Depends(wait_preference)],
) -> JobPublic:
    """Submit a job; answers at once with its id, status `queued` and where to follow it
    (or, with `Prefer: wait=N`, with the job once it ends, if it ends within N seconds)."""
    keys = Idempotency(services.redis, settings.result_expires)
    body_print = fingerprint(job.model_dump(mode="json")) if key else ""
    if key is not None and (first_id := await keys.claim(owner, key, body_print)) is not None:
        response.headers["Idempotent-Replayed"] = "true"
        first = await store.get(first_id, owner)
        return await _answer(request, response, store, services.hub, first, wait)
    try:
        await room(job)
        record = dispatch.new_record(
            job, owner, key, lambda job_id: str(request.url_for("read_job", job_id=job_id))
        )
        await store.create(record)
        await _send(services.celery, record, settings, store)
    except BaseException:
        if key is not None:
            await keys.release(owner, key)
        raise
    if key is not None:
        await keys.bind(owner, key, body_print, record.id)
    stored = StoredJob(
        record, started_at=None, canceled_at=None, attempts={}, metas=[None] * len(record.steps)
    )
    return await _answer(request, response, store, services.hub, stored, wait)


async def _send(celery: Any, record: JobRecord, settings: ApiSettings, store: JobStore) -> None:
    """Hand the recorded job to the broker (a job the broker did not take is not kept)."""
    try:
        await run_in_threadpool(dispatch.send, celery, record, settings)
    except Exception:
        await store.discard(record)
        raise
    logger.info(
        "job %s submitted (%s, priority %d)",
        record.id,
        record.kind.value,
        record.priority,
        extra={
            "job_id": record.id,
            "kind": record.kind.value,
            "owner": record.owner,
            "priority": record.priority,
            "task_ids": ",".join(step.task_id for step in record.steps),
        },
    )


async def _answer(
    request: Request,
    response: Response,
    store: JobStore,
    hub: EventHub,
    job: StoredJob,
    wait: int | None,
) -> JobPublic:
    """The job as it is (202), or — asked to wait — once it ends (200), pushed by the
    job's own state updates (no polling, no thread held), else as it is then (202)."""
    public = _public(request, job)
    response.headers["Location"] = public.urls.self
    if wait is None:
        return public
    response.headers["Preference-Applied"] = f"wait={wait}"
    if not public.status.finished:
        deadline = asyncio.get_running_loop().time() + wait
        async with hub.subscription(step_channels(job)) as inbox:
            owner = job.record.owner
            public = _public(request, await store.get(job.record.id, owner))
            while not public.status.finished:
                remaining = deadline - asyncio.get_running_loop().time()
                if remaining <= 0:
                    break
                try:
                    await asyncio.wait_for(inbox.get(), remaining)
                except TimeoutError:
                    break
                public = _public(request, await store.get(job.record.id, owner))
    if public.status.finished:
        response.status_code = 200
    return public


@router.get(
    "/{job_id}", responses={404: PROBLEM | {"description": "Unknown, expired or not yours"}}
)
async def read_job(job_id: str, request: Request, owner: OwnerDep, store: StoreDep) -> JobPublic:
    """The job: status, progress of each step, output or error."""
    return _public(request, await store.get(job_id, owner))


async def find_job(job_id: str, owner: OwnerDep, store: StoreDep) -> StoredJob:
    """The job, or a 404 before a stream begins."""
    return await store.get(job_id, owner)


async def subscribe_to_job(
    job: Annotated[StoredJob, Depends(find_job)], services: ServicesDep
) -> AsyncIterator[Inbox]:
    """The job's channels, subscribed for as long as the request lasts: released when the
    stream ends or its client goes away, not whenever its generator is collected."""
    async with services.hub.subscription(step_channels(job)) as inbox:
        yield inbox


@router.get(
    "/{job_id}/events",
    response_class=EventSourceResponse,
    responses={404: PROBLEM | {"description": "Unknown, expired or not yours"}},
)
async def stream_job_events(
    job_id: str,
    first: Annotated[StoredJob, Depends(find_job)],
    inbox: Annotated[Inbox, Depends(subscribe_to_job)],
    request: Request,
    owner: OwnerDep,
    store: StoreDep,
    settings: SettingsDep,
    last_event_id: Annotated[
        str | None, Header(description="Resume after this event (sent by EventSource itself).")
    ] = None,
) -> AsyncIterable[ServerSentEvent]:
    """The job's events, live: `status` (first, then on each change), `progress`, `output`
    (generated text as it comes) and `done` (the final job; the stream then ends)."""
    async for event in job_events(
        inbox=inbox,
        load=lambda: store.get(job_id, owner),
        show=lambda job: _public(request, job),
        first=first,
        last_event_id=last_event_id,
        heartbeat=settings.sse_heartbeat,
    ):
        yield event


@router.delete(
    "/{job_id}",
    responses={
        404: PROBLEM | {"description": "Unknown, expired or not yours"},
        409: PROBLEM | {"description": "The job has already finished"},
    },
)
async def cancel_job(
    job_id: str, request: Request, owner: OwnerDep, store: StoreDep, services: ServicesDep
) -> JobPublic:
    """Cancel a job: queued steps are revoked at once, a running generation stops at its next
    token. Answers with the job, now `canceled`."""
    job = await store.get(job_id, owner)
    status = _public(request, job).status
    if status.finished:
        raise JobFinished(job_id, status.value)
    ended = await store.cancel(job.record, job.started_at)
    await run_in_threadpool(dispatch.revoke, services.celery, job.record, job.metas, ended=ended)
    logger.info("job %s canceled", job_id, extra={"job_id": job_id, "owner": owner})
    return _public(request, await store.get(job_id, owner))


@router.get("", responses={422: PROBLEM | {"description": "Bad filter or cursor"}})
async def list_jobs(
    request: Request,
    owner: OwnerDep,
    store: StoreDep,
    status: Annotated[JobStatus | None, Query(description="Only jobs in this status.")] = None,
    kind: Annotated[JobKind | None, Query(description="Only jobs of this kind.")] = None,
    limit: Annotated[int, Query(ge=1, le=100, description="Page size.")] = 20,
    cursor: Annotated[str | None, Query(description="`next_cursor` of the previous page.")] = None,
) -> JobPage:
    """Your recent jobs, newest first."""

    def wanted(job: StoredJob) -> bool:
        public = _public(request, job)
        return (status is None or public.status is status) and (kind is None or public.kind is kind)

    try:
        jobs, next_cursor = await store.scan(owner, cursor, limit, wanted)
    except ValueError as error:
        raise InputRejected(
            [{"loc": ["query", "cursor"], "msg": str(error), "type": "value_error"}]
        ) from None
    return JobPage(items=[_public(request, job) for job in jobs], next_cursor=next_cursor)
