"""Dependencies, declared once and used in route signatures. The app's state is reached
through :data:`ServicesDep` alone."""

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from app.core.config import ApiSettings, get_settings
from app.errors import Unauthorized
from app.services import Services
from app.store import JobStore

SettingsDep = Annotated[ApiSettings, Depends(get_settings)]

_bearer = HTTPBearer(auto_error=False, description="An API key from LLM_TASKS_API_KEYS.")

#: Owner of every job while no API keys are configured.
OPEN_OWNER = "anonymous"


async def get_services(request: Request) -> Services:
    """What the lifespan opened (:class:`~app.services.Services`)."""
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]


async def get_store(services: ServicesDep, settings: SettingsDep) -> JobStore:
    return JobStore(services.redis, services.results, settings.result_expires)


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


StoreDep = Annotated[JobStore, Depends(get_store)]
OwnerDep = Annotated[str, Depends(get_owner)]


async def enforce_rate_limit(request: Request, owner: OwnerDep, services: ServicesDep) -> None:
    """One request of the caller's key (or, on an open API, of its address) against the limit."""
    if owner == OPEN_OWNER:
        owner = f"addr:{request.client.host if request.client else 'unknown'}"
    await services.limiter.check(owner)
