"""Webhooks: what the API, the model workers and the webhooks worker agree on.

A job with a ``webhook`` gets a POST of itself at the events its ``webhook_events_filter``
names. The API and the model workers only *enqueue* a delivery (a Celery task on the
``webhooks`` queue, sent by name, carrying the job id and the event); the webhooks worker
(:mod:`app.webhooks.worker`) renders the job as it is then, signs it and sends it.

Each event has exactly one webhook-id, whoever enqueues it and however often — the job's
end may be seen by a worker and by a cancel at once —: ``<job id>:start``,
``<job id>:completed``, and ``<job id>:output:<n>`` for the job's n-th output delivery. The
webhooks worker sends each id from one task only (the first that claims it), so a
receiver that dedupes on ``webhook-id`` sees every event once.
"""

from enum import StrEnum
from typing import Protocol

from contracts.names import TaskName


class WebhookEvent(StrEnum):
    START = "start"  # the job's first step started
    OUTPUT = "output"  # generated text came (at most once per OUTPUT_INTERVAL, the latest)
    COMPLETED = "completed"  # the job ended: succeeded, failed, canceled or expired


#: The job's hash field listing the events it has a webhook for (comma-separated), for the
#: worker's scripts; absent on a job without a webhook.
WEBHOOK_EVENTS_FIELD = "webhook_events"
#: Output deliveries of one job are at least this many seconds apart.
OUTPUT_INTERVAL = 0.5
#: The deliveries hash's counter of output deliveries.
OUTPUT_SEQUENCE_FIELD = "output_sequence"


def deliveries_key(job_id: str) -> str:
    """The job's deliveries: one field per webhook-id (its state, as JSON), and the
    claim and the body of each while it is being delivered."""
    return f"llm_tasks:webhooks:{job_id}"


def output_slot_key(job_id: str) -> str:
    """Set while an output delivery of the job waits for its slot (the throttle)."""
    return f"llm_tasks:webhook-output:{job_id}"


def webhook_id(job_id: str, event: WebhookEvent, sequence: int | None = None) -> str:
    return f"{job_id}:{event.value}" if sequence is None else f"{job_id}:{event.value}:{sequence}"


def parse_events(value: bytes | str | None) -> frozenset[WebhookEvent]:
    """The events of :data:`WEBHOOK_EVENTS_FIELD` (none for a job without a webhook)."""
    text = value.decode() if isinstance(value, bytes) else value or ""
    return frozenset(WebhookEvent(event) for event in text.split(",") if event)


class TaskSender(Protocol):
    def send_task(self, name: str, args: list[str], countdown: float | None = None) -> object: ...


def enqueue(
    celery: TaskSender,
    job_id: str,
    event: WebhookEvent,
    *,
    sequence: int | None = None,
    countdown: float = 0.0,
) -> None:
    """Ask the webhooks worker to deliver ``event`` of the job (routed to its queue)."""
    celery.send_task(
        TaskName.DELIVER_WEBHOOK.value,
        args=[job_id, event.value, webhook_id(job_id, event, sequence)],
        countdown=countdown or None,
    )


# The job's next output delivery, if it is due (a Lua script: one round trip, atomic).
# A delivery goes out OUTPUT_INTERVAL after the first output it covers, with the job as it
# is then (the latest text); outputs until then are covered by it, and the next output
# after it opens the next slot. The job's last output
# (ARGV[2] = '1', when the job ends) always gets a delivery, one interval after any still
# waiting, so that the last output delivery has the final text; a job that never had an
# output delivery gets none at its end. Returns {sequence, delay in ms}, or nothing.
OUTPUT_SLOT = """
local pending = redis.call('PTTL', KEYS[1])
local interval = tonumber(ARGV[1])
local delay = interval
if ARGV[2] == '1' then
  if not redis.call('HGET', KEYS[2], ARGV[3]) then return false end
  if pending > 0 then delay = pending + interval else delay = 0 end
elseif pending > 0 or pending == -1 then
  return false
end
redis.call('SET', KEYS[1], '1', 'PX', math.max(delay, 1))
local sequence = redis.call('HINCRBY', KEYS[2], ARGV[3], 1)
redis.call('EXPIRE', KEYS[2], ARGV[4])
return {sequence, delay}
"""
