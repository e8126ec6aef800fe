"""API settings (prefix ``LLM_TASKS_``), read once through :func:`get_settings`."""

import hashlib
from functools import cached_property, lru_cache

from pydantic import Field

from contracts.settings import CommonSettings


class ApiSettings(CommonSettings):
    api_keys: str = Field(
        default="",
        description="Comma-separated API keys; empty leaves the API open (one shared owner).",
    )
    sse_heartbeat: float = Field(
        default=15.0,
        gt=0,
        description="Seconds of silence before an event stream gets a heartbeat.",
    )
    redis_max_connections: int = Field(
        default=16, ge=2, description="Redis connections one API process opens at most."
    )
    redis_timeout: float = Field(
        default=2.0, gt=0, description="Seconds to wait for Redis before answering 503."
    )

    @cached_property
    def key_owners(self) -> dict[str, str]:
        """Each accepted key and the owner id its jobs are filed under (a hash, never the key)."""
        keys = [key.strip() for key in self.api_keys.split(",") if key.strip()]
        return {key: hashlib.sha256(key.encode()).hexdigest()[:16] for key in keys}


@lru_cache
def get_settings() -> ApiSettings:
    return ApiSettings()
