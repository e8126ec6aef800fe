"""The one Celery configuration, used by the API (producer) and the workers (consumers).

If the two sides disagree on queues or priority steps, priorities silently break, so
both build their app with :func:`create_celery_app`.
"""

from typing import Any

from celery import Celery
from kombu.entity import Queue

from contracts import redis_transport
from contracts.names import TASK_QUEUES, QueueName
from contracts.settings import CommonSettings
from llm_tasks.kinds import DEFAULT_PRIORITY, PRIORITY_LEVELS


def is_amqp(broker_url: str) -> bool:
    return broker_url.split("://", 1)[0] in {"amqp", "amqps", "pyamqp"}


def broker_priority(priority: int, broker_url: str) -> int:
    """Map a client priority (9 = most urgent) to the broker's own convention.

    The Redis transport consumes 0 first; RabbitMQ delivers the highest number first.
    """
    if not 0 <= priority < PRIORITY_LEVELS:
        raise ValueError(f"priority must be in 0..{PRIORITY_LEVELS - 1}, got {priority}")
    return priority if is_amqp(broker_url) else PRIORITY_LEVELS - 1 - priority


def client_priority(delivered: int, broker_url: str) -> int:
    """The client priority of a message the broker delivered with priority ``delivered``
    (:func:`broker_priority` is its own inverse)."""
    return broker_priority(delivered, broker_url)


def celery_config(settings: CommonSettings) -> dict[str, Any]:
    broker_url = settings.effective_broker_url
    queue_arguments = {"x-max-priority": PRIORITY_LEVELS - 1} if is_amqp(broker_url) else None
    return {
        "broker_url": broker_url,
        "result_backend": settings.effective_result_backend,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        "task_queues": [
            Queue(queue, routing_key=queue, queue_arguments=queue_arguments)
            for queue in dict.fromkeys(
                [q.value for q in QueueName] + [m.queue for m in settings.declared_models()]
            )
        ],
        "task_default_queue": QueueName.DEFAULT.value,
        "task_routes": {name.value: {"queue": queue.value} for name, queue in TASK_QUEUES.items()},
        "task_create_missing_queues": False,
        "task_default_priority": broker_priority(DEFAULT_PRIORITY, broker_url),
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "task_track_started": True,
        "worker_prefetch_multiplier": 1,
        "result_expires": settings.result_expires,
        "result_extended": True,
        "broker_connection_retry_on_startup": True,
        # Bounded: a broker that is down answers 503 in about a second, not after minutes.
        "task_publish_retry": True,
        "task_publish_retry_policy": {
            "max_retries": 2,
            "interval_start": 0,
            "interval_step": 0.2,
            "interval_max": 0.5,
        },
        "broker_transport_options": {
            "visibility_timeout": settings.visibility_timeout,
            # Look for messages a dead worker left unacknowledged every tenth of the
            # visibility timeout (kombu's default sweep is every ~100 s).
            "unacked_restore_interval": max(1, min(10, settings.visibility_timeout // 10)),
            "unacked_restore_throttle": 1,
            "priority_steps": list(range(PRIORITY_LEVELS)),
            "sep": ":",
            "queue_order_strategy": "priority",
        },
        "enable_utc": True,
        "timezone": "UTC",
    }


def create_celery_app(main: str, settings: CommonSettings) -> Celery:
    """A Celery app configured from ``settings``; creating it opens no connection.
    ``redis://`` brokers use :mod:`contracts.redis_transport` (one client per channel,
    visibility extended while a message is held)."""
    redis_transport.register()
    app = Celery(main)
    app.conf.update(celery_config(settings))
    return app
