"""The engine client: what the tasks call to generate, classify and summarize.

Plain functions, no Celery: tests and benchmarks call them directly. The tokenizers are
here, the weights are not: a request (token ids, texts) goes to the model's micro-batcher
in the inference process (:mod:`worker.inference_process`) or, with
``LLM_TASKS_INFERENCE_PROCESS=false``, in this one (:mod:`worker.batchers`); its stream
and cancellation go beside it as a :class:`~worker.device_loop.RowControl`.
"""

import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache, partial
from typing import Any, Literal

from contracts.models import PublishedModel
from llm_tasks.kinds import DEFAULT_PRIORITY
from llm_tasks.payloads import GenerateOutput
from worker.batchers import batcher_for
from worker.catalog import catalog
from worker.classifier import Sentiment
from worker.config import get_settings
from worker.decode_loop import DecodeRow
from worker.device_loop import RowControl
from worker.errors import Canceled
from worker.inference_process import inference_process
from worker.models import LoadedModel, ModelRole, get_registry
from worker.stops import cut_at_stop
from worker.summarizer import SummaryRequest


@dataclass(frozen=True)
class Served:
    """A model as the tasks see it: its tokenizer and window, and where its requests go."""

    role: ModelRole
    name: str
    tokenizer: Any
    context_window: int
    #: Runs requests (each with its control, if any) and returns their results.
    submit_many: Callable[[Sequence[Any], Sequence[RowControl] | None], list[Any]]

    def submit(self, item: Any, control: RowControl | None = None) -> Any:
        [result] = self.submit_many([item], [control or RowControl()])
        return result

    @classmethod
    def here(cls, loaded: LoadedModel) -> "Served":
        """A model loaded in this process, served by its micro-batcher."""
        submit_many = batcher_for(loaded).submit_many
        return cls(loaded.role, loaded.name, loaded.tokenizer, loaded.context_window, submit_many)


def served(role: ModelRole, model: str | None = None) -> Served:
    """The model named ``model`` (the role's default if None) for this process's tasks."""
    return _served(get_settings().model_for(role, model).name)


@lru_cache
def _served(name: str) -> Served:
    """Published when first served: this worker holds it."""
    registry = get_registry()
    declared = registry.declared(name)
    if get_settings().inference_process:
        card = registry.card(name)  # the tokenizer; the weights are in the other process
        submit_many = partial(inference_process().submit_many, name)
        model = Served(declared.role, card.name, card.tokenizer, card.context_window, submit_many)
    else:
        model = Served.here(registry.get(name))
    catalog().publish(
        PublishedModel(
            **declared.model_dump() | {"engine": registry.engine(name)},
            context_window=model.context_window,
            chat_template=bool(getattr(model.tokenizer, "chat_template", None)),
        )
    )
    return model


StopCheck = Callable[[], bool]
#: Told the tokens generated so far, after each new one (it throttles itself).
OnTokens = Callable[[list[int]], None]

__all__ = ["Sentiment", "classify", "generate_text", "stable_text", "summarize"]


def stable_text(tokenizer: Any, tokens: list[int]) -> str:
    """Decoded text that later tokens only extend: a character still missing bytes (shown as
    U+FFFD) is held back, and no spaces are "cleaned up" around punctuation."""
    text: str = tokenizer.decode(
        tokens, skip_special_tokens=True, clean_up_tokenization_spaces=False
    )
    return text.rstrip("\ufffd")


def generate_text(
    loaded: Served,
    *,
    prompt: str,
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    seed: int | None,
    stop: Sequence[str] = (),
    prompt_ids: list[int] | None = None,
    end_ids: frozenset[int] = frozenset(),
    priority: int = DEFAULT_PRIORITY,
    should_stop: StopCheck | None = None,
    on_tokens: OnTokens | None = None,
) -> GenerateOutput:
    """Continue ``prompt``. When prompt and continuation outgrow the context window, the
    oldest tokens are dropped from what the model sees (never an error): the text is
    written in rounds that each fit the window.

    The text ends before the first of the ``stop`` strings (``finish_reason`` ``stop``,
    as for an end-of-sequence token); the row is told to stop as soon as one shows up in
    what streamed. ``on_tokens`` hears the tokens generated so far after each new one;
    ``should_stop`` is asked after each token, and once it answers yes the generation
    ends there and :class:`~worker.errors.Canceled` is raised. ``prompt_ids`` (a chat
    template's rendering) stand for ``prompt``; ``end_ids`` end the text too (a turn's end).
    ``priority`` is the job's (9 most urgent), for an engine that orders rows by it.
    """
    tokenizer = loaded.tokenizer
    if prompt_ids is None:
        prompt_ids = tokenizer(prompt, add_special_tokens=False, verbose=False)["input_ids"]
    window = loaded.context_window
    seed = seed if seed is not None else secrets.randbits(32)
    generated: list[int] = []
    finish_reason: Literal["length", "stop"] = "length"
    seen_prompt_tokens = 0
    stopped = StopWatch(tokenizer, stop, on_tokens)
    while len(generated) < max_new_tokens:
        remaining = max_new_tokens - len(generated)
        context = prompt_ids + generated
        step = remaining if len(context) + remaining <= window else min(remaining, window // 2)
        context = context[-(window - step) :] or [tokenizer.eos_token_id]
        if not generated:
            seen_prompt_tokens = len(context)
        decoded = loaded.submit(
            DecodeRow(
                context=context,
                max_new_tokens=step,
                temperature=temperature,
                top_p=top_p,
                seed=seed + len(generated),  # each round draws afresh, reproducibly
                end_ids=end_ids,
                priority=priority,
                stop=tuple(stop),
            ),
            RowControl(
                on_tokens=_after(generated, stopped.hear if stop else on_tokens),
                should_stop=stopped.or_else(should_stop),
            ),
        )
        generated += decoded.tokens
        if stop and (cut := stopped.cut(generated)) is not None:
            generated, finish_reason = cut, "stop"
            break
        if decoded.finish_reason == "canceled":
            raise Canceled(f"canceled after {len(generated)} of {max_new_tokens} tokens")
        if decoded.finish_reason == "stop":
            finish_reason = "stop"
            break
    text = tokenizer.decode(generated, skip_special_tokens=True, clean_up_tokenization_spaces=False)
    if finish_reason == "stop" and stop:
        text = text[: cut_at_stop(text, stop)]
    return GenerateOutput(
        text=text,
        tokens=len(generated),
        finish_reason=finish_reason,
        prompt_tokens=seen_prompt_tokens,
        model=loaded.name,
    )


class StopWatch:
    """Looks for the stop strings in the tokens as they stream, and says to stop once one
    shows up (the decode loop asks after each token)."""

    def __init__(self, tokenizer: Any, stops: Sequence[str], on_tokens: OnTokens | None) -> None:
        self._tokenizer = tokenizer
        self._stops = list(stops)
        self._on_tokens = on_tokens
        self.hit = False

    def hear(self, tokens: list[int]) -> None:
        if not self.hit:
            self.hit = cut_at_stop(self._decode(tokens), self._stops) is not None
        if self._on_tokens is not None:
            self._on_tokens(tokens)

    def or_else(self, should_stop: StopCheck | None) -> StopCheck | None:
        if not self._stops:
            return should_stop
        return lambda: self.hit or (should_stop is not None and should_stop())

    def cut(self, tokens: list[int]) -> list[int] | None:
        """The fewest tokens whose text holds the first stop string, or None."""
        if cut_at_stop(self._decode(tokens), self._stops) is None:
            return None
        low, high = 1, len(tokens)  # the text of tokens[:high] holds it
        while low < high:
            middle = (low + high) // 2
            if cut_at_stop(self._decode(tokens[:middle]), self._stops) is None:
                low = middle + 1
            else:
                high = middle
        return tokens[:high]

    def _decode(self, tokens: list[int]) -> str:
        return str(
            self._tokenizer.decode(
                tokens, skip_special_tokens=True, clean_up_tokenization_spaces=False
            )
        )


def _after(earlier: list[int], on_tokens: OnTokens | None) -> OnTokens | None:
    """Reports a round's tokens preceded by those of the earlier rounds."""
    if on_tokens is None:
        return None
    done = list(earlier)
    return lambda tokens: on_tokens(done + tokens)


def classify(loaded: Served, texts: list[str]) -> list[Sentiment]:
    """Label each text with the classifier's most likely class and its probability."""
    results: list[Sentiment] = loaded.submit_many(texts, None)
    return results


def summarize(loaded: Served, *, text: str, min_new_tokens: int, max_new_tokens: int) -> str:
    """Summarize with the seq2seq model's own ``generate``."""
    summary: str = loaded.submit(
        SummaryRequest(text=text, min_new_tokens=min_new_tokens, max_new_tokens=max_new_tokens)
    )
    return summary
