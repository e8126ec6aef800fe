"""The device loop: the one inference thread of a device, taking turns between the runs of
its models' micro-batchers, one forward pass at a time.

Each model has a :class:`MicroBatcher`: callers hand it requests and wait. A batcher's run
starts once a request has waited ``LLM_TASKS_BATCH_WAIT_MS`` (0 by default, as Ray
Serve's ``@serve.batch``: at once, with whatever waits) or ``LLM_TASKS_BATCH_MAX_SIZE``
requests wait; what arrives meanwhile forms the next run, or joins it where the runner
takes arrivals in (the decode loop does). ``BATCH_MAX_SIZE=1`` turns batching off.

A runner is a generator that yields after each forward pass, so that the thread takes
turns between the runs of the device's models: a classification is not held up by a
long generation, and every pass on a device comes from one thread. That matters on a
CPU too: each thread that runs torch gets its own OpenMP team, and two teams on the same
cores make every pass slower, even while one of them idles. CUDA out of memory splits a
batch in halves and runs them one after the other.
"""

import logging
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

import torch

from contracts.metrics import BATCH_SIZE, BUSY_SECONDS
from worker.metrics import tally
from worker.models import TORCH_THREADS, LoadedModel, intra_op_threads

logger = logging.getLogger(__name__)

Item = TypeVar("Item")
Result = TypeVar("Result")


@dataclass(frozen=True)
class RowControl:
    """The caller's side of a running request: it hears the tokens generated so far after
    each new one, and is asked whether to stop. It never crosses a process boundary: the
    inference process gives each row a control of its own that relays both."""

    on_tokens: Callable[[list[int]], None] | None = None
    should_stop: Callable[[], bool] | None = None


@dataclass
class Pending(Generic[Item, Result]):
    item: Item
    future: "Future[Result]" = field(default_factory=Future)
    arrived: float = field(default_factory=time.monotonic)
    control: RowControl = field(default_factory=RowControl)


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
                    engine_threads = any(b.sets_own_threads for b in self._batchers)
                    if largest != threads_for and not engine_threads:
                        threads_for = largest
                        torch.set_num_threads(intra_op_threads(largest) or TORCH_THREADS)
                    for batcher in starting:
                        running[batcher] = batcher.start()
                for batcher, passes in list(running.items()):
                    if not batcher.step(passes):
                        del running[batcher]
                if between_rounds is not None:
                    between_rounds()


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
        self,
        loaded: LoadedModel,
        runner: Runner,
        *,
        max_size: int,
        wait_ms: float,
        on_run: Callable[[int], None] | None = None,
    ) -> None:
        """``on_run`` is told the size of each run when it ends (after the batch-size
        metric is recorded)."""
        self._loaded = loaded
        self.parameters = loaded.parameters
        #: vLLM sets torch's threads itself, once, and refuses later changes.
        self.sets_own_threads = loaded.engine == "vllm"
        self._runner = runner
        self._max_size = max_size
        self._wait = wait_ms / 1000
        self._loop = device_loop(loaded.device)
        self._waiting: deque[Pending[Any, Any]] = deque()
        self._labels = {"model": str(loaded.role)}
        self._on_run = on_run
        self._batch: list[Pending[Any, Any]] = []
        self._loop.add(self)

    def submit(self, item: Any, control: RowControl | None = None) -> Any:
        """Run ``item`` in the next batch; blocks the calling (task) thread until it is done."""
        [result] = self.submit_many([item], [control or RowControl()])
        return result

    def submit_many(
        self, items: Sequence[Any], controls: Sequence[RowControl] | None = None
    ) -> list[Any]:
        return [pending.future.result() for pending in self.enqueue(items, controls)]

    def enqueue(
        self, items: Sequence[Any], controls: Sequence[RowControl] | None = None
    ) -> list[Pending[Any, Any]]:
        """Queue ``items`` (each with its control, if any) without waiting: each one's
        future tells when it is done."""
        controls = controls or [RowControl()] * len(items)
        pendings: list[Pending[Any, Any]] = [
            Pending(item, control=control) for item, control in zip(items, controls, strict=True)
        ]
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
            tally.observe(BATCH_SIZE, self._labels, len(self._batch))
            if self._on_run is not None:
                self._on_run(len(self._batch))
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


def by_length(
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


def call_safely(callback: Callable[[list[int]], None], tokens: list[int]) -> None:
    """A row's streaming callback: its failure is logged, the generation goes on."""
    try:
        callback(tokens)
    except Exception:
        logger.exception("a streaming callback failed; the generation goes on")
