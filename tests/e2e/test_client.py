"""The Python client (llm_tasks) against the real stack: every method, typed results,
errors with problem details, Retry-After honored, and streams that resume exactly."""

import asyncio
import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from llm_tasks import (
    AsyncClient,
    Client,
    Conflict,
    InvalidInput,
    JobPublic,
    JobStatus,
    NotFound,
    RateLimited,
    WaitTimeout,
)
from llm_tasks.payloads import GenerateInput, SentimentOutput
from tests.conftest import another_api
from tests.support.proxy import dropping_proxy

pytestmark = pytest.mark.e2e


@pytest.fixture
def llm(api_url: str) -> Iterator[Client]:
    with Client(api_url) as client:
        yield client


def test_submit_get_wait_list_typed(llm: Client):
    job = llm.submit("generate", GenerateInput(prompt="The harbor", max_new_tokens=12, seed=3))
    assert isinstance(job, JobPublic)
    assert job.status is JobStatus.QUEUED
    done = llm.wait(job.id, timeout=60)
    assert done.status is JobStatus.SUCCEEDED
    assert done.output is not None and done.output.text  # type: ignore[union-attr]
    assert llm.get(job.id).output == done.output
    page = llm.list(kind="generate", status="succeeded", limit=5)
    assert job.id in [item.id for item in page.items]

    sentiment = llm.wait(llm.submit("sentiment", {"text": "What a lovely day"}).id)
    assert isinstance(sentiment.output, SentimentOutput)


def test_cancel_and_errors_carry_problem_details(llm: Client):
    job = llm.submit("generate", {"prompt": "Later"}, delay_seconds=30, priority=9)
    assert job.priority == 9
    canceled = llm.cancel(job.id)
    assert canceled.status is JobStatus.CANCELED
    with pytest.raises(Conflict) as conflict:
        llm.cancel(job.id)
    assert conflict.value.status == 409
    assert conflict.value.problem["title"] == "Job already finished"

    with pytest.raises(NotFound) as missing:
        llm.get("no-such-job")
    assert missing.value.status == 404

    with pytest.raises(InvalidInput) as invalid:
        llm.submit("generate", {"prompt": "Hi", "temperature": 5})
    assert invalid.value.errors[0]["loc"][-1] == "temperature"


def test_stream_text_is_the_output(llm: Client):
    job = llm.submit("story", {"topic": "a lighthouse"})
    streamed = {
        step: "".join(llm.stream_text(job.id, step=step))
        for step in ("outline", "expand", "dialogue")
    }
    final = llm.get(job.id)
    assert final.status is JobStatus.SUCCEEDED
    assert final.output is not None
    assert streamed == {
        "outline": final.output.outline,  # type: ignore[union-attr]
        "expand": final.output.story,  # type: ignore[union-attr]
        "dialogue": final.output.dialogue,  # type: ignore[union-attr]
    }


def test_events_resume_from_a_last_event_id(llm: Client):
    job = llm.submit("generate", {"prompt": "Resume me", "max_new_tokens": 40, "seed": 1})
    events = list(llm.events(job.id))
    assert events[0].event == "status" and events[-1].event == "done"
    text = "".join(e.delta for e in events if e.event == "output")
    assert events[-1].job is not None
    assert text == events[-1].job.output.text  # type: ignore[union-attr]
    outputs = [i for i, e in enumerate(events) if e.event == "output"]
    cut = outputs[0]  # resume after the first piece of text
    again = list(llm.events(job.id, last_event_id=events[cut].id))
    rest = "".join(e.delta for e in again if e.event == "output")
    assert events[cut].delta + rest == text


def test_a_dropped_stream_resumes_without_losing_text(api_url: str):
    with dropping_proxy(api_url) as proxy, Client(proxy.url) as llm:
        job = llm.submit("generate", {"prompt": "SLOW: keep going", "max_new_tokens": 30})
        pieces = []
        for piece in llm.stream_text(job.id):
            pieces.append(piece)
            if len(pieces) == 2:
                proxy.drop_all()  # mid-stream: the client reconnects with Last-Event-ID
        streams = proxy.connections
        final = llm.get(job.id)
    assert streams >= 2  # the stream was cut and opened again
    assert len(pieces) > 2  # text kept coming after the cut
    assert final.status is JobStatus.SUCCEEDED
    assert "".join(pieces) == final.output.text  # type: ignore[union-attr]


def test_wait_gives_up_after_its_timeout(llm: Client):
    job = llm.submit("generate", {"prompt": "Not yet"}, delay_seconds=30)
    with pytest.raises(WaitTimeout):
        llm.wait(job.id, timeout=1.5)
    llm.cancel(job.id)


@pytest.fixture(scope="module")
def rate_limited_url(stack_env: dict[str, str], log_dir: Path, worker) -> Iterator[str]:
    env = stack_env | {"LLM_TASKS_RATE_LIMIT": "60", "LLM_TASKS_RATE_BURST": "1"}
    with another_api(env, log_dir) as url:
        yield url


def test_429_is_retried_after_retry_after(rate_limited_url: str):
    def list_five_times(client: Client) -> None:
        for _ in range(5):  # the second is refused, unless a slow run let one more pass
            client.list()

    with Client(rate_limited_url, max_retries=0) as impatient:
        with pytest.raises(RateLimited) as limited:
            list_five_times(impatient)
        assert limited.value.problem["retry_after"] >= 1
    with Client(rate_limited_url, max_retries=3) as patient:
        patient.list()
        patient.list()  # refused once, then let in after the Retry-After it was told


def test_async_client_does_the_same(api_url: str):
    async def scenario() -> None:
        async with AsyncClient(api_url) as llm:
            job = await llm.submit("story", {"topic": "a red kite"})
            events = [event async for event in llm.events(job.id)]
            assert events[-1].event == "done"
            text = {
                step: "".join(e.delta for e in events if e.event == "output" and e.step == step)
                for step in ("outline", "expand", "dialogue")
            }
            final = await llm.get(job.id)
            assert final.output.dialogue == text["dialogue"]  # type: ignore[union-attr]
            streamed = [t async for t in llm.stream_text(job.id, step="outline")]
            assert "".join(streamed) == text["outline"]
            assert (await llm.wait(job.id, timeout=30)).status is JobStatus.SUCCEEDED
            listed = await llm.list(kind="story", limit=5)
            assert job.id in [item.id for item in listed.items]
            later = await llm.submit("generate", {"prompt": "Later"}, delay_seconds=30)
            assert (await llm.cancel(later.id)).status is JobStatus.CANCELED
            with pytest.raises(Conflict):
                await llm.cancel(later.id)
            with pytest.raises(WaitTimeout):
                await llm.wait(
                    (await llm.submit("sentiment", {"text": "x"}, delay_seconds=30)).id, timeout=1
                )
            with contextlib.suppress(Conflict):
                for item in (await llm.list(status="queued")).items:
                    await llm.cancel(item.id)

    asyncio.run(scenario())


def test_async_stream_resumes_after_a_drop(api_url: str):
    async def scenario() -> None:
        with dropping_proxy(api_url) as proxy:
            async with AsyncClient(proxy.url) as llm:
                job = await llm.submit(
                    "generate", {"prompt": "SLOW: on and on", "max_new_tokens": 30}
                )
                pieces = []
                async for piece in llm.stream_text(job.id):
                    pieces.append(piece)
                    if len(pieces) == 2:
                        proxy.drop_all()
                streams = proxy.connections
                final = await llm.get(job.id)
        assert streams >= 2 and len(pieces) > 2
        assert "".join(pieces) == final.output.text  # type: ignore[union-attr]

    asyncio.run(scenario())
