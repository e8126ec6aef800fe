"""Fuzzing the API from its own OpenAPI spec (schemathesis): whatever a client sends, no
5xx, and every response matches the status codes, media types and schemas the spec
declares. Bounded: a few dozen generated requests per operation, over the real stack."""

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import positive_data_acceptance

from tests.conftest import another_api

pytestmark = pytest.mark.e2e

EXAMPLES_PER_OPERATION = 30
KEY = "fuzz-key"
#: Some rules are beyond what JSON Schema can state (``min_new_tokens`` at most
#: ``max_new_tokens``; a cursor is opaque, so a forged one fits its schema): a request that
#: fits the schema may rightly get a 422. Everything else is checked: no 5xx, status codes,
#: media types, headers and bodies as declared, and requests without the key refused.
EXCLUDED = [positive_data_acceptance]
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def keyed_api(stack_env: dict[str, str], log_dir: Path, worker) -> Iterator[str]:
    """The API with a key, so that the fuzzer also checks that requests without it fail;
    generated `Prefer: wait=N` headers wait a second at most (tests/e2e/test_submit.py
    checks the waiting itself), and no webhooks (generated URLs would send it resolving
    made-up names; tests/e2e/test_webhooks.py checks webhooks)."""
    env = stack_env | {
        "LLM_TASKS_API_KEYS": KEY,
        "LLM_TASKS_MAX_WAIT_SECONDS": "1",
        "LLM_TASKS_WEBHOOK_SECRET": "",
    }
    with another_api(env, log_dir) as url:
        yield url


@pytest.fixture
def leaves_no_work(keyed_api: str) -> Iterator[None]:
    yield
    # Generated jobs should not keep the shared worker busy for the tests that follow.
    with httpx.Client(base_url=keyed_api, headers=AUTH, timeout=10) as client:
        for status in ("queued", "running"):
            page = client.get("/v1/jobs", params={"status": status, "limit": 100}).json()
            for job in page["items"]:
                client.delete(f"/v1/jobs/{job['id']}")


def operations(api_url: str) -> list[schemathesis.APIOperation]:
    schema = schemathesis.openapi.from_url(f"{api_url}/openapi.json")
    return [result.ok() for result in schema.get_all_operations()]


def fuzz(operation: schemathesis.APIOperation, base_url: str) -> None:
    """Send the operation generated requests and check each response."""
    excluded = [*EXCLUDED]
    if operation.path == "/readyz":
        excluded.append(not_a_server_error)  # 503 is its documented "not ready"

    @given(case=operation.as_strategy())
    @settings(
        max_examples=EXAMPLES_PER_OPERATION,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def check(case: schemathesis.Case) -> None:
        case.call_and_validate(
            base_url=base_url, headers=AUTH, timeout=10, excluded_checks=excluded
        )

    check()


def test_every_operation_keeps_its_contract(keyed_api: str, leaves_no_work: None):
    fuzzed = []
    for operation in operations(keyed_api):
        fuzz(operation, keyed_api)
        fuzzed.append(f"{operation.method.upper()} {operation.path}")
    assert {"POST /v1/jobs", "GET /v1/jobs/{job_id}/events", "DELETE /v1/jobs/{job_id}"} <= set(
        fuzzed
    )
