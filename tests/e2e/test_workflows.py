"""Every job kind, end to end over HTTP on the real stack."""

import httpx
import pytest

from tests.conftest import wait_for, wait_for_job
from tests.e2e.test_faults import record_of
from tools.stack import Process

pytestmark = pytest.mark.e2e


def run(client: httpx.Client, kind: str, **job_input) -> dict:
    response = client.post("/v1/jobs", json={"kind": kind, "input": job_input})
    assert response.status_code == 202, response.text
    job = response.json()
    assert job["status"] == "queued"
    done = wait_for_job(client, job["id"])
    assert done["status"] == "succeeded", done
    assert done["progress"]["current"] == done["progress"]["total"]
    assert all(step["status"] == "succeeded" for step in done["steps"])
    return done


def test_long_text_reports_progress_per_chunk(client: httpx.Client):
    response = client.post(
        "/v1/jobs",
        json={
            "kind": "long_text",
            "input": {"prompt": "SLOW: The crew woke", "chunks": 3, "chunk_tokens": 4},
        },
    )
    job_id = response.json()["id"]
    midway = wait_for(client, job_id, lambda job: (job["progress"] or {}).get("current", 0) >= 1)
    if midway["status"] == "running":
        assert midway["progress"]["total"] == 3
        assert midway["progress"]["message"].startswith("chunk ")
    done = wait_for_job(client, job_id)
    output = done["output"]
    assert done["status"] == "succeeded"
    assert output["chunks_generated"] == 3
    assert output["tokens"] == 12
    assert len(output["text"].split()) >= 2


def test_long_text_outgrowing_the_context_window_is_not_an_error(client: httpx.Client):
    # 4 x 96 tokens plus the prompt exceed the tiny generator's 256-token window.
    done = run(
        client, "long_text", prompt="The weather will be sunny " * 20, chunks=4, chunk_tokens=96
    )
    assert done["output"]["tokens"] == 4 * 96


def test_summarize(client: httpx.Client):
    text = (
        "The city council approved a plan to build new bike lanes downtown. The lanes will "
        "connect the train station with the university. Work will start in the spring."
    )
    output = run(client, "summarize", text=text, max_new_tokens=30)["output"]
    assert 0 < len(output["summary"]) < len(text)
    assert output["model"] == "tiny"


@pytest.mark.parametrize(
    ("text", "label"),
    [
        ("I love this, it is wonderful!", "POSITIVE"),
        ("This is terrible and I hate it.", "NEGATIVE"),
    ],
)
def test_sentiment(client: httpx.Client, text: str, label: str):
    output = run(client, "sentiment", text=text)["output"]
    assert output["label"] == label
    assert 0.5 < output["score"] <= 1


def test_story_is_a_chain_of_three_steps(client: httpx.Client):
    done = run(client, "story", topic="a dragon who reads books", max_new_tokens=12, seed=3)
    assert [step["name"] for step in done["steps"]] == ["outline", "expand", "dialogue"]
    assert all(done["output"][part] for part in ("outline", "story", "dialogue"))
    assert done["progress"]["message"] == "3 of 3 steps done"


def test_variations_keep_each_temperature(client: httpx.Client):
    temperatures = [0.0, 0.7, 1.4]
    done = run(
        client, "variations", prompt="The market was", temperatures=temperatures, max_new_tokens=8
    )
    variations = done["output"]["variations"]
    assert [v["temperature"] for v in variations] == temperatures
    assert all(v["text"] for v in variations)
    assert done["progress"]["message"] == "3 of 3 variations done"
    assert len(done["steps"]) == 3


def test_document_is_a_chord(client: httpx.Client):
    text = "The new library opened on Monday. Families loved it and the children read all day."
    done = run(client, "document", text=text, max_new_tokens=16)
    assert [step["name"] for step in done["steps"]] == [
        "summarize",
        "sentiment",
        "key_points",
        "combine",
    ]
    output = done["output"]
    assert output["summary"]
    assert output["key_points"]
    assert output["sentiment"]["label"] in {"POSITIVE", "NEGATIVE"}


def test_reply_picks_tones_by_sentiment_and_ranks(client: httpx.Client):
    done = run(client, "reply", message="I'm frustrated with this!", max_new_tokens=12, seed=5)
    output = done["output"]
    assert output["analysis"]["label"] == "NEGATIVE"
    tones = {output["best"]["tone"]} | {alt["tone"] for alt in output["alternatives"]}
    assert tones == {"empathetic", "helpful", "acknowledging"}
    assert len(output["alternatives"]) == 2
    assert all(output["best"]["score"] >= alt["score"] for alt in output["alternatives"])
    assert [s["name"] for s in done["steps"]] == [
        "analyze",
        "variant-1",
        "variant-2",
        "variant-3",
        "rank",
    ]


def test_a_happy_message_gets_happy_tones(client: httpx.Client):
    output = run(
        client, "reply", message="Thank you so much, everything was perfect.", max_new_tokens=8
    )["output"]
    assert output["analysis"]["label"] == "POSITIVE"
    assert output["best"]["tone"] in {"positive", "expanding", "detailed"}


def test_a_failing_step_fails_the_workflow(client: httpx.Client):
    response = client.post("/v1/jobs", json={"kind": "story", "input": {"topic": "FAULT: no ink"}})
    done = wait_for_job(client, response.json()["id"])
    assert done["status"] == "failed"
    assert done["error"] == {"type": "InjectedFault", "message": "no ink"}
    # Celery fails the rest of the chain with the first error; the job reports that error.
    assert [step["status"] for step in done["steps"]] == ["failed", "failed", "failed"]


@pytest.mark.parametrize(
    ("kind", "job_input", "field"),
    [
        ("variations", {"prompt": "Hi", "temperatures": [0.5] * 17}, "temperatures"),
        ("variations", {"prompt": "Hi", "temperatures": [2.5]}, "temperatures"),
        ("summarize", {"text": "Hi", "min_new_tokens": 50, "max_new_tokens": 10}, "input"),
        ("long_text", {"prompt": "Hi", "chunks": 0}, "chunks"),
        ("sentiment", {"text": ""}, "text"),
        ("story", {"topic": "x" * 501}, "topic"),
        ("reply", {}, "message"),
        ("document", {"text": "Hi", "max_new_tokens": 10_000}, "max_new_tokens"),
    ],
)
def test_each_kind_bounds_its_input(client: httpx.Client, kind: str, job_input: dict, field: str):
    response = client.post("/v1/jobs", json={"kind": kind, "input": job_input})
    assert response.status_code == 422
    assert any(field in map(str, error["loc"]) for error in response.json()["errors"])


def test_every_kind_has_a_schema_and_an_output_in_the_docs(client: httpx.Client):
    schemas = client.get("/openapi.json").json()["components"]["schemas"]
    for name in ("LongText", "Summarize", "Sentiment", "Story", "Variations", "Document", "Reply"):
        assert f"{name}Input" in schemas
        assert f"{name}Output" in schemas


def test_a_failed_variation_fails_the_job_while_the_others_are_queued(
    client: httpx.Client, redis_url: str, worker: Process
):
    # Eight slow variations on a worker that runs four steps at a time: the third fails
    # at once while the last four are still queued.
    temperatures = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]
    body = {"prompt": "SLOW: FAULT_AT:0.3: Tell", "temperatures": temperatures}
    job = client.post(
        "/v1/jobs", json={"kind": "variations", "input": body | {"max_new_tokens": 40}}
    )
    assert job.status_code == 202, job.text
    job_id = job.json()["id"]
    failed = wait_for(
        client, job_id, lambda j: j["status"] != "running" and j["status"] != "queued"
    )
    assert failed["status"] == "failed"
    assert failed["error"] == {
        "type": "InjectedFault",
        "message": "injected fault at temperature 0.3",
    }
    # Every step ends; none but the failed one reads failed, none stays queued or running.
    done = wait_for(
        client, job_id, lambda j: all(s["status"] not in {"queued", "running"} for s in j["steps"])
    )
    statuses = [step["status"] for step in done["steps"]]
    assert statuses[2] == "failed"
    assert set(statuses[:2] + statuses[3:]) == {"canceled"}
    assert done["status"] == "failed" and done["error"] == failed["error"]
    listed = client.get("/v1/jobs").json()["items"]
    assert any(item["id"] == job_id and item["status"] == "failed" for item in listed)
    # The steps still queued when it failed never started.
    steps = record_of(redis_url, job_id).steps
    log = worker.log.read_text()
    assert all(f"started (task {step.task_id}," not in log for step in steps[4:])


def test_a_stop_string_ends_a_long_text_whatever_chunk_it_is_in(client: httpx.Client):
    body = {"prompt": "The crew woke", "chunks": 4, "chunk_tokens": 20, "temperature": 0.0}
    full = run(client, "long_text", **body)["output"]
    stop = full["text"][len(full["text"]) * 2 // 3 :][:4]
    job = client.post("/v1/jobs", json={"kind": "long_text", "input": body | {"stop": [stop]}})
    done = wait_for_job(client, job.json()["id"])
    assert done["status"] == "succeeded", done
    cut = done["output"]
    assert cut["text"] == full["text"][: full["text"].find(stop)]
    assert cut["finish_reason"] == "stop" and full["finish_reason"] == "length"
    assert cut["chunks_generated"] <= 4 and cut["tokens"] < full["tokens"]
