"""Jobs through the whole stack with the generator in vLLM (``LLM_TASKS_ENGINE=vllm``): the
same output, event stream and listing as with the builtin engine."""

import importlib.util
import time
from pathlib import Path

import httpx
import pytest

pytest.importorskip("vllm", reason="vLLM is not installed here: `make test-vllm` runs this")

from tests.conftest import wait_for, wait_for_job
from tests.support.sse import events, text_of
from worker import engine_client
from worker.config import WorkerSettings
from worker.engine_client import Served
from worker.models import ModelRegistry, ModelRole

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        importlib.util.find_spec("vllm") is None,
        reason="vLLM is not installed here: `make test-vllm` runs this",
    ),
]

#: The first job waits for the worker to start vLLM (a compile on a machine's first run).
FIRST_JOB_TIMEOUT = 300


def submit(client: httpx.Client, kind: str, **input: object) -> dict:
    response = client.post("/v1/jobs", json={"kind": kind, "input": input})
    assert response.status_code == 202, response.text
    return response.json()


@pytest.fixture(scope="module")
def builtin(tiny_models_dir: Path) -> Served:
    registry = ModelRegistry(WorkerSettings(model_cache_dir=tiny_models_dir.parent))
    return Served.here(registry.get(ModelRole.GENERATOR))


def test_a_generate_job_streams_the_builtin_engines_text(client: httpx.Client, builtin: Served):
    job = submit(client, "generate", prompt="Once upon a time", max_new_tokens=48, temperature=0)
    finished = wait_for_job(client, job["id"], timeout=FIRST_JOB_TIMEOUT)
    assert finished["status"] == "succeeded", finished
    output = finished["output"]
    expected = engine_client.generate_text(
        builtin, prompt="Once upon a time", max_new_tokens=48, temperature=0, top_p=1, seed=0
    )
    assert output == expected.model_dump() | {"model": "tiny"}

    streamed = submit(client, "generate", prompt="The little robot", max_new_tokens=64, seed=3)
    received = events(client, streamed["id"])
    assert [received[0].event, received[-1].event] == ["status", "done"]
    assert any(e.event == "output" for e in received)
    final = received[-1].data
    assert final["status"] == "succeeded"
    assert text_of(received) == final["output"]["text"]  # the deltas add up to the text


def test_a_chat_job_and_a_workflow_run_in_vllm(client: httpx.Client):
    chat = submit(
        client,
        "chat",
        messages=[{"role": "user", "content": "Tell me about the river."}],
        max_new_tokens=32,
        temperature=0,
    )
    story = submit(client, "story", topic="a small robot", max_new_tokens=24)
    for job in (chat, story):
        finished = wait_for_job(client, job["id"], timeout=FIRST_JOB_TIMEOUT)
        assert finished["status"] == "succeeded", finished
    assert wait_for_job(client, chat["id"])["output"]["finish_reason"] in {"stop", "length"}


def test_cancel_a_running_generation_stops_it_in_vllm(client: httpx.Client):
    job = submit(client, "generate", prompt="SLOW: a long tale", max_new_tokens=90)
    wait_for(
        client, job["id"], lambda j: (j["steps"][0]["progress"] or {}).get("current", 0) >= 3,
        timeout=FIRST_JOB_TIMEOUT,
    )  # fmt: skip
    assert client.delete(f"/v1/jobs/{job['id']}").json()["status"] == "canceled"
    done = wait_for(client, job["id"], lambda j: "after" in j["error"]["message"], timeout=30)
    assert done["status"] == "canceled" and done["output"] is None
    tokens_done = int(done["error"]["message"].split("after ")[1].split(" of ")[0])
    assert 3 <= tokens_done < 20  # 0.1 s a token: stopped within a few of the cancel


def test_the_listing_says_which_engine_runs_each_model(client: httpx.Client):
    submit(client, "sentiment", text="What a lovely day")  # the worker loads its models
    deadline = time.monotonic() + FIRST_JOB_TIMEOUT
    while True:
        listing = client.get("/v1/models").raise_for_status().json()["data"]
        models = {model["role"]: model for model in listing}
        if all(model["engine"] for model in listing) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert models["generator"]["engine"] == "vllm"
    assert models["classifier"]["engine"] == "builtin"
