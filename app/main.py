"""The ASGI app: ``uvicorn app.main:app``. Imports neither torch nor the worker's tasks."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from app.core.config import ApiSettings, get_settings
from app.core.redis import connect
from app.errors import install_error_handlers
from app.events import EventHub
from app.routes import health, jobs, page
from contracts.celery_config import create_celery_app

DESCRIPTION = """
Run Hugging Face transformers jobs asynchronously. Submit a job with `POST /v1/jobs`,
get its id at once, then read it with `GET /v1/jobs/{id}`.

Statuses: `queued`, `running`, `succeeded`, `failed`, `canceled`, `expired`.
Errors are `application/problem+json` (RFC 9457).
"""


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: ApiSettings = app.dependency_overrides.get(get_settings, get_settings)()
    app.state.redis = connect(settings.redis_url, settings)
    backend = settings.effective_result_backend
    app.state.results = (
        app.state.redis if backend == settings.redis_url else connect(backend, settings)
    )
    app.state.celery = create_celery_app("llm_tasks.api", settings)
    app.state.hub = EventHub(app.state.results)
    await app.state.hub.start()
    try:
        yield
    finally:
        await app.state.hub.stop()
        app.state.celery.close()
        if app.state.results is not app.state.redis:
            await app.state.results.aclose()
        await app.state.redis.aclose()


def create_app() -> FastAPI:
    app = FastAPI(title="llm-tasks", version="0.1.0", description=DESCRIPTION, lifespan=lifespan)
    install_error_handlers(app)
    app.include_router(jobs.router)
    app.include_router(health.router)
    app.include_router(page.router)
    return app


app = create_app()
