"""/v1/jobs: submit a job, read it, list yours."""

import asyncio
import logging
from collections.abc import AsyncIterable, AsyncIterator
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Header, Query, Request, Response
from fastapi.sse import EventSourceResponse, ServerSentEvent
from starlette.concurrency import run_in_threadpool

from app import dispatch, workflows
from app.core.config import ApiSettings
from app.core.redis import AsyncRedis
from app.deps import (
    CeleryDep,
    DepthsDep,
    HubDep,
    OwnerDep,
    RedisDep,
    SettingsDep,
    StoreDep,
    enforce_rate_limit,
)
from app.errors import InputRejected, JobFinished, QueueFull
from app.events import EventHub, Inbox, job_events, step_channels
from app.idempotency import Idempotency, fingerprint, parse_key
from app.routes.models import published
from app.status import show
from app.store import JobStore, StoredJob, decode_cursor, encode_cursor, score_of
from app.webhooks.targets import TargetRefused, resolve
from contracts.jobs import (
    JobCreate,
    JobPage,
    JobPublic,
    JobRecord,
    JobStatus,
    job_examples,
)
from contracts.models import ModelRole
from contracts.names import DEFAULT_PRIORITY, JobKind
from contracts.schemas import limit_violations

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

LIST_SCAN_PAGES = 10
WHY_LIMITED = {
    "delay_seconds": " (a job must not expire before it starts: half of how long it is kept)",
    "expires_in": " (the job itself is kept no longer)",
}

#: One example per kind, from each input schema's own example (shown by /docs and the page).
EXAMPLES: dict[str, Any] = {
    kind: {
        "summary": (model.__doc__ or kind).strip(),
        "value": {"kind": kind, "input": example, "priority": DEFAULT_PRIORITY},
    }
    for kind, model, example in job_examples()
}


def _public(request: Request, job: StoredJob) -> JobPublic:
    return show(job, str(request.url_for("read_job", job_id=job.record.id)), datetime.now(UTC))


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
    job: Annotated[JobCreate, Body(openapi_examples=EXAMPLES)],
    request: Request,
    response: Response,
    owner: OwnerDep,
    settings: SettingsDep,
    store: StoreDep,
    celery: CeleryDep,
    depths: DepthsDep,
    redis: RedisDep,
    hub: HubDep,
    idempotency_key: Annotated[
        str | None,
        Header(
            description="Makes a retried submit safe: the same key and body (per API key) "
            "answer with the job first created; another body is a 422, a request while the "
            "first is still being accepted a 409.",
            examples=["3f6c9e2a-0d7b-4b53-9d0e-8e2c1a7b5f10"],
        ),
    ] = None,
    prefer: Annotated[
        str | None,
        Header(
            description="`wait=N`: answer with the finished job (200, `Preference-Applied`) "
            "if it ends within N seconds (at most LLM_TASKS_MAX_WAIT_SECONDS), else the "
            "usual 202.",
            examples=["wait=20"],
        ),
    ] = None,
) -> JobPublic:
    """Submit a job; answers at once with its id, status `queued` and where to follow it
    (or, with `Prefer: wait=N`, with the job once it ends, if it ends within N seconds)."""
    wait = _wait_preference(prefer, settings.max_wait_seconds)
    errors = [
        {"loc": ["body", "input", v.field], "msg": v.message, "type": "limit"}
        for v in limit_violations(job.input, settings)
    ] + [
        {"loc": ["body", v.field], "msg": v.message + WHY_LIMITED.get(v.field, ""), "type": "limit"}
        for v in limit_violations(job, settings)
    ]
    errors += _model_problems(job, settings)
    if job.webhook is not None:
        errors += await _webhook_problems(job.webhook, settings)
    if job.kind == "chat" and not errors:
        errors += await _chat_template_missing(redis, settings, job.model)
    if errors:
        raise InputRejected(errors)
    keys = Idempotency(redis, settings.result_expires)
    key = parse_key(idempotency_key) if idempotency_key is not None else None
    body_print = fingerprint(job.model_dump(mode="json")) if key else ""
    if key is not None and (first_id := await keys.claim(owner, key, body_print)) is not None:
        response.headers["Idempotent-Replayed"] = "true"
        return await _answer(request, response, store, hub, await store.get(first_id, owner), wait)
    try:
        record = await _accept(job, owner, settings, store, celery, depths, key, request)
    except BaseException:
        if key is not None:
            await keys.release(owner, key)
        raise
    if key is not None:
        await keys.bind(owner, key, body_print, record.id)
    stored = StoredJob(
        record, started_at=None, canceled_at=None, attempts={}, metas=[None] * len(record.steps)
    )
    return await _answer(request, response, store, hub, stored, wait)


async def _accept(
    job: Any,
    owner: str,
    settings: ApiSettings,
    store: JobStore,
    celery: Any,
    depths: Any,
    key: str | None,
    request: Request,
) -> JobRecord:
    """Check the queues' room, record the job and hand it to the broker."""
    if settings.max_queue_depth:
        kind, job_input = JobKind(job.kind), job.input.model_dump()
        for queue in workflows.queues_of(kind, job_input, settings, job.model):
            depth = await depths.depth(queue)
            if depth >= settings.max_queue_depth:
                raise QueueFull(queue, depth, settings.max_queue_depth)
    record = dispatch.new_record(
        job, owner, key, lambda job_id: str(request.url_for("read_job", job_id=job_id))
    )
    await store.create(record)
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
            "owner": owner,
            "priority": record.priority,
            "task_ids": ",".join(step.task_id for step in record.steps),
        },
    )
    return record


def _wait_preference(prefer: str | None, longest: int) -> int | None:
    """``wait=N`` among the ``Prefer`` header's preferences (RFC 7240), capped."""
    for preference in (prefer or "").split(","):
        name, _, value = preference.strip().partition("=")
        if name.strip().lower() == "wait":
            try:
                seconds = int(value.strip().strip('"'))
            except ValueError:
                return None  # not understood: ignored, as RFC 7240 says
            return max(0, min(seconds, longest))
    return None


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


async def _webhook_problems(url: str, settings: ApiSettings) -> list[dict[str, Any]]:
    """The webhook can be signed, and goes where this deployment lets it."""
    problem = None
    if settings.webhook_key is None:
        problem = "this deployment sends no webhooks (LLM_TASKS_WEBHOOK_SECRET is not set)"
    else:
        try:
            await resolve(url, allow_private=settings.webhook_allow_private_networks)
        except TargetRefused as refused:
            problem = str(refused)
    return [{"loc": ["body", "webhook"], "msg": problem, "type": "webhook"}] if problem else []


def _model_problems(job: Any, settings: ApiSettings) -> list[dict[str, Any]]:
    """``model`` names a declared model of a role the kind runs."""
    if job.model is None:
        return []
    declared = {model.name: model for model in settings.declared_models()}
    named = declared.get(job.model)
    if named is None:
        message = f"no model named {job.model!r}; the models are {', '.join(sorted(declared))}"
        return [{"loc": ["body", "model"], "msg": message, "type": "unknown_model"}]
    roles = workflows.roles_of(JobKind(job.kind), job.input.model_dump())
    if named.role not in roles:
        message = (
            f"{job.model} is a {named.role} model; a {job.kind} job runs "
            + " and ".join(sorted(roles))
            + " models"
        )
        return [{"loc": ["body", "model"], "msg": message, "type": "model_role"}]
    return []


async def _chat_template_missing(
    redis: AsyncRedis, settings: ApiSettings, model: str | None
) -> list[dict[str, Any]]:
    """A chat needs the generator's chat template: known once a worker published the model
    (before that, the job is accepted and a worker fails it if the template is missing)."""
    generator = settings.model_for(ModelRole.GENERATOR, model)
    card = await published(redis, generator.name)
    if card is None or card.source != generator.source or card.chat_template:
        return []
    message = (
        f"the generator model {generator.name} ({generator.source}) has no chat template; "
        "send a prompt with the generate kind"
    )
    field = "model" if model else "kind"
    return [{"loc": ["body", field], "msg": message, "type": "chat_template"}]


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
    job: Annotated[StoredJob, Depends(find_job)], hub: HubDep
) -> AsyncIterator[Inbox]:
    """The job's channels, subscribed for as long as the request lasts: released when the
    stream ends or its client goes away, not whenever its generator is collected."""
    async with hub.subscription(step_channels(job)) as inbox:
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
    job_id: str, request: Request, owner: OwnerDep, store: StoreDep, celery: CeleryDep
) -> JobPublic:
    """Cancel a job: queued steps are revoked at once, a running generation stops at its next
    token. Answers with the job, now `canceled`."""
    job = await store.get(job_id, owner)
    status = _public(request, job).status
    if status.finished:
        raise JobFinished(job_id, status.value)
    ended = await store.cancel(job.record, job.started_at)
    await run_in_threadpool(dispatch.revoke, celery, job.record, job.metas, ended=ended)
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
    if cursor is not None:
        try:
            decode_cursor(cursor)
        except ValueError as error:
            raise InputRejected(
                [{"loc": ["query", "cursor"], "msg": str(error), "type": "value_error"}]
            ) from None
    items: list[JobPublic] = []
    position = cursor
    # With filters, one request scans a bounded stretch of history; the cursor goes on from there.
    for _ in range(LIST_SCAN_PAGES):
        jobs, after_page = await store.page(owner, position, batch=limit)
        for job in jobs:
            position = encode_cursor(score_of(job.record.created_at), job.record.id)
            public = _public(request, job)
            if (status is None or public.status is status) and (
                kind is None or public.kind is kind
            ):
                items.append(public)
                if len(items) == limit:
                    return JobPage(items=items, next_cursor=position)
        if after_page is None:
            return JobPage(items=items, next_cursor=None)
        position = after_page
    return JobPage(items=items, next_cursor=position)
