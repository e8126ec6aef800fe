from datetime import UTC, datetime

import pytest

from app.status import build_job, job_status, step_status
from contracts.jobs import JobRecord, JobStatus, JobUrls, StepRecord

RECORD = JobRecord(
    id="job-1",
    kind="generate",
    owner="anonymous",
    input={"prompt": "Hi"},
    priority=5,
    created_at=datetime(2026, 1, 1, tzinfo=UTC),
    steps=[StepRecord(name="generate", task_id="task-1")],
)
URLS = JobUrls(self="http://x/v1/jobs/job-1", events="http://x/v1/jobs/job-1/events")
DONE = "2026-01-01T00:00:05+00:00"


@pytest.mark.parametrize(
    ("state", "expected"),
    [
        ("PENDING", JobStatus.QUEUED),
        ("STARTED", JobStatus.RUNNING),
        ("PROGRESS", JobStatus.RUNNING),
        ("RETRY", JobStatus.RUNNING),
        ("SUCCESS", JobStatus.SUCCEEDED),
        ("FAILURE", JobStatus.FAILED),
        ("REVOKED", JobStatus.CANCELED),
    ],
)
def test_celery_states(state, expected):
    assert step_status({"status": state}) is expected


def test_no_meta_yet_means_queued():
    assert step_status(None) is JobStatus.QUEUED


def test_job_status_aggregates_steps():
    S = JobStatus
    assert job_status([S.SUCCEEDED, S.SUCCEEDED]) is S.SUCCEEDED
    assert job_status([S.SUCCEEDED, S.QUEUED]) is S.RUNNING
    assert job_status([S.QUEUED, S.QUEUED]) is S.QUEUED
    assert job_status([S.SUCCEEDED, S.FAILED, S.RUNNING]) is S.FAILED
    assert job_status([S.CANCELED, S.QUEUED]) is S.CANCELED


def test_a_task_that_raised_is_failed_with_its_error_not_completed():
    meta = {
        "status": "FAILURE",
        "result": {
            "exc_type": "RuntimeError",
            "exc_message": ["CUDA is on fire"],
            "exc_module": "builtins",
        },
        "date_done": DONE,
    }
    job = build_job(RECORD, [meta], started_at=None, attempts={"task-1": 1}, urls=URLS)
    assert job.status is JobStatus.FAILED
    assert job.output is None
    assert job.error is not None
    assert (job.error.type, job.error.message) == ("RuntimeError", "CUDA is on fire")
    assert job.finished_at == datetime.fromisoformat(DONE)
    assert job.attempts == 1


def test_a_succeeded_job_carries_its_output():
    meta = {
        "status": "SUCCESS",
        "result": {
            "text": " there",
            "tokens": 1,
            "finish_reason": "length",
            "prompt_tokens": 1,
            "model": "tiny",
        },
        "date_done": DONE,
    }
    job = build_job(RECORD, [meta], started_at=None, attempts={}, urls=URLS)
    assert job.status is JobStatus.SUCCEEDED
    assert job.output is not None and job.output.text == " there"
    assert job.error is None


def test_progress_of_the_running_step():
    meta = {"status": "PROGRESS", "result": {"current": 3, "total": 10, "message": "tokens"}}
    job = build_job(RECORD, [meta], started_at=None, attempts={}, urls=URLS)
    assert job.status is JobStatus.RUNNING
    assert job.progress is not None and (job.progress.current, job.progress.total) == (3, 10)
    assert job.steps[0].progress == job.progress
