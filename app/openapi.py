"""The OpenAPI document, with the bounds this deployment enforces.

The input models carry ceilings fixed in code; the settings (``MAX_NEW_TOKENS``,
``MAX_PROMPT_CHARS``…, and the longest ``delay_seconds``) tighten them per deployment.
The document says the tighter ones, so that a client generated from it (or a fuzzer)
knows what will be accepted.
"""

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

from app.core.config import ApiSettings
from llm_tasks.job_schema import JOB_MODELS
from llm_tasks.payloads import TotalChars, bounded_fields


def bounded_models() -> list[type[BaseModel]]:
    models: list[type[BaseModel]] = list(JOB_MODELS)
    for job in JOB_MODELS:
        annotation: object = job.model_fields["input"].annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            models.append(annotation)
    return models


def apply_bounds(document: dict[str, Any], settings: ApiSettings) -> None:
    components = document.get("components", {}).get("schemas", {})
    for model in bounded_models():
        for suffix in ("", "-Input"):
            schema = components.get(model.__name__ + suffix)
            if schema is None:
                continue
            for name, bound in bounded_fields(model):
                if isinstance(bound, TotalChars):
                    continue  # a sum over items: JSON Schema cannot say it; the 422 does
                field = schema["properties"][name]
                limit = getattr(settings, bound.setting)
                key = {"string": "maxLength", "array": "maxItems"}.get(field.get("type"), "maximum")
                field[key] = min(field.get(key, limit), limit)


def install(app: FastAPI, settings: ApiSettings) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
            )
            apply_bounds(document, settings)
            app.openapi_schema = document
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
