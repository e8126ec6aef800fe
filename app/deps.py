"""Dependencies, declared once and used in route signatures."""

from typing import Annotated

from celery import Celery
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from app.core.config import ApiSettings, get_settings
from app.core.redis import AsyncRedis
from app.errors import Unauthorized
from app.events import EventHub
from app.limits import QueueDepths, RateLimiter
from app.store import JobStore

SettingsDep = Annotated[ApiSettings, Depends(get_settings)]

_bearer = HTTPBearer(auto_error=False, description="An API key from LLM_TASKS_API_KEYS.")

#: Owner of every job while no API keys are configured.
OPEN_OWNER = "anonymous"


async def get_redis(request: Request) -> AsyncRedis:
    redis: AsyncRedis = request.app.state.redis
    return redis


async def get_celery(request: Request) -> Celery:
    celery: Celery = request.app.state.celery
    return celery


RedisDep = Annotated[AsyncRedis, Depends(get_redis)]
CeleryDep = Annotated[Celery, Depends(get_celery)]


async def get_store(request: Request, settings: SettingsDep) -> JobStore:
    return JobStore(request.app.state.redis, request.app.state.results, settings.result_expires)


async def get_owner(
    settings: SettingsDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> str:
    """Who is calling: the owner id of a valid key, or the shared owner when the API is open."""
    owners = settings.key_owners
    if not owners:
        return OPEN_OWNER
    if credentials is None or credentials.credentials not in owners:
        raise Unauthorized("A valid API key is required: Authorization: Bearer <key>.")
    return owners[credentials.credentials]


async def get_hub(request: Request) -> EventHub:
    hub: EventHub = request.app.state.hub
    return hub


async def get_depths(request: Request) -> QueueDepths:
    depths: QueueDepths = request.app.state.depths
    return depths


StoreDep = Annotated[JobStore, Depends(get_store)]
DepthsDep = Annotated[QueueDepths, Depends(get_depths)]
HubDep = Annotated[EventHub, Depends(get_hub)]
OwnerDep = Annotated[str, Depends(get_owner)]


async def enforce_rate_limit(request: Request, owner: OwnerDep) -> None:
    """One request of the caller's key (or, on an open API, of its address) against the limit."""
    limiter: RateLimiter = request.app.state.limiter
    if owner == OPEN_OWNER:
        owner = f"addr:{request.client.host if request.client else 'unknown'}"
    await limiter.check(owner)
