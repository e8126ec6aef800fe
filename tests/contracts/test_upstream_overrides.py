"""Each override or use of a private Celery or kombu member still meets the shape it was
written against. When upstream changes one, this fails, and the override is looked at again:
adapted, or removed if upstream no longer needs it (see the note beside each override)."""

import inspect

from celery.backends.base import Backend, BaseKeyValueStoreBackend
from celery.backends.redis import RedisBackend
from kombu.transport import redis as kombu_redis

from contracts import redis_transport
from worker.results import ResultBackend


def parameters(function: object) -> list[str]:
    return list(inspect.signature(function).parameters)  # type: ignore[arg-type]


def test_celery_s_store_result_has_the_shape_the_backend_overrides():
    assert parameters(BaseKeyValueStoreBackend._store_result) == [
        "self", "task_id", "result", "state", "traceback", "request", "kwargs",
    ]  # fmt: skip
    assert parameters(ResultBackend._store_result)[:6] == [
        "self", "task_id", "result", "state", "traceback", "request",
    ]  # fmt: skip


def test_celery_still_reads_a_result_before_it_writes_one():
    """The override exists to fold this read and the write into one round trip; once
    Celery writes without reading first, it can go."""
    assert "_get_task_meta_for" in inspect.getsource(BaseKeyValueStoreBackend._store_result)


def test_celery_builds_the_meta_document_from_what_the_backend_passes():
    assert {"result", "state", "traceback", "request"} <= set(parameters(Backend._get_result_meta))
    assert RedisBackend._MAX_STR_VALUE_SIZE == 512 * 1024 * 1024


def test_kombu_s_channel_still_builds_a_client_per_command():
    """The shared client replaces this; once kombu keeps one itself, the override can go."""
    assert parameters(kombu_redis.Channel.conn_or_acquire) == ["self", "client"]
    assert "self._create_client()" in inspect.getsource(kombu_redis.Channel.conn_or_acquire)
    assert parameters(kombu_redis.Channel._create_client) == ["self", "asynchronous"]
    assert parameters(redis_transport.Channel.conn_or_acquire) == ["self", "client"]


def test_kombu_s_acknowledgement_emulation_has_the_hooks_the_qos_extends():
    for name, expected in {
        "append": ["self", "message", "delivery_tag"],
        "ack": ["self", "delivery_tag"],
        "reject": ["self", "delivery_tag", "requeue"],
        "restore_unacked": ["self", "client"],
    }.items():
        assert parameters(getattr(kombu_redis.QoS, name)) == expected, name
    assert hasattr(inspect.getattr_static(kombu_redis.QoS, "unacked_index_key"), "__get__")
