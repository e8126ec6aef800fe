"""The webhooks worker: ``celery -A app.webhooks.worker worker`` sends the jobs' webhooks.

It consumes the ``webhooks`` queue alone, in a threads pool: a delivery mostly waits on
the network, so many run at once, and none ever waits in a model worker or in the API
(which only enqueue them). It needs the API's packages, not torch.

A delivery task carries the job id, the event and its webhook-id. Its first attempt
renders the job as it is then — the JSON of ``GET /v1/jobs/{id}`` — and claims the
webhook-id, keeping that body for the retries (a second task for the same id, the job's
end seen by a worker and a cancel at once, finds it claimed and does nothing). Each
attempt resolves the target again, refuses private addresses (unless allowed), connects
to the address it checked and POSTs the body, signed per Standard Webhooks with the
attempt's timestamp. A 2xx answer delivers it; anything else (an error, a timeout, a
redirect, which is not followed) is retried with exponential backoff and jitter until the
retry window closes. An output delivery that a later one overtook is dropped, not retried.
"""

import asyncio
import functools
import json
import logging
import random
import ssl
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from celery import Task
from celery.signals import after_setup_logger, after_setup_task_logger

from app.core.config import get_settings
from app.core.redis import AsyncRedis, connect
from app.status import show
from app.store import JobStore
from app.webhooks.targets import TargetRefused, pinned, resolve
from contracts.celery_config import create_celery_app
from contracts.logs import formatter
from contracts.metrics import (
    METRICS_KEY,
    WEBHOOK_ATTEMPTS,
    WEBHOOK_LATENCY,
    counter_fields,
    histogram_fields,
)
from contracts.names import QueueName, TaskName
from contracts.webhooks import WebhookEvent, deliveries_key
from llm_tasks.job_schema import WebhookDelivery
from llm_tasks.signatures import signed_headers

logger = logging.getLogger(__name__)

settings = get_settings()
app = create_celery_app("llm_tasks.webhooks", settings)
app.conf.update(
    worker_pool="threads",
    worker_concurrency=settings.webhook_concurrency,
    task_queues=[queue for queue in app.conf.task_queues if queue.name == QueueName.WEBHOOKS],
    # Remote control on an exchange of its own: the API's readiness ping counts the workers
    # that run jobs, not this one (``celery -A app.webhooks.worker inspect ping`` reaches it).
    control_exchange="llm_tasks_webhooks",
)

USER_AGENT = "llm-tasks-webhooks/0.1"
OUTPUT_DELIVERED_FIELD = "output_delivered"

# Claim a webhook-id for this task (ARGV[2]) and keep the body it will send on every
# attempt; 0 when another task has it.
_CLAIM = """
local owner = redis.call('HGET', KEYS[1], ARGV[1] .. ':task')
if owner and owner ~= ARGV[2] then return 0 end
if not owner then
  local id = ARGV[1]
  redis.call('HSET', KEYS[1], id .. ':task', ARGV[2], id .. ':body', ARGV[3], id, ARGV[4])
  redis.call('EXPIRE', KEYS[1], ARGV[5])
end
return 1
"""

# The latest output delivered (a later one makes the earlier ones' retries moot).
_OUTPUT_DELIVERED = """
local latest = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
if tonumber(ARGV[2]) > latest then redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) end
"""


@after_setup_logger.connect
@after_setup_task_logger.connect
def use_log_format(logger: logging.Logger, **_: Any) -> None:
    # Each attempt logs one line of its own, with the job and webhook ids.
    for per_task in ("celery.app.trace", "celery.worker.strategy"):
        logging.getLogger(per_task).setLevel(logging.WARNING)
    if settings.log_format == "json":
        for handler in logger.handlers:
            handler.setFormatter(formatter(settings.log_format))


class _Thread:
    """One pool thread's event loop, with its Redis and HTTP clients (kept for its life)."""

    def __init__(self) -> None:
        self.loop = asyncio.Runner()
        self.redis: AsyncRedis = connect(settings.redis_url, settings)
        results = settings.effective_result_backend
        self.results = self.redis if results == settings.redis_url else connect(results, settings)
        self.store = JobStore(self.redis, self.results, settings.result_expires)
        self.http = httpx.AsyncClient(
            verify=_tls(),
            timeout=settings.webhook_timeout,
            follow_redirects=False,
            headers={"user-agent": USER_AGENT, "content-type": "application/json"},
        )


_threads = threading.local()


@functools.cache
def _tls() -> ssl.SSLContext:
    """One TLS context for every thread's client (loading the CA bundle takes a while)."""
    return httpx.create_ssl_context()


def _this_thread() -> _Thread:
    if not hasattr(_threads, "context"):
        _threads.context = _Thread()
    context: _Thread = _threads.context
    return context


# Retried until the delivery's window closes (it counts its own attempts), not N times.
@app.task(
    name=TaskName.DELIVER_WEBHOOK.value,
    bind=True,
    ignore_result=True,
    acks_late=True,
    max_retries=None,
)
def deliver_webhook(self: Task, job_id: str, event: str, delivery_id: str) -> None:
    context = _this_thread()
    retry_in = context.loop.run(
        _deliver(context, self.request.id, job_id, WebhookEvent(event), delivery_id)
    )
    if retry_in is not None:
        raise self.retry(countdown=retry_in)


def backoff(attempts: int) -> float:
    """Exponential, capped, with jitter: half the delay plus up to as much again."""
    cap = min(settings.webhook_backoff_max, settings.webhook_backoff * 2 ** (attempts - 1))
    return float(cap / 2 + random.uniform(0, cap / 2))


async def _deliver(
    context: _Thread, task_id: str, job_id: str, event: WebhookEvent, delivery_id: str
) -> float | None:
    """One attempt; the seconds until the next one, or None when there is none."""
    key = deliveries_key(job_id)
    found: list[bytes | None] = await context.redis.hmget(  # type: ignore[assignment]
        key, [f"{delivery_id}:task", f"{delivery_id}:body", delivery_id]
    )
    owner, body, stored = found
    if owner is None:
        claimed = await _claim(context, task_id, job_id, event, delivery_id)
        if claimed is None:
            return None
        body, delivery = claimed
    elif owner.decode() != task_id or body is None or stored is None:
        return None  # another task's, or over
    else:
        delivery = WebhookDelivery.model_validate_json(stored)
    if delivery.state != "pending":
        return None
    if event is WebhookEvent.OUTPUT and await _superseded(context, job_id, delivery_id):
        await _finish(context, key, delivery.model_copy(update={"state": "superseded"}))
        return None

    started = time.monotonic()
    status_code, error = await _post(context, json.loads(body)["webhook"], delivery_id, body, event)
    elapsed = time.monotonic() - started
    now = datetime.now(UTC)
    attempts = delivery.attempts + 1
    update: dict[str, Any] = {"attempts": attempts, "status_code": status_code, "error": error}
    retry_in = None
    if error is None:
        update |= {"state": "delivered", "delivered_at": now}
    else:
        retry_in = backoff(attempts)
        window = timedelta(seconds=min(settings.webhook_retry_window, settings.result_expires))
        if now + timedelta(seconds=retry_in) > delivery.created_at + window:
            update["state"], retry_in = "failed", None
    delivery = delivery.model_copy(update=update)
    outcome = "retry" if retry_in is not None else delivery.state
    await _finish(context, key, delivery, metrics=(outcome, elapsed))
    if event is WebhookEvent.OUTPUT and delivery.state == "delivered":
        sequence = int(delivery_id.rsplit(":", 1)[1])
        await context.redis.eval(_OUTPUT_DELIVERED, 1, key, OUTPUT_DELIVERED_FIELD, sequence)
    log = logger.info if error is None else logger.warning
    log(
        "job %s: webhook %s %s (attempt %d%s)",
        job_id,
        delivery_id,
        outcome,
        attempts,
        f": {error}" if error else "",
        extra={"job_id": job_id, "webhook_id": delivery_id, "status_code": status_code},
    )
    return retry_in


async def _claim(
    context: _Thread, task_id: str, job_id: str, event: WebhookEvent, delivery_id: str
) -> tuple[bytes, WebhookDelivery] | None:
    """Render the job and claim the delivery for this task: its body and state, or None
    when it is not due (the job expired, or has not ended for a completed delivery) or
    another task claimed it first."""
    job = await context.store.find(job_id)
    if job is None or not job.record.webhook:
        return None
    now = datetime.now(UTC)
    public = show(job, job.record.job_url or "", now)
    if event is WebhookEvent.COMPLETED and not public.status.finished:
        return None  # sent ahead, for a deadline it met: whatever ends the job sends it again
    body = public.model_dump_json().encode()
    delivery = WebhookDelivery(id=delivery_id, event=event.value, state="pending", created_at=now)
    claimed = await context.redis.eval(
        _CLAIM,
        1,
        deliveries_key(job_id),
        delivery_id,
        task_id,
        body,
        delivery.model_dump_json(),
        settings.result_expires,
    )
    return (body, delivery) if claimed else None


async def _superseded(context: _Thread, job_id: str, delivery_id: str) -> bool:
    """A later output delivery of the job got through already."""
    later = await context.redis.hget(deliveries_key(job_id), OUTPUT_DELIVERED_FIELD)
    return later is not None and int(later) > int(delivery_id.rsplit(":", 1)[1])


async def _post(
    context: _Thread, url: str, delivery_id: str, body: bytes, event: WebhookEvent
) -> tuple[int | None, str | None]:
    """POST the signed body to the first of the target's checked addresses that connects;
    its status code and, unless it is a 2xx, what went wrong."""
    key = settings.webhook_key
    if key is None:
        return None, "this deployment has no LLM_TASKS_WEBHOOK_SECRET"
    try:
        addresses = await resolve(url, allow_private=settings.webhook_allow_private_networks)
    except TargetRefused as refused:
        return None, str(refused)
    headers = signed_headers(key, delivery_id, int(time.time()), body)
    headers["webhook-event"] = event.value
    error = "no address"
    for address in addresses:
        target, host, extensions = pinned(url, address)
        try:
            response = await context.http.post(
                target, content=body, headers=headers | host, extensions=extensions
            )
        except httpx.ConnectError as failed:
            error = f"ConnectError: {failed}"
            continue  # the next address
        except httpx.HTTPError as failed:
            return None, f"{type(failed).__name__}: {failed}".rstrip(": ")
        if response.is_success:
            return response.status_code, None
        if response.is_redirect:
            where = response.headers.get("location", "?")
            return response.status_code, f"a redirect to {where}, not followed"
        return response.status_code, f"answered {response.status_code}"
    return None, error


async def _finish(
    context: _Thread,
    key: str,
    delivery: WebhookDelivery,
    metrics: tuple[str, float] | None = None,
) -> None:
    """Store the delivery's state (its body goes once nothing will send it again)."""
    async with context.redis.pipeline(transaction=True) as pipe:
        pipe.hset(key, delivery.id, delivery.model_dump_json())
        if delivery.state != "pending":
            pipe.hdel(key, f"{delivery.id}:body")
        pipe.expire(key, settings.result_expires)
        if metrics is not None:
            outcome, seconds = metrics
            fields = counter_fields(
                WEBHOOK_ATTEMPTS, {"event": delivery.event, "outcome": outcome}, 1
            ) | histogram_fields(WEBHOOK_LATENCY, {"event": delivery.event}, seconds)
            for field, amount in fields.items():
                pipe.hincrbyfloat(METRICS_KEY, field, amount)
        await pipe.execute()
