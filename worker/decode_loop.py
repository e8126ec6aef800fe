"""The decode loop: generation rows batched on one model, each independent of the others.

Each row has its own temperature, top-p and seed (a generator per row, :mod:`worker.
sampler`), its own ``max_new_tokens`` and end of text (a finished row hands its result
back at once and leaves the batch), its own stream and its own cancellation (its
:class:`~worker.device_loop.RowControl`). It is continuous batching, as in TGI: requests
that arrive while the loop runs join it at a step boundary instead of waiting for the
longest row to end. The rows share one key/value cache (:mod:`worker.kv_cache`).
"""

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from transformers import Cache, DynamicCache

from contracts.metrics import TOKENS
from llm_tasks.kinds import DEFAULT_PRIORITY
from worker.device_loop import Arrivals, Pending, call_safely
from worker.kv_cache import GrowingCache, attention_layers, cache_argument, takes
from worker.metrics import tally
from worker.models import LoadedModel
from worker.sampler import sample

logger = logging.getLogger(__name__)

#: Called before each decode pass with the rows it runs (see :func:`add_step_hook`).
StepHook = Callable[[Sequence["DecodeRow"]], None]
_step_hooks: list[StepHook] = []


def add_step_hook(hook: StepHook) -> None:
    """Call ``hook`` before every decode pass in this process, with the rows the pass runs
    (tracing, pacing), whichever engine runs them. A hook that raises fails the pass's
    rows, as a failed pass would."""
    _step_hooks.append(hook)


def run_step_hooks(rows: Sequence["DecodeRow"]) -> None:
    """Before a decode pass (an engine's runner calls it): the hooks, with its rows."""
    for hook in _step_hooks:
        hook(rows)


@dataclass(frozen=True)
class DecodeRow:
    """One generation round: continue ``context`` by up to ``max_new_tokens`` tokens. Plain
    data, sent to the inference process as it is; its stream and cancellation travel
    beside it, as its :class:`~worker.device_loop.RowControl`."""

    context: list[int]
    max_new_tokens: int
    temperature: float
    top_p: float
    seed: int
    #: Ids that end this row besides the model's own end-of-sequence ids (a turn's end).
    end_ids: frozenset[int] = frozenset()
    #: The job's priority (9 most urgent): the order in which vLLM's scheduler serves rows
    #: (:mod:`worker.vllm_engine`); this loop serves them as they come.
    priority: int = DEFAULT_PRIORITY
    #: Strings that end the text. This loop leaves them to the caller, which stops the row
    #: through its control once one shows up; vLLM stops at them itself.
    stop: tuple[str, ...] = ()


@dataclass
class Decoded:
    tokens: list[int]
    finish_reason: Literal["length", "stop", "canceled"]


#: Fewest padding columns worth cutting off the cache (cutting copies nothing).
TRIM_AT_LEAST = 8

#: Steps arrivals wait at most before they join a running decode loop.
JOIN_AFTER_STEPS = 4


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
    """:func:`decode_steps` in one go, in the calling thread (benchmarks: no device loop
    runs this model meanwhile)."""
    with torch.inference_mode():
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
    model, device, tokenizer = loaded.transformers_model, loaded.device, loaded.tokenizer
    compiled = loaded.compiled_step
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
        tokens = sample(logits.float(), group.temperatures, group.top_ps, group.generators)
        keep = []
        for j, (index, token) in enumerate(zip(group.index, tokens.tolist(), strict=True)):
            row: DecodeRow = batch[index].item
            control = batch[index].control
            if token in eos_ids or token in row.end_ids:
                finish(index, "stop")
                continue
            generated[index].append(token)
            if control.on_tokens is not None:
                call_safely(control.on_tokens, generated[index])
            if len(generated[index]) >= row.max_new_tokens:
                finish(index, "length")
            elif control.should_stop is not None and control.should_stop():
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
            else DynamicCache(config=model.config)
        )
        output = model(
            input_ids=input_ids.to(device),
            attention_mask=group.mask,
            position_ids=positions,
            use_cache=True,
            **{cache_name: group.cache},
            **last_logits_only,
        )
        advance(group, output.logits[:, -1, :])
        return group

    layers = attention_layers(model.config)
    # A prompt's pass needs the logits of its last position only, not a vocabulary's
    # worth for every position (most models take ``logits_to_keep``).
    model_class: Any = type(model)
    last_logits_only = {"logits_to_keep": 1} if takes(model_class, "logits_to_keep") else {}
    cache_name = cache_argument(model_class)
    rows.merge(prefill(0))
    joining = arrivals is not None and capacity > 1 and isinstance(rows.cache, GrowingCache)
    waited = 0
    while rows:
        yield
        run_step_hooks([batch[index].item for index in rows.index])
        if compiled is not None and isinstance(rows.cache, GrowingCache):
            logits = compiled(rows.next_tokens[:, None], rows.mask, rows.positions, rows.cache)
        else:
            output = model(
                input_ids=rows.next_tokens[:, None],
                attention_mask=rows.mask,
                position_ids=rows.positions,
                use_cache=True,
                **{cache_name: rows.cache},
            )
            logits = output.logits[:, -1, :]
        advance(rows, logits)
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
