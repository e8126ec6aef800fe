"""kombu's Redis transport, with one Redis client per channel instead of one per command.

kombu's Redis channel builds a new ``redis.Redis`` (which copies some 170 response
callbacks into a dict of its own) for every message it publishes, and on a worker for
every message it takes (the unacknowledged index) and every acknowledgement: about a
sixth of a busy worker's Python time went to building clients that were used once. A
``redis.Redis`` on a connection pool is safe to share between threads (each command
takes a connection from the pool, each pipeline is its own object), so this channel
keeps one, and builds it again only when kombu replaced the pool (after a fork or a
lost connection). Everything else — keys, priorities, visibility timeout, restores — is
kombu's own.

:func:`contracts.celery_config.celery_config` names this transport for ``redis://``
brokers; other brokers keep theirs.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from kombu.transport import redis as kombu_redis

#: The ``broker_transport`` setting that selects it.
TRANSPORT = f"{__name__}:Transport"


class Channel(kombu_redis.Channel):
    _shared_client: Any = None

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
