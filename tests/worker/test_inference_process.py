"""The inference process: requests cross to it and back, with their streams and cancels,
and a process that dies fails its requests (to be retried) and is replaced."""

import os
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import redis

from tools.stack import start_redis, wait_until
from worker.decode_loop import DecodeRow, add_step_hook
from worker.device_loop import RowControl
from worker.errors import TransientError
from worker.inference_process import InferenceProcess, InferenceProcessLost
from worker.job_task import CancelToken
from worker.leases import StepWatch
from worker.models import ModelRole, get_registry
from worker.summarizer import SummaryRequest


def paced() -> None:
    """In the inference process: every generation step takes at least 5 ms, so that a
    test can act while a row runs."""
    add_step_hook(lambda rows: time.sleep(0.005))


@pytest.fixture(scope="module")
def engine(tiny_models_dir: object) -> Iterator[InferenceProcess]:
    process = InferenceProcess(initializer=paced)
    process.start()
    yield process
    process.close()


def prompt(text: str) -> list[int]:
    tokenizer = get_registry().card(ModelRole.GENERATOR).tokenizer
    ids: list[int] = tokenizer(text)["input_ids"]
    return ids


def test_every_model_answers_through_the_process(engine: InferenceProcess):
    updates: list[list[int]] = []
    row = DecodeRow(prompt("The harbor at dawn"), 150, 0.8, 0.95, seed=4)
    control = RowControl(on_tokens=updates.append)
    [decoded] = engine.submit_many(str(ModelRole.GENERATOR), [row], [control])
    assert len(decoded.tokens) == 150 or decoded.finish_reason == "stop"
    assert updates, "the tokens streamed while the row ran"
    assert all(decoded.tokens[: len(update)] == update for update in updates)
    sentiments = engine.submit_many(str(ModelRole.CLASSIFIER), ["Lovely!", "Awful."])
    assert [s.label in {"POSITIVE", "NEGATIVE"} for s in sentiments] == [True, True]
    [summary] = engine.submit_many(
        str(ModelRole.SUMMARIZER),
        [SummaryRequest("The council met on Monday and agreed on a budget.", 2, 12)],
    )
    assert isinstance(summary, str) and summary


def test_a_cancel_crosses_to_the_process(engine: InferenceProcess):
    seen: list[int] = []
    row = DecodeRow(prompt("Stop me"), 200, 0.8, 0.95, seed=2)
    control = RowControl(
        on_tokens=lambda tokens: seen.append(len(tokens)),
        should_stop=lambda: bool(seen),  # stop once the first tokens came back
    )
    [decoded] = engine.submit_many(str(ModelRole.GENERATOR), [row], [control])
    assert decoded.finish_reason in {"canceled", "stop"}
    assert len(decoded.tokens) < 200


def test_a_dead_process_fails_its_requests_as_transient_and_is_replaced(
    engine: InferenceProcess,
):
    streaming = threading.Event()
    row = DecodeRow(prompt("A very long tale"), 200, 0.8, 0.95, seed=3)
    control = RowControl(on_tokens=lambda tokens: streaming.set(), should_stop=lambda: False)
    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(
            engine.submit_many, str(ModelRole.GENERATOR), [row] * 4, [control] * 4
        )
        assert streaming.wait(30)
        assert engine.pid is not None
        os.kill(engine.pid, signal.SIGKILL)
        with pytest.raises(InferenceProcessLost) as lost:
            running.result(timeout=60)
    assert isinstance(lost.value, TransientError)  # so the task retries it
    [again] = engine.submit_many(str(ModelRole.CLASSIFIER), ["Still here?"])
    assert again.label in {"POSITIVE", "NEGATIVE"}


def test_a_hung_redis_does_not_hold_up_results(engine: InferenceProcess, log_dir: Path):
    """The reply thread asks every streaming row whether to stop; a step's answer comes
    from memory (its job flags are read by the step watch's own thread), so a Redis that
    hangs (SIGSTOP: connections open, no answers) delays no token and no other result."""
    hang = 30.0  # a call to the hung Redis returns after this, with a timeout
    server, url = start_redis(log_dir)
    client = redis.Redis.from_url(url, socket_timeout=hang, socket_connect_timeout=hang)
    watch = StepWatch(lambda: client, owner="test", lease_seconds=60, interval=0.05)
    step = watch.acquire("task-under-a-hung-redis")
    watch.watch_job(step, "job-under-a-hung-redis")
    os.kill(server.popen.pid, signal.SIGSTOP)
    try:
        time.sleep(0.2)  # the watch thread is now waiting on Redis
        streamed: list[list[int]] = []
        row = DecodeRow(prompt("While Redis hangs"), 60, 0.8, 0.95, seed=1)
        control = RowControl(
            on_tokens=streamed.append,
            should_stop=CancelToken("task-under-a-hung-redis", step),
        )
        started = time.monotonic()
        with ThreadPoolExecutor(1) as pool:
            generation = pool.submit(engine.submit_many, str(ModelRole.GENERATOR), [row], [control])
            wait_until(lambda: bool(streamed), hang)
            sentiments = engine.submit_many(str(ModelRole.CLASSIFIER), ["Lovely!", "Awful."])
            [decoded] = generation.result(timeout=hang)
        # Everything came back before any call to the hung Redis could even time out.
        assert time.monotonic() - started < hang
        assert len(sentiments) == 2
        assert decoded.finish_reason != "canceled"
        assert len(decoded.tokens) == 60 or decoded.finish_reason == "stop"
    finally:
        os.kill(server.popen.pid, signal.SIGCONT)
        watch.release(step)
        server.stop()
