"""Redis clients of the API: bounded timeouts, so that a Redis outage is a quick 503."""

import redis.asyncio as aioredis

from app.core.config import ApiSettings

AsyncRedis = aioredis.Redis


def connect(url: str, settings: ApiSettings) -> AsyncRedis:
    """A connection pool for ``url``; nothing is connected until the first command."""
    client: AsyncRedis = aioredis.Redis.from_url(
        url,
        socket_connect_timeout=settings.redis_timeout,
        socket_timeout=settings.redis_timeout,
        health_check_interval=30,
    )
    return client
