"""Payloads and results of each task, validated on both sides of the queue."""

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from contracts.settings import CommonSettings

#: Hard ceilings whatever the settings say; settings narrow them (:func:`limit_violations`).
PROMPT_CHARS_CEILING = 100_000
NEW_TOKENS_CEILING = 4096


class GenerateInput(BaseModel):
    """Continue a prompt with the generator model."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"prompt": "Once upon a time", "max_new_tokens": 40, "temperature": 0.8}]
        },
    )

    prompt: str = Field(
        min_length=1, max_length=PROMPT_CHARS_CEILING, description="Text to continue."
    )
    max_new_tokens: int = Field(
        default=64, ge=1, le=NEW_TOKENS_CEILING, description="Tokens to generate at most."
    )
    temperature: float = Field(
        default=0.8, ge=0.0, le=2.0, description="Sampling temperature; 0 decodes greedily."
    )
    top_p: float = Field(default=0.95, gt=0.0, le=1.0, description="Nucleus sampling mass.")
    seed: int | None = Field(
        default=None, ge=0, le=2**32 - 1, description="Fixes the sampling for reproducible output."
    )


class GenerateOutput(BaseModel):
    """What a generation produced: the continuation only, without the prompt."""

    text: str
    tokens: int = Field(description="Tokens generated.")
    finish_reason: Literal["length", "stop"] = Field(
        description="`length`: max_new_tokens reached; `stop`: the model ended the text."
    )
    prompt_tokens: int = Field(
        description="Prompt tokens the model saw (after trimming to its window)."
    )
    model: str


class LimitViolation(BaseModel):
    field: str
    message: str


def limit_violations(payload: GenerateInput, settings: CommonSettings) -> list[LimitViolation]:
    """Bounds that come from settings, checked by the API on submit and by the worker on receipt."""
    violations = []
    if len(payload.prompt) > settings.max_prompt_chars:
        violations.append(
            LimitViolation(
                field="prompt",
                message=f"must be at most {settings.max_prompt_chars} characters",
            )
        )
    if payload.max_new_tokens > settings.max_new_tokens:
        violations.append(
            LimitViolation(
                field="max_new_tokens", message=f"must be at most {settings.max_new_tokens}"
            )
        )
    return violations
