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
    max_wait_seconds: int = Field(
        default=60,
        ge=0,
        description="Longest `Prefer: wait=N` a submit honors (a longer one waits this long).",
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
        default=1.0, gt=0, description="Seconds to wait for Redis before answering 503."
    )

    rate_limit: float = Field(
        default=0,
        ge=0,
        description="Requests a minute each API key (or, on an open API, each client address) "
        "may make to /v1; 0 turns the limit off. Over it: 429 with Retry-After.",
    )
    rate_burst: int = Field(
        default=20, ge=1, description="Requests a key may make at once before RATE_LIMIT paces it."
    )
    max_queue_depth: int = Field(
        default=10_000,
        ge=0,
        description="Messages a queue may hold before new jobs for it get 503 with Retry-After; "
        "0 turns backpressure off.",
    )
    queue_depth_refresh: float = Field(
        default=1.0, gt=0, description="Seconds a queue depth reading is reused."
    )
    max_body_bytes: int = Field(
        default=1_048_576,
        ge=1024,
        description="Largest request body; a bigger one gets 413 before it is parsed.",
    )

    @cached_property
    def key_owners(self) -> dict[str, str]:
        """Each accepted key and the owner id its jobs are filed under (a hash, never the key)."""
        keys = [key.strip() for key in self.api_keys.split(",") if key.strip()]
        return {key: hashlib.sha256(key.encode()).hexdigest()[:16] for key in keys}


@lru_cache
def get_settings() -> ApiSettings:
    return ApiSettings()
