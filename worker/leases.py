"""Who runs a step, and whether it should stop: leases and job flags, kept off the hot path.

A step that starts takes a **lease** in Redis (:func:`contracts.records.lease_key`, holding
this worker's identity, with a TTL well under the broker's visibility timeout). While the
step runs, one thread per worker process, :class:`StepWatch`, renews the leases of every
step the process runs and reads their jobs' flags (canceled by the client, or failed in
another step) — every ``cancel_check_interval``, in one round trip. The threads that run
steps and deliver tokens read those answers in memory and never wait on Redis for them:
a hung Redis delays the next renewal, not a token.

A delivery of a step whose lease another live worker holds does not run
(:class:`worker.job_task.JobTask` defers it). When the holder dies, nothing renews its lease:
it lapses within its TTL and the next delivery runs the step. A holder that finds its
lease taken by someone else (it could not renew it for longer than the TTL) stops its
copy of the step without a result.
"""

import logging
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import redis

from contracts.records import CANCELED_AT_FIELD, ENDED_FIELD, job_key, lease_key

logger = logging.getLogger(__name__)

#: Why a step does not start, or stops.
CANCELED_BY_CLIENT = "canceled by the client"
STEP_FAILED = "another step of its job failed"
#: A reason that starts so: the job's cancel_after deadline came (the API reads it so).
DEADLINE = "deadline: not finished within the job's cancel_after"

# KEYS[1]: the lease; ARGV: this holder's token, the TTL in ms. Returns '' when taken,
# else the token of the holder (the key exists for SET NX to fail, so GET finds it).
_ACQUIRE = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return '' end
return redis.call('GET', KEYS[1])
"""

# KEYS: leases; ARGV[1]: the TTL in ms, then each lease's token. A lease still ours is
# extended; one that lapsed unclaimed (Redis was out of reach) is taken again; one that
# someone else holds now is lost (0).
_RENEW = """
local kept = {}
for i, key in ipairs(KEYS) do
  local holder = redis.call('GET', key)
  if holder == ARGV[i + 1] then
    redis.call('PEXPIRE', key, ARGV[1])
    kept[i] = 1
  elseif not holder then
    redis.call('SET', key, ARGV[i + 1], 'PX', ARGV[1])
    kept[i] = 1
  else
    kept[i] = 0
  end
end
return kept
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


@dataclass
class RunningStep:
    """A step this process runs, under its lease."""

    task_id: str
    token: str
    job_id: str | None = None
    #: Why it should stop (its job was canceled or failed), once the watch has seen it.
    stop_reason: str | None = None
    #: Another worker holds the lease now: this copy must end without a result.
    lost: bool = False
    released: bool = field(default=False, repr=False)


class LeaseHeld(Exception):
    """Another worker holds the step's lease: it runs the step now."""

    def __init__(self, task_id: str, holder: str) -> None:
        super().__init__(f"step {task_id} is running under {holder}'s lease")
        self.holder = holder


class StepWatch:
    """The leases and job flags of the steps this process runs, kept by one thread."""

    def __init__(
        self,
        client: Callable[[], redis.Redis],
        *,
        owner: str,
        lease_seconds: float,
        interval: float,
    ) -> None:
        self._client = client
        self._owner = owner
        self._ttl_ms = max(1, round(lease_seconds * 1000))
        self._interval = interval
        self._steps: dict[str, RunningStep] = {}  # by token
        self._changed = threading.Condition()
        self._thread: threading.Thread | None = None

    def acquire(self, task_id: str) -> RunningStep:
        """Take the step's lease; raises :class:`LeaseHeld` when another holder has it."""
        token = f"{self._owner} {uuid.uuid4().hex[:12]}"
        holder = self._client().eval(_ACQUIRE, 1, lease_key(task_id), token, self._ttl_ms)
        if holder:
            raise LeaseHeld(task_id, holder.decode() if isinstance(holder, bytes) else holder)
        step = RunningStep(task_id=task_id, token=token)
        with self._changed:
            self._steps[token] = step
            self._changed.notify_all()
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._watch_forever, name="step-watch", daemon=True
                )
                self._thread.start()
        return step

    def watch_job(self, step: RunningStep, job_id: str | None) -> None:
        """From now on, read ``job_id``'s flags for this step."""
        step.job_id = job_id

    def release(self, step: RunningStep) -> None:
        """The step's final state is stored: give its lease up (unless it was lost)."""
        with self._changed:
            if step.released:
                return
            step.released = True
            self._steps.pop(step.token, None)
        if step.lost:
            return
        try:
            self._client().eval(_RELEASE, 1, lease_key(step.task_id), step.token)
        except redis.RedisError as error:
            # It lapses by itself within its TTL.
            logger.warning("task %s: its lease was not released: %s", step.task_id, error)

    def _watch_forever(self) -> None:
        while True:
            with self._changed:
                while not self._steps:
                    self._changed.wait()
                steps = list(self._steps.values())
            try:
                self._check(steps)
            except redis.RedisError as error:
                logger.warning(
                    "could not renew %d leases or read their jobs: %s", len(steps), error
                )
            with self._changed:
                self._changed.wait(self._interval)

    def _check(self, steps: list[RunningStep]) -> None:
        watched = [step for step in steps if step.job_id]
        with self._client().pipeline(transaction=False) as pipe:
            pipe.eval(
                _RENEW,
                len(steps),
                *(lease_key(step.task_id) for step in steps),
                self._ttl_ms,
                *(step.token for step in steps),
            )
            for step in watched:
                pipe.hmget(job_key(str(step.job_id)), CANCELED_AT_FIELD, ENDED_FIELD)
            kept, *flags = pipe.execute()
        for step, still_ours in zip(steps, kept, strict=True):
            if not still_ours and not step.lost and not step.released:
                logger.error("task %s: its lease was taken by another worker", step.task_id)
                step.lost = True
        for step, (canceled_at, ended) in zip(watched, flags, strict=True):
            if canceled_at is not None:
                step.stop_reason = CANCELED_BY_CLIENT
            elif ended == b"failed":
                step.stop_reason = STEP_FAILED
