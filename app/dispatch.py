"""From an accepted job to Celery messages, and back out again when it is canceled.

The API never imports ``worker.tasks``: it sends signatures by their registered names
with the shared Celery configuration, so it carries no torch.
"""

import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from celery import Celery
from kombu.exceptions import OperationalError

from app import workflows
from app.errors import BrokerUnavailable
from contracts.records import JobRecord
from contracts.settings import CommonSettings
from contracts.webhooks import WebhookEvent, enqueue
from llm_tasks.job_schema import JobCreate
from llm_tasks.kinds import JobKind


def new_record(
    job: JobCreate,
    owner: str,
    idempotency_key: str | None = None,
    url_of: Callable[[str], str] | None = None,
) -> JobRecord:
    """The registry's record of an accepted job; ``url_of`` gives a job id's URL (which its
    webhook deliveries carry)."""
    now = datetime.now(UTC)
    kind = JobKind(job.kind)
    job_input = job.input.model_dump()
    job_id = str(uuid.uuid4())
    return JobRecord(
        id=job_id,
        kind=kind,
        owner=owner,
        input=job_input,
        priority=job.priority,
        created_at=now,
        not_before=now + timedelta(seconds=job.delay_seconds) if job.delay_seconds else None,
        expires_at=now + timedelta(seconds=job.expires_in) if job.expires_in else None,
        deadline=now + timedelta(seconds=job.cancel_after) if job.cancel_after else None,
        model=job.model,
        idempotency_key=idempotency_key,
        webhook=job.webhook,
        webhook_events=job.webhook_events,
        job_url=url_of(job_id) if url_of and job.webhook else None,
        steps=workflows.new_steps(kind, job_input),
    )


def send(celery: Celery, record: JobRecord, settings: CommonSettings) -> None:
    """Publish the job's canvas. Blocking (kombu): call it from a worker thread."""
    try:
        workflows.canvas(celery, record, settings).apply_async()
        if WebhookEvent.COMPLETED in record.webhook_events:
            # A job can end with no worker to see it: canceled at its deadline, or expired
            # while queued. Its completed delivery is then due at that moment (a delivery
            # of a job that has not ended by then is dropped: a worker sends it later).
            for moment in (record.deadline, record.expires_at):
                if moment is not None:
                    seconds = (moment - datetime.now(UTC)).total_seconds() + 1
                    enqueue(celery, record.id, WebhookEvent.COMPLETED, countdown=seconds)
    except OperationalError as error:
        raise BrokerUnavailable(f"The broker is unreachable: {error}") from error


def revoke(
    celery: Celery, record: JobRecord, metas: list[dict[str, Any] | None], *, ended: bool
) -> None:
    """Revoke every step at once; steps no worker has started are marked revoked right away.

    A running step is not terminated (that does not work in a threads pool): it sees the
    job's cancellation flag at its next token and records its own end. ``ended``: this
    cancel ended the job (then its completed webhook is due).
    """
    task_ids = [step.task_id for step in record.steps]
    try:
        celery.control.revoke(task_ids)
        for task_id, meta in zip(task_ids, metas, strict=True):
            if meta is None or meta.get("status") == "PENDING":
                celery.backend.mark_as_revoked(task_id, "canceled by the client")
        if ended and WebhookEvent.COMPLETED in record.webhook_events:
            enqueue(celery, record.id, WebhookEvent.COMPLETED)
    except OperationalError as error:
        raise BrokerUnavailable(f"The broker is unreachable: {error}") from error
