"""Micro-batching: concurrent requests for one model share forward passes.

Each model gets one inference thread per worker process. Task threads hand it requests
and wait; it gathers what arrives within ``LLM_TASKS_BATCH_WAIT_MS`` (or until
``LLM_TASKS_BATCH_MAX_SIZE``) and runs them together, the way Ray Serve's
``@serve.batch`` does. ``BATCH_MAX_SIZE=1`` turns batching off: one request per pass.

Generation runs its own decode loop so that rows stay independent: each row has its own
temperature, top-p and seed (a generator per row), its own ``max_new_tokens`` and end of
text (a finished row hands its result back at once and leaves the batch), its own
streaming callback and its own cancellation. Classification and summarization batch
too, grouped by length so that padding does not eat the gain. CUDA out of memory splits
the batch in halves and runs them one after the other.
"""

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, TypeVar

import torch

from contracts.metrics import BATCH_SIZE, BUSY_SECONDS, TOKENS
from worker.config import get_settings
from worker.metrics import tally
from worker.models import LoadedModel, ModelRole

logger = logging.getLogger(__name__)

Item = TypeVar("Item")
Result = TypeVar("Result")


@dataclass
class Pending(Generic[Item, Result]):
    item: Item
    future: "Future[Result]" = field(default_factory=Future)


Runner = Callable[[LoadedModel, list[Pending[Any, Any]]], None]


class MicroBatcher:
    """One inference thread for one model: gathers requests and runs them in batches."""

    def __init__(
        self, loaded: LoadedModel, runner: Runner, *, max_size: int, wait_ms: float
    ) -> None:
        self._loaded = loaded
        self._runner = runner
        self._max_size = max_size
        self._wait = wait_ms / 1000
        self._queue: queue.Queue[Pending[Any, Any]] = queue.Queue()
        self.batch_sizes: list[int] = []
        name = f"batcher-{loaded.role}-{runner.__name__}"
        threading.Thread(target=self._serve, name=name, daemon=True).start()

    def submit(self, item: Any) -> Any:
        """Run ``item`` in the next batch; blocks the calling (task) thread until it is done."""
        [result] = self.submit_many([item])
        return result

    def submit_many(self, items: list[Any]) -> list[Any]:
        pendings: list[Pending[Any, Any]] = [Pending(item) for item in items]
        for pending in pendings:
            self._queue.put(pending)
        return [pending.future.result() for pending in pendings]

    def _serve(self) -> None:
        while True:
            batch = [self._queue.get()]
            deadline = time.monotonic() + self._wait
            while len(batch) < self._max_size:
                remaining = deadline - time.monotonic()
                try:
                    batch.append(
                        self._queue.get(timeout=remaining)
                        if remaining > 0
                        else self._queue.get_nowait()
                    )
                except queue.Empty:
                    break
            self.batch_sizes.append(len(batch))
            labels = {"model": str(self._loaded.role)}
            tally.observe(BATCH_SIZE, labels, len(batch))
            started = time.perf_counter()
            self._run(batch)
            tally.inc(BUSY_SECONDS, labels, time.perf_counter() - started)

    def _run(self, batch: list[Pending[Any, Any]]) -> None:
        try:
            self._runner(self._loaded, batch)
        except torch.cuda.OutOfMemoryError as error:
            unfinished = [p for p in batch if not p.future.done()]
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            if len(unfinished) > 1:
                logger.warning(
                    "CUDA out of memory with %d rows: splitting the batch", len(unfinished)
                )
                half = len(unfinished) // 2
                self._run(unfinished[:half])
                self._run(unfinished[half:])
                return
            _fail(unfinished, error)  # one row alone: the task retries it
        except Exception as error:
            logger.exception("batch of %d failed", len(batch))
            _fail(batch, error)


def _fail(batch: list[Pending[Any, Any]], error: BaseException) -> None:
    for pending in batch:
        if not pending.future.done():
            pending.future.set_exception(error)


# --- generation ------------------------------------------------------------------------


@dataclass
class DecodeRow:
    """One generation round: continue ``context`` by up to ``max_new_tokens`` tokens."""

    context: list[int]
    max_new_tokens: int
    temperature: float
    top_p: float
    seed: int
    should_stop: Callable[[], bool] | None = None
    on_tokens: Callable[[list[int]], None] | None = None


@dataclass
class Decoded:
    tokens: list[int]
    finish_reason: Literal["length", "stop", "canceled"]


def _sample(
    logits: torch.Tensor,
    temperatures: torch.Tensor,
    top_ps: torch.Tensor,
    generators: list[torch.Generator],
) -> torch.Tensor:
    """Next token per row: greedy where the temperature is 0, else nucleus sampling with
    the row's own temperature, top-p and random generator."""
    tokens = logits.argmax(dim=-1)
    sampled = (temperatures > 0).nonzero().flatten()
    if sampled.numel() == 0:
        return tokens
    scaled = logits[sampled] / temperatures[sampled, None]
    ordered, order = scaled.sort(dim=-1, descending=True)
    probs = ordered.softmax(dim=-1)
    outside = probs.cumsum(dim=-1) - probs > top_ps[sampled, None]  # the first token always stays
    probs = probs.masked_fill(outside, 0.0)
    for j, row in enumerate(sampled.tolist()):
        choice = torch.multinomial(probs[j], 1, generator=generators[row])
        tokens[row] = order[j, choice[0]]
    return tokens


def decode_batch(loaded: LoadedModel, batch: list[Pending[DecodeRow, Decoded]]) -> None:
    """The batched decode loop: left-padded prompts, one forward pass per step for all
    active rows, finished rows dropped from the batch (and its KV cache) as they end."""
    rows = [pending.item for pending in batch]
    device, tokenizer = loaded.device, loaded.tokenizer
    eos_id = tokenizer.eos_token_id
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_id
    width = max(len(row.context) for row in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        input_ids[i, width - len(row.context) :] = torch.tensor(row.context)
        mask[i, width - len(row.context) :] = 1
    input_ids, mask = input_ids.to(device), mask.to(device)
    positions = (mask.cumsum(dim=-1) - 1).clamp(min=0)
    temperatures = torch.tensor([row.temperature for row in rows], device=device)
    top_ps = torch.tensor([row.top_p for row in rows], device=device)
    generators = [torch.Generator(device=device).manual_seed(row.seed) for row in rows]
    generated: list[list[int]] = [[] for _ in rows]
    active = list(range(len(rows)))
    past = None

    def finish(index: int, reason: Literal["length", "stop", "canceled"]) -> None:
        tally.inc(TOKENS, {"model": str(loaded.role)}, len(generated[index]))
        batch[index].future.set_result(Decoded(generated[index], reason))

    with loaded.lock, torch.inference_mode():
        for _ in range(max(row.max_new_tokens for row in rows)):
            output = loaded.model(
                input_ids=input_ids,
                attention_mask=mask,
                position_ids=positions,
                past_key_values=past,
                use_cache=True,
            )
            past = output.past_key_values
            next_tokens = _sample(output.logits[:, -1, :].float(), temperatures, top_ps, generators)
            keep = []
            for j, (index, token) in enumerate(zip(active, next_tokens.tolist(), strict=True)):
                row = rows[index]
                if token == eos_id:
                    finish(index, "stop")
                    continue
                generated[index].append(token)
                if row.on_tokens is not None:
                    _safely(row.on_tokens, generated[index])
                if len(generated[index]) >= row.max_new_tokens:
                    finish(index, "length")
                elif row.should_stop is not None and row.should_stop():
                    finish(index, "canceled")
                else:
                    keep.append(j)
            if not keep:
                return
            if len(keep) < len(active):
                selected = torch.tensor(keep, device=device)
                past.batch_select_indices(selected)
                mask, positions, next_tokens = (
                    mask[selected],
                    positions[selected],
                    next_tokens[selected],
                )
                temperatures, top_ps = temperatures[selected], top_ps[selected]
                generators = [generators[j] for j in keep]
                active = [active[j] for j in keep]
            input_ids = next_tokens[:, None]
            mask = torch.cat([mask, mask.new_ones((len(active), 1))], dim=-1)
            positions = positions[:, -1:] + 1


def _safely(callback: Callable[[list[int]], None], tokens: list[int]) -> None:
    try:
        callback(tokens)
    except Exception:
        logger.exception("a streaming callback failed; the generation goes on")


# --- classification and summarization ---------------------------------------------------


@dataclass
class SummaryRequest:
    text: str
    min_new_tokens: int
    max_new_tokens: int


def _by_length(
    batch: list[Pending[Any, Any]], length: Callable[[Any], int]
) -> Iterator[list[Pending[Any, Any]]]:
    """Runs of similar length (the longest at most twice the shortest), so that padding
    does not eat the gain of batching."""
    ordered = sorted(batch, key=lambda pending: length(pending.item))
    group: list[Pending[Any, Any]] = []
    for pending in ordered:
        if group and length(pending.item) > 2 * max(1, length(group[0].item)):
            yield group
            group = []
        group.append(pending)
    if group:
        yield group


@dataclass(frozen=True)
class Sentiment:
    label: str
    score: float


def _encode(loaded: LoadedModel, texts: list[str]) -> Any:
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
    model = loaded.model
    encoded = _encode(loaded, texts)
    with loaded.lock, torch.inference_mode():
        probabilities = model(**encoded).logits.float().softmax(dim=-1)
    scores, indices = probabilities.max(dim=-1)
    labels: dict[int, str] = model.config.id2label  # type: ignore[assignment]
    return [
        Sentiment(label=labels[int(index)], score=float(score))
        for score, index in zip(scores, indices, strict=True)
    ]


def summarize_texts(
    loaded: LoadedModel, texts: list[str], *, min_new_tokens: int, max_new_tokens: int
) -> list[str]:
    """One batched seq2seq ``generate`` (transformers 5 has no summarization pipeline)."""
    tokenizer, model = loaded.tokenizer, loaded.model
    encoded = _encode(loaded, texts)
    with loaded.lock, torch.inference_mode():
        output = model.generate(  # type: ignore[operator]
            **encoded,
            min_new_tokens=min_new_tokens,
            max_new_tokens=max_new_tokens,
            num_beams=1,
            do_sample=False,
        )
    return [str(text).strip() for text in tokenizer.batch_decode(output, skip_special_tokens=True)]


def classify_batch(loaded: LoadedModel, batch: list[Pending[str, Sentiment]]) -> None:
    def tokens(text: str) -> int:
        return len(loaded.tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])

    for group in _by_length(batch, tokens):
        results = classify_texts(loaded, [pending.item for pending in group])
        for pending, result in zip(group, results, strict=True):
            pending.future.set_result(result)


def summarize_batch(loaded: LoadedModel, batch: list[Pending[SummaryRequest, str]]) -> None:
    by_bounds: dict[tuple[int, int], list[Pending[SummaryRequest, str]]] = {}
    for pending in batch:
        bounds = (pending.item.min_new_tokens, pending.item.max_new_tokens)
        by_bounds.setdefault(bounds, []).append(pending)
    for (low, high), same_bounds in by_bounds.items():
        for group in _by_length(same_bounds, lambda item: len(item.text)):
            summaries = summarize_texts(
                loaded, [p.item.text for p in group], min_new_tokens=low, max_new_tokens=high
            )
            for pending, summary in zip(group, summaries, strict=True):
                pending.future.set_result(summary)


_RUNNERS: dict[ModelRole, Runner] = {
    ModelRole.GENERATOR: decode_batch,
    ModelRole.CLASSIFIER: classify_batch,
    ModelRole.SUMMARIZER: summarize_batch,
}
_batchers: dict[int, MicroBatcher] = {}
_batchers_lock = threading.Lock()


def batcher_for(loaded: LoadedModel) -> MicroBatcher:
    """The model's batcher: one per loaded model (and so per device) in this process."""
    with _batchers_lock:
        batcher = _batchers.get(id(loaded.model))
        if batcher is None:
            settings = get_settings()
            batcher = MicroBatcher(
                loaded,
                _RUNNERS[loaded.role],
                max_size=settings.batch_max_size,
                wait_ms=settings.batch_wait_ms,
            )
            _batchers[id(loaded.model)] = batcher
        return batcher
