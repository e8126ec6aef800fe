"""What every task does around its work: its lease, job bookkeeping, cancellation and
retries.

:class:`JobTask` is the base class of all tasks. Before a task runs it takes the step's
lease (:mod:`worker.leases`: a delivery of a step another live worker runs is deferred,
not run), stamps the job registry (start time, attempts) and checks whether the job was
canceled or failed in another step; while it runs, :class:`CancelToken` tells a
generation to stop at its next token; transient errors are retried with exponential
backoff and jitter, bad input fails at once. Each state the step stores carries its
attempt, so that event streams can tell a retry's text from the last one's.
"""

import logging
import os
import random
import socket
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

import redis
import torch
from celery import Task, states
from celery.exceptions import Ignore
from celery.worker import state as worker_state

from contracts.celery_config import client_priority
from contracts.metrics import (
    JOB_RUN,
    JOB_WAIT,
    JOBS_FINISHED,
    STEP_RETRIES,
    STEPS_FINISHED,
    TIME_TO_FIRST_TOKEN,
)
from contracts.records import (
    CANCELED_AT_FIELD,
    CREATED_FIELD,
    DEADLINE_FIELD,
    ENDED_FIELD,
    FIRST_TOKEN_FIELD,
    JOB_KEY_PREFIX,
    KIND_FIELD,
    STARTED_AT_FIELD,
    STEPS_DONE_FIELD,
    STEPS_FIELD,
    job_key,
    task_key,
)
from contracts.webhooks import (
    OUTPUT_INTERVAL,
    OUTPUT_SEQUENCE_FIELD,
    OUTPUT_SLOT,
    WEBHOOK_EVENTS_FIELD,
    WebhookEvent,
    deliveries_key,
    enqueue,
    output_slot_key,
    parse_events,
)
from llm_tasks.kinds import DEFAULT_PRIORITY
from worker.celery_app import app as celery_app
from worker.config import get_settings
from worker.errors import Canceled, InvalidInput, TransientError
from worker.leases import (
    CANCELED_BY_CLIENT,
    DEADLINE,
    STEP_FAILED,
    LeaseHeld,
    RunningStep,
    StepWatch,
)
from worker.metrics import start_flushing, tally
from worker.results import ResultBackend

logger = logging.getLogger(__name__)

#: Errors worth another try. Anything else (bugs, bad input) fails the job at once.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    TransientError,
    torch.cuda.OutOfMemoryError,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
)

# One round trip when a step starts: which job it belongs to, whether the job was
# canceled, failed in another step or is past its deadline (then nothing else is
# touched), and if not the
# start stamp and one more attempt; then whether this is the job's very first start,
# its kind, its creation time (for the wait histogram), this attempt's number, the
# job's deadline and the events its webhook wants.
# Touches nothing when the job is unknown (a plain Celery call) or expired, so no stray
# record is resurrected.
_START_STEP = """
local job_id = redis.call('GET', KEYS[1])
if not job_id then return {'', '', 0, '', '', 0, '', ''} end
local key = ARGV[1] .. job_id
if redis.call('EXISTS', key) == 0 then return {'', '', 0, '', '', 0, '', ''} end
if redis.call('HEXISTS', key, ARGV[2]) == 1 then
  return {job_id, 'canceled', 0, '', '', 0, '', ''}
end
if redis.call('HGET', key, ARGV[8]) == 'failed' then
  return {job_id, 'failed', 0, '', '', 0, '', ''}
end
local deadline = redis.call('HGET', key, ARGV[9]) or ''
if deadline ~= '' and tonumber(ARGV[10]) >= tonumber(deadline) then
  return {job_id, 'deadline', 0, '', '', 0, deadline, ''}
end
local first = redis.call('HSETNX', key, ARGV[3], ARGV[4])
local attempt = redis.call('HINCRBY', key, 'attempts:' .. ARGV[5], 1)
local kind = redis.call('HGET', key, ARGV[6]) or ''
local created = redis.call('HGET', key, ARGV[7]) or ''
local webhooks = redis.call('HGET', key, ARGV[11]) or ''
return {job_id, '', first, kind, created, attempt, deadline, webhooks}
"""

# When a step ends: a success counts towards the job's steps and ends the job when it
# is the last; a failure (or expiry) ends the job at once; past the job's deadline it
# ends canceled. Only the first end of a job counts (a cancel may have come first).
# Returns the job's id, kind, start time, outcome and webhook events when this call ended
# it, else nothing.
_END_STEP = """
local job_id = redis.call('GET', KEYS[1])
if not job_id then return false end
local key = ARGV[1] .. job_id
if redis.call('EXISTS', key) == 0 then return false end
local outcome = ARGV[2]
if outcome == 'succeeded' then
  local done = redis.call('HINCRBY', key, ARGV[3], 1)
  local total = tonumber(redis.call('HGET', key, ARGV[4]) or '0')
  if done < total then return false end
end
local deadline = redis.call('HGET', key, ARGV[8])
if deadline and tonumber(ARGV[9]) >= tonumber(deadline) then outcome = 'canceled' end
if redis.call('HSETNX', key, ARGV[5], outcome) == 0 then return false end
local kind = redis.call('HGET', key, ARGV[6]) or ''
local started = redis.call('HGET', key, ARGV[7]) or ''
return {job_id, kind, started, outcome, redis.call('HGET', key, ARGV[10]) or ''}
"""


@lru_cache
def registry_redis() -> redis.Redis:
    return redis.Redis.from_url(
        get_settings().redis_url, socket_connect_timeout=5, socket_timeout=5
    )


def backoff_seconds(retries: int) -> float:
    """Exponential backoff with jitter: half the capped delay, plus up to as much again."""
    settings = get_settings()
    cap = min(settings.retry_backoff_max, settings.retry_backoff * 2**retries)
    return float(cap / 2 + random.uniform(0, cap / 2))


def free_accelerator_memory() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


@lru_cache
def step_watch() -> StepWatch:
    """This process's leases and job flags (see :mod:`worker.leases`)."""
    settings = get_settings()
    return StepWatch(
        registry_redis,
        owner=f"{socket.gethostname()}/{os.getpid()}",
        lease_seconds=settings.lease_ttl,
        interval=min(settings.cancel_check_interval, settings.lease_ttl / 3),
    )


class CancelToken:
    """Says whether the step should stop: revoked on this worker, its job canceled or
    failed in another step, or its lease lost to another worker.

    Cheap to call once per token, and never waits on Redis: the worker's revoked set is
    in memory, and the job's flags are read by :class:`~worker.leases.StepWatch`'s thread.
    """

    def __init__(
        self, task_id: str, step: RunningStep | None, deadline: float | None = None
    ) -> None:
        self._task_id = task_id
        self._step = step
        self._deadline = deadline

    def __call__(self) -> bool:
        step = self._step
        return (
            self._task_id in worker_state.revoked
            or (step is not None and (step.lost or step.stop_reason is not None))
            or self.past_deadline()
        )

    def past_deadline(self) -> bool:
        """The job's ``cancel_after`` deadline has come."""
        return self._deadline is not None and time.time() >= self._deadline


class ProgressPublisher:
    """Writes progress updates to the result backend from a thread of its own, so that
    the inference thread (which reports for every row of a batch) never waits on Redis.

    Per task only the latest update waits to be written (an older one is replaced), and
    a task's updates are written in order. :meth:`settle` is called before the task's
    final state is stored: it drops what is still waiting and waits out a write in
    flight, so that no progress lands after the end.
    """

    def __init__(self) -> None:
        self._pending: dict[str, Callable[[], None]] = {}
        self._writing: str | None = None
        self._changed = threading.Condition()
        threading.Thread(target=self._write_forever, name="progress", daemon=True).start()

    def publish(self, task_id: str, write: Callable[[], None]) -> None:
        with self._changed:
            self._pending[task_id] = write
            self._changed.notify_all()

    def settle(self, task_id: str) -> None:
        with self._changed:
            self._pending.pop(task_id, None)
            while self._writing == task_id:
                self._changed.wait()

    def flush(self, key: str, timeout: float = 5.0) -> None:
        """Wait (a bounded while) until what waits under ``key`` is written."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while key in self._pending or self._writing == key:
                if not self._changed.wait(max(0.0, deadline - time.monotonic())):
                    return

    def _write_forever(self) -> None:
        while True:
            with self._changed:
                while not self._pending:
                    self._changed.wait()
                task_id = next(iter(self._pending))
                write = self._pending.pop(task_id)
                self._writing = task_id
            try:
                write()
            except Exception:
                logger.exception("task %s: a progress update was not written", task_id)
            finally:
                with self._changed:
                    self._writing = None
                    self._changed.notify_all()


@lru_cache
def progress_publisher() -> ProgressPublisher:
    return ProgressPublisher()


class ProgressReporter:
    """Publishes a step's progress, with its text so far, for live events.

    At most once per ``progress_interval`` unless forced, since each update is a Redis
    write (made by :class:`ProgressPublisher`). Bound to the step's task id, so that the
    batcher's thread may call it too.
    """

    def __init__(
        self,
        task: Task,
        task_id: str,
        attempt: int,
        job_id: str | None = None,
        webhooks: frozenset[WebhookEvent] = frozenset(),
    ) -> None:
        self._task = task
        self._task_id = task_id
        self._attempt = attempt
        self._job_id = job_id
        self._output_webhook = job_id is not None and WebhookEvent.OUTPUT in webhooks
        self._interval = get_settings().progress_interval
        self._published_at: float | None = None
        self._first_token_seen = False

    def first_token(self) -> None:
        """A generation of this step has its first token: the job's first, unless an
        earlier step had one (stamped once, by the publisher's thread)."""
        if self._first_token_seen or self._job_id is None:
            return
        self._first_token_seen = True
        job_id, at = self._job_id, datetime.now(UTC)
        progress_publisher().publish(
            first_token_key(self._task_id), lambda: stamp_first_token(job_id, at)
        )

    def due(self) -> bool:
        return self._published_at is None or time.monotonic() - self._published_at >= self._interval

    def report(
        self,
        *,
        current: int,
        total: int,
        message: str,
        text: str | None = None,
        force: bool = False,
    ) -> None:
        if not force and not self.due():
            return
        self._published_at = time.monotonic()
        meta: dict[str, Any] = {"current": current, "total": total, "message": message}
        if text is not None:
            meta["text"] = text
        backend, task_id, attempt = self._task.backend, self._task_id, self._attempt
        job_id = self._job_id if self._output_webhook and text else None

        def write() -> None:
            backend.store_result(task_id, meta, "PROGRESS", attempt=attempt)
            if job_id is not None:
                send_output_webhook(job_id)

        progress_publisher().publish(task_id, write)


class JobTask(Task):  # type: ignore[misc]
    """Base of every task of the service."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.request.running_step = step = None
        try:
            step = self._take_lease()
            if self._store_started():
                raise Ignore()
            job_id, stop_reason, attempt = self._start_step()
            if step is not None:
                step_watch().watch_job(step, job_id)
            self.request.job_id = job_id
            self.request.attempt = attempt
            self.request.started = time.monotonic()
            self.request.cancel_token = CancelToken(
                self.request.id, step, getattr(self.request, "deadline", None)
            )
            self.request.progress = ProgressReporter(
                self,
                self.request.id,
                attempt,
                job_id,
                getattr(self.request, "webhooks", frozenset()),
            )
            if stop_reason or self.request.cancel_token():
                self._stop_canceled(f"not started: {stop_reason or CANCELED_BY_CLIENT}")
            try:
                return super().__call__(*args, **kwargs)
            finally:
                # Before the final state is stored: no progress may land after it, and
                # the first token's stamp is in (a reader of the end sees it).
                progress_publisher().settle(self.request.id)
                progress_publisher().flush(first_token_key(self.request.id))
        except Canceled as canceled:
            if step is not None and step.lost:
                logger.error(
                    "task %s: stopped without a result, another worker runs it now",
                    self.request.id,
                )
                raise Ignore() from None
            reason = step.stop_reason if step is not None else None
            if self.request.cancel_token.past_deadline():
                reason = DEADLINE
            if reason and reason != CANCELED_BY_CLIENT:
                self._stop_canceled(f"{canceled}: {reason}")
            self._stop_canceled(str(canceled))
        except InvalidInput:
            raise
        except TRANSIENT_ERRORS as error:
            if isinstance(error, torch.cuda.OutOfMemoryError):
                free_accelerator_memory()
            countdown = backoff_seconds(self.request.retries)
            logger.warning(
                "task %s: %s: %s; retry %d in %.1fs",
                self.request.id,
                type(error).__name__,
                error,
                self.request.retries + 1,
                countdown,
            )
            raise self.retry(
                exc=error, countdown=countdown, max_retries=get_settings().max_retries
            ) from error

    def _take_lease(self) -> RunningStep | None:
        """Hold the step's lease while it runs (released once its end is stored, by
        :func:`release_lease`). A delivery of a step that another live worker runs now
        is sent again for later and acknowledged, not run: if that worker dies, its lease
        lapses and the later copy runs the step; if it finishes, the copy finds the step
        ended and does nothing."""
        if self.request.is_eager or not self.request.id:
            return None
        try:
            step = step_watch().acquire(self.request.id)
        except LeaseHeld as held:
            later = get_settings().lease_ttl
            logger.warning(
                "task %s was delivered while %s runs it: sent again in %.0fs, not run now",
                self.request.id,
                held.holder,
                later,
                extra={"task_id": self.request.id},
            )
            self.signature_from_request(self.request, countdown=later).apply_async()
            raise Ignore() from None
        self.request.running_step = step
        return step

    @property
    def progress(self) -> "ProgressReporter":
        """The running step's progress reporter (read it in the task's own thread)."""
        reporter: ProgressReporter = self.request.progress
        return reporter

    @property
    def priority(self) -> int:
        """The job's priority (9 most urgent), read from the message's."""
        delivered = (self.request.delivery_info or {}).get("priority")
        if delivered is None:
            return DEFAULT_PRIORITY
        return client_priority(int(delivered), get_settings().effective_broker_url)

    @property
    def should_stop(self) -> CancelToken:
        """The running step's cancellation check, for a generation's stopping criterion."""
        token: CancelToken = self.request.cancel_token
        return token

    def _store_started(self) -> bool:
        """Store the step's STARTED state; true (and nothing stored) when the step already
        ended: a message delivered again (a worker died before acknowledging it, or the
        visibility timeout passed) whose step ended must not run twice."""
        if self.request.is_eager or not self.request.id:
            return False
        task_id, started = self.request.id, {"pid": os.getpid(), "hostname": self.request.hostname}
        if isinstance(self.backend, ResultBackend):
            ended = self.backend.store_started(
                task_id, self.request, started, parent_id=self.request.parent_id
            )
        else:
            ended = self.backend.get_task_meta(task_id).get("status")
            if ended not in states.READY_STATES:
                self.backend.store_result(task_id, started, states.STARTED, request=self.request)
                ended = None
        if ended == states.REVOKED:
            logger.info("task %s was canceled before it started: not run", task_id)
        elif ended:
            logger.warning(
                "task %s was delivered again but already ended %s: not run again", task_id, ended
            )
        return bool(ended)

    def on_success(self, retval: Any, task_id: str, args: Any, kwargs: Any) -> None:
        self._end_step("succeeded", "SUCCESS")

    def on_failure(
        self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any
    ) -> None:
        self._end_step("failed", "FAILURE", error=f"{type(exc).__name__}: {exc}")

    def on_retry(
        self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any
    ) -> None:
        tally.inc(STEP_RETRIES, {"task": self.name})

    def _start_step(self) -> tuple[str | None, str, int]:
        """Stamp the job's start and attempts; returns the job id, why the step must not
        run ('' when it may) and this attempt's number."""
        if self.request.is_eager or not self.request.id:
            return None, "", self.request.retries + 1
        start_flushing()
        now = datetime.now(UTC)
        try:
            found = registry_redis().eval(
                _START_STEP,
                1,
                task_key(self.request.id),
                JOB_KEY_PREFIX,
                CANCELED_AT_FIELD,
                STARTED_AT_FIELD,
                now.isoformat(),
                self.request.id,
                KIND_FIELD,
                CREATED_FIELD,
                ENDED_FIELD,
                DEADLINE_FIELD,
                now.timestamp(),
                WEBHOOK_EVENTS_FIELD,
            )
        except redis.RedisError:
            logger.exception("task %s: could not read its job", self.request.id)
            return None, "", self.request.retries + 1
        job_id, stop_reason, first, kind, created, attempt, deadline, webhooks = found
        job = job_id.decode() if job_id else None
        self.request.webhooks = parse_events(webhooks)
        self.request.deadline = float(deadline) if deadline else None
        if stop_reason:
            reason = {
                b"canceled": CANCELED_BY_CLIENT,
                b"failed": STEP_FAILED,
                b"deadline": DEADLINE,
            }
            return job, reason.get(stop_reason, stop_reason.decode()), 0
        if first and created:
            wait = now.timestamp() - float(created)
            tally.observe(JOB_WAIT, {"kind": kind.decode()}, max(0.0, wait))
        if first and job and WebhookEvent.START in self.request.webhooks:
            send_webhook(job, WebhookEvent.START)
        attempt = int(attempt) or self.request.retries + 1
        logger.info(
            "job %s: step %s started (task %s, attempt %d)",
            job,
            self.name,
            self.request.id,
            attempt,
            extra={
                "job_id": job,
                "task_id": self.request.id,
                "step": self.name,
                "attempt": attempt,
            },
        )
        return job, "", attempt

    def _end_step(self, outcome: str, state: str, error: str | None = None) -> None:
        """Count the step's end, and the job's when this step ended it; log it with the ids."""
        job_id: str | None = getattr(self.request, "job_id", None)
        started: float | None = getattr(self.request, "started", None)
        tally.inc(STEPS_FINISHED, {"task": self.name, "state": state})
        duration = time.monotonic() - started if started is not None else None
        logger.info(
            "job %s: step %s %s (task %s)%s",
            job_id,
            self.name,
            outcome,
            self.request.id,
            f": {error}" if error else "",
            extra={
                "job_id": job_id,
                "task_id": self.request.id,
                "step": self.name,
                "status": outcome,
                "duration_s": round(duration, 4) if duration is not None else None,
            }
            | ({"error": error} if error else {}),
        )
        if job_id is not None:
            end_job(self.request.id, outcome)

    def _stop_canceled(self, reason: str) -> None:
        logger.info("task %s stopped: %s", self.request.id, reason)
        self.backend.mark_as_revoked(self.request.id, reason, request=self.request)
        raise Ignore()


# The job's first token, stamped once; returns the job's start and kind when this call
# stamped it (for the time-to-first-token histogram), else nothing.
_FIRST_TOKEN = """
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 0 then return false end
return {redis.call('HGET', KEYS[1], ARGV[3]) or '', redis.call('HGET', KEYS[1], ARGV[4]) or ''}
"""


def first_token_key(task_id: str) -> str:
    """The publisher's key for a step's first-token stamp (apart from its progress)."""
    return f"{task_id}:first-token"


def stamp_first_token(job_id: str, at: datetime) -> None:
    stamped = registry_redis().eval(
        _FIRST_TOKEN,
        1,
        job_key(job_id),
        FIRST_TOKEN_FIELD,
        at.isoformat(),
        STARTED_AT_FIELD,
        KIND_FIELD,
    )
    if stamped and stamped[0]:
        started, kind = (value.decode() for value in stamped)
        waited = (at - datetime.fromisoformat(started)).total_seconds()
        tally.observe(TIME_TO_FIRST_TOKEN, {"kind": kind}, max(0.0, waited))


def send_webhook(job_id: str, event: WebhookEvent, **options: Any) -> None:
    """Hand a delivery to the webhooks worker; a broker error loses this event's webhook,
    never the step."""
    try:
        enqueue(celery_app, job_id, event, **options)
    except Exception:
        logger.exception("job %s: its %s webhook could not be enqueued", job_id, event.value)


def send_output_webhook(job_id: str, *, last: bool = False) -> None:
    """The job's next output delivery, if one is due (at most one per OUTPUT_INTERVAL,
    each with the text as it is when it goes; ``last``: the job ended)."""
    try:
        slot = registry_redis().eval(
            OUTPUT_SLOT,
            2,
            output_slot_key(job_id),
            deliveries_key(job_id),
            int(OUTPUT_INTERVAL * 1000),
            "1" if last else "0",
            OUTPUT_SEQUENCE_FIELD,
            get_settings().result_expires,
        )
    except redis.RedisError:
        logger.exception("job %s: no output webhook", job_id)
        return
    if slot:
        sequence, delay_ms = slot
        send_webhook(job_id, WebhookEvent.OUTPUT, sequence=sequence, countdown=delay_ms / 1000)


def release_lease(task: Task) -> None:
    """After a step's final state is stored: its lease goes (see ``task_postrun``)."""
    step: RunningStep | None = getattr(task.request, "running_step", None)
    if step is not None:
        step_watch().release(step)


def end_job(task_id: str, outcome: str) -> None:
    """Record that step ``task_id`` ended with ``outcome``; counts the job when it ended it."""
    try:
        ended = registry_redis().eval(
            _END_STEP,
            1,
            task_key(task_id),
            JOB_KEY_PREFIX,
            outcome,
            STEPS_DONE_FIELD,
            STEPS_FIELD,
            ENDED_FIELD,
            KIND_FIELD,
            STARTED_AT_FIELD,
            DEADLINE_FIELD,
            time.time(),
            WEBHOOK_EVENTS_FIELD,
        )
    except redis.RedisError:
        logger.exception("task %s: could not record its end", task_id)
        return
    if not ended:
        return
    job_id, kind, started_at, outcome, webhooks = (value.decode() for value in ended)
    events = parse_events(webhooks)
    if WebhookEvent.COMPLETED in events:
        send_webhook(job_id, WebhookEvent.COMPLETED)
    if WebhookEvent.OUTPUT in events:
        send_output_webhook(job_id, last=True)
    labels = {"kind": kind, "status": outcome}
    tally.inc(JOBS_FINISHED, labels)
    if started_at:
        run = datetime.now(UTC) - datetime.fromisoformat(started_at)
        tally.observe(JOB_RUN, labels, max(0.0, run.total_seconds()))
