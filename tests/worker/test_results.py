"""The worker's result backend, on a real Redis: Celery's documents and channel, one
round trip per write, and an ended task is never written over."""

import json
import os
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from celery import states
from celery.backends.redis import RedisBackend

from contracts.celery_config import create_celery_app
from contracts.settings import CommonSettings
from worker.results import ResultBackend


class Request:
    """The parts of a task's request that ``result_extended`` stores."""

    def __init__(self, task_id: str) -> None:
        self.id = task_id
        self.task = "llm.generate"
        self.args: list[Any] = []
        self.kwargs = {"prompt": "Once"}
        self.hostname = "worker@test"
        self.retries = 0
        self.delivery_info = {"routing_key": "generate"}
        self.ignore_result = False


@pytest.fixture
def backends(redis_url: str) -> Iterator[tuple[ResultBackend, RedisBackend]]:
    app = create_celery_app("test", CommonSettings(redis_url=redis_url, result_expires=600))
    ours, celerys = ResultBackend(app=app, url=redis_url), RedisBackend(app=app, url=redis_url)
    yield ours, celerys
    for backend in (ours, celerys):
        backend.client.connection_pool.disconnect()
    app.close()


def test_documents_and_messages_are_celerys(backends, redis_url: str):
    ours, celerys = backends
    client = redis.Redis.from_url(redis_url)
    channel = client.pubsub()
    channel.subscribe(ours.get_key_for_task("t-doc"))
    channel.get_message(timeout=1)  # the subscription's confirmation
    try:
        ours.store_result(
            "t-doc", {"current": 3, "text": "Once"}, "PROGRESS", request=Request("t-doc")
        )
        published = channel.get_message(timeout=2)
        ttl = client.ttl(ours.get_key_for_task("t-doc"))
    finally:
        channel.close()
        client.close()
    meta = celerys.get_task_meta("t-doc")
    assert meta["status"] == "PROGRESS"
    assert meta["result"] == {"current": 3, "text": "Once"}
    assert meta["kwargs"] == {"prompt": "Once"} and meta["worker"] == "worker@test"
    assert published is not None and json.loads(published["data"])["status"] == "PROGRESS"
    assert 0 < ttl <= 600


def test_a_success_is_never_written_over(backends):
    ours, celerys = backends
    ours.store_result("t-ok", {"text": "done"}, states.SUCCESS, request=Request("t-ok"))
    ours.store_result("t-ok", {"current": 1}, "PROGRESS", request=Request("t-ok"))
    ours.store_result("t-ok", RuntimeError("late"), states.FAILURE, request=Request("t-ok"))
    assert ours.store_started("t-ok", Request("t-ok"), {"pid": 1}) == states.SUCCESS
    meta = celerys.get_task_meta("t-ok")
    assert meta["status"] == states.SUCCESS and meta["result"] == {"text": "done"}


def test_a_step_starts_unless_it_already_ended(backends):
    ours, celerys = backends
    started = {"pid": os.getpid(), "hostname": "worker@test"}
    assert ours.store_started("t-new", Request("t-new"), started) is None
    meta = celerys.get_task_meta("t-new")
    assert meta["status"] == states.STARTED and meta["result"] == started
    # A later state replaces STARTED as usual.
    ours.store_result("t-new", {"text": "x"}, states.SUCCESS, request=Request("t-new"))
    assert celerys.get_task_meta("t-new")["status"] == states.SUCCESS

    for ended in (states.FAILURE, states.REVOKED):
        task_id = f"t-{ended}"
        ours.store_result(task_id, RuntimeError("no"), ended, request=Request(task_id))
        assert ours.store_started(task_id, Request(task_id), started) == ended
        assert celerys.get_task_meta(task_id)["status"] == ended


def test_the_worker_app_uses_it():
    from worker.celery_app import app

    assert isinstance(app.backend, ResultBackend)  # made without connecting
    assert app.conf.task_track_started is False  # JobTask stores STARTED itself


def test_a_step_starts_after_the_step_before_is_stored(backends, redis_url: str):
    """Celery sends a chain's next step before it stores the step's result: the next
    step's start waits for it, so followers see the steps' states in their order."""
    ours, celerys = backends
    ours.store_result("t-parent", {"current": 1}, "PROGRESS", request=Request("t-parent"))
    client = redis.Redis.from_url(redis_url)
    channel = client.pubsub()
    channel.subscribe(ours.get_key_for_task("t-parent"), ours.get_key_for_task("t-child"))
    try:
        while channel.get_message(timeout=1) is not None:  # the two confirmations
            pass
        parent_done = threading.Timer(
            0.2,
            lambda: ours.store_result(
                "t-parent", {"text": "x"}, states.SUCCESS, request=Request("t-parent")
            ),
        )
        parent_done.start()
        assert ours.store_started("t-child", Request("t-child"), {}, parent_id="t-parent") is None
        parent_done.join()
        published = [channel.get_message(timeout=2) for _ in range(2)]
    finally:
        channel.close()
        client.close()
    order = [json.loads(message["data"])["status"] for message in published if message]
    assert order == [states.SUCCESS, states.STARTED]
    assert celerys.get_task_meta("t-child")["status"] == states.STARTED


def test_a_step_whose_step_before_is_never_stored_starts_anyway(backends):
    ours, celerys = backends
    started = ours.store_started(
        "t-orphan", Request("t-orphan"), {}, parent_id="t-gone", parent_wait=0.1
    )
    assert started is None
    assert celerys.get_task_meta("t-orphan")["status"] == states.STARTED


def test_a_retry_does_not_wait_for_itself(backends, caplog):
    """Celery sends a retry from the task itself, which it names as the parent: the
    retry starts at once, without a warning about a step before it."""
    ours, celerys = backends
    ours.store_result(
        "t-retry", {"exc": "TransientError"}, states.RETRY, request=Request("t-retry")
    )
    with caplog.at_level("WARNING", logger="worker.results"):
        started = ours.store_started("t-retry", Request("t-retry"), {}, parent_id="t-retry")
    assert started is None
    assert celerys.get_task_meta("t-retry")["status"] == states.STARTED
    assert not [record for record in caplog.records if "started before" in record.getMessage()]
