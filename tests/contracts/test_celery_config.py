from contracts.celery_config import broker_priority, celery_config, create_celery_app
from contracts.names import TASK_QUEUES, QueueName, TaskName
from contracts.settings import CommonSettings


def settings(**overrides) -> CommonSettings:
    return CommonSettings(redis_url="redis://127.0.0.1:1/0", **overrides)


def test_json_only_on_both_sides():
    conf = celery_config(settings())
    assert conf["task_serializer"] == conf["result_serializer"] == "json"
    assert conf["accept_content"] == conf["result_accept_content"] == ["json"]


def test_every_queue_is_declared_and_typos_fail():
    conf = celery_config(settings())
    declared = {queue.name for queue in conf["task_queues"]}
    assert declared == {"generate", "summarize", "classify", "default", "webhooks"}
    assert conf["task_create_missing_queues"] is False
    assert conf["task_routes"][TaskName.GENERATE.value] == {"queue": QueueName.GENERATE.value}
    assert set(TASK_QUEUES) == set(TaskName)


def test_reliability_settings():
    conf = celery_config(settings(visibility_timeout=1234, result_expires=999))
    assert conf["task_acks_late"] and conf["task_reject_on_worker_lost"]
    assert conf["worker_prefetch_multiplier"] == 1
    assert conf["broker_transport_options"]["visibility_timeout"] == 1234
    assert conf["result_expires"] == 999
    assert conf["broker_transport_options"]["priority_steps"] == list(range(10))


def test_priority_nine_is_most_urgent_on_redis_and_rabbitmq():
    redis, amqp = "redis://localhost", "amqp://guest@localhost"
    # The Redis transport consumes 0 first; RabbitMQ the highest number first.
    assert broker_priority(9, redis) == 0
    assert broker_priority(0, redis) == 9
    assert broker_priority(9, amqp) == 9
    assert len({broker_priority(p, redis) for p in range(10)}) == 10


def test_rabbitmq_queues_accept_ten_priorities():
    conf = celery_config(settings(broker_url="amqp://guest:guest@localhost:5672//"))
    assert all(q.queue_arguments == {"x-max-priority": 9} for q in conf["task_queues"])


def test_broker_and_backend_default_to_redis_url():
    app = create_celery_app("t", settings())
    assert app.conf.broker_url == app.conf.result_backend == "redis://127.0.0.1:1/0"
    other = create_celery_app("t", settings(result_backend="redis://127.0.0.1:2/1"))
    assert other.conf.result_backend == "redis://127.0.0.1:2/1"


def test_delay_limit_outlives_the_visibility_timeout_but_not_the_job():
    # A held countdown keeps its message invisible (contracts.redis_transport).
    assert settings(visibility_timeout=60, result_expires=86400).delay_limit == 43200
    assert settings(visibility_timeout=3600, max_delay_seconds=100).delay_limit == 100
    assert settings(result_expires=600, max_delay_seconds=100_000).delay_limit == 300
