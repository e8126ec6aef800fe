"""The Python client of llm-tasks: ``pip install "llm-tasks[client]"``.

>>> from llm_tasks import Client
>>> with Client("http://127.0.0.1:8000") as client:
...     job = client.submit("generate", {"prompt": "Once upon a time"})
...     for text in client.stream_text(job.id):
...         print(text, end="", flush=True)
"""

from contracts.jobs import JobPage, JobPublic, JobStatus
from contracts.names import JobKind
from contracts.webhooks import InvalidSignature
from llm_tasks.client import AsyncClient, Client, Event, StepTexts, TextRestart, verify_webhook
from llm_tasks.errors import (
    ApiError,
    Conflict,
    InvalidInput,
    LLMTasksError,
    NotFound,
    RateLimited,
    ServiceUnavailable,
    StreamLost,
    Unauthorized,
    WaitTimeout,
)

__all__ = [
    "ApiError",
    "AsyncClient",
    "Client",
    "Conflict",
    "Event",
    "InvalidInput",
    "InvalidSignature",
    "JobKind",
    "JobPage",
    "JobPublic",
    "JobStatus",
    "LLMTasksError",
    "NotFound",
    "RateLimited",
    "ServiceUnavailable",
    "StepTexts",
    "StreamLost",
    "TextRestart",
    "Unauthorized",
    "WaitTimeout",
    "verify_webhook",
]
