"""Webhooks on the real stack: the webhooks worker signs and POSTs each job event to a
receiver on 127.0.0.1 that verifies it with the ``standardwebhooks`` library."""

import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from llm_tasks import Client, JobStatus, verify_webhook
from tests.conftest import TEST_WEBHOOK_SECRET, another_api, wait_for, wait_for_job
from tests.e2e.test_cli import readme_blocks
from tests.support.receiver import Receiver, webhook_receiver
from tools.stack import Process, clean_env, free_port, http_ok, spawn, wait_until

pytestmark = pytest.mark.e2e


@pytest.fixture
def receiver(webhooks_worker: Process) -> Iterator[Receiver]:
    with webhook_receiver(TEST_WEBHOOK_SECRET) as running:
        yield running
    assert not running.refused, "every delivery verifies with the standardwebhooks library"


def path(kind: str) -> str:
    return f"/{kind}/{uuid.uuid4().hex}"


def submit(client: httpx.Client, body: dict) -> dict:
    response = client.post("/v1/jobs", json=body)
    assert response.status_code == 202, response.text
    return response.json()


def test_a_completed_webhook_is_retried_after_a_500_and_delivered_once(
    client: httpx.Client, receiver: Receiver
):
    where = path("fail-once")
    job = submit(
        client,
        {"kind": "sentiment", "input": {"text": "I love it"}, "webhook": receiver.url(where)},
    )
    first, second = receiver.wait_for(where, lambda got: any(d.answered == 204 for d in got))
    assert (first.answered, second.answered) == (500, 204)
    assert first.id == second.id == f"{job['id']}:completed"  # one event, one webhook-id
    assert first.body == second.body  # the same message, signed again at each attempt
    assert {first.event, second.event} == {"completed"}
    delivered = second.job
    assert delivered["id"] == job["id"] and delivered["status"] == "succeeded"
    assert delivered == client.get(f"/v1/jobs/{job['id']}").json() | {
        "webhook_deliveries": delivered["webhook_deliveries"]
    }, "the body is the job as GET shows it"

    final = wait_for(
        client, job["id"], lambda j: j["webhook_deliveries"][0]["state"] == "delivered"
    )
    (record,) = final["webhook_deliveries"]
    assert record["id"] == first.id and record["event"] == "completed"
    assert (record["attempts"], record["status_code"], record["error"]) == (2, 204, None)
    assert final["webhook"] == receiver.url(where)
    assert final["webhook_events_filter"] == ["completed"]
    assert len(receiver.at(where)) == 2, "delivered once: no attempt after the 2xx"


def test_start_and_output_arrive_only_when_asked(client: httpx.Client, receiver: Receiver):
    where = path("ok")
    job = submit(
        client,
        {
            "kind": "generate",
            "input": {"prompt": "SLOW: Once upon a time", "max_new_tokens": 24, "seed": 3},
            "webhook": receiver.url(where),
            "webhook_events_filter": ["start", "output", "completed"],
        },
    )

    def ended(got: list) -> bool:
        last_output = [d for d in got if d.event == "output" and d.job["status"] == "succeeded"]
        return any(d.event == "completed" for d in got) and bool(last_output)

    got = receiver.wait_for(where, ended)
    assert got[0].event == "start" and got[0].job["status"] == "running"
    final = wait_for_job(client, job["id"])
    (completed,) = [d for d in got if d.event == "completed"]
    assert completed.job["output"]["text"] == final["output"]["text"]
    # Each output delivery is the job as it was then, while it ran; the last one (made
    # once the job ended) has all of its text.
    outputs = [d for d in got if d.event == "output"]
    sequences = [int(d.id.rsplit(":", 1)[1]) for d in outputs]
    assert sequences == list(range(1, len(outputs) + 1))
    assert len(outputs) >= 3, "a generation of 2.4 s has output deliveries while it runs"
    assert any(d.job["status"] == "running" and d.job["steps"][0]["progress"] for d in outputs)
    assert outputs[-1].job["output"]["text"] == final["output"]["text"]
    # Throttled: one output delivery per 500 ms at most, over the job's run.
    run = final["metrics"]["run_seconds"]
    assert len(outputs) <= run / 0.5 + 2

    plain = path("ok")
    quiet = submit(
        client,
        {
            "kind": "generate",
            "input": {"prompt": "SLOW: Once upon a time", "max_new_tokens": 12},
            "webhook": receiver.url(plain),
        },
    )
    receiver.wait_for(plain, lambda got: len(got) >= 1)
    wait_for_job(client, quiet["id"])
    assert [d.event for d in receiver.at(plain)] == ["completed"], "the default: completed"


def test_a_receiver_that_never_answers_blocks_nothing(client: httpx.Client, receiver: Receiver):
    stuck = path("hang")
    submit(client, {"kind": "sentiment", "input": {"text": "fine"}, "webhook": receiver.url(stuck)})
    assert receiver.hanging.wait(60), "the first delivery is in flight, unanswered"

    where = path("ok")
    job = submit(
        client, {"kind": "sentiment", "input": {"text": "great"}, "webhook": receiver.url(where)}
    )
    (delivery,) = receiver.wait_for(where, lambda got: len(got) == 1)
    assert delivery.job["status"] == "succeeded"
    plain = submit(client, {"kind": "generate", "input": {"prompt": "Hello", "max_new_tokens": 4}})
    assert wait_for_job(client, plain["id"])["status"] == "succeeded"
    assert not receiver.released.is_set(), "all of it while the stuck delivery still hangs"
    assert wait_for_job(client, job["id"])["status"] == "succeeded"
    # Readiness is about the workers that run jobs: the webhooks worker is not one.
    workers = client.get("/readyz").json()["workers"]
    assert workers and not any(name.startswith("webhooks-") for name in workers)


def test_a_redirect_is_not_followed_and_a_delivery_is_given_up_after_its_window(
    client: httpx.Client, receiver: Receiver
):
    where = path("redirect")
    job = submit(
        client, {"kind": "sentiment", "input": {"text": "meh"}, "webhook": receiver.url(where)}
    )
    final = wait_for(
        client,
        job["id"],
        lambda j: j["webhook_deliveries"] and j["webhook_deliveries"][0]["state"] == "failed",
        timeout=60,
    )
    (record,) = final["webhook_deliveries"]
    assert record["status_code"] == 307 and "not followed" in record["error"]
    assert record["attempts"] == len(receiver.at(where)) >= 2  # retried, then given up
    assert not receiver.at(where.replace("/redirect/", "/ok/"))


def test_deadline_and_cancel_send_the_completed_webhook(client: httpx.Client, receiver: Receiver):
    late, canceled = path("ok"), path("ok")
    slow = {"prompt": "SLOW: a long story", "max_new_tokens": 90}
    deadline_job = submit(
        client,
        {"kind": "generate", "input": slow, "cancel_after": 2, "webhook": receiver.url(late)},
    )
    cancel_job = submit(
        client, {"kind": "generate", "input": slow, "webhook": receiver.url(canceled)}
    )
    wait_for(client, cancel_job["id"], lambda j: j["status"] == "running")
    client.delete(f"/v1/jobs/{cancel_job['id']}").raise_for_status()

    (by_cancel,) = receiver.wait_for(canceled, lambda got: len(got) == 1)
    assert by_cancel.job["status"] == "canceled"
    (by_deadline,) = receiver.wait_for(late, lambda got: len(got) == 1)
    assert by_deadline.job["id"] == deadline_job["id"]
    assert by_deadline.job["status"] == "canceled"
    assert by_deadline.job["error"]["type"] == "deadline"


def test_webhook_targets_are_checked(
    client: httpx.Client, stack_env: dict[str, str], log_dir: Path
):
    def problem(response: httpx.Response) -> str:
        assert response.status_code == 422, response.text
        (error,) = response.json()["errors"]
        assert error["loc"][-1] in {"webhook", "webhook_events_filter"}, error
        return error["msg"]

    sentiment = {"kind": "sentiment", "input": {"text": "ok"}}
    assert "http:// or https://" in problem(
        client.post("/v1/jobs", json=sentiment | {"webhook": "ftp://example.com/hook"})
    )
    assert "needs a webhook" in problem(
        client.post("/v1/jobs", json=sentiment | {"webhook_events_filter": ["start"]})
    )
    strict = stack_env | {"LLM_TASKS_WEBHOOK_ALLOW_PRIVATE_NETWORKS": "false"}
    with another_api(strict, log_dir) as url, httpx.Client(base_url=url, timeout=10) as other:
        for target in ("http://127.0.0.1:9/hook", "http://[::1]/hook", "http://10.0.0.8/"):
            message = problem(other.post("/v1/jobs", json=sentiment | {"webhook": target}))
            assert "private networks are off" in message
        assert "loopback" in problem(
            other.post("/v1/jobs", json=sentiment | {"webhook": "http://localhost:8000/"})
        )


def test_the_readme_receiver_verifies_a_delivery_and_refuses_a_forgery(
    client: httpx.Client, webhooks_worker: Process, log_dir: Path, tmp_path: Path
):
    (code,) = readme_blocks("Your first job", "python")
    (tmp_path / "readme_receiver.py").write_text(
        code.replace('"whsec_…"', repr(TEST_WEBHOOK_SECRET))
    )
    port = free_port()
    argv = [sys.executable, "-m", "uvicorn", "readme_receiver:app", "--port", str(port)]
    server = spawn("readme-receiver", [*argv, "--app-dir", str(tmp_path)], clean_env(), log_dir)
    try:
        url = f"http://127.0.0.1:{port}/hooks/llm-tasks"
        wait_until(lambda: http_ok(f"http://127.0.0.1:{port}/docs"), 30, server)
        job = submit(client, {"kind": "sentiment", "input": {"text": "Nice"}, "webhook": url})
        wait_until(lambda: f"completed {job['id']} succeeded" in server.tail(), 60, server)
        forged = httpx.post(
            url,
            content=b"{}",
            headers={"webhook-id": "x", "webhook-timestamp": "1", "webhook-signature": "v1,AA=="},
        )
        assert forged.status_code == 400
    finally:
        server.stop()


def test_the_client_asks_for_webhooks_and_verifies_them(api_url: str, receiver: Receiver):
    where = path("ok")
    with Client(api_url) as llm:
        job = llm.submit(
            "sentiment",
            {"text": "Lovely"},
            webhook=receiver.url(where),
            webhook_events_filter=("start", "completed"),
        )
        assert job.webhook == receiver.url(where)
        assert job.webhook_events_filter == ["start", "completed"]
        got = receiver.wait_for(where, lambda got: len(got) == 2)
        # A quick job's two deliveries may overtake each other: each says what it is.
        verified = {d.event: verify_webhook(d.body, d.headers, TEST_WEBHOOK_SECRET) for d in got}
        assert set(verified) == {"start", "completed"}
        assert verified["completed"].status is JobStatus.SUCCEEDED
        assert verified["completed"].output == llm.get(job.id).output
