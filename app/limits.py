"""What keeps one client, or a burst, from taking the service down.

- :class:`RateLimiter`: a per-key rate limit (GCRA, one Lua call in Redis, so every API
  process shares it): over it, 429 with ``Retry-After``.
- :class:`QueueDepths`: backpressure: when a queue a job would join is deeper than
  ``MAX_QUEUE_DEPTH``, 503 with ``Retry-After`` instead of piling up work.
- :class:`BodySizeLimit`: an ASGI middleware that refuses a body over ``MAX_BODY_BYTES``
  with 413 before anything parses it, whether or not it declares its length.
"""

import asyncio
import json
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any

from celery import Celery
from kombu.exceptions import OperationalError
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.core.redis import AsyncRedis
from app.errors import PROBLEM_JSON, BrokerUnavailable, RateLimited

# Generic cell rate algorithm: the key holds the theoretical arrival time (ms) of the
# next request. A request is let in when that time minus the burst allowance has come;
# otherwise the answer is how many ms to wait. Redis' clock, so all processes agree.
_GCRA = """
local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) * 1000 + math.floor(tonumber(now_parts[2]) / 1000)
local interval = tonumber(ARGV[1])
local allowance = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local next_tat = tat + interval
local wait = next_tat - allowance - now
if wait > 0 then return wait end
redis.call('SET', KEYS[1], next_tat, 'PX', math.ceil(next_tat - now) + 1000)
return 0
"""


class RateLimiter:
    def __init__(self, redis: AsyncRedis, per_minute: float, burst: int) -> None:
        self._script = redis.register_script(_GCRA)
        self._interval_ms = 60_000 / per_minute if per_minute else 0.0
        self._burst = burst

    @property
    def enabled(self) -> bool:
        return self._interval_ms > 0

    async def check(self, who: str) -> None:
        """Count one request of ``who``; raises :class:`RateLimited` when over the limit."""
        if not self.enabled:
            return
        wait_ms = await self._script(
            keys=[f"llm_tasks:rate:{who}"],
            args=[self._interval_ms, self._interval_ms * self._burst],
        )
        if int(wait_ms) > 0:
            raise RateLimited(math.ceil(int(wait_ms) / 1000))


QueueCounter = Callable[[str], Awaitable[int]]


class QueueDepths:
    """How many messages wait in each queue, read from the broker at most once per
    ``refresh`` seconds."""

    def __init__(self, count: QueueCounter, refresh: float) -> None:
        self._count = count
        self._refresh = refresh
        self._readings: dict[str, tuple[float, int]] = {}
        self._lock = asyncio.Lock()

    async def depth(self, queue: str) -> int:
        reading = self._readings.get(queue)
        if reading is None or time.monotonic() - reading[0] > self._refresh:
            async with self._lock:
                reading = self._readings.get(queue)
                if reading is None or time.monotonic() - reading[0] > self._refresh:
                    reading = (time.monotonic(), await self._count(queue))
                    self._readings[queue] = reading
        return reading[1]


def redis_queue_counter(broker: AsyncRedis, transport_options: dict[str, Any]) -> QueueCounter:
    """Queue depth on a Redis broker: kombu keeps one list per priority step; their sum.
    Async and bounded by the client's timeouts, like every other Redis call of the API."""
    sep = transport_options.get("sep", "\x06\x16")
    steps = transport_options.get("priority_steps", [0])

    async def count(queue: str) -> int:
        async with broker.pipeline(transaction=False) as pipe:
            for step in steps:
                pipe.llen(f"{queue}{sep}{step}" if step else queue)
            return sum(await pipe.execute())

    return count


def amqp_queue_counter(celery: Celery, timeout: float) -> QueueCounter:
    """Queue depth on RabbitMQ: a declare (as configured, so a no-op) answers the count."""

    def blocking_count(queue: str) -> int:
        try:
            with celery.connection_for_read(connect_timeout=timeout) as connection:
                connection.ensure_connection(max_retries=1, interval_start=0, timeout=timeout)
                bound = celery.amqp.queues[queue].bind(connection.default_channel)
                return int(bound.queue_declare().message_count)
        except (OperationalError, OSError) as error:
            raise BrokerUnavailable(f"The broker is unreachable: {error}") from error

    async def count(queue: str) -> int:
        return await run_in_threadpool(blocking_count, queue)

    return count


class BodySizeLimit:
    """Refuse request bodies over ``max_bytes`` with 413, before the app reads them."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in {"GET", "HEAD", "DELETE", "OPTIONS"}:
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(scope, send)
            return
        # No length declared (or a false one): read the body up to the bound, then replay it.
        body, more = [], True
        size = 0
        while more:
            message = await receive()
            if message["type"] != "http.request":
                await self.app(scope, _replay([message]), send)
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._refuse(scope, send)
                return
            body.append(chunk)
            more = message.get("more_body", False)
        replayed: Message = {"type": "http.request", "body": b"".join(body), "more_body": False}
        await self.app(scope, _replay([replayed], then=receive), send)

    async def _refuse(self, scope: Scope, send: Send) -> None:
        payload = json.dumps(
            {
                "type": "about:blank",
                "title": "Content Too Large",
                "status": 413,
                "detail": f"The request body is larger than {self.max_bytes} bytes.",
                "instance": scope["path"],
            }
        ).encode()
        headers = [
            (b"content-type", PROBLEM_JSON.encode()),
            (b"content-length", str(len(payload)).encode()),
            (b"connection", b"close"),
        ]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": payload})


def _replay(messages: list[Message], then: Receive | None = None) -> Receive:
    pending = list(messages)

    async def receive() -> Message:
        if pending:
            return pending.pop(0)
        if then is not None:
            return await then()
        return {"type": "http.disconnect"}

    return receive
