"""Worker entry point for the tests: the real Celery app, plus faults on request.

Started as ``celery -A tests.support.fault_worker worker``. A prompt that starts with
``FAULT:`` makes the generation raise :class:`InjectedFault` with the rest of the prompt
as its message. Production workers never import this module.
"""

from typing import Any

from worker import inference
from worker.celery_app import app
from worker.models import LoadedModel

FAULT_PREFIX = "FAULT:"
_real_generate_text = inference.generate_text


class InjectedFault(RuntimeError):
    """Raised by the tests' worker on request."""


def _generate_text(loaded: LoadedModel, *, prompt: str, **options: Any) -> Any:
    if prompt.startswith(FAULT_PREFIX):
        raise InjectedFault(prompt.removeprefix(FAULT_PREFIX).strip() or "injected fault")
    return _real_generate_text(loaded, prompt=prompt, **options)


inference.generate_text = _generate_text  # type: ignore[assignment]

__all__ = ["app"]
