"""The Python client: :class:`Client` (blocking) and :class:`AsyncClient` (asyncio).

Both speak the API of ``/v1/jobs`` and return the shared contract's models
(:class:`~llm_tasks.job_schema.JobPublic`). Error answers raise :mod:`llm_tasks.errors`
exceptions carrying the problem details; 429 and 503 are retried a few times, after the
``Retry-After`` the API sends. Event streams reconnect by themselves after a dropped
connection, with ``Last-Event-ID``, so no text is lost or repeated.
"""

import asyncio
import json
import os
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypedDict, Unpack

import httpx
from httpx_sse import ServerSentEvent, aconnect_sse, connect_sse
from pydantic import BaseModel

from llm_tasks.errors import StreamLost, WaitTimeout, error_for
from llm_tasks.job_schema import JobPage, JobPublic, JobStatus
from llm_tasks.model_info import ModelList, ModelPublic
from llm_tasks.signatures import secret_key, verify

DEFAULT_URL = "http://127.0.0.1:8000"
#: Answers worth another try after a pause: nothing was accepted or changed.
RETRIED_STATUSES = {429, 503}
#: Seconds without a byte before a stream counts as dropped (the API sends heartbeats).
STREAM_READ_TIMEOUT = 60.0

Input = Mapping[str, Any] | BaseModel


@dataclass(frozen=True)
class Event:
    """One event of a job's stream: ``status``, ``progress``, ``output``, ``done`` (or
    ``error``, which the client handles by reconnecting)."""

    event: str
    id: str
    data: dict[str, Any]

    @property
    def job(self) -> JobPublic | None:
        """The job, for ``status`` and ``done`` events."""
        if self.event in {"status", "done"}:
            return JobPublic.model_validate(self.data)
        return None

    @property
    def step(self) -> str | None:
        step = self.data.get("step")
        return str(step) if step is not None else None

    @property
    def delta(self) -> str:
        """New text, for ``output`` events."""
        return str(self.data.get("delta", ""))

    @property
    def reset(self) -> bool:
        """For ``output`` events: the step runs again (a retry) and writes its text from
        the start; this delta replaces what the step had written."""
        return bool(self.data.get("reset"))

    @property
    def attempt(self) -> int:
        """For ``output`` events: which run of the step wrote the text."""
        return int(self.data.get("attempt") or 1)

    @classmethod
    def from_sse(cls, sse: ServerSentEvent) -> "Event":
        data = json.loads(sse.data) if sse.data else {}
        return cls(event=sse.event, id=sse.id, data=data if isinstance(data, dict) else {})


class TextRestart(str):
    """A piece of streamed text that starts its step's text over (the step runs again)."""


class StepTexts(dict[str, str]):
    """Each step's text so far, from a job's ``output`` events::

    texts = StepTexts()
    for event in client.events(job_id):
        texts.add(event)
    """

    def add(self, event: Event) -> None:
        if event.event != "output" or event.step is None:
            return
        written = "" if event.reset else self.get(event.step, "")
        self[event.step] = written + event.delta


class _Decoder:
    """Server-Sent Events, line by line. Lines (heartbeat comments too) come back one at a
    time, so that a ``wait`` deadline is checked even while a queued job sends no events."""

    def __init__(self) -> None:
        self._event = ""
        self._data: list[str] = []
        self._id = ""

    def feed(self, line: str) -> ServerSentEvent | None:
        if not line:
            if not self._data and not self._event:
                return None
            sse = ServerSentEvent(
                event=self._event or "message", data="\n".join(self._data), id=self._id
            )
            self._event, self._data = "", []
            return sse
        if line.startswith(":"):
            return None
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "event":
            self._event = value
        elif field == "data":
            self._data.append(value)
        elif field == "id":
            self._id = value
        return None


def _settings(base_url: str | None, api_key: str | None) -> tuple[str, dict[str, str]]:
    url = base_url or os.environ.get("LLM_TASKS_URL") or DEFAULT_URL
    key = api_key if api_key is not None else os.environ.get("LLM_TASKS_API_KEY")
    return url.rstrip("/"), ({"Authorization": f"Bearer {key}"} if key else {})


def _submit_options(key: str | None, wait: int | None, timeout: float) -> dict[str, Any]:
    """The submit's headers (Idempotency-Key, Prefer: wait) and, when it waits, a read
    timeout that outlasts the wait."""
    headers = {}
    if key is not None:
        headers["Idempotency-Key"] = key
    if wait is not None:
        headers["Prefer"] = f"wait={wait}"
    options: dict[str, Any] = {"headers": headers}
    if wait is not None:
        options["timeout"] = timeout + wait
    return options


class JobOptionArgs(TypedDict, total=False):
    """The job options ``submit`` takes (the API's names; see ``JobOptions``; None: the
    API's default)."""

    priority: int | None
    delay_seconds: int | None
    expires_in: int | None
    model: str | None
    cancel_after: int | None
    webhook: str | None
    webhook_events_filter: Sequence[str] | None


def _job_body(kind: str, job_input: Input, **options: Any) -> dict[str, Any]:
    """The submit's JSON: the kind, its input and the job options that were given."""
    body: dict[str, Any] = {
        "kind": str(kind),
        "input": job_input.model_dump(mode="json", exclude_none=True)
        if isinstance(job_input, BaseModel)
        else dict(job_input),
    }
    body.update({name: value for name, value in options.items() if value is not None})
    if body.get("webhook_events_filter") is not None:
        body["webhook_events_filter"] = list(body["webhook_events_filter"])
    return body


def verify_webhook(
    body: bytes | str, headers: Mapping[str, str], secret: str, *, tolerance: float = 300.0
) -> JobPublic:
    """The job a webhook delivery carries, once its Standard Webhooks signature checks out
    against ``secret`` (the deployment's ``whsec_…``) and its timestamp is within
    ``tolerance`` seconds; raises :class:`InvalidSignature` otherwise. Pass the raw body,
    as received. ``headers["webhook-event"]`` says which event it is; ``headers["webhook-id"]``
    is the same on every attempt of one event (dedupe on it)."""
    raw = body.encode() if isinstance(body, str) else body
    verify(secret_key(secret), raw, dict(headers), tolerance=tolerance)
    return JobPublic.model_validate_json(raw)


def _list_params(
    status: JobStatus | str | None, kind: str | None, limit: int, cursor: str | None
) -> dict[str, Any]:
    params = {"status": status, "kind": kind, "limit": limit, "cursor": cursor}
    return {name: str(value) for name, value in params.items() if value is not None}


def _retry_delay(response: httpx.Response, attempt: int, longest: float) -> float:
    """The server's Retry-After (seconds), else exponential backoff; at most ``longest``."""
    try:
        wait = float(response.headers.get("retry-after", ""))
    except ValueError:
        wait = 0.5 * 2**attempt
    return max(0.0, min(wait, longest))


def _reconnect_delay(attempt: int) -> float:
    return float(min(0.25 * 2 ** (attempt - 1), 5.0))


def _stream_timeout(timeout: float, deadline: float | None) -> httpx.Timeout:
    read = STREAM_READ_TIMEOUT
    if deadline is not None:
        read = max(0.05, min(read, deadline - time.monotonic()))
    return httpx.Timeout(timeout, read=read)


class _Dropped(Exception):
    """The stream ended before ``done``: reconnect."""


class _Resume:
    """What the blocking and the asyncio event loops share: where to resume (the last
    event id), how many reconnects in a row have failed, and the ``wait`` deadline."""

    def __init__(
        self, job_id: str, last_event_id: str | None, deadline: float | None, max_reconnects: int
    ) -> None:
        self.path = f"/v1/jobs/{job_id}/events"
        self.job_id = job_id
        self.last_event_id = last_event_id
        self.deadline = deadline
        self.max_reconnects = max_reconnects
        self.failures = 0
        self.decoder = _Decoder()

    def request(self, timeout: float) -> dict[str, Any]:
        headers = {"Last-Event-ID": self.last_event_id} if self.last_event_id else {}
        return {"headers": headers, "timeout": _stream_timeout(timeout, self.deadline)}

    def opened(self, response: httpx.Response) -> bool:
        """Whether the answer is an error to raise (once its body is read)."""
        if response.status_code in RETRIED_STATUSES:
            raise _Dropped(f"answered {response.status_code}")
        self.decoder = _Decoder()
        return response.is_error

    def line(self, line: str) -> Event | None:
        """The event this line completes, if any."""
        self._check_deadline()
        sse = self.decoder.feed(line)
        if sse is None:
            return None
        event = Event.from_sse(sse)
        if event.event == "error":  # the API lost Redis: resume once it is back
            raise _Dropped(str(event.data.get("detail", "error event")))
        self.last_event_id = event.id or self.last_event_id
        self.failures = 0
        return event

    def failed(self, error: Exception) -> float:
        """Seconds to wait before reconnecting; raises when it is time to give up."""
        self._check_deadline()
        self.failures += 1
        if self.failures > self.max_reconnects:
            raise StreamLost(f"events of job {self.job_id}: {error}") from error
        return _reconnect_delay(self.failures)

    def _check_deadline(self) -> None:
        if self.deadline is not None and time.monotonic() >= self.deadline:
            raise WaitTimeout(f"job {self.job_id} did not finish in time")


class _Options:
    """What both clients are configured with. ``base_url`` and ``api_key`` default to the
    environment variables ``LLM_TASKS_URL`` and ``LLM_TASKS_API_KEY``; 429 and 503 are
    retried ``max_retries`` times (waiting the server's Retry-After, at most
    ``max_retry_wait`` s); a stream gives up after ``max_reconnects`` failed reconnects
    in a row."""

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = 30.0,
        max_retries: int = 3,
        max_retry_wait: float = 30.0,
        max_reconnects: int = 5,
    ) -> None:
        self.base_url, self._headers = _settings(base_url, api_key)
        self.timeout = timeout
        self.max_retries = max_retries
        self.max_retry_wait = max_retry_wait
        self.max_reconnects = max_reconnects
        self._http = self._open()

    def _open(self) -> httpx.Client | httpx.AsyncClient:
        raise NotImplementedError

    def _retry_in(self, response: httpx.Response, attempt: int) -> float | None:
        """Seconds to wait before trying ``response``'s request again, or None to stop."""
        if response.status_code in RETRIED_STATUSES and attempt < self.max_retries:
            return _retry_delay(response, attempt, self.max_retry_wait)
        return None


class Client(_Options):
    """A blocking client (see :class:`_Options` for its settings)."""

    _http: httpx.Client

    def _open(self) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, headers=self._headers, timeout=self.timeout)

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _request(self, method: str, path: str, **options: Any) -> httpx.Response:
        for attempt in range(self.max_retries + 1):
            response = self._http.request(method, path, **options)
            if (wait := self._retry_in(response, attempt)) is not None:
                time.sleep(wait)
                continue
            if response.is_error:
                raise error_for(response)
            return response
        raise AssertionError("unreachable")  # pragma: no cover

    def submit(
        self,
        kind: str,
        input: Input,
        *,
        idempotency_key: str | None = None,
        wait: int | None = None,
        **options: Unpack[JobOptionArgs],
    ) -> JobPublic:
        """Submit a job; returns it at once (``queued``). ``model``: a declared model's
        name (``models()``); unset, the kind's steps use their role's default.
        ``cancel_after``: seconds after which the job is canceled if not finished.
        ``webhook``: a URL that gets a signed POST of the job at the events of
        ``webhook_events_filter`` (``start``, ``output``, ``completed``; default
        ``completed``) — check each with :func:`verify_webhook`.
        ``idempotency_key``: submitting again with it (a retry) gets the same job.
        ``wait``: return the finished job if it ends within that many seconds."""
        body = _job_body(kind, input, **options)
        request = _submit_options(idempotency_key, wait, self.timeout)
        response = self._request("POST", "/v1/jobs", json=body, **request)
        return JobPublic.model_validate_json(response.content)

    def get(self, job_id: str) -> JobPublic:
        return JobPublic.model_validate_json(self._request("GET", f"/v1/jobs/{job_id}").content)

    def models(self) -> list[ModelPublic]:
        """The deployment's models and how many live workers hold each."""
        return ModelList.model_validate_json(self._request("GET", "/v1/models").content).data

    def list(
        self,
        *,
        status: JobStatus | str | None = None,
        kind: str | None = None,
        limit: int = 20,
        cursor: str | None = None,
    ) -> JobPage:
        """One page of your jobs, newest first; pass ``next_cursor`` on for older ones."""
        params = _list_params(status, kind, limit, cursor)
        return JobPage.model_validate_json(self._request("GET", "/v1/jobs", params=params).content)

    def cancel(self, job_id: str) -> JobPublic:
        """Cancel a queued or running job (409 :class:`~llm_tasks.errors.Conflict` if it
        has already finished)."""
        return JobPublic.model_validate_json(self._request("DELETE", f"/v1/jobs/{job_id}").content)

    def events(self, job_id: str, *, last_event_id: str | None = None) -> Iterator[Event]:
        """The job's events until ``done``, reconnecting after a dropped connection."""
        return self._events(job_id, last_event_id, deadline=None)

    def stream_text(self, job_id: str, *, step: str | None = None) -> Iterator[str]:
        """The generated text as it comes (of one ``step``, or of every step in turn).
        When a step runs again and its text starts over, the first piece of the new text
        is a :class:`TextRestart`: drop what that step yielded before it."""
        for event in self.events(job_id):
            if event.event == "output" and step in (None, event.step):
                yield TextRestart(event.delta) if event.reset else event.delta

    def wait(self, job_id: str, timeout: float | None = None) -> JobPublic:
        """Follow the job until it ends; returns the final job. Raises
        :class:`~llm_tasks.errors.WaitTimeout` after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout if timeout is not None else None
        for event in self._events(job_id, None, deadline):
            if event.event == "done":
                return JobPublic.model_validate(event.data)
        raise AssertionError("a stream ends with done")  # pragma: no cover

    def _events(
        self, job_id: str, last_event_id: str | None, deadline: float | None
    ) -> Iterator[Event]:
        resume = _Resume(job_id, last_event_id, deadline, self.max_reconnects)
        while True:
            try:
                with connect_sse(
                    self._http, "GET", resume.path, **resume.request(self.timeout)
                ) as source:
                    if resume.opened(source.response):
                        source.response.read()
                        raise error_for(source.response)
                    for line in source.response.iter_lines():
                        if (event := resume.line(line)) is not None:
                            yield event
                            if event.event == "done":
                                return
                    raise _Dropped("the stream ended before done")
            except (httpx.TransportError, _Dropped) as error:
                time.sleep(resume.failed(error))


class AsyncClient(_Options):
    """The asyncio client: the same methods as :class:`Client`, awaited (``events`` and
    ``stream_text`` are async iterators)."""

    _http: httpx.AsyncClient

    def _open(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=self.base_url, headers=self._headers, timeout=self.timeout
        )

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _request(self, method: str, path: str, **options: Any) -> httpx.Response:
        for attempt in range(self.max_retries + 1):
            response = await self._http.request(method, path, **options)
            if (wait := self._retry_in(response, attempt)) is not None:
                await asyncio.sleep(wait)
                continue
            if response.is_error:
                raise error_for(response)
            return response
        raise AssertionError("unreachable")  # pragma: no cover

    async def submit(
        self,
        kind: str,
        input: Input,
        *,
        idempotency_key: str | None = None,
        wait: int | None = None,
        **options: Unpack[JobOptionArgs],
    ) -> JobPublic:
        body = _job_body(kind, input, **options)
        request = _submit_options(idempotency_key, wait, self.timeout)
        response = await self._request("POST", "/v1/jobs", json=body, **request)
        return JobPublic.model_validate_json(response.content)

    async def get(self, job_id: str) -> JobPublic:
        response = await self._request("GET", f"/v1/jobs/{job_id}")
        return JobPublic.model_validate_json(response.content)

    async def models(self) -> list[ModelPublic]:
        response = await self._request("GET", "/v1/models")
        return ModelList.model_validate_json(response.content).data

    async def list(
        self,
        *,
        status: JobStatus | str | None = None,
        kind: str | None = None,
        limit: int = 20,
        cursor: str | None = None,
    ) -> JobPage:
        params = _list_params(status, kind, limit, cursor)
        response = await self._request("GET", "/v1/jobs", params=params)
        return JobPage.model_validate_json(response.content)

    async def cancel(self, job_id: str) -> JobPublic:
        response = await self._request("DELETE", f"/v1/jobs/{job_id}")
        return JobPublic.model_validate_json(response.content)

    def events(self, job_id: str, *, last_event_id: str | None = None) -> AsyncIterator[Event]:
        return self._events(job_id, last_event_id, deadline=None)

    async def stream_text(self, job_id: str, *, step: str | None = None) -> AsyncIterator[str]:
        async for event in self.events(job_id):
            if event.event == "output" and step in (None, event.step):
                yield TextRestart(event.delta) if event.reset else event.delta

    async def wait(self, job_id: str, timeout: float | None = None) -> JobPublic:  # noqa: ASYNC109 (same call as Client.wait)
        deadline = time.monotonic() + timeout if timeout is not None else None
        async for event in self._events(job_id, None, deadline):
            if event.event == "done":
                return JobPublic.model_validate(event.data)
        raise AssertionError("a stream ends with done")  # pragma: no cover

    async def _events(
        self, job_id: str, last_event_id: str | None, deadline: float | None
    ) -> AsyncIterator[Event]:
        resume = _Resume(job_id, last_event_id, deadline, self.max_reconnects)
        while True:
            try:
                async with aconnect_sse(
                    self._http, "GET", resume.path, **resume.request(self.timeout)
                ) as source:
                    if resume.opened(source.response):
                        await source.response.aread()
                        raise error_for(source.response)
                    async for line in source.response.aiter_lines():
                        if (event := resume.line(line)) is not None:
                            yield event
                            if event.event == "done":
                                return
                    raise _Dropped("the stream ended before done")
            except (httpx.TransportError, _Dropped) as error:
                await asyncio.sleep(resume.failed(error))
