"""The ASGI app: ``uvicorn app.main:app``. Imports neither torch nor the worker's tasks."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from app import openapi
from app.core.config import ApiSettings, get_settings
from app.errors import install_error_handlers
from app.limits import BodySizeLimit
from app.routes import health, jobs_api, metrics, models, page
from app.services import Services
from contracts import logs

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
    app.state.services = await Services.open(settings)
    try:
        yield
    finally:
        await app.state.services.close()


def create_app(settings: ApiSettings | None = None) -> FastAPI:
    settings = settings or get_settings()
    app = FastAPI(title="llm-tasks", version="0.1.0", description=DESCRIPTION, lifespan=lifespan)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    install_error_handlers(app)
    app.include_router(jobs_api.router)
    app.include_router(models.router)
    app.include_router(health.router)
    app.include_router(metrics.router)
    app.include_router(page.router)
    openapi.install(app, settings)
    return app


app = create_app()
