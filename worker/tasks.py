"""Celery tasks: thin wrappers that validate, call :mod:`worker.inference` and serialize.

Usable from a Python shell as plain Celery tasks::

    >>> from worker.tasks import generate_text
    >>> generate_text.delay("Hello world").get(timeout=30)
"""

from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from contracts.names import TaskName
from contracts.schemas import GenerateInput, limit_violations
from worker import inference
from worker.celery_app import app
from worker.config import get_settings
from worker.errors import InvalidInput
from worker.models import ModelRole, get_registry

T = TypeVar("T", bound=BaseModel)


def _validated(schema: type[T], payload: dict[str, Any]) -> T:
    try:
        value = schema.model_validate(payload)
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'input'}: {e['msg']}" for e in error.errors()
        )
        raise InvalidInput(problems) from None
    return value


@app.task(name=TaskName.GENERATE, bind=True)
def generate_text(
    self: Any,
    prompt: str,
    max_new_tokens: int = 64,
    temperature: float = 0.8,
    top_p: float = 0.95,
    seed: int | None = None,
) -> dict[str, Any]:
    """Continue ``prompt``; returns ``{text, tokens, finish_reason, prompt_tokens, model}``."""
    payload = _validated(
        GenerateInput,
        {
            "prompt": prompt,
            "max_new_tokens": max_new_tokens,
            "temperature": temperature,
            "top_p": top_p,
            "seed": seed,
        },
    )
    violations = limit_violations(payload, get_settings())
    if violations:
        raise InvalidInput("; ".join(f"{v.field}: {v.message}" for v in violations))
    loaded = get_registry().get(ModelRole.GENERATOR)
    return inference.generate_text(loaded, **payload.model_dump()).model_dump()
