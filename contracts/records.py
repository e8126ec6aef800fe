"""The job registry in Redis: what it keeps of an accepted job, and its keys and fields,
shared by the API (writes records, flags cancellation) and the workers (stamp starts and
attempts, read the flags)."""

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from llm_tasks.job_schema import WebhookEventName
from llm_tasks.kinds import JobKind


class StepRecord(BaseModel):
    name: str
    task_id: str


class JobRecord(BaseModel):
    """What the registry keeps of an accepted job (immutable after submission)."""

    id: str
    kind: JobKind
    owner: str
    input: dict[str, Any]
    priority: int
    created_at: datetime
    not_before: datetime | None = None
    expires_at: datetime | None = None
    deadline: datetime | None = None
    model: str | None = None
    idempotency_key: str | None = None
    webhook: str | None = None
    webhook_events: list[WebhookEventName] = Field(default_factory=list)
    #: Where the job was read at submission (webhook deliveries carry its urls).
    job_url: str | None = None
    steps: list[StepRecord]


JOB_KEY_PREFIX = "llm_tasks:job:"


def job_key(job_id: str) -> str:
    return f"{JOB_KEY_PREFIX}{job_id}"


def owner_index_key(owner: str) -> str:
    return f"llm_tasks:owner:{owner}:jobs"


def task_key(task_id: str) -> str:
    """Which job a Celery task belongs to, for the worker that runs it."""
    return f"llm_tasks:task:{task_id}"


def lease_key(task_id: str) -> str:
    """The lease of a running step: which worker runs it now (see worker.leases)."""
    return f"llm_tasks:lease:{task_id}"


def attempts_field(task_id: str) -> str:
    return f"attempts:{task_id}"


STARTED_AT_FIELD = "started_at"
#: Kept beside the record so that the worker's Lua scripts can read them without JSON.
KIND_FIELD = "kind"
CREATED_FIELD = "created"  # epoch seconds
STEPS_FIELD = "steps"  # how many steps the job has
STEPS_DONE_FIELD = "steps_done"  # how many of them succeeded
#: How the job ended, set once by whoever ends it first (a worker, or a cancel).
ENDED_FIELD = "ended"
CANCELED_AT_FIELD = "canceled_at"
#: The job's cancel_after deadline, in epoch seconds (for the worker's scripts).
DEADLINE_FIELD = "deadline"
#: When the job's first token was generated (ISO time), stamped once by a worker.
FIRST_TOKEN_FIELD = "first_token_at"
RECORD_FIELD = "record"
