"""The job service end to end: HTTP → API → Redis → worker process → tiny model → back."""

import os
import subprocess
import sys
import uuid
from datetime import datetime

import httpx
import pytest

from llm_tasks.job_schema import JobOptions
from tests.conftest import TEST_MAX_NEW_TOKENS, wait_for_job
from tools.stack import ROOT

pytestmark = pytest.mark.e2e


def submit(client: httpx.Client, **body) -> httpx.Response:
    return client.post("/v1/jobs", json={"kind": "generate", **body})


def test_a_generate_job_succeeds_with_text(client: httpx.Client):
    response = submit(client, input={"prompt": "Once upon a time", "max_new_tokens": 24, "seed": 1})
    assert response.status_code == 202
    job = response.json()
    assert job["status"] == "queued"
    assert job["kind"] == "generate"
    assert response.headers["location"] == job["urls"]["self"]
    assert job["urls"]["self"].endswith(f"/v1/jobs/{job['id']}")

    done = wait_for_job(client, job["id"])
    assert done["status"] == "succeeded", done
    output = done["output"]
    assert output["tokens"] == 24 and output["finish_reason"] == "length"
    assert len(output["text"].split()) >= 3
    assert output["model"] == "tiny"
    assert done["error"] is None
    assert done["attempts"] == 1
    assert done["steps"] == [{"name": "generate", "status": "succeeded", "progress": None}]
    assert done["created_at"] <= done["started_at"] <= done["finished_at"]


def test_the_same_seed_gives_the_same_text(client: httpx.Client):
    body = {"input": {"prompt": "The weather", "max_new_tokens": 16, "seed": 42}}
    first, second = (submit(client, **body).json()["id"] for _ in range(2))
    assert wait_for_job(client, first)["output"] == wait_for_job(client, second)["output"]


def test_unknown_id_is_404_problem(client: httpx.Client):
    response = client.get(f"/v1/jobs/{uuid.uuid4()}")
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["status"] == 404 and problem["title"] == "Job not found"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"kind": "generate", "input": {"prompt": "Hi", "temperature": 5}}, "temperature"),
        ({"kind": "generate", "input": {"max_new_tokens": 10}}, "prompt"),
        ({"kind": "generate", "input": {"prompt": ""}}, "prompt"),
        ({"kind": "generate", "input": {"prompt": "Hi"}, "priority": 10}, "priority"),
        ({"kind": "generate", "input": {"prompt": "Hi", "max_length": 9}}, "max_length"),
        ({"kind": "teleport", "input": {"prompt": "Hi"}}, "kind"),
        # Strict types: a boolean is not a number, a number in a string is not a number.
        ({"kind": "generate", "input": {"prompt": "Hi"}, "priority": True}, "priority"),
        ({"kind": "generate", "input": {"prompt": "Hi", "max_new_tokens": "5"}}, "max_new_tokens"),
        ({"kind": "generate", "input": {"prompt": "Hi", "seed": False}}, "seed"),
        ({"kind": "generate", "input": {"prompt": 42}}, "prompt"),
        ({"kind": "generate", "input": {"prompt": "Hi"}, "delay_seconds": "3"}, "delay_seconds"),
        ({"kind": "variations", "input": {"prompt": "Hi", "temperatures": ["1"]}}, "temperatures"),
    ],
)
def test_invalid_input_is_422_naming_the_field(client: httpx.Client, body: dict, field: str):
    response = client.post("/v1/jobs", json=body)
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert any(field in map(str, error["loc"]) for error in problem["errors"]), problem
    assert field in problem["detail"]


def test_bounds_from_settings_are_enforced(client: httpx.Client):
    response = submit(client, input={"prompt": "Hi", "max_new_tokens": TEST_MAX_NEW_TOKENS + 1})
    assert response.status_code == 422
    [error] = response.json()["errors"]
    assert error["loc"] == ["body", "input", "max_new_tokens"]
    assert str(TEST_MAX_NEW_TOKENS) in error["msg"]


def test_malformed_json_is_422_not_500(client: httpx.Client):
    response = client.post(
        "/v1/jobs", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"


def test_a_task_that_raises_ends_failed_with_its_error(client: httpx.Client):
    job = submit(client, input={"prompt": "FAULT: the GPU caught fire"}).json()
    done = wait_for_job(client, job["id"])
    assert done["status"] == "failed"
    assert done["output"] is None
    assert done["error"] == {"type": "InjectedFault", "message": "the GPU caught fire"}
    assert done["steps"][0]["status"] == "failed"
    assert done["finished_at"] is not None


def test_a_delayed_job_reads_queued(client: httpx.Client):
    job = submit(client, input={"prompt": "Later"}, delay_seconds=30).json()
    assert client.get(f"/v1/jobs/{job['id']}").json()["status"] == "queued"


def test_a_delay_beyond_the_visibility_timeout_is_refused(client: httpx.Client):
    response = submit(client, input={"prompt": "Much later"}, delay_seconds=10**6)
    assert response.status_code == 422
    assert response.json()["errors"][0]["loc"] == ["body", "delay_seconds"]


def test_list_jobs_newest_first_with_filters_and_cursor(client: httpx.Client):
    ids = [
        submit(client, input={"prompt": f"List {i}", "max_new_tokens": 2}).json()["id"]
        for i in range(3)
    ]
    failed = submit(client, input={"prompt": "FAULT: listed"}).json()["id"]
    for job_id in [*ids, failed]:
        wait_for_job(client, job_id)

    page = client.get("/v1/jobs", params={"limit": 2}).json()
    assert [job["id"] for job in page["items"]] == [failed, ids[2]]
    following = client.get("/v1/jobs", params={"limit": 2, "cursor": page["next_cursor"]}).json()
    assert [job["id"] for job in following["items"]] == [ids[1], ids[0]]

    failures = client.get("/v1/jobs", params={"status": "failed", "limit": 100}).json()["items"]
    assert failed in [job["id"] for job in failures]
    assert all(job["status"] == "failed" for job in failures)

    assert client.get("/v1/jobs", params={"cursor": "garbage"}).status_code == 422
    assert client.get("/v1/jobs", params={"status": "sleeping"}).status_code == 422


def test_health_and_readiness(client: httpx.Client):
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz").json()
    assert ready["status"] == "ready" and ready["workers"]


def test_docs_show_the_generate_schema_with_an_example(client: httpx.Client):
    assert client.get("/docs").status_code == 200
    spec = client.get("/openapi.json").json()
    body = spec["paths"]["/v1/jobs"]["post"]["requestBody"]["content"]["application/json"]
    assert "generate" in body["examples"]
    assert "GenerateInput" in spec["components"]["schemas"]
    # Every job option, with an example of its own.
    options = spec["components"]["schemas"]["GenerateJob"]["properties"]
    for name in JobOptions.model_fields:
        assert options[name].get("examples"), f"{name} has no example in /docs"


def test_tasks_are_plain_celery_tasks_from_a_python_shell(stack_env: dict[str, str], worker):
    """The README's Python use, run as written in a fresh interpreter."""
    code = (
        "from worker.tasks import generate_text\n"
        "result = generate_text.delay('Hello world', max_new_tokens=8)\n"
        "print(result.get(timeout=60)['tokens'])\n"
        "from celery import chain\n"
        "from worker.tasks import story_outline, story_expand, story_dialogue\n"
        "story = chain(story_outline.s('space', max_new_tokens=4),"
        " story_expand.s(max_new_tokens=4), story_dialogue.s(max_new_tokens=4))()\n"
        "print(sorted(story.get(timeout=60)))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=stack_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["8", "['text']"]


def test_the_api_imports_neither_torch_nor_transformers():
    code = (
        "import sys, app.main\n"
        "print(sorted({'torch', 'transformers', 'worker.tasks'} & set(sys.modules)))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=dict(os.environ), capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_a_chat_job_answers_in_the_model_s_template(client: httpx.Client, tiny_models_dir):
    from transformers import AutoTokenizer

    messages = [
        {"role": "system", "content": "You answer in one short sentence."},
        {"role": "user", "content": "Where does the fox live?"},
    ]
    # Greedy: a sampled reply may rightly be empty (the turn's end drawn first).
    body = {"messages": messages, "max_new_tokens": 40, "temperature": 0}
    job = client.post("/v1/jobs", json={"kind": "chat", "input": body})
    assert job.status_code == 202, job.text
    done = wait_for_job(client, job.json()["id"])
    assert done["status"] == "succeeded", done
    output = done["output"]
    tokenizer = AutoTokenizer.from_pretrained(tiny_models_dir / "generator")
    rendered = tokenizer.apply_chat_template(messages, add_generation_prompt=True)["input_ids"]
    assert output["prompt_tokens"] == len(rendered)
    assert 1 <= output["tokens"] <= 40 and output["model"]
    # The reply is the assistant's turn alone: it ends with it, not with the next one.
    assert "user:" not in output["text"] and "<|end|>" not in output["text"]


@pytest.mark.parametrize(
    ("messages", "field"),
    [
        ([{"role": "wizard", "content": "Hi"}], "role"),
        ([], "messages"),
        ([{"role": "user"}], "content"),
        ([{"role": "user", "content": "x" * 5000}] * 3, "messages"),  # over the total
    ],
)
def test_a_bad_conversation_is_422_naming_the_field(
    client: httpx.Client, messages: list, field: str
):
    response = client.post("/v1/jobs", json={"kind": "chat", "input": {"messages": messages}})
    assert response.status_code == 422, response.text
    problem = response.json()
    assert any(field in map(str, error["loc"]) for error in problem["errors"]), problem


def test_each_job_carries_its_metrics(client: httpx.Client):
    job = submit(client, input={"prompt": "The harbor", "max_new_tokens": 24}).json()
    done = wait_for_job(client, job["id"])
    metrics = done["metrics"]
    created, started, finished = (
        datetime.fromisoformat(done[field]) for field in ("created_at", "started_at", "finished_at")
    )
    assert metrics["queue_seconds"] == pytest.approx((started - created).total_seconds(), abs=1e-3)
    assert metrics["run_seconds"] == pytest.approx((finished - started).total_seconds(), abs=1e-3)
    total = metrics["queue_seconds"] + metrics["run_seconds"]
    assert total == pytest.approx((finished - created).total_seconds(), abs=2e-3)
    assert 0 < metrics["time_to_first_token_seconds"] <= metrics["run_seconds"]
    assert metrics["tokens"] == done["output"]["tokens"] == 24
    assert metrics["tokens_per_second"] == pytest.approx(24 / metrics["run_seconds"], rel=1e-2)

    classified = submit(client, kind="sentiment", input={"text": "Lovely"}).json()
    sentiment = wait_for_job(client, classified["id"])
    assert sentiment["metrics"]["time_to_first_token_seconds"] is None
    assert sentiment["metrics"]["tokens"] is None
    assert sentiment["metrics"]["run_seconds"] is not None

    scraped = client.get("/metrics").text
    assert 'llm_tasks_time_to_first_token_seconds_count{kind="generate"}' in scraped
