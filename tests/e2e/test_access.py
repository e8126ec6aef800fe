"""API keys: no key, no service; a job is visible only to the key that created it."""

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import another_api

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def keyed_api(stack_env: dict[str, str], log_dir: Path, worker) -> Iterator[str]:
    with another_api(stack_env | {"LLM_TASKS_API_KEYS": "alpha-key, beta-key"}, log_dir) as url:
        yield url


def as_key(url: str, key: str | None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.Client(base_url=url, headers=headers, timeout=10)


def test_no_valid_key_is_401_with_a_challenge(keyed_api: str):
    for key in (None, "wrong-key"):
        with as_key(keyed_api, key) as client:
            response = client.post("/v1/jobs", json={"kind": "sentiment", "input": {"text": "Hi"}})
            assert response.status_code == 401
            assert response.headers["www-authenticate"].startswith("Bearer")
            assert response.headers["content-type"] == "application/problem+json"
            assert client.get("/v1/jobs").status_code == 401


def test_a_job_is_visible_only_to_its_key(keyed_api: str):
    with as_key(keyed_api, "alpha-key") as alpha, as_key(keyed_api, "beta-key") as beta:
        job = alpha.post(
            "/v1/jobs", json={"kind": "generate", "input": {"prompt": "Mine"}, "delay_seconds": 5}
        )
        assert job.status_code == 202
        job_id = job.json()["id"]
        assert alpha.get(f"/v1/jobs/{job_id}").status_code == 200
        assert beta.get(f"/v1/jobs/{job_id}").status_code == 404
        assert beta.get(f"/v1/jobs/{job_id}/events").status_code == 404
        assert beta.delete(f"/v1/jobs/{job_id}").status_code == 404
        assert job_id in [j["id"] for j in alpha.get("/v1/jobs").json()["items"]]
        assert job_id not in [j["id"] for j in beta.get("/v1/jobs").json()["items"]]
        assert alpha.delete(f"/v1/jobs/{job_id}").json()["status"] == "canceled"
