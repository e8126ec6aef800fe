"""Liveness and readiness."""

from celery import Celery
from fastapi import APIRouter
from fastapi.responses import JSONResponse
from kombu.exceptions import OperationalError
from starlette.concurrency import run_in_threadpool

from app.deps import ServicesDep
from app.errors import problem
from contracts.names import WORKER_REFUSALS_KEY


def _ping_workers(celery: Celery) -> list[dict[str, object]]:
    """Workers' ping replies; connecting to the broker is bounded, not retried for minutes."""
    with celery.connection_for_write(connect_timeout=2) as connection:
        connection.ensure_connection(max_retries=1, interval_start=0, timeout=2)
        replies: list[dict[str, object]] = celery.control.ping(timeout=1.0, connection=connection)
        return replies or []


router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The API process is alive."""
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"content": {"application/problem+json": {}}}})
async def readyz(services: ServicesDep) -> JSONResponse:
    """Redis answers and at least one worker replies to a ping; workers that refused to
    start (a model that cannot serve its role) are listed with the reason."""
    try:
        await services.redis.ping()
        refusals = await services.redis.hgetall(WORKER_REFUSALS_KEY)
    except Exception as error:
        return problem(503, "Not ready", f"Redis is unreachable: {error}")
    refused = {_text(host): _text(why) for host, why in sorted(refusals.items())}
    try:
        replies = await run_in_threadpool(_ping_workers, services.celery)
    except (OperationalError, OSError) as error:
        return problem(503, "Not ready", f"The broker is unreachable: {error}")
    if not replies:
        detail = "No worker answered a ping within 1 s."
        if refused:
            detail += " Refused to start: " + "; ".join(f"{h}: {w}" for h, w in refused.items())
        return problem(503, "Not ready", detail, refused=refused)
    workers = sorted(name for reply in replies for name in reply)
    return JSONResponse({"status": "ready", "workers": workers, "refused": refused})


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
