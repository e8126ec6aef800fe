"""From an accepted job to Celery messages: freeze each step's task id, then send by name.

The API never imports ``worker.tasks``: it sends signatures by their registered names
with the shared Celery configuration, so it carries no torch.
"""

import uuid
from datetime import UTC, datetime, timedelta

from celery import Celery
from kombu.exceptions import OperationalError

from app.errors import BrokerUnavailable
from contracts.celery_config import broker_priority
from contracts.jobs import JOB_ID_HEADER, GenerateJobCreate, JobRecord, StepRecord
from contracts.names import JobKind, TaskName

#: Bounded: a broker that is down answers 503 in about a second, not after minutes.
PUBLISH_RETRY_POLICY = {
    "max_retries": 2,
    "interval_start": 0,
    "interval_step": 0.2,
    "interval_max": 0.5,
}

JobCreate = GenerateJobCreate

_STEPS: dict[str, list[tuple[str, TaskName]]] = {
    JobKind.GENERATE: [("generate", TaskName.GENERATE)],
}


def new_record(job: JobCreate, owner: str) -> JobRecord:
    now = datetime.now(UTC)
    return JobRecord(
        id=str(uuid.uuid4()),
        kind=job.kind,
        owner=owner,
        input=job.input.model_dump(),
        priority=job.priority,
        created_at=now,
        not_before=now + timedelta(seconds=job.delay_seconds) if job.delay_seconds else None,
        expires_at=now + timedelta(seconds=job.expires_in) if job.expires_in else None,
        steps=[StepRecord(name=name, task_id=str(uuid.uuid4())) for name, _ in _STEPS[job.kind]],
    )


def send(celery: Celery, record: JobRecord) -> None:
    """Publish the job's first step. Blocking (kombu): call it from a worker thread."""
    (_, task_name), step = _STEPS[record.kind][0], record.steps[0]
    try:
        celery.send_task(
            task_name,
            kwargs=record.input,
            task_id=step.task_id,
            priority=broker_priority(record.priority, celery.conf.broker_url),
            eta=record.not_before,
            expires=record.expires_at,
            headers={JOB_ID_HEADER: record.id},
            retry=True,
            retry_policy=PUBLISH_RETRY_POLICY,
        )
    except OperationalError as error:
        raise BrokerUnavailable(f"The broker is unreachable: {error}") from error
