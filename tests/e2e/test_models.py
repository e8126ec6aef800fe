"""GET /v1/models: the deployment's models as the workers that hold them publish them,
how many live workers serve each, and what a model without a chat template refuses."""

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from contracts.models import model_workers_key
from tests.conftest import TEST_MAX_NEW_TOKENS, wait_for_job
from tools.stack import (
    clean_env,
    free_port,
    http_ok,
    start_api,
    start_redis,
    start_worker,
    wait_until,
)

pytestmark = pytest.mark.e2e


def models_of(client: httpx.Client) -> dict[str, dict]:
    response = client.get("/v1/models")
    assert response.status_code == 200, response.text
    return {model["name"]: model for model in response.json()["data"]}


def test_the_models_of_the_stack_are_listed_with_their_workers(client: httpx.Client):
    wait_until(lambda: all(m["workers"] >= 1 for m in models_of(client).values()), 60)
    models = models_of(client)
    assert set(models) == {"generator", "summarizer", "classifier"}
    generator = models["generator"]
    assert generator["role"] == "generator" and generator["queue"] == "generate"
    assert generator["source"] == "tiny"
    assert generator["context_window"] == 256
    assert generator["chat_template"] is True  # the tiny generator has one
    assert models["classifier"]["chat_template"] is False
    assert models["summarizer"]["queue"] == "summarize"


@pytest.fixture
def no_template(tiny_models_dir: Path, tmp_path: Path) -> Path:
    """The tiny generator, its chat template taken away."""
    folder = tmp_path / "generator-without-a-template"
    shutil.copytree(tiny_models_dir / "generator", folder)
    (folder / "chat_template.jinja").unlink()
    return folder


@pytest.fixture
def stack(log_dir: Path, no_template: Path) -> Iterator[tuple[str, object]]:
    server, redis_url = start_redis(log_dir)
    env = clean_env(
        redis_url=redis_url,
        generator_model=str(no_template),
        max_new_tokens=str(TEST_MAX_NEW_TOKENS),
    )
    port = free_port()
    api = start_api(env, log_dir, host="127.0.0.1", port=port)
    worker = start_worker(env, log_dir, name="catalog-worker")
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: http_ok(f"{url}/readyz"), 90, api, worker)
        yield url, worker
    finally:
        worker.stop()
        api.stop()
        server.stop()


def test_a_stopped_worker_is_no_longer_counted_and_a_model_without_a_template_refuses_chat(
    stack: tuple[str, object], no_template: Path
):
    url, worker = stack
    with httpx.Client(base_url=url, timeout=10) as client:
        wait_until(lambda: models_of(client)["generator"]["workers"] == 1, 60)
        generator = models_of(client)["generator"]
        assert generator["source"] == str(no_template)
        assert generator["chat_template"] is False

        chat = {"kind": "chat", "input": {"messages": [{"role": "user", "content": "Hi"}]}}
        refused = client.post("/v1/jobs", json=chat)
        assert refused.status_code == 422, refused.text
        [error] = refused.json()["errors"]
        assert error["loc"] == ["body", "kind"] and "no chat template" in error["msg"]

        worker.stop()  # a warm shutdown: it takes its name off
        after = models_of(client)
        assert {model["workers"] for model in after.values()} == {0}
        assert after["generator"]["context_window"] == 256  # still known
        # No live worker: jobs are still accepted, and wait in their queue.
        queued = client.post("/v1/jobs", json={"kind": "generate", "input": {"prompt": "Hi"}})
        assert queued.status_code == 202
        time.sleep(1)
        assert client.get(f"/v1/jobs/{queued.json()['id']}").json()["status"] == "queued"


@pytest.fixture(scope="module")
def two_generators(
    log_dir: Path, tiny_models_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, str, Path, dict]]:
    """Two generators, "tiny" (the default) and "other" (a folder), each on its queue; one
    worker for everything but "other", and one that consumes "other"'s queue alone."""
    other = tmp_path_factory.mktemp("other") / "generator"
    shutil.copytree(tiny_models_dir / "generator", other)
    declared = [
        {"name": "tiny", "role": "generator", "source": "tiny"},
        {"name": "other", "role": "generator", "source": str(other)},
    ]
    server, redis_url = start_redis(log_dir)
    env = clean_env(redis_url=redis_url, models=json.dumps(declared))
    port = free_port()
    api = start_api(env, log_dir, host="127.0.0.1", port=port)
    workers = {
        "main": start_worker(
            env, log_dir, name="main-worker", extra=["-Q", "generate,summarize,classify,default"]
        ),
        "other": start_worker(env, log_dir, name="other-worker", extra=["-Q", "generate.other"]),
    }
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: http_ok(f"{url}/readyz"), 90, api, *workers.values())
        yield url, redis_url, other, workers
    finally:
        api.stop()
        for worker in workers.values():
            worker.stop()
        server.stop()


def test_each_worker_holds_the_models_of_its_queues_and_each_job_gets_the_model_it_named(
    two_generators: tuple[str, str, Path, dict],
):
    url, redis_url, other, workers = two_generators
    with httpx.Client(base_url=url, timeout=10) as client:
        wait_until(lambda: all(m["workers"] == 1 for m in models_of(client).values()), 60)
        models = models_of(client)
        assert set(models) == {"tiny", "other", "summarizer", "classifier"}
        assert models["other"]["queue"] == "generate.other"
        assert models["tiny"]["queue"] == "generate"

        # Which worker process holds which model, as the workers published it.
        store = redis.Redis.from_url(redis_url)
        holders = {
            name: {member.decode().rsplit("/", 1)[1] for member in store.zrange(key, 0, -1)}
            for name in models
            for key in [model_workers_key(name)]
        }
        main_pid, other_pid = (str(workers[w].popen.pid) for w in ("main", "other"))
        assert holders["other"] == {other_pid}  # the -Q worker holds its model alone
        assert holders["tiny"] == holders["summarizer"] == holders["classifier"] == {main_pid}

        def output_of(body: dict) -> dict:
            job = client.post("/v1/jobs", json=body)
            assert job.status_code == 202, job.text
            done = wait_for_job(client, job.json()["id"])
            assert done["status"] == "succeeded", done
            return done["output"]

        prompt = {"prompt": "Once upon a time", "max_new_tokens": 8}
        assert output_of({"kind": "generate", "input": prompt})["model"] == "tiny"
        named = output_of({"kind": "generate", "input": prompt, "model": "other"})
        assert named["model"] == str(other)
        story = {"kind": "story", "input": {"topic": "a fox", "max_new_tokens": 6}}
        assert output_of(story | {"model": "other"})["dialogue"] is not None
        chat = {"messages": [{"role": "user", "content": "Hi"}], "max_new_tokens": 6}
        assert output_of({"kind": "chat", "input": chat, "model": "other"})["model"] == str(other)

        for body, field, words in (
            ({"kind": "generate", "input": prompt, "model": "nope"}, "model", "no model named"),
            ({"kind": "generate", "input": prompt, "model": "classifier"}, "model", "classifier"),
        ):
            refused = client.post("/v1/jobs", json=body)
            assert refused.status_code == 422, refused.text
            [error] = refused.json()["errors"]
            assert error["loc"] == ["body", field] and words in error["msg"]
