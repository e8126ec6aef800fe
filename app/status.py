"""From Celery task states to job statuses, and from a job's records to what clients see.

Celery's result backend keeps one meta document per task; the job registry keeps what
Celery does not know (kind, owner, steps, start time, attempts, cancellation). This module
joins the two. The order of checks matters: a FAILURE is *ready* too, so failure is
decided before success (the Celery + transformers guide this project grew from reported
failed tasks as completed, with the exception as their result).
"""

from datetime import datetime
from typing import Any

from app.store import StoredJob
from app.workflows import output_of, progress_unit, stages_of
from contracts.records import JobRecord
from llm_tasks.job_schema import (
    JobError,
    JobMetrics,
    JobPublic,
    JobStatus,
    JobUrls,
    Progress,
    StepPublic,
)

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
#: Celery's reason when a worker drops a message whose ``expires`` has passed.
EXPIRED_REASON = "expired"

TaskMeta = dict[str, Any]


def _exception(meta: TaskMeta) -> tuple[str, str] | None:
    """The exception a task raised (or was revoked with), as the JSON result backend keeps it."""
    result = meta.get("result")
    if not isinstance(result, dict) or "exc_type" not in result:
        return None
    message = result.get("exc_message")
    if isinstance(message, list | tuple):
        message = " ".join(str(part) for part in message)
    return str(result["exc_type"]), str(message or "")


def step_status(meta: TaskMeta | None) -> JobStatus:
    """A step without meta has not started: Celery writes nothing until a worker takes it."""
    if meta is None:
        return JobStatus.QUEUED
    status = CELERY_STATES.get(str(meta.get("status")), JobStatus.QUEUED)
    if status is JobStatus.CANCELED and (_exception(meta) or ("", ""))[1] == EXPIRED_REASON:
        return JobStatus.EXPIRED
    return status


def job_status(steps: list[JobStatus]) -> JobStatus:
    if JobStatus.FAILED in steps:
        return JobStatus.FAILED
    for ended in (JobStatus.EXPIRED, JobStatus.CANCELED):
        if ended in steps:
            return ended
    if all(status is JobStatus.SUCCEEDED for status in steps):
        return JobStatus.SUCCEEDED
    if any(status in {JobStatus.RUNNING, JobStatus.SUCCEEDED} for status in steps):
        return JobStatus.RUNNING
    return JobStatus.QUEUED


def task_error(meta: TaskMeta) -> JobError:
    exception = _exception(meta)
    if exception is None:
        return JobError(type="TaskFailed", message=str(meta.get("result") or meta.get("status")))
    return JobError(type=exception[0], message=exception[1])


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


def _missed_deadline(
    record: JobRecord,
    status: JobStatus,
    finished_at: datetime | None,
    canceled_at: datetime | None,
    now: datetime,
) -> bool:
    deadline = record.deadline
    if deadline is None or now < deadline or status in {JobStatus.FAILED, JobStatus.EXPIRED}:
        return False
    if canceled_at is not None and canceled_at < deadline:
        return False  # the client canceled it first
    return (
        not status.finished
        or status is JobStatus.CANCELED
        or (finished_at is not None and finished_at > deadline)
    )


def show(job: StoredJob, job_url: str, now: datetime) -> JobPublic:
    """The job as clients see it (GET, the event stream and the webhooks alike)."""
    public = build_job(
        job.record,
        job.metas,
        started_at=job.started_at,
        attempts=job.attempts,
        canceled_at=job.canceled_at,
        now=now,
        urls=JobUrls(self=job_url, events=f"{job_url}/events"),
        first_token_at=job.first_token_at,
    )
    if job.record.webhook:
        public.webhook = job.record.webhook
        public.webhook_events_filter = job.record.webhook_events
        public.webhook_deliveries = list(job.deliveries)
    return public


def build_job(
    record: JobRecord,
    metas: list[TaskMeta | None],
    *,
    started_at: datetime | None,
    attempts: dict[str, int],
    canceled_at: datetime | None,
    now: datetime,
    urls: JobUrls,
    first_token_at: datetime | None = None,
) -> JobPublic:
    statuses = [step_status(meta) for meta in metas]
    never_started = started_at is None and all(s is JobStatus.QUEUED for s in statuses)
    if canceled_at is not None and JobStatus.FAILED not in statuses:
        # The client's word is final: steps that had not finished end canceled with it.
        statuses = [s if s is JobStatus.SUCCEEDED else JobStatus.CANCELED for s in statuses]
    elif never_started and record.expires_at is not None and now >= record.expires_at:
        statuses = [JobStatus.EXPIRED] * len(statuses)
    status = job_status(statuses)
    if status is JobStatus.FAILED:
        # Steps a failure left unstarted never run, and read as they will end: the later
        # stages fail (Celery fails the rest of a chain, and a chord's body, with the
        # error), and the workers skip the failed step's siblings (canceled).
        stages = stages_of(record.kind, record.input)
        failed_stage = min(
            stage for stage, s in zip(stages, statuses, strict=True) if s is JobStatus.FAILED
        )
        statuses = [
            (JobStatus.FAILED if stage > failed_stage else JobStatus.CANCELED)
            if s is JobStatus.QUEUED
            else s
            for stage, s in zip(stages, statuses, strict=True)
        ]

    steps = [
        StepPublic(name=step.name, status=state, progress=task_progress(meta))
        for step, state, meta in zip(record.steps, statuses, metas, strict=True)
    ]
    current = next(
        (i for i, s in enumerate(statuses) if s is not JobStatus.SUCCEEDED), len(statuses) - 1
    )
    # A single step reports its own progress (chunks, tokens) while it runs; otherwise the
    # job counts its finished steps ("3 of 5 variations done").
    progress = steps[0].progress if len(steps) == 1 else None
    if progress is None:
        done = statuses.count(JobStatus.SUCCEEDED)
        unit = progress_unit(record.kind)
        progress = Progress(
            current=done, total=len(steps), message=f"{done} of {len(steps)} {unit} done"
        )

    output = error = None
    finished_at = max(filter(None, map(_done_at, metas)), default=None) if status.finished else None
    if status is JobStatus.SUCCEEDED:
        output = output_of(record.kind, record.input, [meta["result"] for meta in metas if meta])
    elif status is JobStatus.FAILED:
        # The first step, in the job's order, that failed by itself (whatever the order
        # of the others: queued, running, canceled by the failure, or succeeded).
        failed = next(m for m in metas if m is not None and step_status(m) is JobStatus.FAILED)
        error = task_error(failed)
        finished_at = _done_at(failed)
    elif status is JobStatus.CANCELED:
        revoked = [_exception(m) for m in metas if m and step_status(m) is JobStatus.CANCELED]
        reason = next((exc[1] for exc in revoked if exc and exc[1]), "canceled by the client")
        error = JobError(type="canceled", message=reason)
        finished_at = max(filter(None, [finished_at, canceled_at]))
    elif status is JobStatus.EXPIRED:
        error = JobError(type="expired", message="not started before it expired")
        finished_at = finished_at or record.expires_at
    if _missed_deadline(record, status, finished_at, canceled_at, now):
        # Not finished by its deadline: canceled, wherever it was (a result that came
        # later does not count); the workers stop what still runs at its next token.
        assert record.deadline is not None
        status, output, finished_at = JobStatus.CANCELED, None, record.deadline
        seconds = round((record.deadline - record.created_at).total_seconds())
        error = JobError(type="deadline", message=f"not finished within cancel_after ({seconds} s)")
        steps = [
            step if step.status.finished else step.model_copy(update={"status": status})
            for step in steps
        ]
    return JobPublic(
        id=record.id,
        kind=record.kind,
        status=status,
        priority=record.priority,
        created_at=record.created_at,
        started_at=started_at,
        finished_at=finished_at,
        progress=progress,
        steps=steps,
        output=output,
        error=error,
        attempts=attempts.get(record.steps[current].task_id, 0),
        idempotency_key=record.idempotency_key,
        metrics=job_metrics(
            record, metas, status, started_at, finished_at, first_token_at, output is not None
        ),
        urls=urls,
    )


def job_metrics(
    record: JobRecord,
    metas: list[TaskMeta | None],
    status: JobStatus,
    started_at: datetime | None,
    finished_at: datetime | None,
    first_token_at: datetime | None,
    has_output: bool,
) -> JobMetrics:
    """The job's times from the registry's stamps, its tokens from its steps' results."""
    queue = (started_at - record.created_at).total_seconds() if started_at else None
    run = (
        (finished_at - started_at).total_seconds()
        if started_at and finished_at and status.finished
        else None
    )
    first = (first_token_at - started_at).total_seconds() if started_at and first_token_at else None
    counts = [
        meta["result"]["tokens"]
        for meta in metas
        if meta
        and meta.get("status") == "SUCCESS"
        and isinstance(meta.get("result"), dict)
        and isinstance(meta["result"].get("tokens"), int)
    ]
    tokens = sum(counts) if counts and has_output else None
    return JobMetrics(
        queue_seconds=_rounded(queue),
        run_seconds=_rounded(run),
        time_to_first_token_seconds=_rounded(first),
        tokens=tokens,
        tokens_per_second=_rounded(tokens / run) if tokens is not None and run else None,
    )


def _rounded(seconds: float | None) -> float | None:
    return None if seconds is None else round(max(0.0, seconds), 4)
