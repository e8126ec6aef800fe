"""Live job events: Celery's state updates, pushed from Redis pub/sub to SSE clients.

Celery's Redis backend SETs and PUBLISHes every state of a task on the channel
``celery-task-meta-<task id>``. :class:`EventHub` holds one pub/sub connection per API
process and fans messages out to the streams that listen; :func:`job_events` turns a
job's step updates into the events of the API contract (``status``, ``progress``,
``output``, ``done``). Each stream subscribes first and reads the job after, so no
update falls between the two.

Event ids are ``<n>-<step 1>.<step 2>…``: ``n`` increases by one per event, and each
step's part says how much of its text the client has — ``<chars>``, or
``<attempt>:<chars>`` once a step runs again. A client that reconnects with
``Last-Event-ID`` gets exactly the text it missed.

A step that runs again (a retry, or a redelivery after its worker died) writes its text
from the start, maybe a different one. The first ``output`` event of the new attempt says
``"reset": true`` and carries its whole text so far: the client drops the step's text and
starts again from that delta. Every ``output`` event names its ``attempt``, so the deltas
of a step's last attempt add up to its final text.
"""

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import redis.exceptions
from fastapi.sse import ServerSentEvent

from app.core.redis import AsyncRedis
from app.store import CELERY_META_PREFIX, StoredJob
from llm_tasks.job_schema import JobPublic, JobStatus

logger = logging.getLogger(__name__)

#: How long a new stream waits for Redis to confirm its subscriptions.
SUBSCRIBE_TIMEOUT = 5.0
#: What an inbox answers once the pub/sub connection is lost: the stream ends with an error.
CONNECTION_LOST = ("", b"")


class Inbox:
    """A stream's pending messages: the newest of each channel, in order of arrival.

    Every message is a task's whole state (its text so far included), so a newer one
    makes an older one of the same channel useless: a client that reads slowly costs one
    pending state per step of its job, not a queue of every update.
    """

    def __init__(self) -> None:
        self._pending: dict[str, bytes] = {}
        self._lost = False
        self._ready = asyncio.Event()

    def __len__(self) -> int:
        return len(self._pending)

    def put(self, channel: str, data: bytes) -> None:
        self._pending[channel] = data  # an older one keeps its place and is replaced
        self._ready.set()

    def lose(self) -> None:
        self._lost = True
        self._ready.set()

    async def get(self) -> tuple[str, bytes]:
        while not self._pending and not self._lost:
            self._ready.clear()
            await self._ready.wait()
        if self._lost:
            return CONNECTION_LOST
        channel = next(iter(self._pending))
        return channel, self._pending.pop(channel)


class EventHub:
    """One Redis pub/sub connection per API process, shared by every SSE stream."""

    def __init__(self, redis: AsyncRedis) -> None:
        self._redis = redis
        self._pubsub = redis.pubsub()
        self._listeners: dict[str, set[Inbox]] = {}
        self._confirmed: dict[str, asyncio.Event] = {}
        self._lock = asyncio.Lock()
        self._reader: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()  # wakes the reader when there is something to read

    async def start(self) -> None:
        self._reader = asyncio.create_task(self._read(), name="event-hub")

    async def stop(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        await self._pubsub.aclose()

    def channels(self) -> int:
        return len(self._listeners)

    def streams(self) -> int:
        return len({id(inbox) for inbox in self._inboxes()})

    def pending(self) -> int:
        """Messages waiting for their streams to send them (at most one per step each)."""
        return sum(len(inbox) for inbox in {id(i): i for i in self._inboxes()}.values())

    def _inboxes(self) -> list[Inbox]:
        return [inbox for listeners in self._listeners.values() for inbox in listeners]

    async def _reset(self) -> None:
        """After a lost connection: tell every stream, forget their channels, and start over
        with a fresh pub/sub (it connects again with the next subscription)."""
        async with self._lock:
            for inbox in {id(inbox): inbox for inbox in self._inboxes()}.values():
                inbox.lose()
            self._listeners.clear()
            self._confirmed.clear()
            old, self._pubsub = self._pubsub, self._redis.pubsub()
        with contextlib.suppress(redis.exceptions.RedisError, OSError):
            await old.aclose()

    @contextlib.asynccontextmanager
    async def subscription(self, channels: list[str]) -> AsyncIterator[Inbox]:
        """Messages of ``channels`` until the block ends; subscribed when it begins."""
        inbox = Inbox()
        try:
            await self._add(channels, inbox)
            yield inbox
        finally:
            # Shielded: a client that hangs up cancels its stream, not this cleanup.
            await asyncio.shield(self._remove(channels, inbox))

    async def _add(self, channels: list[str], inbox: Inbox) -> None:
        async with self._lock:
            new = []
            for channel in channels:
                listeners = self._listeners.setdefault(channel, set())
                if not listeners:
                    new.append(channel)
                    self._confirmed[channel] = asyncio.Event()
                listeners.add(inbox)
            if new:
                await self._pubsub.subscribe(*new)
                self._subscribed.set()
        waits = [
            self._confirmed[channel].wait() for channel in channels if channel in self._confirmed
        ]
        try:
            await asyncio.wait_for(asyncio.gather(*waits), SUBSCRIBE_TIMEOUT)
        except TimeoutError:
            raise redis.exceptions.TimeoutError("Redis did not confirm a subscription") from None

    async def _remove(self, channels: list[str], inbox: Inbox) -> None:
        async with self._lock:
            gone = []
            for channel in channels:
                listeners = self._listeners.get(channel)
                if listeners is None:
                    continue  # dropped with a lost connection
                listeners.discard(inbox)
                if not listeners:
                    del self._listeners[channel]
                    self._confirmed.pop(channel, None)
                    gone.append(channel)
            if gone:
                try:
                    await self._pubsub.unsubscribe(*gone)
                except redis.exceptions.RedisError:
                    logger.warning("could not unsubscribe %d channels", len(gone))

    async def _read(self) -> None:
        while True:
            try:
                if not self._pubsub.subscribed:
                    self._subscribed.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._subscribed.wait(), 1.0)
                    continue
                message = await self._pubsub.get_message(timeout=1.0)
            except redis.exceptions.RedisError as error:
                logger.warning(
                    "event hub lost Redis (%s): ending %d streams", error, self.streams()
                )
                await self._reset()
                await asyncio.sleep(0.5)
                continue
            if message is None:
                continue
            channel = message["channel"].decode()
            if message["type"] == "subscribe":
                confirmed = self._confirmed.get(channel)
                if confirmed is not None:
                    confirmed.set()
            elif message["type"] == "message":
                for inbox in self._listeners.get(channel, ()):
                    inbox.put(channel, message["data"])


@dataclass
class Cursor:
    """What this client has been sent: the event count, and for each step the attempt
    whose text it has and how many characters of it."""

    sent: list[int]
    attempts: list[int]
    seq: int = 0
    progress: dict[int, tuple[Any, ...]] = field(default_factory=dict)

    @classmethod
    def fresh(cls, steps: int) -> "Cursor":
        return cls(sent=[0] * steps, attempts=[0] * steps)

    @classmethod
    def resume(cls, last_event_id: str | None, steps: int) -> "Cursor":
        try:
            seq, offsets = (last_event_id or "").split("-", 1)
            parts = [part.partition(":") for part in offsets.split(".")]
            attempts = [int(attempt) if sep else 0 for attempt, sep, _ in parts]
            sent = [int(chars if sep else attempt) for attempt, sep, chars in parts]
            if len(sent) == steps and all(n >= 0 for n in sent + attempts):
                return cls(sent=sent, attempts=attempts, seq=int(seq))
        except ValueError:
            pass
        return cls.fresh(steps)

    def event(self, name: str, data: Any) -> ServerSentEvent:
        self.seq += 1
        parts = (
            f"{attempt}:{chars}" if attempt > 1 else str(chars)
            for attempt, chars in zip(self.attempts, self.sent, strict=True)
        )
        return ServerSentEvent(event=name, data=data, id=f"{self.seq}-{'.'.join(parts)}")


def step_text(meta: dict[str, Any] | None) -> str | None:
    """The text a step has generated so far: in its progress, or in its final result."""
    result = meta.get("result") if meta else None
    if isinstance(result, dict) and isinstance(result.get("text"), str):
        return str(result["text"])
    return None


def _outputs(cursor: Cursor, job: StoredJob) -> Iterator[ServerSentEvent]:
    for index, (step, meta) in enumerate(zip(job.record.steps, job.metas, strict=True)):
        yield from _output(cursor, index, step.name, meta)


def _output(
    cursor: Cursor, index: int, step: str, meta: dict[str, Any] | None
) -> Iterator[ServerSentEvent]:
    text = step_text(meta)
    if text is None or meta is None:
        return
    attempt = meta.get("attempt")
    attempt = attempt if isinstance(attempt, int) else 0
    # The attempt whose text this client has: a bare character count means the first.
    known = cursor.attempts[index] or (1 if cursor.sent[index] else 0)
    if attempt and attempt < known:
        return  # a late word from an attempt that was given up
    if attempt > known:
        cursor.attempts[index] = attempt
        if known:
            # A new attempt writes its text from the start: say so, and send all of it.
            cursor.sent[index] = len(text)
            yield cursor.event(
                "output", {"delta": text, "step": step, "attempt": attempt, "reset": True}
            )
            return
    if len(text) <= cursor.sent[index]:
        return
    delta = text[cursor.sent[index] :]
    cursor.sent[index] = len(text)
    attempt = cursor.attempts[index] or 1
    yield cursor.event("output", {"delta": delta, "step": step, "attempt": attempt})


def _progress(
    cursor: Cursor, index: int, step: str, meta: dict[str, Any]
) -> Iterator[ServerSentEvent]:
    info = meta.get("result")
    if meta.get("status") != "PROGRESS" or not isinstance(info, dict) or "total" not in info:
        return
    current = (info.get("current"), info["total"], info.get("message"))
    if cursor.progress.get(index) == current:
        return
    cursor.progress[index] = current
    yield cursor.event(
        "progress",
        {"current": current[0], "total": current[1], "message": current[2], "step": step},
    )


def _shape(job: JobPublic) -> tuple[JobStatus, tuple[JobStatus, ...]]:
    return job.status, tuple(step.status for step in job.steps)


def step_channels(job: StoredJob) -> list[str]:
    """The pub/sub channels of the job's steps, in step order."""
    return [CELERY_META_PREFIX + step.task_id for step in job.record.steps]


def lost_connection(cursor: Cursor) -> ServerSentEvent:
    return cursor.event(
        "error",
        {
            "type": "about:blank",
            "title": "Service unavailable",
            "status": 503,
            "detail": "The connection to the job store was lost; reconnect with Last-Event-ID "
            "to resume where this stream ended.",
        },
    )


async def job_events(
    *,
    inbox: Inbox,
    load: Callable[[], Awaitable[StoredJob]],
    show: Callable[[StoredJob], JobPublic],
    first: StoredJob,
    last_event_id: str | None,
    heartbeat: float,
) -> AsyncIterator[ServerSentEvent]:
    """The job's events until it ends. ``inbox`` is already subscribed to the job's
    channels; ``load()`` reads the job again from Redis. If Redis goes away, the stream
    ends with an ``error`` event (a problem object) instead of hanging."""
    cursor = Cursor.resume(last_event_id, len(first.record.steps))
    try:
        async for event in _job_events(cursor, inbox, load, show, first, heartbeat):
            yield event
    except redis.exceptions.RedisError as error:
        logger.warning("event stream of job %s ended: %s", first.record.id, error)
        yield lost_connection(cursor)


async def _job_events(
    cursor: Cursor,
    inbox: Inbox,
    load: Callable[[], Awaitable[StoredJob]],
    show: Callable[[StoredJob], JobPublic],
    first: StoredJob,
    heartbeat: float,
) -> AsyncIterator[ServerSentEvent]:
    steps = first.record.steps
    index_of = {channel: i for i, channel in enumerate(step_channels(first))}
    job = await load()
    public = show(job)
    yield cursor.event("status", public.model_dump(mode="json"))
    for event in _outputs(cursor, job):
        yield event
    shape = _shape(public)
    while not public.status.finished:
        try:
            channel, data = await asyncio.wait_for(inbox.get(), heartbeat)
        except TimeoutError:
            yield ServerSentEvent(comment="heartbeat")
            changed = True  # look again: expiry, or an update that pub/sub lost
        else:
            if (channel, data) == CONNECTION_LOST:
                raise redis.exceptions.ConnectionError("the event hub lost its connection")
            index, meta = index_of[channel], json.loads(data)
            for event in _progress(cursor, index, steps[index].name, meta):
                yield event
            for event in _output(cursor, index, steps[index].name, meta):
                yield event
            changed = (
                meta.get("status") != "PROGRESS"
                or public.steps[index].status is not JobStatus.RUNNING
            )
        if not changed:
            continue
        job = await load()
        public = show(job)
        for event in _outputs(cursor, job):
            yield event
        if _shape(public) != shape:
            shape = _shape(public)
            if not public.status.finished:
                yield cursor.event("status", public.model_dump(mode="json"))
    yield cursor.event("done", public.model_dump(mode="json"))
