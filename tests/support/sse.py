"""A small Server-Sent Events reader for the tests (the wire format, parsed by hand)."""

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx


@dataclass
class Event:
    event: str
    data: Any
    id: str | None


@dataclass
class Comment:
    text: str


def read_stream(response: httpx.Response) -> Iterator[Event | Comment]:
    """Events and comments as they arrive, until the server ends the stream."""
    fields: dict[str, str] = {}
    data: list[str] = []
    for line in response.iter_lines():
        if line.startswith(":"):
            yield Comment(line[1:].strip())
        elif line == "":
            if data or fields:
                yield Event(
                    fields.get("event", "message"), json.loads("\n".join(data)), fields.get("id")
                )
            fields, data = {}, []
        else:
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "data":
                data.append(value)
            else:
                fields[name] = value


def events(client: httpx.Client, job_id: str, last_event_id: str | None = None) -> list[Event]:
    """Every event of the job's stream, from (re)connecting until it closes."""
    headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
    with client.stream("GET", f"/v1/jobs/{job_id}/events", headers=headers, timeout=60) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        return [item for item in read_stream(response) if isinstance(item, Event)]


def text_of(received: list[Event], step: str | None = None) -> str:
    """The steps' texts joined, as a client builds them: each step's deltas in order, and
    a ``reset`` (the step runs again) starting that step's text over."""
    texts: dict[str, str] = {}
    for e in received:
        if e.event == "output" and step in (None, e.data["step"]):
            written = "" if e.data.get("reset") else texts.get(e.data["step"], "")
            texts[e.data["step"]] = written + e.data["delta"]
    return "".join(texts.values())
