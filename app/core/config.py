"""API settings (prefix ``LLM_TASKS_``), read once through :func:`get_settings`."""

import hashlib
from functools import cached_property, lru_cache

from pydantic import Field, SecretStr, field_validator

from contracts.settings import CommonSettings
from llm_tasks.signatures import secret_key


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

    webhook_secret: SecretStr | None = Field(
        default=None,
        description="`whsec_` + base64 of the key that signs webhook deliveries (Standard "
        "Webhooks); unset, jobs with a webhook are refused.",
    )
    webhook_allow_private_networks: bool = Field(
        default=False,
        description="Deliver to webhooks on loopback, private, link-local or reserved "
        "addresses (refused by default: a job must not reach into the deployment's network).",
    )
    webhook_timeout: float = Field(
        default=10.0, gt=0, le=60, description="Seconds one delivery attempt may take."
    )
    webhook_retry_window: int = Field(
        default=6 * 3600,
        ge=0,
        description="Seconds a delivery is retried (a failure or a non-2xx answer) before it "
        "is given up, at most as long as the job is kept.",
    )
    webhook_backoff: float = Field(
        default=5.0, gt=0, description="Seconds before a delivery's first retry; doubles each try."
    )
    webhook_backoff_max: float = Field(
        default=3600.0, gt=0, description="Longest wait between two tries of a delivery."
    )
    webhook_concurrency: int = Field(
        default=16, ge=1, description="Deliveries one webhooks worker makes at once."
    )

    @field_validator("webhook_secret")
    @classmethod
    def _whsec(cls, secret: SecretStr | None) -> SecretStr | None:
        if secret is None:
            return None
        value = secret.get_secret_value()
        try:
            key = secret_key(value)
        except ValueError:
            key = b""
        if not value.startswith("whsec_") or not 16 <= len(key) <= 64:
            raise ValueError("LLM_TASKS_WEBHOOK_SECRET is whsec_ and the base64 of 16 to 64 bytes")
        return secret

    @property
    def webhook_key(self) -> bytes | None:
        """The signing key (the secret's bytes)."""
        secret = self.webhook_secret
        return None if secret is None else secret_key(secret.get_secret_value())

    @cached_property
    def key_owners(self) -> dict[str, str]:
        """Each accepted key and the owner id its jobs are filed under (a hash, never the key)."""
        keys = [key.strip() for key in self.api_keys.split(",") if key.strip()]
        return {key: hashlib.sha256(key.encode()).hexdigest()[:16] for key in keys}


@lru_cache
def get_settings() -> ApiSettings:
    return ApiSettings()
