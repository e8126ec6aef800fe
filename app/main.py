"""The ASGI app: ``uvicorn app.main:app``. Imports neither torch nor the worker's tasks."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from app import openapi
from app.core.config import ApiSettings, get_settings
from app.core.redis import connect
from app.errors import install_error_handlers
from app.events import EventHub
from app.limits import (
    BodySizeLimit,
    QueueDepths,
    RateLimiter,
    amqp_queue_counter,
    redis_queue_counter,
)
from app.routes import health, jobs, metrics, models, page
from contracts import logs
from contracts.celery_config import create_celery_app, is_amqp

DESCRIPTION = """
Run Hugging Face transformers jobs asynchronously. Submit a job with `POST /v1/jobs`,
get its id at once, then read it with `GET /v1/jobs/{id}`.

Statuses: `queued`, `running`, `succeeded`, `failed`, `canceled`, `expired`.
Errors are `application/problem+json` (RFC 9457).
"""


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: ApiSettings = app.dependency_overrides.get(get_settings, get_settings)()
    logs.configure(settings.log_format, "app")
    app.state.redis = connect(settings.redis_url, settings)
    backend = settings.effective_result_backend
    app.state.results = (
        app.state.redis if backend == settings.redis_url else connect(backend, settings)
    )
    app.state.celery = create_celery_app("llm_tasks.api", settings)
    app.state.limiter = RateLimiter(app.state.redis, settings.rate_limit, settings.rate_burst)
    broker = settings.effective_broker_url
    if is_amqp(broker):
        count = amqp_queue_counter(app.state.celery, settings.redis_timeout)
        app.state.broker_redis = None
    else:
        app.state.broker_redis = (
            app.state.redis if broker == settings.redis_url else connect(broker, settings)
        )
        count = redis_queue_counter(
            app.state.broker_redis, app.state.celery.conf.broker_transport_options
        )
    app.state.depths = QueueDepths(count, settings.queue_depth_refresh)
    app.state.hub = EventHub(app.state.results)
    await app.state.hub.start()
    try:
        yield
    finally:
        await app.state.hub.stop()
        app.state.celery.close()
        for extra in {id(c): c for c in (app.state.results, app.state.broker_redis)}.values():
            if extra is not None and extra is not app.state.redis:
                await extra.aclose()
        await app.state.redis.aclose()


def create_app(settings: ApiSettings | None = None) -> FastAPI:
    settings = settings or get_settings()
    app = FastAPI(title="llm-tasks", version="0.1.0", description=DESCRIPTION, lifespan=lifespan)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    install_error_handlers(app)
    app.include_router(jobs.router)
    app.include_router(models.router)
    app.include_router(health.router)
    app.include_router(metrics.router)
    app.include_router(page.router)
    openapi.install(app, settings)
    return app


app = create_app()
