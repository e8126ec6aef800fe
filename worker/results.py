"""The worker's result backend: Celery's Redis backend, one round trip per state.

Celery's Redis backend GETs a task's meta before every write, so as not to overwrite a
success (a message delivered twice), then SETs and PUBLISHes it: two round trips, and a
task writes three states (started, progress, its end). Here the check and the write are
one Lua script, with the same meta documents, keys, expiry and channel, so the API and
any Celery client read them as before.

Each state a step's run writes carries that run's ``attempt`` (1, 2, … as the job
registry counts them), so that an event stream can tell a new attempt's text from the
last one's.

The start of a step is one script too: it reports whether the step already ended (then
nothing is written) and otherwise stores ``STARTED`` — the check :class:`JobTask` made
with a GET of its own, and ``task_track_started``'s write, which the worker leaves to it.
It also waits for the step before (Celery sends a chain's next step before it stores
the step's result), so that the steps' states are published in their order.
"""

import logging
import time
from functools import cached_property
from typing import Any

from celery import states
from celery.backends.redis import RedisBackend
from celery.exceptions import BackendStoreError
from kombu.utils.encoding import bytes_to_str

# KEYS[1]: the task's meta key; KEYS[2], optional: a meta that must be in one of the
# states first (the step before, for a start). ARGV: the new meta, its expiry in seconds
# (0: none), and the states ('SUCCESS' for a plain write, every ready state for a start).
# Returns the state of KEYS[1] that stopped the write, WAIT_FOR_PARENT, or nothing.
_STORE_UNLESS = """
local function status_of(key)
  local raw = redis.call('GET', key)
  if not raw then return nil end
  local ok, meta = pcall(cjson.decode, raw)
  if ok and type(meta) == 'table' then return meta['status'] end
  return nil
end
local function among(status)
  for i = 3, #ARGV do
    if status == ARGV[i] then return true end
  end
  return false
end
if KEYS[2] and not among(status_of(KEYS[2])) then return 'wait-for-parent' end
local current = status_of(KEYS[1])
if current and among(current) then return current end
if tonumber(ARGV[2]) > 0 then
  redis.call('SETEX', KEYS[1], ARGV[2], ARGV[1])
else
  redis.call('SET', KEYS[1], ARGV[1])
end
redis.call('PUBLISH', KEYS[1], ARGV[1])
return false
"""
logger = logging.getLogger(__name__)
WAIT_FOR_PARENT = "wait-for-parent"
#: How long a step's start waits for the step before it to be stored (see store_started).
PARENT_WAIT = 2.0


class ResultBackend(RedisBackend):  # type: ignore[misc]
    """Celery's Redis result backend with each check-and-write in one round trip."""

    # Private override: Celery's BaseKeyValueStoreBackend._store_result GETs before it SETs
    # (the duplicate-success guard of celery 4.4.3, commit c7110470); this is the same
    # guard in one script. Shape checked by tests/contracts/test_upstream_overrides.py.
    def _store_result(
        self,
        task_id: str,
        result: Any,
        state: str,
        traceback: Any = None,
        request: Any = None,
        attempt: int | None = None,
        **kwargs: Any,
    ) -> Any:
        """``attempt`` (or the request's): which run of the step wrote this state."""
        attempt = attempt or getattr(request, "attempt", None)
        self._store_unless(
            task_id, result, state, request, traceback, [states.SUCCESS], attempt=attempt
        )
        return result

    def store_started(
        self,
        task_id: str,
        request: Any,
        result: dict[str, Any],
        parent_id: str | None = None,
        parent_wait: float = PARENT_WAIT,
    ) -> str | None:
        """Store ``STARTED`` unless the task already ended; returns the state it ended in.

        Celery sends a chain's next step before it stores the step's own result, so the
        next step could start (and publish its start and text) before the step before it
        is seen to end. With ``parent_id``, the start waits until the parent's result is
        stored (a few milliseconds; at most ``parent_wait`` seconds, then it goes on), so
        that whoever follows the results sees the steps in their order. A retry is sent
        by the task itself, so it names itself as its parent: it waits for nothing.
        """
        if parent_id == task_id:
            parent_id = None
        result = self.encode_result(result, states.STARTED)
        deadline = time.monotonic() + parent_wait
        pause = 0.001
        while True:
            waiting = parent_id is not None and time.monotonic() < deadline
            ended = self._store_unless(
                task_id, result, states.STARTED, request, None, states.READY_STATES,
                after=parent_id if waiting else None,
            )  # fmt: skip
            if ended != WAIT_FOR_PARENT:
                if parent_id is not None and not waiting:
                    logger.warning("task %s started before task %s was stored", task_id, parent_id)
                return ended
            time.sleep(pause)
            pause = min(2 * pause, 0.05)

    def _store_unless(
        self,
        task_id: str,
        result: Any,
        state: str,
        request: Any,
        traceback: Any,
        stopping: Any,
        after: str | None = None,
        attempt: int | None = None,
    ) -> str | None:
        # Private call: Celery builds the meta document here (celery >= 4.4, #5661); the
        # same document keeps every Celery client reading ours.
        meta = self._get_result_meta(
            result=result, state=state, traceback=traceback, request=request
        )
        meta["task_id"] = bytes_to_str(task_id)
        if attempt:
            meta["attempt"] = attempt
        value = self.encode(meta)
        # Private constant: Redis's 512 MB string limit, as Celery's own write checks it.
        if isinstance(value, str) and len(value) > self._MAX_STR_VALUE_SIZE:
            raise BackendStoreError(
                "value too large for Redis backend", state=state, task_id=task_id
            )
        expires = self.failure_expires if state == states.FAILURE else self.expires
        keys = [self.get_key_for_task(task_id)]
        if after is not None:
            keys.append(self.get_key_for_task(after))
        stored = self.ensure(self._run_store, (keys, value, int(expires or 0), *sorted(stopping)))
        return bytes_to_str(stored) if stored else None

    def _run_store(self, keys: list[bytes], value: str, expires: int, *stopping: str) -> Any:
        return self._store_script(keys=keys, args=[value, expires, *stopping])

    @cached_property
    def _store_script(self) -> Any:
        return self.client.register_script(_STORE_UNLESS)
