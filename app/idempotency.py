"""``Idempotency-Key`` on ``POST /v1/jobs`` (IETF draft "The Idempotency-Key HTTP Header
Field"): a submit retried with the same key and body gets the job the first one created.

Per owner, a key is first claimed (``SET NX``, for a short while) by the request that
creates the job, then bound to that job for as long as the job is kept. The same key
with another body is a 422; a second request while the first is still being accepted is
a 409; a submit that failed releases its claim, so that its retry may go on.
"""

import hashlib
import json
from typing import Any

from app.core.redis import AsyncRedis
from app.errors import ProblemError

#: How long a claim waits for its job to be accepted before a retry may take it over.
CLAIM_SECONDS = 30
MAX_KEY_LENGTH = 255


class KeyReused(ProblemError):
    status = 422
    title = "Idempotency key reused"

    def __init__(self) -> None:
        super().__init__(
            "This Idempotency-Key was used with another request body; use a new key.",
            errors=[{"loc": ["header", "Idempotency-Key"], "msg": "used with another body",
                     "type": "idempotency_key_reused"}],
        )  # fmt: skip


class KeyInFlight(ProblemError):
    status = 409
    title = "Request in progress"
    default_headers = {"Retry-After": "1"}  # noqa: RUF012 (ProblemError's ClassVar)

    def __init__(self) -> None:
        super().__init__(
            "A request with this Idempotency-Key is still being accepted; retry shortly."
        )


class BadKey(ProblemError):
    status = 422
    title = "Invalid request"

    def __init__(self, why: str) -> None:
        super().__init__(
            f"Idempotency-Key: {why}",
            errors=[{"loc": ["header", "Idempotency-Key"], "msg": why, "type": "value_error"}],
        )


def parse_key(header: str) -> str:
    """The key: a structured-field string (``"…"``), or the bare value clients often send."""
    key = header.strip()
    if len(key) >= 2 and key[0] == key[-1] == '"':
        key = key[1:-1]
    if not key:
        raise BadKey("must not be empty")
    if len(key) > MAX_KEY_LENGTH or not key.isprintable():
        raise BadKey(f"at most {MAX_KEY_LENGTH} printable characters")
    return key


def fingerprint(body: dict[str, Any]) -> str:
    """The request body's identity: the validated job, in canonical JSON."""
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _redis_key(owner: str, key: str) -> str:
    scoped = hashlib.sha256(f"{owner}\x00{key}".encode()).hexdigest()
    return f"llm_tasks:idempotency:{scoped}"


class Idempotency:
    def __init__(self, redis: AsyncRedis, ttl: int) -> None:
        self._redis = redis
        self._ttl = ttl

    async def claim(self, owner: str, key: str, body_print: str) -> str | None:
        """None: this request creates the job. Else the id of the job the key created."""
        name = _redis_key(owner, key)
        for _ in range(2):  # a claim may lapse between SET NX and GET: look again once
            if await self._redis.set(
                name, json.dumps({"fp": body_print}), nx=True, ex=CLAIM_SECONDS
            ):
                return None
            raw = await self._redis.get(name)
            if raw is None:
                continue
            held = json.loads(raw)
            if held["fp"] != body_print:
                raise KeyReused()
            if "job_id" not in held:
                raise KeyInFlight()
            return str(held["job_id"])
        raise KeyInFlight()

    async def bind(self, owner: str, key: str, body_print: str, job_id: str) -> None:
        """The job is accepted: the key names it for as long as the job is kept."""
        value = json.dumps({"fp": body_print, "job_id": job_id})
        await self._redis.set(_redis_key(owner, key), value, ex=self._ttl)

    async def release(self, owner: str, key: str) -> None:
        """The submit failed: a retry with the key may create the job."""
        await self._redis.delete(_redis_key(owner, key))
