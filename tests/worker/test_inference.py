import re
from pathlib import Path

import pytest

from worker import inference
from worker.config import WorkerSettings
from worker.inference import Served
from worker.models import ModelRegistry, ModelRole
from worker.tiny import corpus_paragraphs


@pytest.fixture(scope="module")
def models(tiny_models_dir: Path) -> ModelRegistry:
    return ModelRegistry(WorkerSettings(model_cache_dir=tiny_models_dir.parent))


@pytest.fixture(scope="module")
def generator(models: ModelRegistry) -> Served:
    return Served.here(models.get(ModelRole.GENERATOR))


def generate(generator: Served, prompt: str, **options):
    defaults = {"max_new_tokens": 40, "temperature": 0.8, "top_p": 0.95, "seed": 7}
    return inference.generate_text(generator, prompt=prompt, **(defaults | options))


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
    [result] = inference.classify(Served.here(models.get(ModelRole.CLASSIFIER)), [text])
    assert result.label == label
    assert 0.5 < result.score <= 1.0


def test_summarizer_writes_a_short_text(models: ModelRegistry):
    text = " ".join(corpus_paragraphs()[8:10])
    summary = inference.summarize(
        Served.here(models.get(ModelRole.SUMMARIZER)),
        text=text,
        min_new_tokens=5,
        max_new_tokens=30,
    )
    assert 0 < len(summary) < len(text)
    assert re.search(r"[A-Za-z]{3,}", summary)
