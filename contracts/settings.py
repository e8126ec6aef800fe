"""Settings that the API and the workers must agree on (prefix ``LLM_TASKS_``)."""

from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from contracts.models import ROLE_QUEUES, DeclaredModel, ModelRole


class CommonSettings(BaseSettings):
    """Where Redis is, how long results live, and the bounds every job input obeys."""

    model_config = SettingsConfigDict(
        env_prefix="LLM_TASKS_", env_ignore_empty=True, extra="ignore"
    )

    redis_url: str = Field(
        default="redis://127.0.0.1:6379/0",
        description="Redis for the job registry and live events; broker and result backend "
        "unless BROKER_URL / RESULT_BACKEND are given.",
    )
    broker_url: str | None = Field(
        default=None, description="Celery broker (defaults to REDIS_URL)."
    )
    result_backend: str | None = Field(
        default=None, description="Celery result backend (defaults to REDIS_URL)."
    )
    visibility_timeout: int = Field(
        default=3600,
        ge=10,
        description="Seconds before an unacknowledged message is delivered again (Redis broker). "
        "A worker that holds a message keeps extending it, so jobs and delays may be longer.",
    )
    result_expires: int = Field(
        default=86400, ge=60, description="Seconds a job and its results are kept."
    )
    max_prompt_chars: int = Field(default=8000, ge=1, description="Longest prompt accepted.")
    max_new_tokens: int = Field(
        default=512, ge=1, description="Most tokens one generation may ask for."
    )
    max_text_chars: int = Field(
        default=20_000, ge=1, description="Longest text to summarize, classify or analyze."
    )
    max_chat_messages: int = Field(
        default=64, ge=1, description="Most messages in one chat job's conversation."
    )
    max_chunks: int = Field(default=16, ge=1, description="Most chunks of one long_text job.")
    max_variations: int = Field(
        default=16, ge=1, description="Most temperatures of one variations job."
    )
    generator_model: str = Field(
        default="tiny", description="`tiny` (built offline) or a Hugging Face id / local path."
    )
    summarizer_model: str = Field(default="tiny", description="Seq2seq model for summaries.")
    classifier_model: str = Field(default="tiny", description="Sentiment classifier.")
    log_format: Literal["text", "json"] = Field(
        default="text",
        description="`json`: one JSON object per log line, with the job id (for log pipelines).",
    )
    max_delay_seconds: int | None = Field(
        default=None,
        ge=0,
        description="Longest delay_seconds accepted; defaults to half of RESULT_EXPIRES (a "
        "delayed job still has half its life to run and be read).",
    )

    def declared_models(self) -> list[DeclaredModel]:
        """The deployment's models: one per role, named by the role, on the role's queue."""
        sources = {
            ModelRole.GENERATOR: self.generator_model,
            ModelRole.SUMMARIZER: self.summarizer_model,
            ModelRole.CLASSIFIER: self.classifier_model,
        }
        return [
            DeclaredModel(name=role.value, role=role, source=source, queue=ROLE_QUEUES[role])
            for role, source in sources.items()
        ]

    @property
    def effective_broker_url(self) -> str:
        return self.broker_url or self.redis_url

    @property
    def effective_result_backend(self) -> str:
        return self.result_backend or self.redis_url

    @property
    def delay_limit(self) -> int:
        """Longest countdown accepted: a job must not expire before it starts."""
        ceiling = self.result_expires // 2
        return ceiling if self.max_delay_seconds is None else min(self.max_delay_seconds, ceiling)
