"""Summarization: a seq2seq model's own ``generate``, stepped a token at a time so that it
takes turns with the other runs of its device."""

import threading
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from transformers.generation.streamers import BaseStreamer

from worker.classifier import encode
from worker.device_loop import Pending, by_length
from worker.models import LoadedModel


@dataclass
class SummaryRequest:
    text: str
    min_new_tokens: int
    max_new_tokens: int


class _Turns(BaseStreamer):
    """Hands the device back after each token of a ``generate``: the streamer's ``put`` is
    called once per step, and waits there until the device loop gives the next turn."""

    def __init__(self) -> None:
        self.go = threading.Semaphore(0)
        self.paused = threading.Semaphore(0)
        self.abandoned = False

    def put(self, value: Any) -> None:
        self.paused.release()
        self.go.acquire()
        if self.abandoned:
            raise _Abandoned

    def end(self) -> None:
        pass


class _Abandoned(Exception):
    """The device loop gave the run up: the ``generate`` it was stepping ends here."""


def summarize_steps(
    loaded: LoadedModel, texts: list[str], *, min_new_tokens: int, max_new_tokens: int
) -> Generator[None, None, list[str]]:
    """One batched seq2seq ``generate`` (transformers 5 has no summarization pipeline),
    a token at a time: it runs in a thread of its own that takes turns with the device's
    inference thread, yielding after each step like the decode loop, so that a long
    summary does not stall the generations that share the device. Returns the summaries.
    """
    tokenizer, model = loaded.tokenizer, loaded.transformers_model
    encoded = encode(loaded, texts)
    turns = _Turns()
    outcome: dict[str, Any] = {}

    def run() -> None:
        turns.go.acquire()
        try:
            with torch.inference_mode():
                outcome["output"] = model.generate(  # type: ignore[operator]
                    **encoded,
                    min_new_tokens=min_new_tokens,
                    max_new_tokens=max_new_tokens,
                    num_beams=1,
                    do_sample=False,
                    streamer=turns,
                )
        except BaseException as error:  # handed to the inference thread
            outcome["error"] = error
        finally:
            outcome["done"] = True
            turns.paused.release()

    thread = threading.Thread(target=run, name="summary-steps", daemon=True)
    thread.start()
    try:
        while True:
            turns.go.release()
            turns.paused.acquire()
            if outcome.get("done"):
                break
            yield
    finally:
        if not outcome.get("done"):
            turns.abandoned = True
            turns.go.release()
        thread.join()
    if "error" in outcome:
        raise outcome["error"]
    output = outcome["output"]
    return [str(text).strip() for text in tokenizer.batch_decode(output, skip_special_tokens=True)]


def summarize_batch(
    loaded: LoadedModel, batch: list[Pending[SummaryRequest, str]], *_: Any
) -> Iterator[None]:
    """A ``generate`` per group of the same bounds and similar lengths, a pass per token."""
    by_bounds: dict[tuple[int, int], list[Pending[SummaryRequest, str]]] = {}
    for pending in batch:
        bounds = (pending.item.min_new_tokens, pending.item.max_new_tokens)
        by_bounds.setdefault(bounds, []).append(pending)
    for (low, high), same_bounds in by_bounds.items():
        for group in by_length(same_bounds, lambda item: len(item.text)):
            summaries = yield from summarize_steps(
                loaded, [p.item.text for p in group], min_new_tokens=low, max_new_tokens=high
            )
            for pending, summary in zip(group, summaries, strict=True):
                pending.future.set_result(summary)
