"""The deployment's own bounds on a job (its settings narrow the schemas' ceilings)."""

from pydantic import BaseModel

from contracts.settings import CommonSettings
from llm_tasks.payloads import TotalChars, bounded_fields


class LimitViolation(BaseModel):
    field: str
    message: str


def limit_violations(payload: BaseModel, settings: CommonSettings) -> list[LimitViolation]:
    """Fields that exceed the setting their :class:`Bound` names."""
    violations = []
    for name, bound in bounded_fields(type(payload)):
        limit = getattr(settings, bound.setting)
        value = getattr(payload, name)
        if value is None:
            continue
        if isinstance(bound, TotalChars):
            size, unit = sum(len(message.content) for message in value), " characters in all"
        elif isinstance(value, str):
            size, unit = len(value), " characters"
        elif isinstance(value, list):
            size, unit = len(value), " items"
        else:
            size, unit = value, ""
        if size > limit:
            violations.append(LimitViolation(field=name, message=f"must be at most {limit}{unit}"))
    return violations
