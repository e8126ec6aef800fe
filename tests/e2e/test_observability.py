"""What an operator sees: Prometheus metrics that move with the jobs, and JSON log lines
that follow a job by its id on the API and on the worker."""

import json
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import wait_for_job
from tools.stack import Process, wait_until

pytestmark = pytest.mark.e2e


def scrape(client: httpx.Client) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(metrics: dict, name: str, **labels: str) -> float:
    return metrics.get((name, frozenset(labels.items())), 0.0)


def test_metrics_count_jobs_by_kind_and_status(client: httpx.Client):
    before = scrape(client)
    ok = client.post("/v1/jobs", json={"kind": "sentiment", "input": {"text": "Lovely."}}).json()
    bad = client.post(
        "/v1/jobs", json={"kind": "generate", "input": {"prompt": "FAULT: metrics"}}
    ).json()
    text = client.post(
        "/v1/jobs", json={"kind": "generate", "input": {"prompt": "Count me", "max_new_tokens": 8}}
    ).json()
    for job in (ok, bad, text):
        wait_for_job(client, job["id"])

    ends = [("generate", "failed"), ("sentiment", "succeeded"), ("generate", "succeeded")]

    def counted() -> bool:
        """All three ends, the tokens and the batches have reached the hash (workers
        flush what they counted once a second)."""
        now = scrape(client)
        finished = "llm_tasks_jobs_finished_total"
        return all(
            value(now, finished, kind=kind, status=status)
            > value(before, finished, kind=kind, status=status)
            for kind, status in ends
        ) and all(
            value(now, name, model=model) > value(before, name, model=model)
            for name, model in (
                ("llm_tasks_generated_tokens_total", "generator"),
                ("llm_tasks_batch_size_count", "classifier"),
            )
        )

    wait_until(counted, 10)
    after = scrape(client)

    def grew(name: str, by: float = 1, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert grew("llm_tasks_jobs_submitted_total", kind="sentiment") == 1
    assert grew("llm_tasks_jobs_submitted_total", kind="generate") == 2
    assert grew("llm_tasks_jobs_finished_total", kind="sentiment", status="succeeded") == 1
    assert grew("llm_tasks_jobs_finished_total", kind="generate", status="failed") == 1
    assert grew("llm_tasks_job_wait_seconds_count", kind="sentiment") == 1
    assert grew("llm_tasks_job_run_seconds_count", kind="sentiment", status="succeeded") == 1
    assert grew("llm_tasks_batch_size_count", model="classifier") >= 1
    assert grew("llm_tasks_generated_tokens_total", model="generator") >= 1
    assert grew("llm_tasks_inference_seconds_total", model="generator") > 0
    # Histograms are cumulative: the +Inf bucket holds every observation.
    assert value(after, "llm_tasks_job_wait_seconds_bucket", kind="sentiment", le="+Inf") == value(
        after, "llm_tasks_job_wait_seconds_count", kind="sentiment"
    )
    assert ("llm_tasks_queue_depth", frozenset({("queue", "generate")})) in after


def test_a_canceled_job_is_counted_once(client: httpx.Client):
    before = scrape(client)
    job = client.post(
        "/v1/jobs", json={"kind": "generate", "input": {"prompt": "Later"}, "delay_seconds": 30}
    ).json()
    assert client.delete(f"/v1/jobs/{job['id']}").status_code == 200
    assert client.delete(f"/v1/jobs/{job['id']}").status_code == 409
    after = scrape(client)
    labels = {"kind": "generate", "status": "canceled"}
    assert value(after, "llm_tasks_jobs_finished_total", **labels) == (
        value(before, "llm_tasks_jobs_finished_total", **labels) + 1
    )


def json_lines(log: Path) -> list[dict]:
    lines = []
    for line in log.read_text(errors="replace").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict):
            lines.append(entry)
    return lines


def test_logs_follow_a_job_by_its_id_on_both_sides(
    client: httpx.Client, log_dir: Path, worker: Process
):
    job = client.post("/v1/jobs", json={"kind": "story", "input": {"topic": "a lighthouse"}})
    job_id = job.json()["id"]
    assert wait_for_job(client, job_id)["status"] == "succeeded"

    def logged() -> bool:
        worker_lines = [e for e in json_lines(worker.log) if e.get("job_id") == job_id]
        return len([e for e in worker_lines if e.get("status") == "succeeded"]) == 3

    wait_until(logged, 10)
    api_lines = [e for e in json_lines(log_dir / "api.log") if e.get("job_id") == job_id]
    assert [e["message"] for e in api_lines] == [f"job {job_id} submitted (story, priority 5)"]
    assert api_lines[0]["kind"] == "story"
    assert api_lines[0]["level"] == "INFO" and api_lines[0]["ts"]

    worker_lines = [e for e in json_lines(worker.log) if e.get("job_id") == job_id]
    steps = [(e["step"], e.get("status", "started")) for e in worker_lines]
    assert steps == [
        ("llm_tasks.story.outline", "started"),
        ("llm_tasks.story.outline", "succeeded"),
        ("llm_tasks.story.expand", "started"),
        ("llm_tasks.story.expand", "succeeded"),
        ("llm_tasks.story.dialogue", "started"),
        ("llm_tasks.story.dialogue", "succeeded"),
    ]
    task_ids = api_lines[0]["task_ids"].split(",")
    assert [e["task_id"] for e in worker_lines[::2]] == task_ids
    assert all(e["duration_s"] >= 0 for e in worker_lines if e.get("duration_s"))
