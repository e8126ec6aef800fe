"""Settings that the API and the workers must agree on (prefix ``LLM_TASKS_``)."""

import json
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from contracts.models import ROLE_QUEUES
from llm_tasks.model_info import DeclaredModel, ModelRole


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
    models: str | None = Field(
        default=None,
        description="The models, as a JSON list (or @path to a JSON file) of {name, role, "
        "source, queue?}: several per role, each on a queue of its own (README, 'Several "
        "models'). Unset: one per role from GENERATOR_MODEL, SUMMARIZER_MODEL, CLASSIFIER_MODEL.",
    )
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
        """The deployment's models, each role's default first.

        ``LLM_TASKS_MODELS`` (a JSON list, or ``@path`` to a JSON file) declares them:
        ``{"name", "role", "source", "queue"?}``. A role's first model is its default and
        takes the role's queue unless told otherwise; the others get ``<role queue>.<name>``.
        A role the list leaves out has one model named by the role, from
        ``LLM_TASKS_<ROLE>_MODEL`` — so without the setting there are exactly three.
        """
        return list(_declared(self.models, tuple(self._role_sources().items())))

    def model_for(self, role: ModelRole, name: str | None = None) -> DeclaredModel:
        """The model named ``name`` when it has ``role``, else the role's default."""
        models = self.declared_models()
        named = [m for m in models if m.name == name and m.role is role]
        return named[0] if named else next(m for m in models if m.role is role)

    def _role_sources(self) -> dict[ModelRole, str]:
        return {
            ModelRole.GENERATOR: self.generator_model,
            ModelRole.SUMMARIZER: self.summarizer_model,
            ModelRole.CLASSIFIER: self.classifier_model,
        }

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


@lru_cache(maxsize=16)
def _declared(
    setting: str | None, sources: tuple[tuple[ModelRole, str], ...]
) -> tuple[DeclaredModel, ...]:
    """Read once per setting: tasks ask for their model on every call."""
    entries: list[Any] = []
    if setting:
        text = Path(setting[1:]).read_text() if setting.startswith("@") else setting
        entries = json.loads(text)
        if not isinstance(entries, list):
            raise ValueError("LLM_TASKS_MODELS must be a JSON list of models")
    models: list[DeclaredModel] = []
    for entry in entries:
        role = ModelRole(entry["role"])
        first = not any(model.role is role for model in models)
        queue = entry.get("queue") or (
            ROLE_QUEUES[role].value if first else f"{ROLE_QUEUES[role].value}.{entry['name']}"
        )
        models.append(DeclaredModel(**{**entry, "queue": queue}))
    for role, source in sources:
        if not any(model.role is role for model in models):
            models.append(
                DeclaredModel(name=role.value, role=role, source=source, queue=ROLE_QUEUES[role])
            )
    names = [model.name for model in models]
    if len(set(names)) != len(names):
        raise ValueError(f"LLM_TASKS_MODELS: model names must be unique, got {names}")
    # Each role's default first, in the order of the roles.
    return tuple(sorted(models, key=lambda model: list(ModelRole).index(model.role)))
