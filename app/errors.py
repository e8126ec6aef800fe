"""Domain errors, and the one place that turns errors into RFC 9457 problem+json responses."""

import logging
from http import HTTPStatus
from typing import Any, ClassVar

import redis.exceptions
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

logger = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"


class ProblemError(Exception):
    status = 500
    title = "Internal Server Error"
    default_headers: ClassVar[dict[str, str] | None] = None

    def __init__(self, detail: str, headers: dict[str, str] | None = None, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.headers = headers or self.default_headers
        self.extra = extra


class JobNotFound(ProblemError):
    status = 404
    title = "Job not found"

    def __init__(self, job_id: str) -> None:
        super().__init__(f"No job {job_id!r} (unknown, expired, or not yours).")


class JobFinished(ProblemError):
    status = 409
    title = "Job already finished"

    def __init__(self, job_id: str, status: str) -> None:
        super().__init__(
            f"Job {job_id!r} is {status}; only a queued or running job can be canceled."
        )


class InputRejected(ProblemError):
    """Input that the schema allows but a configured bound does not."""

    status = 422
    title = "Invalid input"

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        super().__init__(_summary(errors), errors=errors)


class BrokerUnavailable(ProblemError):
    status = 503
    title = "Service unavailable"
    default_headers: ClassVar[dict[str, str] | None] = {"Retry-After": "5"}


class QueueFull(ProblemError):
    """Backpressure: the queue a job would join is already too deep."""

    status = 503
    title = "Service busy"
    default_headers: ClassVar[dict[str, str] | None] = {"Retry-After": "5"}

    def __init__(self, queue: str, depth: int, limit: int) -> None:
        super().__init__(
            f"Queue {queue!r} holds {depth} jobs (the limit is {limit}); try again shortly.",
            queue=queue,
            depth=depth,
        )


class RateLimited(ProblemError):
    status = 429
    title = "Too Many Requests"

    def __init__(self, retry_after: int) -> None:
        retry_after = max(1, retry_after)
        super().__init__(
            f"Rate limit exceeded; try again in {retry_after} s.",
            headers={"Retry-After": str(retry_after)},
            retry_after=retry_after,
        )


class Unauthorized(ProblemError):
    status = 401
    title = "Unauthorized"
    default_headers: ClassVar[dict[str, str] | None] = {
        "WWW-Authenticate": 'Bearer realm="llm-tasks"'
    }


def problem(
    status: int,
    title: str,
    detail: str,
    instance: str | None = None,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    body: dict[str, Any] = {
        "type": "about:blank",
        "title": title,
        "status": status,
        "detail": detail,
    }
    if instance:
        body["instance"] = instance
    body.update(extra)
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


def _summary(errors: list[dict[str, Any]]) -> str:
    return "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ProblemError)
    async def on_problem(request: Request, error: ProblemError) -> JSONResponse:
        return problem(
            error.status,
            error.title,
            error.detail,
            instance=request.url.path,
            headers=error.headers,
            **error.extra,
        )

    @app.exception_handler(RequestValidationError)
    async def on_invalid_request(request: Request, error: RequestValidationError) -> JSONResponse:
        errors = [{"loc": _location(e), "msg": e["msg"], "type": e["type"]} for e in error.errors()]
        return problem(422, "Invalid request", _summary(errors), request.url.path, errors=errors)

    @app.exception_handler(HTTPException)
    async def on_http_error(request: Request, error: HTTPException) -> JSONResponse:
        return problem(
            error.status_code,
            _reason(error.status_code),
            str(error.detail),
            request.url.path,
            headers=dict(error.headers or {}),
        )

    @app.exception_handler(redis.exceptions.ConnectionError)
    @app.exception_handler(redis.exceptions.TimeoutError)
    # Full (noeviction refuses writes rather than dropping keys) or a read-only replica.
    @app.exception_handler(redis.exceptions.OutOfMemoryError)
    @app.exception_handler(redis.exceptions.ReadOnlyError)
    async def on_redis_down(request: Request, error: Exception) -> JSONResponse:
        logger.warning("redis unavailable: %s", error)
        return problem(
            503,
            BrokerUnavailable.title,
            "The job store is unreachable; try again shortly.",
            request.url.path,
            headers=BrokerUnavailable.default_headers,
        )


def _location(error: Any) -> list[str | int]:
    """Where the error is; a bad or missing discriminator is named (``kind``), not the body."""
    location = list(error["loc"])
    if error["type"] in {"union_tag_invalid", "union_tag_not_found"}:
        location.append(str(error.get("ctx", {}).get("discriminator", "")).strip("'"))
    return location


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"
