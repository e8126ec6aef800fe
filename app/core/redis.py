"""Redis clients of the API: bounded timeouts, so that a Redis outage is a quick 503."""

import redis.asyncio as aioredis

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
    )
    return aioredis.Redis(connection_pool=pool)
