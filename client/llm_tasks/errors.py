"""Exceptions of the client: every error answer of the API, with its problem details."""

from typing import Any

import httpx


class LLMTasksError(Exception):
    """Base of every error the client raises."""


class ApiError(LLMTasksError):
    """The API answered with an error (an RFC 9457 problem object)."""

    def __init__(self, status: int, problem: dict[str, Any]) -> None:
        self.status = status
        self.problem = problem
        self.title: str = str(problem.get("title") or "Error")
        self.detail: str = str(problem.get("detail") or "")
        super().__init__(f"{status} {self.title}: {self.detail}" if self.detail else self.title)

    @property
    def errors(self) -> list[dict[str, Any]]:
        """For invalid input: each offending field (``loc``) and what is wrong (``msg``)."""
        found = self.problem.get("errors")
        return list(found) if isinstance(found, list) else []


class InvalidInput(ApiError):
    """422 (input breaks the schema or a bound) or 413 (body too large)."""


class Unauthorized(ApiError):
    """401: no valid API key."""


class NotFound(ApiError):
    """404: unknown, expired, or another key's job."""


class Conflict(ApiError):
    """409: e.g. canceling a job that has already finished."""


class RateLimited(ApiError):
    """429: over the key's rate limit (raised once the client's retries are spent)."""


class ServiceUnavailable(ApiError):
    """503: Redis or the broker away, or a queue full (raised once retries are spent)."""


class StreamLost(LLMTasksError):
    """The event stream kept dropping; reconnecting (with Last-Event-ID) did not help."""


class WaitTimeout(LLMTasksError, TimeoutError):
    """The job did not finish within the time given to ``wait``."""


_BY_STATUS: dict[int, type[ApiError]] = {
    401: Unauthorized,
    404: NotFound,
    409: Conflict,
    413: InvalidInput,
    422: InvalidInput,
    429: RateLimited,
    503: ServiceUnavailable,
}


def error_for(response: httpx.Response) -> ApiError:
    try:
        problem = response.json()
    except ValueError:
        problem = None
    if not isinstance(problem, dict):
        problem = {"title": response.reason_phrase, "detail": response.text[:500]}
    kind = _BY_STATUS.get(response.status_code, ApiError)
    return kind(response.status_code, problem)
