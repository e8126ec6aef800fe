"""kombu's Redis transport, with one Redis client per channel and visibility that a live
consumer keeps extending.

**One client.** kombu's Redis channel builds a new ``redis.Redis`` (which copies some 170
response callbacks into a dict of its own) for every message it publishes, and on a
worker for every message it takes (the unacknowledged index) and every acknowledgement:
about a sixth of a busy worker's Python time went to building clients that were used
once. A ``redis.Redis`` on a connection pool is safe to share between threads (each
command takes a connection from the pool, each pipeline is its own object), so this
channel keeps one, and builds it again only when kombu replaced the pool (after a fork or
a lost connection). ``conn_or_acquire`` is the channel's one way to a client, so it is
the method overridden.

**Visibility extended while held.** kombu emulates acknowledgements on Redis: a message
taken by a consumer waits in the unacknowledged index, scored by when it was taken, and
any consumer puts it back on its queue once it is older than the visibility timeout —
then a job longer than the timeout, or a countdown longer than it, runs twice. Here the
consumer that holds a message (running, or waiting for its countdown) re-stamps it in
that index every fifth of the timeout, from its own event loop, as SQS consumers extend
a message's visibility. A consumer that dies stops re-stamping, and its messages are
delivered again one visibility timeout later, as before. (The step's lease in
:mod:`worker.leases` guards what still comes twice: a RabbitMQ redelivery, a consumer
whose event loop stalled.)

Everything else — keys, priorities, restores — is kombu's own. :func:`register` makes
``redis://`` URLs use this transport through kombu's documented alias table, so that the
URL itself stays ``redis://…`` for Flower and ``celery inspect``.
"""

import threading
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any

from kombu.transport import TRANSPORT_ALIASES
from kombu.transport import redis as kombu_redis

#: The transport's import path, for ``Connection(transport=...)``.
TRANSPORT = f"{__name__}:Transport"


def register() -> None:
    """Make ``redis://`` brokers use this transport in this process (``rediss://`` keeps
    kombu's own, which also sets its TLS defaults by that scheme)."""
    TRANSPORT_ALIASES["redis"] = TRANSPORT


class QoS(kombu_redis.QoS):
    """kombu's acknowledgement emulation, knowing which messages this consumer holds."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._held: set[str] = set()
        self._held_lock = threading.Lock()  # acknowledgements come from the task threads

    def append(self, message: Any, delivery_tag: str) -> None:
        super().append(message, delivery_tag)
        with self._held_lock:
            self._held.add(delivery_tag)

    def ack(self, delivery_tag: str) -> None:
        with self._held_lock:
            self._held.discard(delivery_tag)
        super().ack(delivery_tag)

    def reject(self, delivery_tag: str, requeue: bool = False) -> None:
        with self._held_lock:
            self._held.discard(delivery_tag)
        super().reject(delivery_tag, requeue=requeue)

    def restore_unacked(self, client: Any = None) -> None:
        with self._held_lock:
            self._held.clear()
        super().restore_unacked(client)

    def extend_visibility(self) -> int:
        """Stamp every message this consumer holds as taken now; returns how many. Only
        messages still in the index are touched (one restored meanwhile stays restored)."""
        with self._held_lock:
            held = list(self._held)
        if not held:
            return 0
        with self.channel.conn_or_acquire() as client:
            client.zadd(self.unacked_index_key, dict.fromkeys(held, time.time()), xx=True)
        return len(held)


class Channel(kombu_redis.Channel):
    QoS = QoS
    _shared_client: Any = None

    def __init__(self, connection: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(connection, *args, **kwargs)
        connection.open_channels.add(self)

    # Undocumented override: kombu 5.7's Channel.conn_or_acquire builds a client with the
    # private _create_client for every command (see the module's docstring); one shared
    # client instead. Shape checked by tests/contracts/test_upstream_overrides.py.
    @contextmanager
    def conn_or_acquire(self, client: Any = None) -> Iterator[Any]:
        if client:
            yield client
            return
        shared = self._shared_client
        if shared is None or shared.connection_pool is not self.pool:
            shared = self._shared_client = self._create_client()
        yield shared


class Transport(kombu_redis.Transport):
    Channel = Channel

    _extend_timer: Any = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.open_channels: weakref.WeakSet[Channel] = weakref.WeakSet()

    def register_with_event_loop(self, connection: Any, loop: Any) -> None:
        super().register_with_event_loop(connection, loop)
        if self._extend_timer is not None:  # a reconnect registers again
            self._extend_timer.cancel()
        timeout = connection.client.transport_options.get(
            "visibility_timeout", Channel.visibility_timeout
        )
        self._extend_timer = loop.call_repeatedly(max(1.0, timeout / 5), self._extend_visibility)

    def _extend_visibility(self) -> None:
        for channel in list(self.open_channels):
            # A connection being replaced: the next tick tries again.
            with suppress(*channel.connection_errors):
                channel.qos.extend_visibility()
