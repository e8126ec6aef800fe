"""The Python client of llm-tasks, and the HTTP API's schemas, which the service shares.

>>> from llm_tasks import Client
>>> with Client("http://127.0.0.1:8000") as client:
...     job = client.submit("generate", {"prompt": "Once upon a time"})
...     for text in client.stream_text(job.id):
...         print(text, end="", flush=True)
"""

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
from llm_tasks.job_schema import JobPage, JobPublic, JobStatus
from llm_tasks.kinds import JobKind
from llm_tasks.signatures import InvalidSignature

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
