"""From Celery task states to job statuses, and from a job's records to what clients see.

Celery's result backend keeps one meta document per task; the job registry keeps what
Celery does not know (kind, owner, steps, start time, attempts). This module joins the
two. The order of checks matters: a FAILURE is *ready* too, so failure is decided first
(the guide reported failed tasks as completed with the exception as their result).
"""

from datetime import datetime
from typing import Any

from contracts.jobs import (
    JobError,
    JobPublic,
    JobRecord,
    JobStatus,
    JobUrls,
    Progress,
    StepPublic,
)
from contracts.schemas import GenerateOutput

CELERY_STATES: dict[str, JobStatus] = {
    "PENDING": JobStatus.QUEUED,
    "RECEIVED": JobStatus.QUEUED,
    "STARTED": JobStatus.RUNNING,
    "PROGRESS": JobStatus.RUNNING,
    "RETRY": JobStatus.RUNNING,
    "SUCCESS": JobStatus.SUCCEEDED,
    "FAILURE": JobStatus.FAILED,
    "REJECTED": JobStatus.FAILED,
    "REVOKED": JobStatus.CANCELED,
}

TaskMeta = dict[str, Any]


def step_status(meta: TaskMeta | None) -> JobStatus:
    """A step without meta has not started: Celery writes nothing until a worker takes it."""
    if meta is None:
        return JobStatus.QUEUED
    return CELERY_STATES.get(str(meta.get("status")), JobStatus.QUEUED)


def job_status(steps: list[JobStatus]) -> JobStatus:
    for final in (JobStatus.FAILED, JobStatus.CANCELED, JobStatus.EXPIRED):
        if final in steps:
            return final
    if all(status is JobStatus.SUCCEEDED for status in steps):
        return JobStatus.SUCCEEDED
    if any(status in {JobStatus.RUNNING, JobStatus.SUCCEEDED} for status in steps):
        return JobStatus.RUNNING
    return JobStatus.QUEUED


def task_error(meta: TaskMeta) -> JobError:
    """The exception a task raised, as Celery's JSON result backend stores it."""
    result = meta.get("result")
    if isinstance(result, dict) and "exc_type" in result:
        message = result.get("exc_message")
        if isinstance(message, list | tuple):
            message = " ".join(str(part) for part in message)
        return JobError(type=str(result["exc_type"]), message=str(message or ""))
    return JobError(type="TaskFailed", message=str(result or meta.get("status")))


def task_progress(meta: TaskMeta | None) -> Progress | None:
    if meta is None or meta.get("status") != "PROGRESS" or not isinstance(meta.get("result"), dict):
        return None
    info = meta["result"]
    if "current" not in info or "total" not in info:
        return None
    return Progress(current=info["current"], total=info["total"], message=info.get("message"))


def _done_at(meta: TaskMeta | None) -> datetime | None:
    value = meta.get("date_done") if meta else None
    return datetime.fromisoformat(value) if isinstance(value, str) else None


def build_job(
    record: JobRecord,
    metas: list[TaskMeta | None],
    *,
    started_at: datetime | None,
    attempts: dict[str, int],
    urls: JobUrls,
) -> JobPublic:
    statuses = [step_status(meta) for meta in metas]
    status = job_status(statuses)
    steps = [
        StepPublic(name=step.name, status=step_status(meta), progress=task_progress(meta))
        for step, meta in zip(record.steps, metas, strict=True)
    ]
    current = next(
        (i for i, s in enumerate(statuses) if s is not JobStatus.SUCCEEDED), len(statuses) - 1
    )
    output = error = finished_at = None
    if status is JobStatus.SUCCEEDED:
        final = metas[-1]
        assert final is not None
        output = GenerateOutput.model_validate(final["result"])
        finished_at = max(filter(None, map(_done_at, metas)), default=None)
    elif status is JobStatus.FAILED:
        failed_meta = metas[statuses.index(JobStatus.FAILED)]
        assert failed_meta is not None
        error = task_error(failed_meta)
        finished_at = _done_at(failed_meta)
    elif status.finished:
        finished_at = max(filter(None, map(_done_at, metas)), default=None)
    return JobPublic(
        id=record.id,
        kind=record.kind,
        status=status,
        priority=record.priority,
        created_at=record.created_at,
        started_at=started_at,
        finished_at=finished_at,
        progress=task_progress(metas[current]),
        steps=steps,
        output=output,
        error=error,
        attempts=attempts.get(record.steps[current].task_id, 0),
        urls=urls,
    )
