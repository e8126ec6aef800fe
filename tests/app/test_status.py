import itertools
from datetime import UTC, datetime, timedelta

import pytest

from app.status import build_job, job_status, step_status
from contracts.records import JobRecord, StepRecord
from llm_tasks.job_schema import JobStatus, JobUrls
from llm_tasks.kinds import JobKind

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
NOW = datetime(2026, 1, 1, 0, 1, tzinfo=UTC)


def build(metas, record=RECORD, **options):
    defaults = {"started_at": None, "attempts": {}, "canceled_at": None, "now": NOW, "urls": URLS}
    return build_job(record, metas, **(defaults | options))


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
    job = build([meta], attempts={"task-1": 1})
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
    job = build([meta])
    assert job.status is JobStatus.SUCCEEDED
    assert job.output is not None and job.output.text == " there"
    assert job.error is None


def test_progress_of_the_running_step():
    meta = {"status": "PROGRESS", "result": {"current": 3, "total": 10, "message": "tokens"}}
    job = build([meta])
    assert job.status is JobStatus.RUNNING
    assert job.progress is not None and (job.progress.current, job.progress.total) == (3, 10)
    assert job.steps[0].progress == job.progress


VARIATIONS = RECORD.model_copy(
    update={
        "kind": JobKind.VARIATIONS,
        "input": {
            "prompt": "Hi",
            "temperatures": [0.5, 1.0, 1.5],
            "max_new_tokens": 4,
            "seed": None,
        },
        "steps": [StepRecord(name=f"variation-{i}", task_id=f"t{i}") for i in range(3)],
    }
)


def generated(text):
    return {
        "status": "SUCCESS",
        "result": {
            "text": text,
            "tokens": 1,
            "finish_reason": "length",
            "prompt_tokens": 1,
            "model": "tiny",
        },
        "date_done": DONE,
    }


def test_workflow_progress_counts_finished_steps():
    job = build([generated("a"), {"status": "STARTED"}, None], record=VARIATIONS)
    assert job.status is JobStatus.RUNNING
    assert (job.progress.current, job.progress.total) == (1, 3)
    assert job.progress.message == "1 of 3 variations done"
    assert [step.status for step in job.steps] == [
        JobStatus.SUCCEEDED,
        JobStatus.RUNNING,
        JobStatus.QUEUED,
    ]


def test_a_group_output_is_assembled_from_its_steps():
    job = build([generated("a"), generated("b"), generated("c")], record=VARIATIONS)
    assert job.status is JobStatus.SUCCEEDED
    assert [(v.temperature, v.text) for v in job.output.variations] == [
        (0.5, "a"),
        (1.0, "b"),
        (1.5, "c"),
    ]


def test_a_canceled_job_cancels_its_unfinished_steps():
    job = build([generated("a"), {"status": "STARTED"}, None], record=VARIATIONS, canceled_at=NOW)
    assert job.status is JobStatus.CANCELED
    assert [step.status for step in job.steps] == [
        JobStatus.SUCCEEDED,
        JobStatus.CANCELED,
        JobStatus.CANCELED,
    ]
    assert job.error.type == "canceled"
    assert job.finished_at == NOW


def test_a_job_not_started_before_its_expiry_is_expired():
    record = RECORD.model_copy(update={"expires_at": NOW - timedelta(seconds=1)})
    job = build([None], record=record)
    assert job.status is JobStatus.EXPIRED
    assert job.error.type == "expired"
    assert build([None], record=record, now=NOW - timedelta(seconds=5)).status is JobStatus.QUEUED


def test_a_message_dropped_by_the_worker_as_expired_is_expired():
    meta = {
        "status": "REVOKED",
        "result": {"exc_type": "TaskRevokedError", "exc_message": ["expired"]},
        "date_done": DONE,
    }
    assert build([meta]).status is JobStatus.EXPIRED


# Every order of queued / running / failed / succeeded steps of a group (variations), a
# chord (document: three parallel steps and their body) and a chain (story).
GENERATED = {"text": "t", "tokens": 1, "finish_reason": "length", "prompt_tokens": 1, "model": "m"}
SENTIMENT = {"label": "POSITIVE", "score": 0.9, "model": "m"}
WORKFLOWS = {
    "group": (
        JobKind.VARIATIONS,
        {"prompt": "Hi", "temperatures": [0.2, 0.7, 1.2]},
        [GENERATED] * 3,
    ),
    "chord": (
        JobKind.DOCUMENT,
        {"text": "A text."},
        [
            {"summary": "s", "model": "m"},
            SENTIMENT,
            GENERATED,
            {"summary": "s", "sentiment": SENTIMENT, "key_points": "k"},
        ],
    ),
    "chain": (JobKind.STORY, {"topic": "a fox"}, [{"text": "t"}] * 3),
}
STATES = ("queued", "running", "failed", "succeeded")


def step_meta(state: str, index: int, result: dict) -> dict | None:
    if state == "queued":
        return None
    if state == "running":
        return {"status": "PROGRESS", "result": {"current": 1, "total": 4, "text": "so far"}}
    if state == "failed":
        error = {"exc_type": "InjectedFault", "exc_message": [f"step {index} broke"]}
        return {"status": "FAILURE", "result": error, "date_done": DONE}
    return {"status": "SUCCESS", "result": result, "date_done": DONE}


def workflow_cases():
    for shape, (kind, job_input, results) in WORKFLOWS.items():
        for states in itertools.product(STATES, repeat=len(results)):
            yield pytest.param(kind, job_input, results, states, id=f"{shape}-{'-'.join(states)}")


@pytest.mark.parametrize(("kind", "job_input", "results", "states"), list(workflow_cases()))
def test_every_order_of_step_states_reads_right(kind, job_input, results, states):
    from app.workflows import stages_of, steps_of

    steps = [
        StepRecord(name=step.name, task_id=f"task-{i}")
        for i, step in enumerate(steps_of(kind, job_input))
    ]
    record = RECORD.model_copy(update={"kind": kind, "input": job_input, "steps": steps})
    pairs = enumerate(zip(states, results, strict=True))
    metas = [step_meta(state, i, result) for i, (state, result) in pairs]
    job = build(metas, record=record, started_at=None if set(states) == {"queued"} else NOW)

    shown = [step.status.value for step in job.steps]
    if "failed" in states:
        first = states.index("failed")
        assert job.status is JobStatus.FAILED
        assert job.error is not None
        assert (job.error.type, job.error.message) == ("InjectedFault", f"step {first} broke")
        assert job.output is None
        assert job.finished_at == datetime.fromisoformat(DONE)
        # Steps that will never run read as they will end: a later stage failed with the
        # error (as Celery stores it), a sibling canceled (the workers skip it).
        assert "queued" not in shown
        stages = stages_of(kind, job_input)
        failed_stage = min(stage for stage, s in zip(stages, states, strict=True) if s == "failed")
        never = {True: "failed", False: "canceled"}
        expected = [
            never[stage > failed_stage] if s == "queued" else s
            for stage, s in zip(stages, states, strict=True)
        ]
        assert shown == expected
    else:
        assert shown == list(states)
        assert job.error is None
        if set(states) == {"succeeded"}:
            assert job.status is JobStatus.SUCCEEDED and job.output is not None
        elif set(states) == {"queued"}:
            assert job.status is JobStatus.QUEUED
        else:
            assert job.status is JobStatus.RUNNING and job.output is None


DEADLINE_RECORD = RECORD.model_copy(update={"deadline": datetime(2026, 1, 1, 0, 0, 30, tzinfo=UTC)})
RUNNING = {"status": "PROGRESS", "result": {"current": 3, "total": 40, "text": "so far"}}


def success_at(moment: str) -> dict:
    return {
        "status": "SUCCESS",
        "result": {"text": "t", "tokens": 1, "finish_reason": "length", "prompt_tokens": 1,
                   "model": "m"},
        "date_done": moment,
    }  # fmt: skip


@pytest.mark.parametrize(
    ("meta", "now", "canceled_at", "expected"),
    [
        (RUNNING, NOW, None, ("canceled", "deadline")),  # running past its deadline
        (None, NOW, None, ("canceled", "deadline")),  # never started
        (RUNNING, datetime(2026, 1, 1, 0, 0, 10, tzinfo=UTC), None, ("running", None)),
        (success_at(DONE), NOW, None, ("succeeded", None)),  # done in time
        (success_at("2026-01-01T00:00:40+00:00"), NOW, None, ("canceled", "deadline")),  # late
        (RUNNING, NOW, datetime(2026, 1, 1, 0, 0, 20, tzinfo=UTC), ("canceled", "canceled")),
    ],
)
def test_a_job_not_finished_by_its_deadline_reads_canceled_by_it(meta, now, canceled_at, expected):
    job = build([meta], record=DEADLINE_RECORD, started_at=NOW, now=now, canceled_at=canceled_at)
    assert (job.status.value, job.error.type if job.error else None) == expected
    if expected[1] == "deadline":
        assert job.output is None
        assert job.finished_at == DEADLINE_RECORD.deadline
        # A step still going reads canceled; one that ended (too late) keeps its status.
        late = meta is not None and meta["status"] == "SUCCESS"
        assert [step.status.value for step in job.steps] == ["succeeded" if late else "canceled"]
        assert "cancel_after (30 s)" in job.error.message
