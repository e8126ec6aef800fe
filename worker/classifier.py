"""Classification: texts labeled in passes grouped by length."""

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from worker.device_loop import Pending, by_length
from worker.models import LoadedModel


@dataclass(frozen=True)
class Sentiment:
    label: str
    score: float


def encode(loaded: LoadedModel, texts: list[str]) -> Any:
    """Padded, truncated to the model's window, on the model's device."""
    tokenizer = loaded.tokenizer
    return tokenizer(
        texts,
        padding=True,
        truncation=True,
        max_length=min(loaded.context_window, tokenizer.model_max_length),
        return_tensors="pt",
    ).to(loaded.device)


def classify_texts(loaded: LoadedModel, texts: list[str]) -> list[Sentiment]:
    """One forward pass: each text's most likely label and its probability."""
    model = loaded.transformers_model
    encoded = encode(loaded, texts)
    with torch.inference_mode():
        probabilities = model(**encoded).logits.float().softmax(dim=-1)
    scores, indices = probabilities.max(dim=-1)
    labels: dict[int, str] = model.config.id2label  # type: ignore[assignment]
    return [
        Sentiment(label=labels[int(index)], score=float(score))
        for score, index in zip(scores, indices, strict=True)
    ]


def classify_batch(
    loaded: LoadedModel, batch: list[Pending[str, Sentiment]], *_: Any
) -> Iterator[None]:
    """A pass per group of similar lengths."""

    def tokens(text: str) -> int:
        return len(loaded.tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])

    for group in by_length(batch, tokens):
        results = classify_texts(loaded, [pending.item for pending in group])
        for pending, result in zip(group, results, strict=True):
            pending.future.set_result(result)
        yield
