"""The inference process: requests cross to it and back, with their streams and cancels,
and a process that dies fails its requests (to be retried) and is replaced."""

import os
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

import pytest

from worker.batching import DecodeRow, SummaryRequest
from worker.engine import InferenceProcess, InferenceProcessLost
from worker.errors import TransientError
from worker.models import ModelRole, get_registry


def paced() -> None:
    """In the inference process: every generation step takes at least 5 ms, so that a
    test can act while a row runs."""
    from worker import engine

    real_row = engine.engine_row

    def engine_row(row: Any, *args: Any) -> Any:
        row = real_row(row, *args)
        should_stop = row.should_stop

        def paced_stop() -> bool:
            time.sleep(0.005)
            return bool(should_stop())

        return replace(row, should_stop=paced_stop)

    engine.engine_row = engine_row


@pytest.fixture(scope="module")
def engine(tiny_models_dir: object) -> Iterator[InferenceProcess]:
    process = InferenceProcess(initializer=paced)
    process.start()
    yield process
    process.close()


def prompt(text: str) -> list[int]:
    tokenizer = get_registry().card(ModelRole.GENERATOR).tokenizer
    ids: list[int] = tokenizer(text)["input_ids"]
    return ids


def test_every_model_answers_through_the_process(engine: InferenceProcess):
    updates: list[list[int]] = []
    row = DecodeRow(prompt("The harbor at dawn"), 150, 0.8, 0.95, seed=4, on_tokens=updates.append)
    [decoded] = engine.submit_many(str(ModelRole.GENERATOR), [row])
    assert len(decoded.tokens) == 150 or decoded.finish_reason == "stop"
    assert updates, "the tokens streamed while the row ran"
    assert all(decoded.tokens[: len(update)] == update for update in updates)
    sentiments = engine.submit_many(str(ModelRole.CLASSIFIER), ["Lovely!", "Awful."])
    assert [s.label in {"POSITIVE", "NEGATIVE"} for s in sentiments] == [True, True]
    [summary] = engine.submit_many(
        str(ModelRole.SUMMARIZER),
        [SummaryRequest("The council met on Monday and agreed on a budget.", 2, 12)],
    )
    assert isinstance(summary, str) and summary


def test_a_cancel_crosses_to_the_process(engine: InferenceProcess):
    seen: list[int] = []
    row = DecodeRow(
        prompt("Stop me"),
        200,
        0.8,
        0.95,
        seed=2,
        on_tokens=lambda tokens: seen.append(len(tokens)),
        should_stop=lambda: bool(seen),  # stop once the first tokens came back
    )
    [decoded] = engine.submit_many(str(ModelRole.GENERATOR), [row])
    assert decoded.finish_reason in {"canceled", "stop"}
    assert len(decoded.tokens) < 200


def test_a_dead_process_fails_its_requests_as_transient_and_is_replaced(
    engine: InferenceProcess,
):
    streaming = threading.Event()
    row = DecodeRow(
        prompt("A very long tale"),
        200,
        0.8,
        0.95,
        seed=3,
        on_tokens=lambda tokens: streaming.set(),
        should_stop=lambda: False,
    )
    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(engine.submit_many, str(ModelRole.GENERATOR), [row] * 4)
        assert streaming.wait(30)
        assert engine.pid is not None
        os.kill(engine.pid, signal.SIGKILL)
        with pytest.raises(InferenceProcessLost) as lost:
            running.result(timeout=60)
    assert isinstance(lost.value, TransientError)  # so the task retries it
    [again] = engine.submit_many(str(ModelRole.CLASSIFIER), ["Still here?"])
    assert again.label in {"POSITIVE", "NEGATIVE"}
