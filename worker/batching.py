"""Micro-batching: concurrent requests for one model share forward passes.

Each model has a :class:`MicroBatcher`: task threads hand it requests and wait. Every
batcher on one device is served by that device's one inference thread
(:class:`DeviceLoop`). A batcher's run starts once a request has waited
``LLM_TASKS_BATCH_WAIT_MS`` (0 by default, as Ray Serve's ``@serve.batch``: at once,
with whatever waits) or ``LLM_TASKS_BATCH_MAX_SIZE`` requests wait; what arrives
meanwhile forms the next run. ``BATCH_MAX_SIZE=1`` turns batching off: one request per
pass.

A runner is a generator that yields after each forward pass, so that the thread takes
turns between the runs of the device's models: a classification is not held up by a
long generation, and every pass on a device comes from one thread. That matters on a
CPU too: each thread that runs torch gets its own OpenMP team, and two teams on the same
cores make every pass slower (measured: ~30% at 32 rows), even while one of them idles.

Generation runs its own decode loop so that rows stay independent: each row has its own
temperature, top-p and seed (a generator per row), its own ``max_new_tokens`` and end of
text (a finished row hands its result back at once and leaves the batch), its own
streaming callback and its own cancellation. It is continuous batching, as in TGI:
requests that arrive while the loop runs join it at a step boundary instead of waiting
for the longest row to end. Classification and summarization batch too, grouped by
length so that padding does not eat the gain. CUDA out of memory splits the batch in
halves and runs them one after the other.
"""

import inspect
import logging
import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Generator, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Generic, Literal, Protocol, TypeVar

import torch
from transformers import Cache, DynamicCache
from transformers.generation.streamers import BaseStreamer

from contracts.metrics import BATCH_SIZE, BUSY_SECONDS, TOKENS
from worker.config import get_settings
from worker.kv_cache import GrowingCache, attention_layers
from worker.metrics import tally
from worker.models import LARGE_MODEL_PARAMETERS, LoadedModel, ModelRole

logger = logging.getLogger(__name__)

Item = TypeVar("Item")
Result = TypeVar("Result")


@dataclass
class Pending(Generic[Item, Result]):
    item: Item
    future: "Future[Result]" = field(default_factory=Future)
    arrived: float = field(default_factory=time.monotonic)


class Arrivals(Protocol):
    """Requests that arrived while a batch runs, for a runner that can take them in."""

    def waiting(self) -> int: ...

    def take(self, limit: int) -> list[Pending[Any, Any]]: ...


#: Runs a batch, yielding after each forward pass (a plain function is one pass); may
#: take arrivals in while it runs, up to ``capacity`` rows at once.
Runner = Callable[[LoadedModel, list[Pending[Any, Any]], Arrivals, int], Iterator[None] | None]


class DeviceLoop:
    """The one inference thread of a device: it starts the runs of the device's batchers
    and steps through them in turn, one forward pass each, in inference mode."""

    def __init__(self) -> None:
        self.changed = threading.Condition()
        self._batchers: weakref.WeakSet[MicroBatcher] = weakref.WeakSet()

    def add(self, batcher: "MicroBatcher") -> None:
        with self.changed:
            self._batchers.add(batcher)

    def serve(self, between_rounds: Callable[[], None] | None = None) -> None:
        """Run forever in the calling thread; ``between_rounds`` is called after each round
        of passes."""
        threads_for = -1  # the model size the threads were set for
        running: dict[MicroBatcher, Iterator[None]] = {}
        with torch.inference_mode():
            while True:
                with self.changed:
                    while True:
                        now = time.monotonic()
                        starting = [b for b in self._batchers if b not in running and b.ready(now)]
                        if starting or running:
                            break
                        dues = [
                            due
                            for b in self._batchers
                            if b not in running and (due := b.due(now)) is not None
                        ]
                        self.changed.wait(min(dues, default=None))
                    # The largest model served picks the torch threads; OpenMP's setting
                    # is per thread, so it is set here, and again if the models change.
                    largest = max((b.parameters for b in self._batchers), default=0)
                    if largest != threads_for:
                        threads_for = largest
                        torch.set_num_threads(intra_op_threads(largest) or TORCH_THREADS)
                    for batcher in starting:
                        running[batcher] = batcher.start()
                for batcher, passes in list(running.items()):
                    if not batcher.step(passes):
                        del running[batcher]
                if between_rounds is not None:
                    between_rounds()


#: Torch's own choice of threads (read on import, before anything changes it).
TORCH_THREADS = torch.get_num_threads()


def intra_op_threads(parameters: int = 0) -> int:
    """Torch threads for passes of a model of ``parameters`` (the largest on the device):
    ``LLM_TASKS_INTRA_OP_THREADS``; unset, on a GPU torch's default; on a CPU, every core
    but one for a small model, and torch's default (every core) from
    ``LARGE_MODEL_PARAMETERS`` on. 0 means torch's default.

    The worker's Celery side (and often Redis) needs a few milliseconds of CPU per job,
    and an OpenMP team that shares its cores with busy threads waits at every barrier;
    a large model's passes dwarf that. Measured through the queue on 2 cores, 32
    concurrent generations of 32 tokens, one torch thread against two (tokens/s): the
    tiny generator (0.7 M parameters) 5445 and 5776 against 4363 and 3898; 3.8 M, 2497
    and 2434 against 2543 and 2391; 16 M, 203 against 344; GPT-2 124M's shape, 112
    against 169 (in process, without the queue, with both cores: 369 and 189).
    """
    settings = get_settings()
    if settings.intra_op_threads is not None:
        return settings.intra_op_threads
    on_gpu = settings.device.startswith("cuda") or (
        settings.device == "auto" and torch.cuda.is_available()
    )
    if on_gpu or parameters >= LARGE_MODEL_PARAMETERS:
        return 0
    return max(1, (os.cpu_count() or 1) - 1)


_loops: dict[str, DeviceLoop] = {}
_loops_lock = threading.Lock()


def device_loop(device: torch.device, *, served_here: bool = False) -> DeviceLoop:
    """The device's loop. The first call creates it and starts its thread, unless
    ``served_here``: then the caller runs :meth:`DeviceLoop.serve` itself."""
    with _loops_lock:
        loop = _loops.get(str(device))
        if loop is None:
            loop = _loops[str(device)] = DeviceLoop()
            if not served_here:
                name = f"inference-{device}"
                threading.Thread(target=loop.serve, name=name, daemon=True).start()
        return loop


class MicroBatcher:
    """Gathers one model's requests into batches, run by its device's inference thread."""

    def __init__(
        self, loaded: LoadedModel, runner: Runner, *, max_size: int, wait_ms: float
    ) -> None:
        self._loaded = loaded
        self.parameters = loaded.parameters
        self._runner = runner
        self._max_size = max_size
        self._wait = wait_ms / 1000
        self._loop = device_loop(loaded.device)
        self._waiting: deque[Pending[Any, Any]] = deque()
        self._labels = {"model": str(loaded.role)}
        self.batch_sizes: list[int] = []
        self._batch: list[Pending[Any, Any]] = []
        self._loop.add(self)

    def submit(self, item: Any) -> Any:
        """Run ``item`` in the next batch; blocks the calling (task) thread until it is done."""
        [result] = self.submit_many([item])
        return result

    def submit_many(self, items: list[Any]) -> list[Any]:
        return [pending.future.result() for pending in self.enqueue(items)]

    def enqueue(self, items: list[Any]) -> list[Pending[Any, Any]]:
        """Queue ``items`` without waiting: each one's future tells when it is done."""
        pendings: list[Pending[Any, Any]] = [Pending(item) for item in items]
        with self._loop.changed:
            self._waiting.extend(pendings)
            self._loop.changed.notify()
        return pendings

    # The inference thread's side; ``ready``, ``due`` and ``start`` hold the loop's lock.

    def ready(self, now: float) -> bool:
        """A run may start: enough requests wait, or the oldest has waited long enough."""
        return bool(self._waiting) and (
            len(self._waiting) >= self._max_size or now - self._waiting[0].arrived >= self._wait
        )

    def due(self, now: float) -> float | None:
        """Seconds until the oldest waiting request has waited long enough."""
        return self._waiting[0].arrived + self._wait - now if self._waiting else None

    def start(self) -> Iterator[None]:
        count = min(self._max_size, len(self._waiting))
        self._batch = [self._waiting.popleft() for _ in range(count)]
        return self._passes(self._batch)

    def step(self, passes: Iterator[None]) -> bool:
        """One forward pass of the running batch; False once the run has ended."""
        started = time.perf_counter()
        going = next(passes, StopIteration) is not StopIteration
        tally.inc(BUSY_SECONDS, self._labels, time.perf_counter() - started)
        if not going:
            # After the run: a decode loop takes in the rows that arrive while it runs.
            self.batch_sizes.append(len(self._batch))
            tally.observe(BATCH_SIZE, self._labels, len(self._batch))
        return going

    def waiting(self) -> int:
        return len(self._waiting)

    def take(self, limit: int) -> list[Pending[Any, Any]]:
        """Up to ``limit`` requests that are waiting now, without blocking."""
        with self._loop.changed:
            return [self._waiting.popleft() for _ in range(min(limit, len(self._waiting)))]

    def _passes(
        self, batch: list[Pending[Any, Any]], capacity: int | None = None
    ) -> Iterator[None]:
        """The runner's passes over ``batch``, which may grow to ``capacity`` rows (the
        batch size; after an out-of-memory split, each half's own size)."""
        try:
            passes = self._runner(self._loaded, batch, self, capacity or self._max_size)
            if passes is not None:
                yield from passes
        except torch.cuda.OutOfMemoryError as error:
            unfinished = [p for p in batch if not p.future.done()]
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            if len(unfinished) > 1:
                logger.warning(
                    "CUDA out of memory with %d rows: splitting the batch", len(unfinished)
                )
                half = len(unfinished) // 2
                yield from self._passes(unfinished[:half], half)
                yield from self._passes(unfinished[half:], len(unfinished) - half)
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
    #: Ids that end this row besides the model's own end-of-sequence ids (a turn's end).
    end_ids: frozenset[int] = frozenset()


@dataclass
class Decoded:
    tokens: list[int]
    finish_reason: Literal["length", "stop", "canceled"]


#: Fewest padding columns worth cutting off the cache (cutting copies nothing).
TRIM_AT_LEAST = 8

#: Steps arrivals wait at most before they join a running decode loop.
JOIN_AFTER_STEPS = 4

#: Draws a sampled row gets before its nucleus is found by sorting (see :func:`_sample`).
NUCLEUS_DRAWS = 8


def _sample(
    logits: torch.Tensor,
    temperatures: torch.Tensor,
    top_ps: torch.Tensor,
    generators: list[torch.Generator],
) -> torch.Tensor:
    """Next token per row: greedy where the temperature is 0, else nucleus sampling with
    the row's own temperature, top-p and random generator.

    Nucleus sampling without sorting the vocabulary: a row draws a token from its whole
    distribution (one uniform draw, inverse CDF in vocabulary order) and keeps it if it is
    in the nucleus — the probability of the tokens likelier than it is at most top-p —
    else draws again. What is kept is distributed exactly as the nucleus, renormalized;
    a draw is kept with the nucleus' probability (at least top-p), so most rows need one
    draw, and a row that needs more than ``NUCLEUS_DRAWS`` gets its nucleus by sorting.
    Each pass is a few linear scans of the vocabulary, where sorting it (which a flat
    distribution, with a nucleus of thousands of tokens, needs) costs many times more.
    """
    greedy = temperatures <= 0
    sampled = (~greedy).nonzero().flatten()
    if sampled.numel() == 0:
        return logits.argmax(dim=-1)
    tokens = torch.zeros(len(logits), dtype=torch.long, device=logits.device)
    if bool(greedy.any()):
        tokens[greedy] = logits[greedy].argmax(dim=-1)
    probs = torch.softmax(logits[sampled] / temperatures[sampled, None], dim=-1)
    cdf = probs.cumsum(dim=-1)
    nucleus = top_ps[sampled]
    rows = sampled.tolist()
    picked = torch.empty_like(sampled)
    left = torch.arange(len(rows), device=logits.device)  # rows not picked yet
    for _ in range(NUCLEUS_DRAWS):
        draws = _draws(generators, [rows[i] for i in left.tolist()], logits.device)
        cdf_left = cdf[left]
        targets = (draws * cdf_left[:, -1])[:, None]
        candidates = torch.searchsorted(cdf_left, targets).clamp(max=cdf.shape[-1] - 1)
        probs_left = probs[left]
        chance = probs_left.gather(-1, candidates)
        likelier = torch.where(probs_left > chance, probs_left, 0.0).sum(dim=-1)
        inside = likelier <= nucleus[left]
        picked[left[inside]] = candidates.squeeze(-1)[inside]
        left = left[~inside]
        if left.numel() == 0:
            break
    else:
        draws = _draws(generators, [rows[i] for i in left.tolist()], logits.device)
        picked[left] = _nucleus_by_sorting(probs[left], nucleus[left], draws)
    tokens[sampled] = picked
    return tokens


def _draws(
    generators: list[torch.Generator], rows: list[int], device: torch.device
) -> torch.Tensor:
    """One uniform draw for each of ``rows``, from the row's own generator."""
    return torch.stack([torch.rand((), generator=generators[row], device=device) for row in rows])


def _nucleus_by_sorting(
    probs: torch.Tensor, nucleus: torch.Tensor, draws: torch.Tensor
) -> torch.Tensor:
    """Each row's pick within its nucleus, found by sorting its distribution."""
    top, order = probs.sort(dim=-1, descending=True)
    outside = top.cumsum(dim=-1) - top > nucleus[:, None]  # the first token always stays
    cdf = top.masked_fill(outside, 0.0).cumsum(dim=-1)
    choice = torch.searchsorted(cdf, (draws[:, None] * cdf[:, -1:]).contiguous())
    return order.gather(-1, choice.clamp(max=probs.shape[-1] - 1)).squeeze(-1)


class _Rows:
    """The rows of a decode loop that are still generating, aligned on one KV cache.

    Between steps: the cache holds ``length`` positions for every row (left-padded),
    ``mask`` has one more column for the token each row feeds next (``next_tokens``, at
    ``positions``), and each row keeps its own sampling parameters and generator.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.index: list[int] = []  # each row's place in the batch
        self.cache: Cache | None = None
        self.mask = torch.zeros((0, 1), dtype=torch.long, device=device)
        self.positions = torch.zeros((0, 1), dtype=torch.long, device=device)
        self.next_tokens = torch.zeros((0,), dtype=torch.long, device=device)
        self.temperatures = torch.zeros((0,), device=device)
        self.top_ps = torch.zeros((0,), device=device)
        self.generators: list[torch.Generator] = []

    def __len__(self) -> int:
        return len(self.index)

    def keep(self, keep: list[int]) -> None:
        """Keep the rows at ``keep`` (ascending), the last rows moved into the gaps the
        others leave: the cache copies only the rows that move."""
        order = _filling_gaps(keep)
        selected = torch.tensor(order, dtype=torch.long, device=self.device)
        if self.cache is not None:
            self.cache.batch_select_indices(selected)
        self.mask, self.positions = self.mask[selected], self.positions[selected]
        self.next_tokens = self.next_tokens[selected]
        self.temperatures, self.top_ps = self.temperatures[selected], self.top_ps[selected]
        self.generators = [self.generators[j] for j in order]
        self.index = [self.index[j] for j in order]

    def trim(self) -> None:
        """Drop the cache columns that are padding for every row. Rows joined later are
        left-padded to the oldest row; once that one has left, the padding would otherwise
        stay (and grow: a busy loop never ends), costing attention and memory."""
        if not self.index or not isinstance(self.cache, GrowingCache):
            return
        leading = int((self.mask.cumsum(dim=1) == 0).sum(dim=1).min())
        if leading >= TRIM_AT_LEAST:
            self.cache.trim_left(leading)
            self.mask = self.mask[:, leading:]

    def merge(self, other: "_Rows") -> None:
        """Take ``other``'s rows in (continuous batching): both caches are left-padded to
        the longer one, which the attention mask hides."""
        if not self.index:
            self.__dict__.update(other.__dict__)
            return
        assert isinstance(self.cache, GrowingCache) and isinstance(other.cache, GrowingCache)
        width = max(self.mask.shape[1], other.mask.shape[1])
        self.cache.take_rows(other.cache)
        self.mask = torch.cat([_pad_mask(self.mask, width), _pad_mask(other.mask, width)])
        self.positions = torch.cat([self.positions, other.positions])
        self.next_tokens = torch.cat([self.next_tokens, other.next_tokens])
        self.temperatures = torch.cat([self.temperatures, other.temperatures])
        self.top_ps = torch.cat([self.top_ps, other.top_ps])
        self.generators += other.generators
        self.index += other.index


def _filling_gaps(keep: list[int]) -> list[int]:
    """The order of the kept rows (``keep`` ascending) in which the rows that are in the
    first ``len(keep)`` places stay there and the later ones fill the gaps."""
    count = len(keep)
    gaps = sorted(set(range(count)) - set(keep))
    movers = [j for j in keep if j >= count]
    placed = dict(zip(gaps, movers, strict=True))
    return [placed.get(i, i) for i in range(count)]


def _pad_mask(mask: torch.Tensor, width: int) -> torch.Tensor:
    """The attention mask, with zeros on the left up to ``width`` columns."""
    missing = width - mask.shape[1]
    return (
        torch.cat([mask.new_zeros((mask.shape[0], missing)), mask], dim=1) if missing > 0 else mask
    )


def decode_batch(
    loaded: LoadedModel,
    batch: list[Pending[DecodeRow, Decoded]],
    arrivals: Arrivals | None = None,
    capacity: int | None = None,
) -> None:
    """:func:`decode_steps` in one go, from any thread."""
    with loaded.lock, torch.inference_mode():
        for _ in decode_steps(loaded, batch, arrivals, capacity):
            pass


def end_token_ids(loaded: LoadedModel) -> frozenset[int]:
    """Every id that ends a row: the tokenizer's end of sequence, and each id of the
    model's ``generation_config.eos_token_id`` (a list for most instruct models: the end
    of a turn as well as of the text)."""
    config = getattr(loaded.model, "generation_config", None)
    configured = getattr(config, "eos_token_id", None)
    ids = configured if isinstance(configured, list) else [configured]
    return frozenset(i for i in [loaded.tokenizer.eos_token_id, *ids] if i is not None)


def decode_steps(
    loaded: LoadedModel,
    batch: list[Pending[DecodeRow, Decoded]],
    arrivals: Arrivals | None = None,
    capacity: int | None = None,
) -> Iterator[None]:
    """The batched decode loop, yielding after each pass (in inference mode): left-padded
    prompts, one forward pass per step for all active rows, finished rows dropped from
    the batch (and its KV cache) as they end.

    With ``arrivals``, it is continuous batching: at a step boundary, requests that arrived
    meanwhile join (up to ``capacity`` rows), after a prefill pass of their own; they are
    appended to ``batch``, so that whoever handles an error sees them too. Joining costs
    a pass and a copy of the cache, so arrivals are taken in groups: once they are a
    quarter of the running rows, or have waited ``JOIN_AFTER_STEPS`` steps.
    """
    device, tokenizer = loaded.device, loaded.tokenizer
    eos_ids = end_token_ids(loaded)
    eos_id = tokenizer.eos_token_id
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_id
    capacity = capacity or len(batch)
    generated: list[list[int]] = [[] for _ in batch]
    rows = _Rows(device)

    def finish(index: int, reason: Literal["length", "stop", "canceled"]) -> None:
        tally.inc(TOKENS, {"model": str(loaded.role)}, len(generated[index]))
        batch[index].future.set_result(Decoded(generated[index], reason))

    def advance(group: _Rows, logits: torch.Tensor) -> None:
        """Sample each row's next token, hand back the rows that are done, keep the rest."""
        tokens = _sample(logits.float(), group.temperatures, group.top_ps, group.generators)
        keep = []
        for j, (index, token) in enumerate(zip(group.index, tokens.tolist(), strict=True)):
            row: DecodeRow = batch[index].item
            if token in eos_ids or token in row.end_ids:
                finish(index, "stop")
                continue
            generated[index].append(token)
            if row.on_tokens is not None:
                call_safely(row.on_tokens, generated[index])
            if len(generated[index]) >= row.max_new_tokens:
                finish(index, "length")
            elif row.should_stop is not None and row.should_stop():
                finish(index, "canceled")
            else:
                keep.append(j)
        group.next_tokens = tokens
        if len(keep) < len(group):
            group.keep(keep)
            group.trim()
        group.mask = torch.cat([group.mask, group.mask.new_ones((len(group), 1))], dim=-1)
        group.positions = group.positions + 1

    def prefill(start: int) -> _Rows:
        """The rows from ``start`` on: their prompts in one pass, and their first tokens."""
        new = [pending.item for pending in batch[start:]]
        width = max(len(row.context) for row in new)
        input_ids = torch.full((len(new), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(new), width), dtype=torch.long)
        for i, row in enumerate(new):
            input_ids[i, width - len(row.context) :] = torch.tensor(row.context)
            mask[i, width - len(row.context) :] = 1
        group = _Rows(device)
        group.index = list(range(start, len(batch)))
        group.mask = mask.to(device)
        positions = (group.mask.cumsum(dim=-1) - 1).clamp(min=0)
        group.positions = positions[:, -1:]
        group.temperatures = torch.tensor([row.temperature for row in new], device=device)
        group.top_ps = torch.tensor([row.top_p for row in new], device=device)
        group.generators = [torch.Generator(device=device).manual_seed(row.seed) for row in new]
        # The loop's first rows make the cache, with room for every row that may join.
        group.cache = (
            GrowingCache(layers, capacity if start == 0 else 0)
            if layers is not None
            else DynamicCache(config=loaded.model.config)
        )
        output = loaded.model(
            input_ids=input_ids.to(device),
            attention_mask=group.mask,
            position_ids=positions,
            use_cache=True,
            **{cache_argument: group.cache},
            **last_logits_only,
        )
        advance(group, output.logits[:, -1, :])
        return group

    layers = attention_layers(loaded.model.config)
    # A prompt's pass needs the logits of its last position only, not a vocabulary's
    # worth for every position (most models take ``logits_to_keep``).
    model_class: Any = type(loaded.model)
    last_logits_only = {"logits_to_keep": 1} if _takes(model_class, "logits_to_keep") else {}
    cache_argument = _cache_argument(model_class)
    rows.merge(prefill(0))
    joining = arrivals is not None and capacity > 1 and isinstance(rows.cache, GrowingCache)
    waited = 0
    while rows:
        yield
        output = loaded.model(
            input_ids=rows.next_tokens[:, None],
            attention_mask=rows.mask,
            position_ids=rows.positions,
            use_cache=True,
            **{cache_argument: rows.cache},
        )
        advance(rows, output.logits[:, -1, :])
        if not joining or arrivals is None or len(rows) >= capacity:
            continue
        waiting = arrivals.waiting()
        waited = waited + 1 if waiting else 0
        if waiting and (4 * waiting >= len(rows) or waited >= JOIN_AFTER_STEPS):
            arrived = arrivals.take(capacity - len(rows))
            waited = 0
            if arrived:
                start = len(batch)
                batch.extend(arrived)
                generated.extend([] for _ in arrived)
                yield
                if joined := prefill(start):
                    rows.merge(joined)


@lru_cache
def _takes(model_class: Any, argument: str) -> bool:
    """Whether the model's forward takes ``argument`` (read once per class: a run starts
    for every job when batching is off)."""
    return argument in inspect.signature(model_class.forward).parameters


def _cache_argument(model_class: Any) -> str:
    """The name under which the model's forward takes its key/value cache: ``cache`` since
    transformers 5.24 (``past_key_values`` is deprecated there), ``past_key_values`` before."""
    return "cache" if _takes(model_class, "cache") else "past_key_values"


def call_safely(callback: Callable[[list[int]], None], tokens: list[int]) -> None:
    """A row's streaming callback: its failure is logged, the generation goes on."""
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
    tokenizer, model = loaded.tokenizer, loaded.model
    encoded = _encode(loaded, texts)
    turns = _Turns()
    outcome: dict[str, Any] = {}

    def run() -> None:
        turns.go.acquire()
        try:
            with loaded.lock, torch.inference_mode():
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


def classify_batch(
    loaded: LoadedModel, batch: list[Pending[str, Sentiment]], *_: Any
) -> Iterator[None]:
    """A pass per group of similar lengths."""

    def tokens(text: str) -> int:
        return len(loaded.tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])

    for group in _by_length(batch, tokens):
        results = classify_texts(loaded, [pending.item for pending in group])
        for pending, result in zip(group, results, strict=True):
            pending.future.set_result(result)
        yield


def summarize_batch(
    loaded: LoadedModel, batch: list[Pending[SummaryRequest, str]], *_: Any
) -> Iterator[None]:
    """A ``generate`` per group of the same bounds and similar lengths, a pass per token."""
    by_bounds: dict[tuple[int, int], list[Pending[SummaryRequest, str]]] = {}
    for pending in batch:
        bounds = (pending.item.min_new_tokens, pending.item.max_new_tokens)
        by_bounds.setdefault(bounds, []).append(pending)
    for (low, high), same_bounds in by_bounds.items():
        for group in _by_length(same_bounds, lambda item: len(item.text)):
            summaries = yield from summarize_steps(
                loaded, [p.item.text for p in group], min_new_tokens=low, max_new_tokens=high
            )
            for pending, summary in zip(group, summaries, strict=True):
                pending.future.set_result(summary)


_RUNNERS: dict[ModelRole, Runner] = {
    ModelRole.GENERATOR: decode_steps,
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
