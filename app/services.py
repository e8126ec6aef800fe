"""What the API holds while it runs: its connections and the helpers built on them, opened
by the lifespan and reached by the routes through one dependency (``app.deps.ServicesDep``)."""

from dataclasses import dataclass

from celery import Celery

from app.core.config import ApiSettings
from app.core.redis import AsyncRedis, connect
from app.events import EventHub
from app.limits import QueueDepths, RateLimiter, amqp_queue_counter, redis_queue_counter
from contracts.celery_config import create_celery_app, is_amqp


@dataclass(frozen=True)
class Services:
    #: The job store's and the rate limiter's Redis.
    redis: AsyncRedis
    #: The result backend's Redis (the same client when it is the same URL).
    results: AsyncRedis
    #: The broker's Redis, for queue depths (None on RabbitMQ).
    broker_redis: AsyncRedis | None
    #: Sends tasks, revokes them, pings workers; imports no task.
    celery: Celery
    limiter: RateLimiter
    depths: QueueDepths
    #: Every event stream's subscriptions, on one pub/sub connection.
    hub: EventHub

    @classmethod
    async def open(cls, settings: ApiSettings) -> "Services":
        redis = connect(settings.redis_url, settings)
        backend = settings.effective_result_backend
        results = redis if backend == settings.redis_url else connect(backend, settings)
        celery = create_celery_app("llm_tasks.api", settings)
        broker = settings.effective_broker_url
        broker_redis = None
        if is_amqp(broker):
            count = amqp_queue_counter(celery, settings.redis_timeout)
        else:
            broker_redis = redis if broker == settings.redis_url else connect(broker, settings)
            count = redis_queue_counter(broker_redis, celery.conf.broker_transport_options)
        hub = EventHub(results)
        await hub.start()
        return cls(
            redis=redis,
            results=results,
            broker_redis=broker_redis,
            celery=celery,
            limiter=RateLimiter(redis, settings.rate_limit, settings.rate_burst),
            depths=QueueDepths(count, settings.queue_depth_refresh),
            hub=hub,
        )

    async def close(self) -> None:
        await self.hub.stop()
        self.celery.close()
        for extra in {id(c): c for c in (self.results, self.broker_redis)}.values():
            if extra is not None and extra is not self.redis:
                await extra.aclose()
        await self.redis.aclose()
