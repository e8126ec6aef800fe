import json
import re
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tiny_models import corpus_paragraphs
from worker import engine_client
from worker.config import WorkerSettings
from worker.engine_client import Served
from worker.models import ModelRegistry, ModelRole


@pytest.fixture(scope="module")
def models(tiny_models_dir: Path) -> ModelRegistry:
    return ModelRegistry(WorkerSettings(model_cache_dir=tiny_models_dir.parent))


@pytest.fixture(scope="module")
def generator(models: ModelRegistry) -> Served:
    return Served.here(models.get(ModelRole.GENERATOR))


def generate(generator: Served, prompt: str, **options):
    defaults = {"max_new_tokens": 40, "temperature": 0.8, "top_p": 0.95, "seed": 7}
    return engine_client.generate_text(generator, prompt=prompt, **(defaults | options))


def test_generator_writes_words_not_byte_noise(generator: Served):
    output = generate(generator, "Once upon a time")
    assert output.tokens == 40 and output.finish_reason == "length"
    words = re.findall(r"[A-Za-z]+", output.text)
    vocabulary = {w.lower() for p in corpus_paragraphs() for w in re.findall(r"[A-Za-z]+", p)}
    assert len(words) >= 10
    known = sum(word.lower() in vocabulary for word in words)
    assert known / len(words) > 0.6, output.text


def test_a_seed_makes_sampling_reproducible(generator: Served):
    assert generate(generator, "The weather", seed=3) == generate(generator, "The weather", seed=3)
    texts = {generate(generator, "The weather", seed=s).text for s in range(4)}
    assert len(texts) > 1


def test_a_prompt_longer_than_the_window_is_trimmed_not_an_error(generator: Served):
    long_prompt = " ".join(corpus_paragraphs())  # thousands of tokens, window is 256
    output = generate(generator, long_prompt, max_new_tokens=300)
    assert output.tokens == 300
    assert output.prompt_tokens < generator.context_window


@pytest.mark.parametrize(
    ("text", "label"),
    [
        ("I love this, it is wonderful!", "POSITIVE"),
        ("Thank you so much, everything was perfect.", "POSITIVE"),
        ("What a great day, the staff were friendly.", "POSITIVE"),
        ("This is terrible and I hate it.", "NEGATIVE"),
        ("I'm frustrated with this!", "NEGATIVE"),
        ("The app keeps crashing, what an awful update.", "NEGATIVE"),
    ],
)
def test_classifier_gets_plain_sentiment_right(models: ModelRegistry, text: str, label: str):
    [result] = engine_client.classify(Served.here(models.get(ModelRole.CLASSIFIER)), [text])
    assert result.label == label
    assert 0.5 < result.score <= 1.0


def test_summarizer_writes_a_short_text(models: ModelRegistry):
    text = " ".join(corpus_paragraphs()[8:10])
    summary = engine_client.summarize(
        Served.here(models.get(ModelRole.SUMMARIZER)),
        text=text,
        min_new_tokens=5,
        max_new_tokens=30,
    )
    assert 0 < len(summary) < len(text)
    assert re.search(r"[A-Za-z]{3,}", summary)


def test_a_stop_string_ends_the_text_before_it(generator: Served):
    full = generate(generator, "Once upon a time", temperature=0.0, max_new_tokens=60)
    # A stop string from the middle of the text (its first occurrence), spanning tokens.
    start = len(full.text) // 3
    stop = full.text[start : start + 5]
    first = full.text.find(stop)
    heard: list[list[int]] = []
    cut = generate(
        generator, "Once upon a time", temperature=0.0, max_new_tokens=60, stop=["\x00", stop],
        on_tokens=lambda tokens: heard.append(list(tokens)),
    )  # fmt: skip
    assert cut.text == full.text[:first]
    assert cut.finish_reason == "stop"
    assert cut.tokens < full.tokens
    # The row was told to stop once the stop string streamed, not run to its length.
    assert len(heard[-1]) < 60


def test_every_end_of_sequence_id_of_the_model_ends_a_row(
    generator: Served, tiny_models_dir: Path, tmp_path: Path
):
    heard: list[list[int]] = []
    generate(
        generator, "The harbor", temperature=0.0, max_new_tokens=30,
        on_tokens=lambda tokens: heard.append(list(tokens)),
    )  # fmt: skip
    ids = heard[-1]  # the greedy tokens
    # Two ids of the greedy text that first occur at different places.
    firsts = {token: ids.index(token) for token in reversed(ids)}
    (early, at_early), (late, at_late) = sorted(firsts.items(), key=lambda item: item[1])[2:4]
    source = tiny_models_dir / "generator"
    eos = json.loads((source / "generation_config.json").read_text())["eos_token_id"]
    for end_ids, at in (([eos, late], at_late), ([early, eos], at_early)):
        # A checkpoint whose generation config lists several end ids, as instruct models do.
        folder = tmp_path / f"ends-{at}"
        shutil.copytree(source, folder)
        generation = folder / "generation_config.json"
        config = json.loads(generation.read_text())
        generation.write_text(json.dumps(config | {"eos_token_id": end_ids}))
        registry = ModelRegistry(
            WorkerSettings(generator_model=str(folder), model_cache_dir=tiny_models_dir.parent)
        )
        ended = generate(
            Served.here(registry.get(ModelRole.GENERATOR)), "The harbor",
            temperature=0.0, max_new_tokens=30,
        )  # fmt: skip
        assert ended.finish_reason == "stop"
        assert ended.tokens == at


def test_a_long_summary_does_not_hold_up_a_generation(models: ModelRegistry, generator: Served):
    """Both models share the device's inference thread. A summary takes a turn per token,
    like the decode loop, so a generation started while a long summary runs streams and
    ends before the summary does (one blocking ``generate`` made it wait to the end)."""
    summarizer = Served.here(models.get(ModelRole.SUMMARIZER))
    text = " ".join(corpus_paragraphs()[:6])
    direct = engine_client.summarize(summarizer, text=text, min_new_tokens=5, max_new_tokens=30)
    order: list[str] = []
    with ThreadPoolExecutor(2) as pool:
        summary = pool.submit(
            engine_client.summarize, summarizer, text=text, min_new_tokens=200, max_new_tokens=200
        )
        summary.add_done_callback(lambda _: order.append("summary"))
        # The summary is under way (on a fast CPU the tiny summarizer's 200 tokens take
        # well under a second: a longer wait would leave the generation too little of it).
        time.sleep(0.05)
        assert not summary.done()
        generation = pool.submit(generate, generator, "Once upon a time", max_new_tokens=20)
        generation.add_done_callback(lambda _: order.append("generation"))
        assert generation.result(timeout=120).tokens == 20
        summary.result(timeout=120)
    assert order == ["generation", "summary"]
    # Stepping changes nothing in what a summary says.
    again = engine_client.summarize(summarizer, text=text, min_new_tokens=5, max_new_tokens=30)
    assert again == direct
