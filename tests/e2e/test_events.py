"""Live job events over SSE: pushed from Redis, streamed text, exact resume, heartbeats."""

import contextlib
import json
import socket
import time
from pathlib import Path

import h11
import httpx
import psutil
import pytest
import redis

from contracts.records import RECORD_FIELD, JobRecord, job_key
from llm_tasks import Client, StepTexts
from tests.conftest import wait_for, wait_for_job
from tests.support.sse import Comment, Event, events, read_stream, text_of
from tools.stack import clean_env, free_port, http_ok, start_api, start_redis, wait_until

pytestmark = pytest.mark.e2e


def submit(client: httpx.Client, kind: str = "generate", **body) -> dict:
    response = client.post("/v1/jobs", json={"kind": kind, **body})
    assert response.status_code == 202, response.text
    return response.json()


def sequence_numbers(received: list[Event]) -> list[int]:
    return [int(e.id.split("-")[0]) for e in received]


def test_a_generate_job_streams_status_then_text_then_done(client: httpx.Client):
    job = submit(
        client, input={"prompt": "SLOW: Once upon a time", "max_new_tokens": 20, "seed": 4}
    )
    received = events(client, job["id"])
    names = [e.event for e in received]
    assert names[0] == "status"
    assert received[0].data["id"] == job["id"]
    assert names[-1] == "done"
    assert names.count("output") >= 2, names  # streamed, not delivered at the end
    assert "progress" in names
    progress = [e.data for e in received if e.event == "progress"]
    assert all(p["step"] == "generate" and p["total"] == 20 for p in progress)
    final = received[-1].data
    assert final["status"] == "succeeded"
    assert text_of(received) == final["output"]["text"]
    numbers = sequence_numbers(received)
    assert numbers == sorted(numbers) and len(set(numbers)) == len(numbers)


def test_resume_with_last_event_id_is_exact(client: httpx.Client):
    job = submit(client, input={"prompt": "SLOW: The weather", "max_new_tokens": 30, "seed": 8})
    first: list[Event] = []
    with client.stream("GET", f"/v1/jobs/{job['id']}/events", timeout=60) as response:
        for item in read_stream(response):
            if isinstance(item, Event):
                first.append(item)
            if sum(e.event == "output" for e in first) == 2:
                break  # the client drops the connection mid-generation
    rest = events(client, job["id"], last_event_id=first[-1].id)
    assert rest[0].event == "status"  # every connection starts with a snapshot
    assert rest[-1].event == "done"
    final_text = rest[-1].data["output"]["text"]
    assert text_of(first) + text_of(rest) == final_text
    assert sequence_numbers(rest)[0] > sequence_numbers(first)[-1]

    # Also once the job has ended: the same resume point gives the same missing text.
    after = events(client, job["id"], last_event_id=first[-1].id)
    assert text_of(first) + text_of(after) == final_text
    assert [e.event for e in after][-1] == "done"


def test_a_finished_job_gets_its_snapshot_and_done_at_once(client: httpx.Client):
    job = submit(client, "sentiment", input={"text": "I love it."})
    wait_for_job(client, job["id"])
    received = events(client, job["id"])
    assert [e.event for e in received] == ["status", "done"]
    assert received[0].data["status"] == received[1].data["status"] == "succeeded"
    assert received[1].data["output"]["label"] == "POSITIVE"


def test_idle_streams_get_heartbeats(client: httpx.Client):
    job = submit(client, input={"prompt": "Later"}, delay_seconds=3)
    comments = 0
    with client.stream("GET", f"/v1/jobs/{job['id']}/events", timeout=30) as response:
        for item in read_stream(response):
            if isinstance(item, Comment):
                comments += 1
                if comments == 2:
                    break
    assert comments == 2
    client.delete(f"/v1/jobs/{job['id']}")


def test_a_client_that_goes_away_leaves_no_subscription(client: httpx.Client, redis_url: str):
    job = submit(client, input={"prompt": "Later"}, delay_seconds=5)
    store = redis.Redis.from_url(redis_url)
    # The job registry knows the step's Celery task id, and so its channel.
    record = JobRecord.model_validate_json(store.hget(job_key(job["id"]), RECORD_FIELD))
    [step] = record.steps
    channel = f"celery-task-meta-{step.task_id}"

    def subscribers() -> int:
        return int(dict(store.pubsub_numsub(channel))[channel.encode()])

    assert subscribers() == 0
    with client.stream("GET", f"/v1/jobs/{job['id']}/events", timeout=30) as response:
        stream = read_stream(response)  # held: a collected reader would hang up at once
        first = next(stream)
        assert isinstance(first, Event), first
        assert first.event == "status"  # sent once subscribed
        assert subscribers() == 1
    deadline = time.monotonic() + 15
    while subscribers() != 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert subscribers() == 0, "the stream's subscription outlived its client"
    client.delete(f"/v1/jobs/{job['id']}")


def test_a_workflow_streams_each_step(client: httpx.Client):
    job = submit(client, "story", input={"topic": "SLOW: a comet", "max_new_tokens": 6, "seed": 2})
    received = events(client, job["id"])
    final = received[-1].data
    assert received[-1].event == "done" and final["status"] == "succeeded"
    for step, part in (("outline", "outline"), ("expand", "story"), ("dialogue", "dialogue")):
        assert text_of(received, step) == final["output"][part]
    statuses = [e.data for e in received if e.event == "status"]
    running_steps = {
        s["name"] for snap in statuses for s in snap["steps"] if s["status"] == "running"
    }
    # The slow first step is seen running. The later ones run in milliseconds: a snapshot
    # is read when the stream gets to it, and may already find such a step ended.
    assert "outline" in running_steps
    # Snapshots never go back: steps end in their order.
    done_counts = [sum(s["status"] == "succeeded" for s in snap["steps"]) for snap in statuses]
    assert done_counts == sorted(done_counts)


def test_a_canceled_job_ends_its_stream(client: httpx.Client):
    job = submit(client, input={"prompt": "SLOW: on and on", "max_new_tokens": 90})
    wait_for(client, job["id"], lambda j: j["status"] == "running")
    with client.stream("GET", f"/v1/jobs/{job['id']}/events", timeout=30) as response:
        client.delete(f"/v1/jobs/{job['id']}")
        received = [item for item in read_stream(response) if isinstance(item, Event)]
    assert received[-1].event == "done"
    assert received[-1].data["status"] == "canceled"


def test_events_of_an_unknown_job_are_404(client: httpx.Client):
    response = client.get("/v1/jobs/nope/events")
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"


def test_a_retried_step_starts_its_text_over_and_the_client_follows(
    client: httpx.Client, api_url: str
):
    # The first attempt streams 8 tokens, then fails with a transient error; the retry
    # (no seed: a fresh draw) writes another text from the start.
    body = {"prompt": "SLOW: TRANSIENT_AFTER:1:8: The sea", "max_new_tokens": 16}
    job = submit(client, input=body)
    texts = StepTexts()
    live = []
    with Client(api_url) as follower:
        for event in follower.events(job["id"]):
            texts.add(event)
            live.append(event)
    final = live[-1].job
    assert final is not None and final.status == "succeeded"
    assert final.attempts == 2
    assert final.output is not None
    outputs = [e for e in live if e.event == "output"]
    [restart] = [i for i, e in enumerate(outputs) if e.reset]
    assert restart > 0 and "".join(e.delta for e in outputs[:restart])  # attempt 1 had text
    assert [e.attempt for e in outputs] == [1] * restart + [2] * (len(outputs) - restart)
    assert texts["generate"] == final.output.text

    # Resuming from an event of the first attempt, once the job ended, is exact too.
    resume_at = outputs[restart - 1].id
    earlier = StepTexts()
    for event in live[: live.index(outputs[restart - 1]) + 1]:
        earlier.add(event)
    with Client(api_url) as follower:
        for event in follower.events(job["id"], last_event_id=resume_at):
            earlier.add(event)
    assert earlier["generate"] == final.output.text


def test_a_client_that_reads_slowly_costs_bounded_memory(log_dir: Path):
    """Every state a worker publishes carries the whole text so far: queued for a client
    that does not keep up, they would cost memory with the square of the text. The test
    plays the worker (Celery's own backend writes the states) for an API with a client
    that takes nothing from its socket until the step has ended."""
    server, redis_url = start_redis(log_dir)
    port = free_port()
    api = start_api(clean_env(redis_url=redis_url), log_dir, host="127.0.0.1", port=port)
    stack = contextlib.ExitStack()
    try:
        wait_until(lambda: http_ok(f"http://127.0.0.1:{port}/healthz"), 30, api)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            job = submit(client, input={"prompt": "Nobody runs this", "max_new_tokens": 8})
        [step] = JobRecord.model_validate_json(
            redis.Redis.from_url(redis_url).hget(job_key(job["id"]), RECORD_FIELD)
        ).steps
        slow = stack.enter_context(socket.socket())
        slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a small window
        slow.connect(("127.0.0.1", port))
        http = h11.Connection(h11.CLIENT)
        path = f"/v1/jobs/{job['id']}/events"
        slow.sendall(http.send(h11.Request(method="GET", target=path, headers=[("Host", "x")])))
        slow.sendall(http.send(h11.EndOfMessage()))
        time.sleep(0.5)  # subscribed

        api_memory = psutil.Process(api.popen.pid)
        before = api_memory.memory_info().rss
        store = redis.Redis.from_url(redis_url)

        def store_state(state: str, result: dict) -> None:
            """What Celery's Redis result backend does with a task's state."""
            meta = json.dumps({"status": state, "result": result, "task_id": step.task_id})
            store.set(f"celery-task-meta-{step.task_id}", meta)
            store.publish(f"celery-task-meta-{step.task_id}", meta)

        text, published, peak = "", 0, before
        for n in range(1500):  # a long generation: 1500 updates, 90 kB of text at the end
            text += f"word{n:05d} "[:60] * 6
            # A wordy progress message too: more than the sockets' buffers hold in all.
            message = f"{n} tokens " + "." * 4000
            meta = {"current": n, "total": 1500, "message": message, "text": text}
            store_state("PROGRESS", meta)
            published += len(text)
            if n % 100 == 0:
                peak = max(peak, api_memory.memory_info().rss)
        time.sleep(1)  # the API has read them all from Redis by now
        peak = max(peak, api_memory.memory_info().rss)
        final = {"text": text, "tokens": 1500, "finish_reason": "length"}
        store_state("SUCCESS", final | {"prompt_tokens": 3, "model": "m"})

        received = b""
        slow.settimeout(30)
        while True:  # now the client reads it all
            event = http.next_event()
            if event is h11.NEED_DATA:
                http.receive_data(slow.recv(65536))
            elif isinstance(event, h11.Data):
                received += event.data
            elif isinstance(event, h11.EndOfMessage):
                break
        # What was queued for the client is one state per step, not every update:
        # growth well under the bytes the worker published (about 68 MB).
        assert published > 60_000_000
        assert peak - before < published / 8, (before, peak, published)
        outputs = [
            json.loads(line.removeprefix("data: "))
            for line in received.decode().splitlines()
            if line.startswith("data: ") and '"delta"' in line
        ]
        assert outputs and "".join(o["delta"] for o in outputs) == text
    finally:
        stack.close()
        api.stop()
        server.stop()


def test_a_stop_string_cuts_the_text_and_the_stream_never_shows_what_it_cut(
    client: httpx.Client,
):
    body = {"prompt": "SLOW: The lighthouse", "max_new_tokens": 40, "temperature": 0.0}
    full = wait_for_job(client, submit(client, input=body)["id"])["output"]["text"]
    start = len(full) // 2
    stop = full[start : start + 4]
    job = submit(client, input=body | {"stop": [stop, "never in it \x01"]})
    received = events(client, job["id"])
    done = received[-1].data
    assert done["status"] == "succeeded"
    assert done["output"]["finish_reason"] == "stop"
    assert done["output"]["text"] == full[: full.find(stop)]
    # The deltas add up to the cut text: none showed what the stop cut.
    assert text_of(received) == done["output"]["text"]
