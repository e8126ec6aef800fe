"""The worker's result backend: Celery's Redis backend, one round trip per state.

Celery's Redis backend GETs a task's meta before every write, so as not to overwrite a
success (a message delivered twice), then SETs and PUBLISHes it: two round trips, and a
task writes three states (started, progress, its end). Here the check and the write are
one Lua script, with the same meta documents, keys, expiry and channel, so the API and
any Celery client read them as before.

The start of a step is one script too: it reports whether the step already ended (then
nothing is written) and otherwise stores ``STARTED`` — the check :class:`JobTask` made
with a GET of its own, and ``task_track_started``'s write, which the worker leaves to it.
"""

from functools import cached_property
from typing import Any

from celery import states
from celery.backends.redis import RedisBackend
from celery.exceptions import BackendStoreError
from kombu.utils.encoding import bytes_to_str

# KEYS[1]: the task's meta key. ARGV: the new meta, its expiry in seconds (0: none), and
# the states the stored meta must not be in ('SUCCESS' for a plain write, every ready
# state for a start). Returns the stored state that stopped the write, or nothing.
_STORE_UNLESS = """
local current = redis.call('GET', KEYS[1])
if current then
  local ok, meta = pcall(cjson.decode, current)
  if ok and type(meta) == 'table' then
    for i = 3, #ARGV do
      if meta['status'] == ARGV[i] then return meta['status'] end
    end
  end
end
if tonumber(ARGV[2]) > 0 then
  redis.call('SETEX', KEYS[1], ARGV[2], ARGV[1])
else
  redis.call('SET', KEYS[1], ARGV[1])
end
redis.call('PUBLISH', KEYS[1], ARGV[1])
return false
"""


class ResultBackend(RedisBackend):  # type: ignore[misc]
    """Celery's Redis result backend with each check-and-write in one round trip."""

    def _store_result(
        self,
        task_id: str,
        result: Any,
        state: str,
        traceback: Any = None,
        request: Any = None,
        **kwargs: Any,
    ) -> Any:
        self._store_unless(task_id, result, state, request, traceback, [states.SUCCESS])
        return result

    def store_started(self, task_id: str, request: Any, result: dict[str, Any]) -> str | None:
        """Store ``STARTED`` unless the task already ended; returns the state it ended in."""
        result = self.encode_result(result, states.STARTED)
        return self._store_unless(
            task_id, result, states.STARTED, request, None, states.READY_STATES
        )

    def _store_unless(
        self,
        task_id: str,
        result: Any,
        state: str,
        request: Any,
        traceback: Any,
        stopping: Any,
    ) -> str | None:
        meta = self._get_result_meta(
            result=result, state=state, traceback=traceback, request=request
        )
        meta["task_id"] = bytes_to_str(task_id)
        value = self.encode(meta)
        if isinstance(value, str) and len(value) > self._MAX_STR_VALUE_SIZE:
            raise BackendStoreError(
                "value too large for Redis backend", state=state, task_id=task_id
            )
        expires = self.failure_expires if state == states.FAILURE else self.expires
        key = self.get_key_for_task(task_id)
        stored = self.ensure(self._run_store, (key, value, int(expires or 0), *sorted(stopping)))
        return bytes_to_str(stored) if stored else None

    def _run_store(self, key: bytes, value: str, expires: int, *stopping: str) -> Any:
        return self._store_script(keys=[key], args=[value, expires, *stopping])

    @cached_property
    def _store_script(self) -> Any:
        return self.client.register_script(_STORE_UNLESS)
