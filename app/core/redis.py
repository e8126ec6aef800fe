"""Redis clients of the API: bounded timeouts, so that a Redis outage is a quick 503."""

import redis.asyncio as aioredis
import redis.exceptions
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from app.core.config import ApiSettings

AsyncRedis = aioredis.Redis


def connect(url: str, settings: ApiSettings) -> AsyncRedis:
    """A bounded connection pool for ``url``; nothing is connected until the first command.

    Bounded, so that a burst of clients queues for a connection (up to ``redis_timeout``)
    instead of opening one each: live events need one pub/sub connection per process,
    whatever the number of streams.
    """
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=settings.redis_max_connections,
        timeout=settings.redis_timeout,
        socket_connect_timeout=settings.redis_timeout,
        socket_timeout=settings.redis_timeout,
        health_check_interval=30,
        # One immediate retry on a broken connection (after Redis restarts, the pooled
        # connections are stale: the retry reconnects); none on a timeout, so that a hung
        # Redis costs a request about REDIS_TIMEOUT before its 503, not a multiple of it.
        retry=Retry(NoBackoff(), 1, supported_errors=(redis.exceptions.ConnectionError,)),
    )
    return aioredis.Redis(connection_pool=pool)
