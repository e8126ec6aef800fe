"""Liveness and readiness."""

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from app.deps import CeleryDep, RedisDep
from app.errors import problem

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The API process is alive."""
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"content": {"application/problem+json": {}}}})
async def readyz(redis: RedisDep, celery: CeleryDep) -> JSONResponse:
    """Redis answers and at least one worker replies to a ping."""
    try:
        await redis.ping()
    except Exception as error:
        return problem(503, "Not ready", f"Redis is unreachable: {error}")
    replies = await run_in_threadpool(celery.control.ping, timeout=1.0)
    if not replies:
        return problem(503, "Not ready", "No worker answered a ping within 1 s.")
    workers = sorted(name for reply in replies for name in reply)
    return JSONResponse({"status": "ready", "workers": workers})
