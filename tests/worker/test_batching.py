"""The micro-batcher: concurrent requests share forward passes, each row keeps its own
parameters, stream and cancellation, and out-of-memory splits a batch."""

import dataclasses
import gc
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from tests.support.arrivals import Scripted
from worker.classifier import classify_batch
from worker.config import WorkerSettings
from worker.decode_loop import DecodeRow, decode_steps
from worker.device_loop import MicroBatcher, Pending, RowControl, Runner, by_length
from worker.models import (
    LARGE_MODEL_PARAMETERS,
    TORCH_THREADS,
    LoadedModel,
    ModelRegistry,
    ModelRole,
)


@pytest.fixture(scope="module")
def generator(tiny_models_dir: Path) -> LoadedModel:
    return ModelRegistry(WorkerSettings(model_cache_dir=tiny_models_dir.parent)).get(
        ModelRole.GENERATOR
    )


@pytest.fixture(scope="module")
def classifier(tiny_models_dir: Path) -> LoadedModel:
    return ModelRegistry(WorkerSettings(model_cache_dir=tiny_models_dir.parent)).get(
        ModelRole.CLASSIFIER
    )


def context(generator: LoadedModel, text: str) -> list[int]:
    return generator.tokenizer(text)["input_ids"]


_run_sizes: dict[int, list[int]] = {}  # each batcher's runs, as its on_run hook hears them


def batcher(
    model: LoadedModel, max_size: int = 16, wait_ms: float = 200, runner: Runner = decode_steps
) -> MicroBatcher:
    sizes: list[int] = []
    engine = MicroBatcher(model, runner, max_size=max_size, wait_ms=wait_ms, on_run=sizes.append)
    _run_sizes[id(engine)] = sizes
    return engine


def batch_sizes(engine: MicroBatcher, runs: int) -> list[int]:
    """The sizes of the engine's runs, once it has told ``runs`` of them (each is told when
    its run ends, a moment after the last result is handed back)."""
    deadline = time.monotonic() + 10
    while len(_run_sizes[id(engine)]) < runs and time.monotonic() < deadline:
        time.sleep(0.01)
    return _run_sizes[id(engine)]


def test_concurrent_rows_with_different_parameters_share_passes(generator: LoadedModel):
    engine = batcher(generator)
    rows = [
        DecodeRow(context(generator, "Once upon a time"), 5, 0.0, 1.0, seed=1),
        DecodeRow(context(generator, "The weather will be"), 12, 0.7, 0.9, seed=2),
        DecodeRow(context(generator, "A task queue lets a program run"), 20, 1.3, 0.5, seed=3),
        DecodeRow(context(generator, "Hi"), 8, 1.0, 1.0, seed=4),
    ]
    with ThreadPoolExecutor(len(rows)) as pool:
        results = list(pool.map(engine.submit, rows))
    assert batch_sizes(engine, 1) == [4]  # one batch for all four
    assert [len(result.tokens) for result in results] == [5, 12, 20, 8]
    assert all(result.finish_reason == "length" for result in results)


def test_a_row_gives_the_same_text_alone_and_in_a_batch(generator: LoadedModel):
    def row(seed: int) -> DecodeRow:
        return DecodeRow(context(generator, "The market was busy"), 16, 0.8, 0.95, seed=seed)

    alone = batcher(generator, max_size=1).submit(row(7))
    engine = batcher(generator)
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(engine.submit, [row(7), row(8), row(9), row(10)]))
    assert together[0].tokens == alone.tokens  # the row's own generator, whatever its company
    assert together[1].tokens != together[0].tokens


def test_a_finished_row_hands_its_result_back_at_once(generator: LoadedModel):
    engine = batcher(generator)
    finished: list[str] = []
    stop_long = threading.Event()

    def long_should_stop() -> bool:
        return stop_long.is_set()

    def run(name: str, row: DecodeRow, control: RowControl) -> None:
        engine.submit(row, control)
        finished.append(name)
        if name == "short":
            stop_long.set()  # the long row is still running when the short one is back

    long_row = DecodeRow(context(generator, "Long"), 200, 0.8, 0.95, seed=1)
    short_row = DecodeRow(context(generator, "Short"), 3, 0.8, 0.95, seed=2)
    threads = [
        threading.Thread(
            target=run, args=("long", long_row, RowControl(should_stop=long_should_stop))
        ),
        threading.Thread(target=run, args=("short", short_row, RowControl())),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert finished == ["short", "long"]
    assert batch_sizes(engine, 1) == [2]


def test_cancel_stops_only_its_own_row(generator: LoadedModel):
    engine = batcher(generator)
    streamed: list[int] = []
    canceled = DecodeRow(context(generator, "Cancel me"), 50, 0.8, 0.95, seed=1)
    control = RowControl(
        should_stop=lambda: len(streamed) >= 4,
        on_tokens=lambda tokens: streamed.append(len(tokens)),
    )
    kept = DecodeRow(context(generator, "Keep me"), 30, 0.8, 0.95, seed=2)
    with ThreadPoolExecutor(2) as pool:
        first, second = pool.map(engine.submit, [canceled, kept], [control, RowControl()])
    assert first.finish_reason == "canceled"
    assert len(first.tokens) == 4
    assert streamed == [1, 2, 3, 4]  # streamed token by token, then stopped
    assert second.finish_reason == "length"
    assert len(second.tokens) == 30


def test_a_request_joins_a_running_decode_loop(generator: LoadedModel):
    """Continuous batching: a row that arrives while a long generation runs joins it at
    the next step, finishes on its own, and gets the tokens it would get alone."""
    engine = batcher(generator, wait_ms=0)
    long_started = threading.Event()
    steps: list[int] = []

    def on_tokens(tokens: list[int]) -> None:
        steps.append(len(tokens))
        if len(tokens) == 5:
            long_started.set()

    long_row = DecodeRow(context(generator, "A long story begins"), 120, 0.8, 0.95, seed=1)
    late_prompt = context(generator, "Meanwhile, in the harbor, with a much longer prompt")
    late_row = DecodeRow(late_prompt, 10, 0.8, 0.95, seed=5)
    with ThreadPoolExecutor(2) as pool:
        long_result = pool.submit(engine.submit, long_row, RowControl(on_tokens=on_tokens))
        assert long_started.wait(30)
        late_result = pool.submit(engine.submit, late_row).result(timeout=60)
        steps_when_late_finished = len(steps)
        assert long_result.result(timeout=60).finish_reason == "length"
    assert steps_when_late_finished < 120  # it did not wait for the long row to end
    assert batch_sizes(engine, 1) == [2]  # one loop served both
    alone = batcher(generator, max_size=1).submit(DecodeRow(late_prompt, 10, 0.8, 0.95, seed=5))
    assert late_result.tokens == alone.tokens
    # The long row, which had company for a while (and its cache padded, then trimmed
    # when the company left), gives the tokens it gives alone too.
    long_alone = batcher(generator, max_size=1).submit(
        DecodeRow(context(generator, "A long story begins"), 120, 0.8, 0.95, seed=1)
    )
    assert long_result.result().tokens == long_alone.tokens


def test_rows_that_join_and_leave_a_busy_loop_keep_their_tokens(generator: LoadedModel):
    """Rows join a running loop (prompts shorter and longer than its cache) and leave it
    at different steps (the last rows move into their places): every row gets exactly
    the tokens it gets alone."""
    prompts = [
        "Once",
        "The weather will be fine tomorrow, said the old fisherman to the harbor master",
        "A task queue",
        "Hi",
        "Meanwhile, in the busy market square, a very long sentence went on and on",
        "The cat",
        "Seven",
    ]

    def row(i: int) -> DecodeRow:
        return DecodeRow(
            context(generator, prompts[i % len(prompts)]), 6 + 7 * (i % 4), 0.8, 0.95, seed=i
        )

    first = [Pending(row(i)) for i in range(3)]
    arrivals = Scripted([(1 + 3 * i, row(i)) for i in range(3, 14)])
    with torch.inference_mode():
        for _ in decode_steps(generator, first, arrivals, capacity=6):
            arrivals.step += 1
    assert not arrivals.pending  # every row joined the one loop (which appends them)
    assert first[3:] == arrivals.taken and len(first) == 14
    for i, pending in enumerate(first):
        alone = Pending(row(i))
        with torch.inference_mode():
            for _ in decode_steps(generator, [alone]):
                pass
        assert pending.future.result().tokens == alone.future.result().tokens, f"row {i}"


def test_out_of_memory_splits_the_batch(generator: LoadedModel):
    seen: list[int] = []
    capacities: list[int] = []

    def runner(loaded: LoadedModel, batch: list[Pending], arrivals: object, capacity: int) -> None:
        seen.append(len(batch))
        capacities.append(capacity)
        if len(batch) > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (injected)")
        for pending in batch:
            pending.future.set_result(pending.item * 10)

    engine = MicroBatcher(generator, runner, max_size=8, wait_ms=200)
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(engine.submit, range(8)))
    assert results == [n * 10 for n in range(8)]
    assert seen == [8, 4, 2, 2, 4, 2, 2]  # halved until it fits
    assert capacities == seen  # a half does not take in rows that arrive: it would grow back


def test_a_lone_row_out_of_memory_is_an_error_for_its_task(generator: LoadedModel):
    def runner(loaded: LoadedModel, batch: list[Pending], *_: object) -> None:
        raise torch.cuda.OutOfMemoryError("CUDA out of memory (injected)")

    engine = MicroBatcher(generator, runner, max_size=1, wait_ms=0)
    with pytest.raises(torch.cuda.OutOfMemoryError):
        engine.submit("row")


def test_batching_off_runs_one_request_per_pass(generator: LoadedModel):
    engine = batcher(generator, max_size=1)
    rows = [DecodeRow(context(generator, f"Row {i}"), 3, 0.8, 0.95, seed=i) for i in range(4)]
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(engine.submit, rows))
    assert batch_sizes(engine, 4) == [1, 1, 1, 1]


def test_texts_are_groupedby_length():
    items = [Pending(text) for text in ["a" * 3, "a" * 100, "a" * 4, "a" * 180, "a" * 5]]
    groups = [[len(p.item) for p in group] for group in by_length(items, len)]
    assert groups == [[3, 4, 5], [100, 180]]


def test_a_sliding_window_model_batches_too(generator: LoadedModel):
    """Another architecture, with a sliding attention window (a tiny Mistral, random
    weights): its rows share passes and each gives the tokens it gives alone."""
    from transformers import MistralConfig, MistralForCausalLM

    torch.manual_seed(0)
    config = MistralConfig(
        vocab_size=2048, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, sliding_window=8,
        max_position_embeddings=256,
    )  # fmt: skip
    windowed = LoadedModel(
        role=ModelRole.GENERATOR,
        name="mistral-sliding-test",
        model=MistralForCausalLM(config).eval(),
        tokenizer=generator.tokenizer,
        device=torch.device("cpu"),
        load_seconds=0.0,
    )
    rows = [
        DecodeRow(context(generator, f"Row number {i} says"), 12, 0.0, 1.0, seed=i)
        for i in range(3)
    ]
    # Greedy: a random model's flat distribution puts sampled draws within rounding
    # (~1e-7, which a batched forward may differ by) of a token's boundary.
    engine = batcher(windowed, max_size=8)
    with ThreadPoolExecutor(3) as pool:
        together = list(pool.map(engine.submit, rows))
    assert batch_sizes(engine, 1) == [3]
    alone = MicroBatcher(windowed, decode_steps, max_size=1, wait_ms=0)
    assert [alone.submit(row).tokens for row in rows] == [result.tokens for result in together]


def test_models_on_one_device_take_turns_on_its_inference_thread(
    generator: LoadedModel, classifier: LoadedModel
):
    """A classification that arrives during a long generation is answered between two of
    its steps, not after it; every pass on the device comes from the same thread."""
    passes_by: set[str] = set()
    streamed: list[int] = []
    started = threading.Event()

    def on_tokens(tokens: list[int]) -> None:
        passes_by.add(threading.current_thread().name)
        streamed.append(len(tokens))
        started.set()

    def classify_on_record(loaded: LoadedModel, batch: list[Pending], *rest: object):
        passes_by.add(threading.current_thread().name)
        yield from classify_batch(loaded, batch, *rest)

    writer = batcher(generator, wait_ms=0)
    reader = MicroBatcher(classifier, classify_on_record, max_size=8, wait_ms=0)

    def paced() -> bool:  # at least a second in all: the classification comes mid-way
        time.sleep(0.005)
        return False

    long_row = DecodeRow(context(generator, "Far away"), 200, 0.8, 0.95, seed=3)
    control = RowControl(should_stop=paced, on_tokens=on_tokens)
    with ThreadPoolExecutor(2) as pool:
        story = pool.submit(writer.submit, long_row, control)
        assert started.wait(30)
        sentiment = reader.submit("What a lovely, friendly place.")
        tokens_when_answered = streamed[-1]
        assert story.result(timeout=120).finish_reason == "length"
    assert sentiment.label in {"POSITIVE", "NEGATIVE"}
    assert tokens_when_answered < 200  # answered while the generation ran
    assert len(passes_by) == 1


def test_a_large_model_gets_every_core_and_a_small_one_leaves_one_to_celery(
    generator: LoadedModel,
):
    """On a CPU, the device loop runs a small model's passes with every core but one (the
    worker's Celery side needs CPU for every job), and a large model's with torch's
    default: its passes dwarf Celery's work."""
    every_core = TORCH_THREADS  # torch's own choice
    seen: dict[str, int] = {}

    def recording(name: str):
        def runner(loaded: LoadedModel, batch: list[Pending], *_: object) -> None:
            seen[name] = torch.get_num_threads()
            for pending in batch:
                pending.future.set_result(None)

        return runner

    small = MicroBatcher(generator, recording("small"), max_size=4, wait_ms=0)
    small.submit("a row")
    assert generator.parameters < LARGE_MODEL_PARAMETERS
    assert seen["small"] == max(1, (os.cpu_count() or 1) - 1)

    # A real module of ten million parameters (its passes are not run here).
    large_model = dataclasses.replace(generator, model=torch.nn.Linear(4000, 2500))
    assert large_model.parameters >= LARGE_MODEL_PARAMETERS
    large = MicroBatcher(large_model, recording("large"), max_size=4, wait_ms=0)
    large.submit("a row")
    small.submit("a row")
    assert seen == {"small": every_core, "large": every_core}

    del large, large_model  # the loop forgets a batcher that is gone (once its last
    small.submit("a row")  # round, which may still hold it, is over)
    gc.collect()
    small.submit("a row")
    assert seen["small"] == max(1, (os.cpu_count() or 1) - 1)
